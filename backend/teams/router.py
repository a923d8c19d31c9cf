"""`/api/v1/teams` (your teams, their members and invitations), `/api/v1/invitations` (the
invitations you received) and `/api/v1/users` (creating accounts, for studio administrators)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from backend.access import (
    ManagedTeam,
    MemberTeam,
    StudioAdminTeam,
    TeamCreator,
    UnscopedAccount,
    UserCreator,
)
from backend.deps import CurrentUser, SessionDep
from backend.errors import responses
from backend.teams import invitations, members, service
from backend.teams.schemas import (
    InvitationCreate,
    InvitationOut,
    MemberAdd,
    MemberOut,
    MemberUpdate,
    TeamCreate,
    TeamOut,
    UserCreate,
    UserOut,
)
from core.db.tables import Invitation, Membership, Team, User

router = APIRouter(prefix="/teams", tags=["teams"])
users_router = APIRouter(prefix="/users", tags=["teams"])
invitations_router = APIRouter(prefix="/invitations", tags=["teams"])


def _member_out(membership: Membership, user: User) -> MemberOut:
    return MemberOut(user_id=user.id, username=user.username, role=membership.role)


@router.get(
    "",
    response_model=list[TeamOut],
    responses=responses(401, 503),
    summary="Teams you belong to, with your role",
)
def list_teams(session: SessionDep, principal: CurrentUser) -> list[TeamOut]:
    """A token scoped to one team lists only that team."""
    return [
        TeamOut(id=team.id, name=team.name, role=role)
        for team, role in service.user_teams(session, principal.user.id)
        if principal.token.team_id in (None, team.id)
    ]


@router.post(
    "",
    response_model=TeamOut,
    status_code=201,
    responses=responses(401, 403, 409, 422, 503),
    summary="Create a team; you become its owner (studio administrators, or everyone when "
    "DS_TEAM_CREATORS=everyone)",
)
def create_team(session: SessionDep, principal: TeamCreator, body: TeamCreate) -> TeamOut:
    team = members.create_team(session, principal, body.name)
    return TeamOut(id=team.id, name=team.name, role="owner")


@router.get(
    "/{team_id}",
    response_model=TeamOut,
    responses=responses(401, 404, 422, 503),
    summary="One of your teams, with your role in it",
)
def get_team(access: MemberTeam) -> TeamOut:
    return TeamOut(id=access.team.id, name=access.team.name, role=access.principal.role)


@router.get(
    "/{team_id}/members",
    response_model=list[MemberOut],
    responses=responses(401, 404, 422, 503),
    summary="Members of one of your teams, with their roles",
)
def list_members(session: SessionDep, access: MemberTeam) -> list[MemberOut]:
    return [_member_out(m, u) for m, u in members.members(session, access.team.id)]


@router.post(
    "/{team_id}/members",
    response_model=MemberOut,
    status_code=201,
    responses=responses(
        401, 403, 404, 409, 422, 503, e404="no such team of yours, or no such user"
    ),
    summary="Add an existing user to the team without asking them (studio administrators; "
    "others invite)",
)
def add_member(session: SessionDep, access: StudioAdminTeam, body: MemberAdd) -> MemberOut:
    membership, user = members.add_member(
        session, access.principal, access.team.id, body.username, body.role.value
    )
    return _member_out(membership, user)


@router.patch(
    "/{team_id}/members/{user_id}",
    response_model=MemberOut,
    responses=responses(401, 403, 404, 409, 422, 503, e409="the last owner cannot be demoted"),
    summary="Change a member's role (owners grant owner and change owners; one owner must stay)",
)
def update_member(
    session: SessionDep, access: ManagedTeam, user_id: int, body: MemberUpdate
) -> MemberOut:
    membership, user = members.update_member(
        session, access.principal, access.team.id, user_id, body.role.value
    )
    return _member_out(membership, user)


@router.delete(
    "/{team_id}/members/{user_id}",
    status_code=204,
    response_class=Response,
    responses=responses(401, 403, 404, 409, 422, 503, e409="the last owner cannot be removed"),
    summary="Remove a member (admins and owners; anyone may leave; one owner must stay)",
)
def remove_member(session: SessionDep, access: MemberTeam, user_id: int) -> Response:
    members.remove_member(session, access.principal, access.team.id, user_id)
    return Response(status_code=204)


@users_router.post(
    "",
    response_model=UserOut,
    status_code=201,
    responses=responses(401, 403, 409, 422, 503),
    summary="Create a user in the team of this request (studio administrators; team admins "
    "too when DS_USER_CREATORS=team_admins)",
)
def create_user(session: SessionDep, principal: UserCreator, body: UserCreate) -> UserOut:
    user, membership = members.create_user(
        session, principal, body.username, body.password, body.role.value
    )
    return UserOut(
        id=user.id,
        username=user.username,
        is_superuser=user.is_superuser,
        team_id=membership.team_id,
        role=membership.role,
        created_at=user.created_at,
    )


# -- invitations -------------------------------------------------------------------------------


def _invitation_out(row: Invitation, team_name: str) -> InvitationOut:
    return InvitationOut(
        id=row.id,
        team_id=row.team_id,
        team_name=team_name,
        username=row.username,
        role=row.role,
        status=row.status,
        invited_by=row.invited_by_name,
        created_at=row.created_at,
        answered_at=row.answered_at,
    )


@router.post(
    "/{team_id}/invitations",
    response_model=InvitationOut,
    status_code=201,
    responses=responses(
        401,
        403,
        404,
        409,
        422,
        503,
        e409="already a member, or already invited and not yet answered",
    ),
    summary="Invite a user by name to the team with a role; they accept or decline (admins and "
    "owners; owners invite as owner)",
)
def invite(session: SessionDep, access: ManagedTeam, body: InvitationCreate) -> InvitationOut:
    row = invitations.invite(
        session, access.principal, access.team.id, body.username, body.role.value
    )
    return _invitation_out(row, access.team.name)


@router.get(
    "/{team_id}/invitations",
    response_model=list[InvitationOut],
    responses=responses(401, 403, 404, 422, 503),
    summary="Invitations the team sent, newest first, with their answers (admins and owners)",
)
def list_sent(session: SessionDep, access: ManagedTeam) -> list[InvitationOut]:
    return [_invitation_out(r, access.team.name) for r in invitations.sent(session, access.team.id)]


@router.delete(
    "/{team_id}/invitations/{invitation_id}",
    response_model=InvitationOut,
    responses=responses(401, 403, 404, 409, 422, 503, e409="the invitation was already answered"),
    summary="Withdraw a pending invitation of the team (admins and owners)",
)
def withdraw(session: SessionDep, access: ManagedTeam, invitation_id: int) -> InvitationOut:
    row = invitations.withdraw(session, access.principal, access.team.id, invitation_id)
    return _invitation_out(row, access.team.name)


def _answered(pair: tuple[Invitation, Team]) -> InvitationOut:
    return _invitation_out(pair[0], pair[1].name)


@invitations_router.get(
    "",
    response_model=list[InvitationOut],
    responses=responses(401, 403, 503),
    summary="Invitations to teams waiting for your answer",
)
def list_received(session: SessionDep, principal: UnscopedAccount) -> list[InvitationOut]:
    return [_answered(p) for p in invitations.received(session, principal.user)]


@invitations_router.post(
    "/{invitation_id}/accept",
    response_model=InvitationOut,
    responses=responses(401, 403, 404, 409, 422, 503, e409="the invitation was already answered"),
    summary="Accept an invitation: you join its team with its role",
)
def accept(session: SessionDep, principal: UnscopedAccount, invitation_id: int) -> InvitationOut:
    return _answered(invitations.accept(session, principal, invitation_id))


@invitations_router.post(
    "/{invitation_id}/decline",
    response_model=InvitationOut,
    responses=responses(401, 403, 404, 409, 422, 503, e409="the invitation was already answered"),
    summary="Decline an invitation",
)
def decline(session: SessionDep, principal: UnscopedAccount, invitation_id: int) -> InvitationOut:
    return _answered(invitations.decline(session, principal, invitation_id))
