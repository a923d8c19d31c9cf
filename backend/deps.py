"""FastAPI dependencies: the request's database session and who is calling, for which team.

- `SessionDep`: one session per request; services commit, anything uncommitted is rolled back.
- `CurrentUser`: the `Principal` behind `Authorization: Bearer <token>` (401 otherwise).
- `TeamDep`: the caller's team id, for reads (any member, any token).
- `CredentialsDep` and `read_as`: the same checks and a session of its own in one worker-thread
  hop, for the reads that pollers repeat (see `read_as`).

What a role may do, and the dependencies that hand routes an authorised resource
(`OwnedModel`, `WritableRun`, `Writer`, `Manager`, ...), live in `backend.access`.

The team of a request is the token's team when the token is scoped to one, else the `X-Team-Id`
header (the caller must be a member), else the caller's first team.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, NamedTuple, TypeVar

from fastapi import Depends, Header
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import Integer, bindparam, func, select, update
from sqlalchemy.orm import Session

from backend.errors import Forbidden, Unauthorized
from backend.security import find_token, looks_like_token, token_hash
from core.clock import as_utc, utcnow
from core.db import driver_rows, get_engine, get_read_engine, get_sessionmaker
from core.db.tables import ApiToken, Membership, User
from core.storage import Store, get_store

TOKEN_URL = "/api/v1/auth/token"
LAST_USED_EVERY = timedelta(minutes=1)

oauth2_scheme = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


# Dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in a worker
# thread, and each such hop costs about as much CPU as a small query. The session is made on the
# event loop (no connection yet) and closed in a thread when it still holds a connection
# (closing returns it to the pool, which talks to the database); on the loop when the route
# ended its transaction itself.


async def get_session() -> AsyncIterator[Session]:
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        if session.in_transaction():  # a connection to give back: I/O, in a thread
            await run_in_threadpool(_close, session)
        else:  # the route ended its transaction (a commit does): nothing to wait for
            session.close()


def _close(session: Session) -> None:
    session.close()  # rolls back whatever was not committed (the pool resets the connection)


async def _store() -> Store:
    return get_store()


SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[Store, Depends(_store)]


@dataclass(frozen=True, slots=True)
class UserRow:
    """The caller's account, as the columns requests read (not an ORM object)."""

    id: int
    username: str
    is_superuser: bool


@dataclass(frozen=True, slots=True)
class TokenRow:
    """The request's API token, as the columns requests read (not an ORM object)."""

    id: int
    team_id: int | None
    read_only: bool
    expires_at: datetime | None


@dataclass
class Principal:
    """Who makes a request and for which team."""

    user: UserRow
    team_id: int
    role: str
    read_only: bool
    token: TokenRow


def _membership(session: Session, user_id: int, team_id: int) -> Membership | None:
    return session.scalar(
        select(Membership).where(Membership.user_id == user_id, Membership.team_id == team_id)
    )


def resolve_team_checks(token: TokenRow, header_team: int | None) -> None:
    """A token scoped to one team acts for no other (403 for an X-Team-Id naming another)."""
    if header_team is not None and header_team != token.team_id:
        raise Forbidden(
            f"X-Team-Id: this token is scoped to team {token.team_id}; "
            "drop the header or use a token that is not scoped to one team"
        )


def resolve_team(
    session: Session, user_id: int, token: TokenRow, header_team: int | None
) -> Membership:
    """The membership the request acts under (see the module docstring)."""
    if token.team_id is not None:
        resolve_team_checks(token, header_team)
        membership = _membership(session, user_id, token.team_id)
        if membership is None:
            raise Forbidden(f"this token's team {token.team_id} no longer includes you")
        return membership
    if header_team is not None:
        membership = _membership(session, user_id, header_team)
        if membership is None:
            raise Forbidden(f"X-Team-Id: you are not a member of team {header_team}")
        return membership
    membership = session.scalar(
        select(Membership).where(Membership.user_id == user_id).order_by(Membership.id).limit(1)
    )
    if membership is None:
        raise Forbidden("your account belongs to no team; ask an admin to add you to one")
    return membership


