"""The first admin, the default team, and adding users (used by `distill-studio up` and the CLI).

Functions here flush but do not commit: call them inside `session_scope()`.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.security import create_api_token, hash_password, verify_password
from core.db.tables import Membership, Role, Team, User
from core.settings import get_settings

DEFAULT_TEAM = "default"
MIN_PASSWORD = 8


@dataclass
class AdminInfo:
    username: str
    password: str | None  # known only when it came from settings or credentials.json
    team_id: int
    token: str  # a new API token, named "cli"


def credentials_path() -> Path:
    return get_settings().data_dir / "credentials.json"


def _read_credentials() -> dict[str, str] | None:
    path = credentials_path()
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("password"), str) else None


def _write_credentials(username: str, password: str) -> None:
    """Write credentials.json readable by its owner only (0600), replacing it atomically."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"username": username, "password": password}, fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _admin_password(username: str) -> str:
    """DS_ADMIN_PASSWORD, else the generated one in credentials.json (made on first use)."""
    settings = get_settings()
    if settings.admin_password:
        return settings.admin_password
    saved = _read_credentials()
    if saved and saved.get("username", username) == username:
        return saved["password"]
    password = secrets.token_urlsafe(15)
    _write_credentials(username, password)
    return password


def get_or_create_team(session: Session, name: str) -> Team:
    team = session.scalar(select(Team).where(Team.name == name))
    if team is None:
        team = Team(name=name)
        session.add(team)
        session.flush()
    return team


def add_member(session: Session, user: User, team: Team, role: str) -> Membership:
    """Make `user` a member of `team` with `role` (updating the role if already a member)."""
    if role not in {r.value for r in Role}:
        raise ValueError(f"unknown role '{role}'; use one of: {', '.join(r.value for r in Role)}")
    membership = session.scalar(
        select(Membership).where(Membership.user_id == user.id, Membership.team_id == team.id)
    )
    if membership is None:
        membership = Membership(user_id=user.id, team_id=team.id, role=role)
        session.add(membership)
    else:
        membership.role = role
    session.flush()
    return membership


def ensure_admin(session: Session) -> AdminInfo:
    """Create the default team and the admin (its owner) when missing; return a new "cli" token."""
    settings = get_settings()
    username = settings.admin_username
    team = get_or_create_team(session, DEFAULT_TEAM)
    user = session.scalar(select(User).where(User.username == username))
    password: str | None
    if user is None:
        password = _admin_password(username)
        user = User(username=username, password_hash=hash_password(password), is_superuser=True)
        session.add(user)
        session.flush()
    else:
        candidate = settings.admin_password or (_read_credentials() or {}).get("password")
        password = (
            candidate if candidate and verify_password(user.password_hash, candidate) else None
        )
    member = session.scalar(
        select(Membership.id).where(Membership.user_id == user.id, Membership.team_id == team.id)
    )
    if member is None:
        add_member(session, user, team, Role.owner.value)
    _, token = create_api_token(session, user, None, "cli")
    return AdminInfo(username=username, password=password, team_id=team.id, token=token)


def create_user(
    session: Session,
    username: str,
    password: str,
    team_name: str = DEFAULT_TEAM,
    role: str = Role.member.value,
) -> User:
    """Create a user in team `team_name` (created if missing) with `role`.

    Raises ValueError with a readable message for an existing username, a short password or an
    unknown role.
    """
    username = username.strip()
    if not username or len(username) > 100:
        raise ValueError("username: give 1 to 100 characters")
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password: use at least {MIN_PASSWORD} characters")
    if role not in {r.value for r in Role}:
        raise ValueError(
            f"role: unknown role '{role}'; use one of: {', '.join(r.value for r in Role)}"
        )
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise ValueError(f"username: user '{username}' already exists")
    user = User(username=username, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    add_member(session, user, get_or_create_team(session, team_name), role)
    return user
