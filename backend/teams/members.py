"""Teams and their members: creating teams and users, adding, changing and removing members.

What each role may do is decided in `backend.access`; the rules about owners live here: only
owners grant the owner role or change owners, and a team always keeps at least one owner.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.access import Permission, allowed, require
from backend.audit.service import audit
from backend.deps import Principal
from backend.errors import Conflict, Forbidden, Invalid, NotFound
from backend.security import hash_password
from core.db.tables import Membership, Role, Team, User


def create_team(session: Session, principal: Principal, name: str) -> Team:
    """A new team with the caller as its owner (409 when the name is taken)."""

    name = name.strip()
    if not name:
        raise Invalid("name", "give 1 to 100 characters", loc=["body", "name"])
    if session.scalar(select(Team.id).where(Team.name == name)) is not None:
        raise Conflict(f"a team named '{name}' already exists; pick another name")
    team = Team(name=name)
    session.add(team)
    session.flush()
    session.add(Membership(user_id=principal.user.id, team_id=team.id, role=Role.owner.value))
    audit(session, principal, "team.create", "team", team.id, {"name": name}, team_id=team.id)
    session.commit()
    return team


def members(session: Session, team_id: int) -> list[tuple[Membership, User]]:
    rows = session.execute(
        select(Membership, User)
        .join(User, User.id == Membership.user_id)
        .where(Membership.team_id == team_id)
        .order_by(Membership.id)
    )
    return [(m, u) for m, u in rows]


def _member(session: Session, team_id: int, user_id: int) -> tuple[Membership, User]:
    row = session.execute(
        select(Membership, User)
        .join(User, User.id == Membership.user_id)
        .where(Membership.team_id == team_id, Membership.user_id == user_id)
    ).first()
    if row is None:
        raise NotFound(f"user {user_id} is not a member of team {team_id}")
    return row[0], row[1]


def _owners(session: Session, team_id: int) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Membership)
            .where(Membership.team_id == team_id, Membership.role == Role.owner.value)
        )
        or 0
    )


def _need_owner(principal: Principal, what: str) -> None:
    if not allowed(principal, Permission.own):
        raise Forbidden(f"only an owner of team {principal.team_id} can {what}")


def add_member(
    session: Session, principal: Principal, team_id: int, username: str, role: str
) -> tuple[Membership, User]:
    """Add an existing user to the team (`principal` acts in that team, as admin or owner)."""

    if role == Role.owner.value:
        _need_owner(principal, "grant the owner role")
    user = session.scalar(select(User).where(User.username == username.strip()))
    if user is None:
        raise NotFound(f"no user named '{username}'; create it first with POST /api/v1/users")
    if (
        session.scalar(
            select(Membership.id).where(
                Membership.team_id == team_id, Membership.user_id == user.id
            )
        )
        is not None
    ):
        raise Conflict(
            f"'{user.username}' is already a member of team {team_id}; change the role with "
            f"PATCH /api/v1/teams/{team_id}/members/{user.id}"
        )
    membership = Membership(user_id=user.id, team_id=team_id, role=role)
    session.add(membership)
    audit(
        session,
        principal,
        "member.add",
        "member",
        user.id,
        {"username": user.username, "role": role},
        team_id=team_id,
    )
    session.commit()
    return membership, user


def update_member(
    session: Session, principal: Principal, team_id: int, user_id: int, role: str
) -> tuple[Membership, User]:
    """Change a member's role. Only owners grant owner or change owners; one owner always stays."""

    membership, user = _member(session, team_id, user_id)
    old = membership.role
    if old == role:
        return membership, user
    if role == Role.owner.value:
        _need_owner(principal, "grant the owner role")
    if old == Role.owner.value:
        _need_owner(principal, "change an owner's role")
        if _owners(session, team_id) <= 1:
            raise Conflict(
                f"'{user.username}' is the last owner of team {team_id}; make another member "
                "owner first"
            )
    membership.role = role
    audit(
        session,
        principal,
        "member.update",
        "member",
        user.id,
        {"username": user.username, "role": [old, role]},
        team_id=team_id,
    )
    session.commit()
    return membership, user


def remove_member(session: Session, principal: Principal, team_id: int, user_id: int) -> None:
    """Remove a member (admins and owners; anyone may leave). The last owner cannot go."""

    membership, user = _member(session, team_id, user_id)
    leaving = user.id == principal.user.id
    if not leaving:
        require(principal, Permission.manage)
    elif principal.read_only:
        raise Forbidden(
            "this token is read-only; use a token made without read_only to change things"
        )
    if membership.role == Role.owner.value:
        if not leaving:
            _need_owner(principal, "remove an owner")
        if _owners(session, team_id) <= 1:
            raise Conflict(
                f"'{user.username}' is the last owner of team {team_id}; make another member "
                "owner first"
            )
    session.delete(membership)
    audit(
        session,
        principal,
        "member.remove",
        "member",
        user.id,
        {"username": user.username, "role": membership.role},
        team_id=team_id,
    )
    session.commit()


def create_user(
    session: Session, principal: Principal, username: str, password: str, role: str
) -> tuple[User, Membership]:
    """A new user in the request's team (by a superuser, or an admin or owner of that team)."""

    username = username.strip()
    if not username:
        raise Invalid("username", "give 1 to 100 characters", loc=["body", "username"])
    if role == Role.owner.value and not principal.user.is_superuser:
        _need_owner(principal, "grant the owner role")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise Conflict(
            f"user '{username}' already exists; add them to a team with "
            f"POST /api/v1/teams/{principal.team_id}/members"
        )
    user = User(username=username, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    membership = Membership(user_id=user.id, team_id=principal.team_id, role=role)
    session.add(membership)
    audit(session, principal, "user.create", "user", user.id, {"username": username, "role": role})
    session.commit()
    return user, membership
