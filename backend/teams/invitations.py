"""Invitations: how a user joins a team with their consent.

A team admin or owner invites a username with a role (only owners invite as owner); the user
with that name sees it (`GET /invitations`) and accepts or declines it. An invitation names a
username, not a user: inviting a name nobody has answers exactly like inviting a real user, so
invitations reveal no usernames. Answering needs the whole account (not a team-scoped token).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.access import Permission, allowed
from backend.audit.service import audit, audit_teams
from backend.deps import Principal, UserRow
from backend.errors import Conflict, Forbidden, Invalid, NotFound
from core.clock import utcnow
from core.db.tables import Invitation, Membership, Role, Team, User

PENDING, ACCEPTED, DECLINED, WITHDRAWN = "pending", "accepted", "declined", "withdrawn"
_ACTIONS = {ACCEPTED: "invitation.accept", DECLINED: "invitation.decline"}


def invite(
    session: Session, principal: Principal, team_id: int, username: str, role: str
) -> Invitation:
    """A pending invitation of `username` to the team (`principal` manages that team)."""
    username = username.strip()
    if not username:
        raise Invalid("username", "give 1 to 100 characters", loc=["body", "username"])
    if role == Role.owner.value and not allowed(principal, Permission.own):
        raise Forbidden(f"only an owner of team {team_id} can invite as owner")
    member = session.scalar(
        select(User.id)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.team_id == team_id, User.username == username)
    )
    if member is not None:  # members of one's own team are listed anyway
        raise Conflict(f"'{username}' is already a member of team {team_id}")
    if _pending(session, team_id, username) is not None:
        raise Conflict(
            f"'{username}' is already invited to team {team_id}; they accept or decline it "
            "from their Team page or with POST /api/v1/invitations/{id}/accept"
        )
    row = Invitation(
        team_id=team_id,
        username=username,
        role=role,
        status=PENDING,
        invited_by=principal.user.id,
        invited_by_name=principal.user.username,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    audit(
        session,
        principal,
        "invitation.create",
        "invitation",
        row.id,
        {"username": username, "role": role},
        team_id=team_id,
    )
    session.commit()
    return row


def _pending(session: Session, team_id: int, username: str) -> Invitation | None:
    return session.scalar(
        select(Invitation).where(
            Invitation.team_id == team_id,
            Invitation.username == username,
            Invitation.status == PENDING,
        )
    )


def sent(session: Session, team_id: int) -> list[Invitation]:
    """The team's invitations, newest first (for its admins and owners)."""
    return list(
        session.scalars(
            select(Invitation).where(Invitation.team_id == team_id).order_by(Invitation.id.desc())
        )
    )


def withdraw(
    session: Session, principal: Principal, team_id: int, invitation_id: int
) -> Invitation:
    """Take back a pending invitation of the team (its admins and owners)."""
    row = session.scalar(
        select(Invitation).where(Invitation.id == invitation_id, Invitation.team_id == team_id)
    )
    if row is None:
        raise NotFound(f"invitation {invitation_id} not found")
    if row.status != PENDING:
        raise Conflict(f"invitation {invitation_id} was already {row.status}")
    row.status = WITHDRAWN
    row.answered_at = utcnow()
    audit(
        session,
        principal,
        "invitation.withdraw",
        "invitation",
        row.id,
        {"username": row.username, "role": row.role},
        team_id=team_id,
    )
    session.commit()
    return row


def received(session: Session, user: UserRow) -> list[tuple[Invitation, Team]]:
    """The user's pending invitations, oldest first, with their teams."""
    rows = session.execute(
        select(Invitation, Team)
        .join(Team, Team.id == Invitation.team_id)
        .where(Invitation.username == user.username, Invitation.status == PENDING)
        .order_by(Invitation.id)
    )
    return [(inv, team) for inv, team in rows]


def _mine(session: Session, user: UserRow, invitation_id: int) -> tuple[Invitation, Team]:
    """An invitation addressed to `user` (404 for anyone else's, as for ids that do not exist)."""
    row = session.execute(
        select(Invitation, Team)
        .join(Team, Team.id == Invitation.team_id)
        .where(Invitation.id == invitation_id, Invitation.username == user.username)
    ).first()
    if row is None:
        raise NotFound(f"invitation {invitation_id} not found")
    invitation, team = row
    if invitation.status != PENDING:
        raise Conflict(f"invitation {invitation_id} was already {invitation.status}")
    return invitation, team


def accept(session: Session, principal: Principal, invitation_id: int) -> tuple[Invitation, Team]:
    """Join the team with the invitation's role (kept if the user is a member already)."""
    invitation, team = _mine(session, principal.user, invitation_id)
    exists = session.scalar(
        select(Membership.id).where(
            Membership.team_id == team.id, Membership.user_id == principal.user.id
        )
    )
    if exists is None:
        session.add(Membership(user_id=principal.user.id, team_id=team.id, role=invitation.role))
    _answer(session, principal, invitation, ACCEPTED)
    return invitation, team


def decline(session: Session, principal: Principal, invitation_id: int) -> tuple[Invitation, Team]:
    invitation, team = _mine(session, principal.user, invitation_id)
    _answer(session, principal, invitation, DECLINED)
    return invitation, team


def _answer(session: Session, principal: Principal, invitation: Invitation, status: str) -> None:
    invitation.status = status
    invitation.answered_at = utcnow()
    audit_teams(
        session,
        [invitation.team_id],
        _ACTIONS[status],
        "invitation",
        invitation.id,
        {"username": invitation.username, "role": invitation.role},
        user_id=principal.user.id,
        username=principal.user.username,
    )
    session.commit()
