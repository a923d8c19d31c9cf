"""Passwords and API tokens.

- Passwords are hashed with Argon2id (argon2-cffi); a hash made with older parameters is
  replaced on the next successful login.
- API tokens look like `ds_<8 char prefix>_<secret of 43 chars>`. The database keeps only
  HMAC-SHA256(settings.secret_key, token) in hex, and the visible prefix so people can tell their
  tokens apart. A leaked database therefore reveals no usable token, and rotating DS_SECRET_KEY
  invalidates every token at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from datetime import timedelta
from typing import Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.clock import utcnow
from core.db.tables import ApiToken, User
from core.settings import get_settings

TOKEN_PREFIX = "ds"
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits

# argon2-cffi's defaults (RFC 9106 low-memory profile). Under DS_ENV=test the cheapest
# parameters are used instead, so the test suite does not spend minutes hashing.
_HASHERS = {
    "default": PasswordHasher(),
    "test": PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
}
_dummy_hashes: dict[str, str] = {}


def _hasher() -> PasswordHasher:
    return _HASHERS["test" if get_settings().env == "test" else "default"]


def _dummy_hash() -> str:
    """A hash verified against when the username is unknown, so both cases take the same time."""
    hasher = _hasher()
    key = "test" if hasher is _HASHERS["test"] else "default"
    if key not in _dummy_hashes:
        _dummy_hashes[key] = hasher.hash("not-a-real-password")
    return _dummy_hashes[key]


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    try:
        return _hasher().check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The user with this username and password, or None (in constant-ish time either way)."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        verify_password(_dummy_hash(), password)
        return None
    if not verify_password(user.password_hash, password):
        return None
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return user


def token_hash(token: str) -> str:
    key = get_settings().secret_key.encode()
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh token and its visible prefix."""
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(8))
    return f"{TOKEN_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}", prefix


def looks_like_token(token: str) -> bool:
    parts = token.split("_", 2)
    return (
        len(parts) == 3 and parts[0] == TOKEN_PREFIX and len(parts[1]) == 8 and len(parts[2]) >= 32
    )


class Account(Protocol):
    """Whom a token is for: a `User`, or the request's `backend.deps.UserRow`."""

    @property
    def id(self) -> int: ...


def create_api_token(
    session: Session,
    user: Account,
    team_id: int | None,
    name: str,
    read_only: bool = False,
    expires_in_days: int | None = None,
) -> tuple[ApiToken, str]:
    """Store a new token for `user` and return the row and the token (shown only this once).

    `team_id` scopes the token to one team (None: any team the user belongs to, chosen with the
    `X-Team-Id` header). `expires_in_days` defaults to settings.token_ttl_days; 0 means never.
    """
    days = get_settings().token_ttl_days if expires_in_days is None else expires_in_days
    token, prefix = new_token()
    row = ApiToken(
        user_id=user.id,
        team_id=team_id,
        name=name,
        prefix=prefix,
        token_hash=token_hash(token),
        read_only=read_only,
        created_at=utcnow(),
        expires_at=utcnow() + timedelta(days=days) if days > 0 else None,
    )
    session.add(row)
    session.flush()
    return row, token


def find_token(session: Session, token: str) -> ApiToken | None:
    """The stored token row for a presented token, or None when unknown (not checked for expiry)."""
    if not looks_like_token(token):
        return None
    digest = token_hash(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    return row
