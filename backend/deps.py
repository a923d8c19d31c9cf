"""FastAPI dependencies: the request's database session and who is calling, for which team.

- `SessionDep`: one session per request; services commit, anything uncommitted is rolled back.
- `CurrentUser`: the `Principal` behind `Authorization: Bearer <token>` (401 otherwise).
- `TeamDep`: the caller's team id, for reads (any member, any token).

What a role may do, and the dependencies that hand routes an authorised resource
(`OwnedModel`, `WritableRun`, `Writer`, `Manager`, ...), live in `backend.access`.

The team of a request is the token's team when the token is scoped to one, else the `X-Team-Id`
header (the caller must be a member), else the caller's first team.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Header
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.errors import Forbidden, Unauthorized
from backend.security import find_token
from core.clock import as_utc, utcnow
from core.db import get_sessionmaker
from core.db.tables import ApiToken, Membership, User
from core.storage import Store, get_store

TOKEN_URL = "/api/v1/auth/token"
LAST_USED_EVERY = timedelta(minutes=1)

oauth2_scheme = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


def get_session() -> Iterator[Session]:
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[Store, Depends(get_store)]


@dataclass
class Principal:
    """Who makes a request and for which team."""

    user: User
    team_id: int
    role: str
    read_only: bool
    token: ApiToken


def _membership(session: Session, user_id: int, team_id: int) -> Membership | None:
    return session.scalar(
        select(Membership).where(Membership.user_id == user_id, Membership.team_id == team_id)
    )


def resolve_team(
    session: Session, user: User, token: ApiToken, header_team: int | None
) -> Membership:
    """The membership the request acts under (see the module docstring)."""
    if token.team_id is not None:
        if header_team is not None and header_team != token.team_id:
            raise Forbidden(
                f"X-Team-Id: this token is scoped to team {token.team_id}; "
                "drop the header or use a token that is not scoped to one team"
            )
        membership = _membership(session, user.id, token.team_id)
        if membership is None:
            raise Forbidden(f"this token's team {token.team_id} no longer includes you")
        return membership
    if header_team is not None:
        membership = _membership(session, user.id, header_team)
        if membership is None:
            raise Forbidden(f"X-Team-Id: you are not a member of team {header_team}")
        return membership
    membership = session.scalar(
        select(Membership).where(Membership.user_id == user.id).order_by(Membership.id).limit(1)
    )
    if membership is None:
        raise Forbidden("your account belongs to no team; ask an admin to add you to one")
    return membership


def get_principal(
    session: SessionDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
    x_team_id: Annotated[
        int | None,
        Header(alias="X-Team-Id", description="Act for this team (default: your first team)."),
    ] = None,
) -> Principal:
    if not token:
        raise Unauthorized(
            "not signed in: send `Authorization: Bearer <token>`; get a token from "
            f"POST {TOKEN_URL} (username, password)"
        )
    row = find_token(session, token)
    if row is None:
        raise Unauthorized("unknown API token; sign in again or create a new token")
    now = utcnow()
    if row.revoked_at is not None:
        raise Unauthorized("this API token was revoked; sign in again or create a new token")
    expires = as_utc(row.expires_at)
    if expires is not None and expires <= now:
        raise Unauthorized("this API token expired; sign in again or create a new token")
    user = session.get(User, row.user_id)
    if user is None:  # pragma: no cover - tokens are deleted with their user
        raise Unauthorized("unknown API token; sign in again or create a new token")
    membership = resolve_team(session, user, row, x_team_id)
    last = as_utc(row.last_used_at)
    if last is None or now - last >= LAST_USED_EVERY:
        row.last_used_at = now
        session.commit()
    return Principal(
        user=user,
        team_id=membership.team_id,
        role=membership.role,
        read_only=row.read_only,
        token=row,
    )


CurrentUser = Annotated[Principal, Depends(get_principal)]


def get_team_id(principal: CurrentUser) -> int:
    return principal.team_id


TeamDep = Annotated[int, Depends(get_team_id)]
