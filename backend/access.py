"""Who may do what: the roles, their permissions, and the dependencies that enforce them.

This module is the one place where authorisation happens. Routes never check roles themselves:
they declare what they need, and get it already authorised, e.g.

    def cancel_run(run: WritableRun, principal: Writer) -> RunOut: ...
    def delete_model(model: DeletableModel, ...) -> ...

| permission | viewer | member | admin | owner | what                                          |
| ---------- | :----: | :----: | :---: | :---: | --------------------------------------------- |
| read       |   x    |   x    |   x   |   x   | list and read models, datasets, runs, ...    |
| write      |        |   x    |   x   |   x   | upload, launch, cancel, register, edit tags   |
| delete     |        |        |   x   |   x   | delete or archive models and datasets         |
| manage     |        |        |   x   |   x   | invitations, roles (not owners), webhooks, audit |
| own        |        |        |       |   x   | grant the owner role, change or remove owners |

Studio-wide (settings with safe defaults): creating users is for studio administrators
(superusers; `DS_USER_CREATORS=team_admins` lets team admins too), creating teams as well
(`DS_TEAM_CREATORS=everyone` lets anyone); a user joins a team by accepting an invitation, or
when a studio administrator adds them directly.

A read-only token has only `read`, whatever the role. A team-owned resource is looked up within
the caller's team first: an id of another team answers 404 exactly like an id that does not
exist (nobody learns which ids other teams use); only then does a missing permission answer 403.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.deps import (
    Credentials,
    CurrentUser,
    Principal,
    SessionDep,
    get_credentials,
    oauth2_scheme,
    read_as,
)
from backend.errors import Forbidden, NotFound
from backend.teams.service import Owned, get_owned, label
from core.db.tables import (
    Artifact,
    Comparison,
    Dataset,
    Membership,
    Model,
    Role,
    Run,
    Team,
    Webhook,
)
from core.settings import get_settings


class Permission(str, enum.Enum):  # noqa: UP042 - plain str values in messages
    read = "read"
    write = "write"
    delete = "delete"
    manage = "manage"
    own = "own"


ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    Role.viewer.value: frozenset({Permission.read}),
    Role.member.value: frozenset({Permission.read, Permission.write}),
    Role.admin.value: frozenset(
        {Permission.read, Permission.write, Permission.delete, Permission.manage}
    ),
    Role.owner.value: frozenset(Permission),
}

_NEEDS = {
    Permission.write: "member",
    Permission.delete: "admin",
    Permission.manage: "admin",
    Permission.own: "owner",
}
_DOES = {
    Permission.write: "change things",
    Permission.delete: "delete or archive models and datasets",
    Permission.manage: "manage members, webhooks and the audit log",
    Permission.own: "grant the owner role or change owners",
}


def allowed(principal: Principal, permission: Permission) -> bool:
    if principal.read_only and permission is not Permission.read:
        return False
    return permission in ROLE_PERMISSIONS.get(principal.role, frozenset())


def require(principal: Principal, permission: Permission) -> Principal:
    """The principal if it has `permission` in its team; 403 saying what is missing otherwise."""
    if allowed(principal, permission):
        return principal
    if principal.read_only:
        raise Forbidden(
            "this token is read-only; use a token made without read_only to change things"
        )
    raise Forbidden(
        f"your role in team {principal.team_id} is {principal.role}, which cannot "
        f"{_DOES[permission]}; that needs the {_NEEDS[permission]} role (ask a team owner or admin)"
    )


# -- the caller, with a permission in the team of the request ---------------------------------


# These check what the principal already holds (no I/O), so they are `async def`: FastAPI would
# run a plain `def` in a worker thread, a hop that costs about as much CPU as a small query.


async def _writer(principal: CurrentUser) -> Principal:
    return require(principal, Permission.write)


async def _manager(principal: CurrentUser) -> Principal:
    return require(principal, Permission.manage)


async def _account(principal: CurrentUser) -> Principal:
    return _may_change_account(principal)


def _may_change_account(principal: Principal) -> Principal:
    """For changes to the caller's own account (tokens, new teams): any role, no read-only token."""
    if principal.read_only:
        raise Forbidden(
            "this token is read-only; use a token made without read_only to change things"
        )
    return principal


def is_studio_admin(principal: Principal) -> bool:
    """A studio administrator (superuser) acting with a token that may change things."""
    return principal.user.is_superuser and not principal.read_only