# The token, its user and the membership the request acts under, as plain columns in one
# statement built once (no ORM objects, no identity map: building those cost more than the
# query): the token's team when it is scoped to one, else the X-Team-Id team, else the first
# team. No row means something is wrong (unknown token, no such membership): `_slow_principal`
# then finds out what, with the message for it.
_TOKEN_COLUMNS = (ApiToken.id, ApiToken.team_id, ApiToken.read_only, ApiToken.expires_at)
_USER_COLUMNS = (User.id, User.username, User.is_superuser)
_PRINCIPAL = (
    select(
        *_TOKEN_COLUMNS,
        *_USER_COLUMNS,
        Membership.team_id,
        Membership.role,
        ApiToken.revoked_at,
        ApiToken.last_used_at,
    )
    .join(User, User.id == ApiToken.user_id)
    .join(Membership, Membership.user_id == ApiToken.user_id)
    .where(
        ApiToken.token_hash == bindparam("digest"),
        Membership.team_id
        == func.coalesce(ApiToken.team_id, bindparam("team", type_=Integer), Membership.team_id),
    )
    .order_by(Membership.id)
    .limit(1)
)
_TOUCH = (
    update(ApiToken)
    .where(ApiToken.id == bindparam("token_id"))
    .values(last_used_at=bindparam("now", type_=ApiToken.last_used_at.type))
)


class _Found(NamedTuple):
    """What the principal is made of, and what decides whether the token still counts."""

    token: TokenRow
    user: UserRow
    team_id: int
    role: str
    revoked_at: datetime | None
    last_used_at: datetime | None


def _check_alive(revoked_at: datetime | None, expires_at: datetime | None, now: datetime) -> None:
    if revoked_at is not None:
        raise Unauthorized("this API token was revoked; sign in again or create a new token")
    expires = as_utc(expires_at)
    if expires is not None and expires <= now:
        raise Unauthorized("this API token expired; sign in again or create a new token")


def _slow_principal(session: Session, token: str, header_team: int | None) -> _Found:
    """The token, user and membership step by step, raising 401/403 with what is wrong."""
    row = find_token(session, token)
    if row is None:
        raise Unauthorized("unknown API token; sign in again or create a new token")
    _check_alive(row.revoked_at, row.expires_at, utcnow())
    user = session.get(User, row.user_id)
    if user is None:  # pragma: no cover - tokens are deleted with their user
        raise Unauthorized("unknown API token; sign in again or create a new token")
    token_row = TokenRow(row.id, row.team_id, row.read_only, row.expires_at)
    membership = resolve_team(session, user.id, token_row, header_team)
    return _Found(
        token_row,
        UserRow(user.id, user.username, user.is_superuser),
        membership.team_id,
        membership.role,
        row.revoked_at,
        row.last_used_at,
    )


def _fast_principal(session: Session, token: str, header_team: int | None) -> _Found | None:
    if not looks_like_token(token):
        return None
    rows = driver_rows(
        session.connection(), _PRINCIPAL, {"digest": token_hash(token), "team": header_team}
    )
    if not rows:
        return None
    row = rows[0]
    return _Found(TokenRow(*row[0:4]), UserRow(*row[4:7]), *row[7:11])


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request says of its caller, not yet checked: the bearer token and X-Team-Id."""

    token: str
    team_header: int | None


async def get_credentials(
    token: Annotated[str | None, Depends(oauth2_scheme)],
    x_team_id: Annotated[
        int | None,
        Header(alias="X-Team-Id", description="Act for this team (default: your first team)."),
    ] = None,
) -> Credentials:
    """The request's credentials (401 when it has no token); the database checks them later."""
    if not token:
        raise Unauthorized(
            "not signed in: send `Authorization: Bearer <token>`; get a token from "
            f"POST {TOKEN_URL} (username, password)"
        )
    return Credentials(token, x_team_id)


