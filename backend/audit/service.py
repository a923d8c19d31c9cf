"""Recording and reading the audit log.

Services call `audit(...)` next to the change it describes, before their commit, so the entry
and the change are saved (or rolled back) together. Actions are `<resource>.<verb>`:
model.create, model.update, model.delete, model.archive, model.download, model.register,
dataset.*, run.create, run.cancel, artifact.download, member.add, member.update, member.remove,
team.create, user.create, token.create, token.revoke, webhook.create, webhook.delete,
invitation.create, invitation.accept, invitation.decline, invitation.withdraw, auth.throttle.

An action that concerns several teams (a token that reaches all of its user's teams, a throttled
sign-in of an account in several teams) is recorded in each of them (`audit_teams`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.deps import Principal
from backend.teams.service import page
from core.clock import utcnow
from core.db.tables import AuditEntry


def audit(
    session: Session,
    principal: Principal,
    action: str,
    resource_type: str,
    resource_id: int | str | None,
    detail: dict[str, Any] | None = None,
    *,
    team_id: int | None = None,
) -> AuditEntry:
    """Add an audit entry to the session (the caller commits it with the change it records)."""
    entry = AuditEntry(
        team_id=principal.team_id if team_id is None else team_id,
        user_id=principal.user.id,
        username=principal.user.username,
        action=action,
        resource_type=resource_type,
        resource_id=None if resource_id is None else str(resource_id),
        detail=detail or {},
        created_at=utcnow(),
    )
    session.add(entry)
    return entry


def audit_teams(
    session: Session,
    team_ids: list[int],
    action: str,
    resource_type: str,
    resource_id: int | str | None,
    detail: dict[str, Any] | None = None,
    *,
    user_id: int | None,
    username: str,
) -> list[AuditEntry]:
    """The same entry in each team of `team_ids` (for actions not made in one team's name)."""
    entries = []
    for team_id in dict.fromkeys(team_ids):
        entry = AuditEntry(
            team_id=team_id,
            user_id=user_id,
            username=username,
            action=action,
            resource_type=resource_type,
            resource_id=None if resource_id is None else str(resource_id),
            detail=dict(detail or {}),
            created_at=utcnow(),
        )
        session.add(entry)
        entries.append(entry)
    return entries


def list_entries(
    session: Session,
    team_id: int,
    *,
    limit: int,
    cursor: str | None,
    action: str | None,
    resource_type: str | None,
    resource_id: str | None,
    user_id: int | None,
) -> tuple[list[AuditEntry], str | None]:
    stmt = select(AuditEntry).where(AuditEntry.team_id == team_id)
    if action:
        # "model" matches every model.* action; "model.delete" only that one
        stmt = stmt.where(
            AuditEntry.action == action
            if "." in action
            else AuditEntry.action.startswith(f"{action}.", autoescape=True)
        )
    if resource_type:
        stmt = stmt.where(AuditEntry.resource_type == resource_type)
    if resource_id:
        stmt = stmt.where(AuditEntry.resource_id == resource_id)
    if user_id is not None:
        stmt = stmt.where(AuditEntry.user_id == user_id)
    return page(session, stmt, AuditEntry, limit, cursor)