async def _user_creator(principal: CurrentUser) -> Principal:
    """Studio administrators create users; team admins and owners too only when
    DS_USER_CREATORS=team_admins."""
    if is_studio_admin(principal):
        return principal
    if get_settings().user_creators == "team_admins":
        return require(principal, Permission.manage)
    _may_change_account(principal)
    raise Forbidden(
        "creating users is for studio administrators (DS_USER_CREATORS=admins); ask one to "
        "create the account, then invite it to your team"
    )


async def _team_creator(principal: CurrentUser) -> Principal:
    """Studio administrators create teams; everyone when DS_TEAM_CREATORS=everyone."""
    _may_change_account(principal)
    if principal.user.is_superuser or get_settings().team_creators == "everyone":
        return principal
    raise Forbidden(
        "creating teams is for studio administrators (DS_TEAM_CREATORS=admins); ask one to "
        "create the team and invite you"
    )


async def _unscoped_account(principal: CurrentUser) -> Principal:
    """For answering invitations: the account as a whole, so not a token scoped to one team."""
    _may_change_account(principal)
    if principal.token.team_id is not None:
        raise Forbidden(
            f"this token is scoped to team {principal.token.team_id}, so it cannot answer "
            "invitations to other teams; use a token that is not scoped (sign in with a password)"
        )
    return principal


# any member of the caller's team, in any role: the permission a route needs comes from the
# resource dependency beside it (WritableRun, DeletableModel, ManagedWebhook, ...)
TeamMember = CurrentUser
Account = Annotated[Principal, Depends(_account)]
UnscopedAccount = Annotated[Principal, Depends(_unscoped_account)]
UserCreator = Annotated[Principal, Depends(_user_creator)]
TeamCreator = Annotated[Principal, Depends(_team_creator)]
Writer = Annotated[Principal, Depends(_writer)]
Manager = Annotated[Principal, Depends(_manager)]


