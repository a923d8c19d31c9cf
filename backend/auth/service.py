"""Signing in, and managing one's own API tokens."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.audit.service import audit
from backend.db.tables import ApiToken
from backend.deps import Principal
from backend.errors import Forbidden, NotFound, Unauthorized
from backend.security import authenticate, create_api_token, utcnow


def login(session: Session, username: str, password: str) -> tuple[ApiToken, str]:
    """A new token (named "login", any of the user's teams) for a good username and password."""
    user = authenticate(session, username.strip(), password)
    if user is None:
        raise Unauthorized("wrong username or password")
    row, token = create_api_token(session, user, None, "login")
    session.commit()
    return row, token


def create_token(
    session: Session, principal: Principal, name: str, read_only: bool, team_scoped: bool,
    expires_in_days: int | None,
) -> tuple[ApiToken, str]:
    if principal.read_only and not read_only:
        raise Forbidden("read_only: a read-only token can only create read-only tokens")
    row, token = create_api_token(
        session, principal.user, principal.team_id if team_scoped else None, name,
        read_only=read_only, expires_in_days=expires_in_days,
    )
    audit(session, principal, "token.create", "token", row.id,
          {"name": name, "prefix": row.prefix, "read_only": read_only, "team_id": row.team_id})
    session.commit()
    return row, token


def list_tokens(session: Session, user_id: int) -> list[ApiToken]:
    return list(
        session.scalars(select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id))
    )


def revoke_token(session: Session, principal: Principal, token_id: int) -> ApiToken:
    row = session.scalar(
        select(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == principal.user.id)
    )
    if row is None:
        raise NotFound(f"token {token_id} not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit(session, principal, "token.revoke", "token", row.id,
              {"name": row.name, "prefix": row.prefix})
        session.commit()
    return row