CredentialsDep = Annotated[Credentials, Depends(get_credentials)]


def principal_for(session: Session, credentials: Credentials) -> Principal:
    """The principal behind `credentials`: 401 for a token that is unknown, revoked or expired,
    403 for a team the caller may not act for. Notes the token's use once a minute."""
    token, header_team = credentials.token, credentials.team_header
    found = _fast_principal(session, token, header_team)
    if found is None:  # unknown token or no membership to act under: say which
        found = _slow_principal(session, token, header_team)
    now = utcnow()
    _check_alive(found.revoked_at, found.token.expires_at, now)
    if found.token.team_id is not None:
        resolve_team_checks(found.token, header_team)
    last = as_utc(found.last_used_at)
    if last is None or now - last >= LAST_USED_EVERY:
        session.connection().execute(_TOUCH, {"token_id": found.token.id, "now": now})
        session.commit()
    return Principal(
        user=found.user,
        team_id=found.team_id,
        role=found.role,
        read_only=found.token.read_only,
        token=found.token,
    )


def get_principal(session: SessionDep, credentials: CredentialsDep) -> Principal:
    return principal_for(session, credentials)


CurrentUser = Annotated[Principal, Depends(get_principal)]


async def get_team_id(principal: CurrentUser) -> int:
    return principal.team_id


TeamDep = Annotated[int, Depends(get_team_id)]


# The reads that pages and scripts poll (a run, its metrics, the list of runs) take the
# credentials (no I/O) and do all their database work in `read_as`: one worker-thread hop for
# the principal, the read and giving the connection back, where the dependencies would take
# two (the principal, then the route), each costing about as much CPU as a small query. On
# PostgreSQL their session runs each statement on its own (autocommit connections of a pool of
# their own, `core.db.get_read_engine`): no BEGIN before the first statement and no ROLLBACK
# after the last: `GET /runs/{id}` is two round trips (the principal, the run; the pool checks
# a connection without one, `core.db`). Their statements
# are single reads (the principal's once-a-minute `last_used_at` update is one statement too),
# so nothing needs them in one transaction: a metrics read whose statements straddle a flush
# serves the newer points, or, where the rollups no longer end at the span it read first, reads
# the points (as for points written without rollups). SQLite begins no transaction for a read
# anyway.

_Out = TypeVar("_Out")


def _act(
    credentials: Credentials, work: Callable[[Session, Principal], _Out], autocommit: bool
) -> _Out:
    session = get_sessionmaker()(bind=get_read_engine() if autocommit else get_engine())
    try:
        return work(session, principal_for(session, credentials))
    finally:
        session.close()  # rolls back whatever a write did not commit


async def read_as(credentials: Credentials, read: Callable[[Session, Principal], _Out]) -> _Out:
    """`read(session, principal)` for the caller behind `credentials`, in one worker-thread hop,
    on a session of its own (see above)."""
    return await run_in_threadpool(_act, credentials, read, True)


# A frequent write without a body (cancelling a run: scripts and the pages do it in bursts) saves
# the same hops: `write(session, principal)` checks the permission itself (`backend.access`) and
# commits what it changes, in one transaction like a route's. A write with a body answers 401/403
# before the body's 422: most keep their dependencies for that; `POST /runs` (launched in
# bursts too) uses `write_as` with the route class `backend.access.WriterFirst`, which checks
# the caller when FastAPI refuses the body. A write that saves in one statement (a create:
# `backend.audit.service.add_audited`) runs `autocommit` like the reads: on PostgreSQL no BEGIN
# and no COMMIT round trip around it.


async def write_as(
    credentials: Credentials,
    write: Callable[[Session, Principal], _Out],
    *,
    autocommit: bool = False,
) -> _Out:
    """`write(session, principal)` for the caller behind `credentials`, in one worker-thread
    hop, on a session of its own; what it leaves uncommitted is rolled back. `autocommit`: each
    statement commits on its own (PostgreSQL), for a write of a single statement."""
    return await run_in_threadpool(_act, credentials, write, autocommit)