class WriterFirst(APIRoute):
    """The route class of a frequent write with a body (`POST /runs`) whose endpoint checks the
    caller itself, with its work, in one worker-thread hop (`backend.deps.write_as`; `Writer`'s
    dependencies take three). FastAPI validates the body before the endpoint runs, so when it
    refuses the body (422) this checks the caller first: 401 and 403 still come before 422,
    as on a route with `Writer`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def caller_first(request: Request) -> Response:
            try:
                return await handle(request)
            except RequestValidationError:
                credentials = await _credentials_of(request)
                if credentials is not None:
                    await read_as(credentials, lambda _s, p: require(p, Permission.write))
                raise

        return caller_first


async def _credentials_of(request: Request) -> Credentials | None:
    """The request's credentials as `CredentialsDep` reads them (401 without a token); None for
    an `X-Team-Id` that is not a number (FastAPI's 422 names it)."""
    header = request.headers.get("x-team-id")
    try:
        team = None if header is None else int(header)
    except ValueError:
        return None
    return await get_credentials(await oauth2_scheme(request), team)


# -- team-owned resources, looked up in the caller's team and authorised ----------------------


def _owned(
    session: Session, principal: Principal, table: type[Owned], id_: int, permission: Permission
) -> Owned:
    # by primary key (the session's cached statement, cheaper than building a query), then the
    # team; 404 first, for other teams' ids too, as `get_owned` answers
    row = session.get(table, id_)
    if row is None or row.team_id != principal.team_id:
        raise NotFound(f"{label(table)} {id_} not found")
    require(principal, permission)
    return row


def model_for_read(model_id: int, session: SessionDep, principal: CurrentUser) -> Model:
    return _owned(session, principal, Model, model_id, Permission.read)


def model_for_write(model_id: int, session: SessionDep, principal: CurrentUser) -> Model:
    return _owned(session, principal, Model, model_id, Permission.write)


def model_for_delete(model_id: int, session: SessionDep, principal: CurrentUser) -> Model:
    return _owned(session, principal, Model, model_id, Permission.delete)


def dataset_for_read(dataset_id: int, session: SessionDep, principal: CurrentUser) -> Dataset:
    return _owned(session, principal, Dataset, dataset_id, Permission.read)


def dataset_for_write(dataset_id: int, session: SessionDep, principal: CurrentUser) -> Dataset:
    return _owned(session, principal, Dataset, dataset_id, Permission.write)


def dataset_for_delete(dataset_id: int, session: SessionDep, principal: CurrentUser) -> Dataset:
    return _owned(session, principal, Dataset, dataset_id, Permission.delete)


def run_for_read(run_id: int, session: SessionDep, principal: CurrentUser) -> Run:
    return _owned(session, principal, Run, run_id, Permission.read)


def run_for_write(run_id: int, session: SessionDep, principal: CurrentUser) -> Run:
    return _owned(session, principal, Run, run_id, Permission.write)


def artifact_for_read(artifact_id: int, session: SessionDep, principal: CurrentUser) -> Artifact:
    return _owned(session, principal, Artifact, artifact_id, Permission.read)


def webhook_for_manage(webhook_id: int, session: SessionDep, principal: CurrentUser) -> Webhook:
    return _owned(session, principal, Webhook, webhook_id, Permission.manage)


def comparison_for_read(
    comparison_id: int, session: SessionDep, principal: CurrentUser
) -> Comparison:
    return _owned(session, principal, Comparison, comparison_id, Permission.read)


def comparison_for_delete(
    comparison_id: int, session: SessionDep, principal: CurrentUser
) -> Comparison:
    """Whoever saved it (while still a member or more), or an admin or owner of the team."""
    row = get_owned(session, Comparison, comparison_id, principal.team_id)
    mine = row.created_by == principal.user.id and allowed(principal, Permission.write)
    if not mine and not allowed(principal, Permission.delete):
        raise Forbidden(
            f"comparison {row.id} was saved by someone else; only they or a team admin or "
            "owner can delete it"
        )
    return row


OwnedModel = Annotated[Model, Depends(model_for_read)]
WritableModel = Annotated[Model, Depends(model_for_write)]
DeletableModel = Annotated[Model, Depends(model_for_delete)]
OwnedDataset = Annotated[Dataset, Depends(dataset_for_read)]
WritableDataset = Annotated[Dataset, Depends(dataset_for_write)]
DeletableDataset = Annotated[Dataset, Depends(dataset_for_delete)]
OwnedRun = Annotated[Run, Depends(run_for_read)]
WritableRun = Annotated[Run, Depends(run_for_write)]
OwnedArtifact = Annotated[Artifact, Depends(artifact_for_read)]
ManagedWebhook = Annotated[Webhook, Depends(webhook_for_manage)]
OwnedComparison = Annotated[Comparison, Depends(comparison_for_read)]
DeletableComparison = Annotated[Comparison, Depends(comparison_for_delete)]


# -- a team named in the path (/teams/{team_id}/...) -------------------------------------------


@dataclass
class TeamAccess:
    """A team the caller belongs to, and the caller as a member of that team."""

    team: Team
    principal: Principal


def _team_access(session: Session, principal: Principal, team_id: int) -> TeamAccess:
    """The caller in team `team_id` (its role there); 404 when not a member of it.

    A token scoped to another team does not reach this team either (404).
    """
    scoped_elsewhere = principal.token.team_id is not None and principal.token.team_id != team_id
    membership = (
        None
        if scoped_elsewhere
        else session.scalar(
            select(Membership).where(
                Membership.user_id == principal.user.id, Membership.team_id == team_id
            )
        )
    )
    team = session.get(Team, team_id) if membership is not None else None
    if membership is None or team is None:
        raise NotFound(f"team {team_id} not found")
    there = Principal(
        user=principal.user,
        team_id=team_id,
        role=membership.role,
        read_only=principal.read_only,
        token=principal.token,
    )
    return TeamAccess(team=team, principal=there)


def team_for_read(team_id: int, session: SessionDep, principal: CurrentUser) -> TeamAccess:
    return _team_access(session, principal, team_id)


def team_for_manage(team_id: int, session: SessionDep, principal: CurrentUser) -> TeamAccess:
    access = _team_access(session, principal, team_id)
    require(access.principal, Permission.manage)
    return access


def team_for_direct_add(team_id: int, session: SessionDep, principal: CurrentUser) -> TeamAccess:
    """Adding a user without their consent: a studio administrator who manages the team."""
    access = team_for_manage(team_id, session, principal)
    if not is_studio_admin(principal):
        raise Forbidden(
            "adding a user to a team without their consent is for studio administrators; invite "
            f"them instead with POST /api/v1/teams/{team_id}/invitations (they accept it)"
        )
    return access


MemberTeam = Annotated[TeamAccess, Depends(team_for_read)]
ManagedTeam = Annotated[TeamAccess, Depends(team_for_manage)]
StudioAdminTeam = Annotated[TeamAccess, Depends(team_for_direct_add)]
