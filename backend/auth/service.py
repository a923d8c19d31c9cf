"""Signing in (throttled), and managing one's own API tokens (which never widen)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from backend.audit.service import audit, audit_teams
from backend.auth import throttle
from backend.deps import Principal
from backend.errors import Forbidden, NotFound, Unauthorized
from backend.security import authenticate, create_api_token
from core.clock import as_utc, utcnow
from core.db.tables import ApiToken, Membership, User


def login(session: Session, username: str, password: str, address: str) -> tuple[ApiToken, str]:
    """A new token (named "login", any of the user's teams) for a good username and password.

    The attempt counts against the sign-in limits of the account from `address` and of
    `address` (`backend.auth.throttle`) before the password is checked: past one, 429.
    """
    username = username.strip()
    refusal = throttle.check(username, address)
    if refusal is not None:
        if refusal.first:
            _record_throttle(session, username, address, refusal)
        raise throttle.TooManyAttempts(throttle.message(username, refusal), refusal.retry_after)
    user = authenticate(session, username, password)
    if user is None:
        raise Unauthorized("wrong username or password")
    throttle.succeeded(username, address)
    row, token = create_api_token(session, user, None, "login")
    session.commit()
    return row, token


def _team_ids(session: Session, user_id: int) -> list[int]:
    return list(
        session.scalars(
            select(Membership.team_id).where(Membership.user_id == user_id).order_by(Membership.id)
        )
    )


def _record_throttle(
    session: Session, username: str, address: str, refusal: throttle.Refusal
) -> None:
    """An `auth.throttle` entry in every team of the account (once per window); nothing is
    recorded for a username that does not exist (there is no team to tell)."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        return
    audit_teams(
        session,
        _team_ids(session, user.id),
        "auth.throttle",
        "user",
        user.id,
        {
            "username": username,
            "address": address,
            "limit": refusal.limit,
            "retry_after_s": refusal.retry_after,
        },
        user_id=None,
        username="",
    )
    session.commit()


def _not_later(row: ApiToken, cap: datetime | None) -> None:
    """A new token never outlives the token that created it."""
    if cap is None:
        return
    expires = as_utc(row.expires_at)
    if expires is None or expires > cap:
        row.expires_at = cap


def create_token(
    session: Session,
    principal: Principal,
    name: str,
    read_only: bool,
    team_scoped: bool,
    expires_in_days: int | None,
) -> tuple[ApiToken, str]:
    """A token of the caller's, never wider than the token of the request: within its team scope
    (a scoped token makes scoped tokens), read-only if it is, and expiring no later than it
    (a later or never-expiring request is cut to the creating token's expiry). The audit entry
    goes to every team the new token reaches."""
    creator = principal.token
    if principal.read_only and not read_only:
        raise Forbidden("read_only: a read-only token can only create read-only tokens")
    if creator.team_id is not None and not team_scoped:
        raise Forbidden(
            f"team_scoped: this token is scoped to team {creator.team_id}, so the tokens it "
            "creates must be scoped to that team too; send team_scoped: true, or sign in with a "
            "password"
        )
    row, token = create_api_token(
        session,
        principal.user,
        principal.team_id if team_scoped else None,
        name,
        read_only=read_only,
        expires_in_days=expires_in_days,
    )
    _not_later(row, as_utc(creator.expires_at))
    session.flush()
    reach = [row.team_id] if row.team_id is not None else _team_ids(session, principal.user.id)
    audit_teams(
        session,
        reach,
        "token.create",
        "token",
        row.id,
        {
            "name": name,
            "prefix": row.prefix,
            "read_only": read_only,
            "team_id": row.team_id,
            "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        },
        user_id=principal.user.id,
        username=principal.user.username,
    )
    session.commit()
    return row, token


def _visible(principal: Principal) -> Select[tuple[ApiToken]]:
    """The caller's tokens; a token scoped to one team sees only the tokens of that team."""
    stmt = select(ApiToken).where(ApiToken.user_id == principal.user.id)
    if principal.token.team_id is not None:
        stmt = stmt.where(ApiToken.team_id == principal.token.team_id)
    return stmt


def list_tokens(session: Session, principal: Principal) -> list[ApiToken]:
    return list(session.scalars(_visible(principal).order_by(ApiToken.id)))


def revoke_token(session: Session, principal: Principal, token_id: int) -> ApiToken:
    row = session.scalar(_visible(principal).where(ApiToken.id == token_id))
    if row is None:
        raise NotFound(f"token {token_id} not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit(
            session,
            principal,
            "token.revoke",
            "token",
            row.id,
            {"name": row.name, "prefix": row.prefix},
        )
        session.commit()
    return row
