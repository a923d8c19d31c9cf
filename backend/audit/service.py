"""Recording and reading the audit log.

Services call `audit(...)` next to the change it describes, before their commit, so the entry
and the change are saved (or rolled back) together. Actions are `<resource>.<verb>`:
model.create, model.update, model.delete, model.archive, model.download, model.register,
dataset.*, run.create, run.cancel, artifact.download, member.add, member.update, member.remove,
team.create, user.create, token.create, token.revoke, webhook.create, webhook.delete,
invitation.create, invitation.accept, invitation.decline, invitation.withdraw, auth.throttle.

An action that concerns several teams (a token that reaches all of its user's teams, a throttled
sign-in of an account in several teams) is recorded in each of them (`audit_teams`).

The most frequent writes save their entry in the same statement on PostgreSQL: a new run
(`add_audited`), a queued run's cancel (`change_audited`).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Select,
    String,
    Table,
    Update,
    bindparam,
    cast,
    insert,
    select,
    true,
)
from sqlalchemy import inspect as orm_mapper
from sqlalchemy.orm import Session

from backend.deps import Principal
from backend.teams.service import page
from core.clock import utcnow
from core.db import Base
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
        **_said(principal, action, resource_type, detail, team_id),
        resource_id=None if resource_id is None else str(resource_id),
    )
    session.add(entry)
    return entry


def _said(
    principal: Principal,
    action: str,
    resource_type: str,
    detail: dict[str, Any] | None,
    team_id: int | None = None,
) -> dict[str, Any]:
    """An entry's columns but its resource id."""
    return {
        "team_id": principal.team_id if team_id is None else team_id,
        "user_id": principal.user.id,
        "username": principal.user.username,
        "action": action,
        "resource_type": resource_type,
        "detail": detail or {},
        "created_at": utcnow(),
    }


def add_audited(
    session: Session,
    principal: Principal,
    row: Base,
    action: str,
    resource_type: str,
    detail: dict[str, Any],
) -> int:
    """Save the new `row` (id and defaults filled in) and an audit entry for it, with the row's
    id as the resource id, and commit both; returns the entry's id.

    On PostgreSQL this is one statement: the row's INSERT feeds the entry's INSERT (both in a
    WITH, atomic on their own), so on an autocommit session (`backend.deps.write_as`) there is
    no BEGIN or COMMIT either: one round trip where the ORM takes four. `row` stays outside the
    session there. Elsewhere (SQLite, in-process: no round trips) the ORM adds and flushes it."""
    if session.get_bind().dialect.name != "postgresql":
        session.add(row)
        session.flush()
        entry = audit(session, principal, action, resource_type, row.id, detail)  # type: ignore[attr-defined]
        session.commit()
        return entry.id
    table, attributes = _mapped(type(row))
    given: dict[str, Any] = {}
    for column, attribute in zip(table.columns, attributes, strict=True):
        default = column.default
        if attribute in vars(row):
            given[column.key] = getattr(row, attribute)
        elif default is not None and not default.is_sequence:  # an INSERT in a WITH does not
            # apply the columns' Python defaults (SQLAlchemy computes those before the statement)
            given[column.key] = default.arg(None) if default.is_callable else default.arg  # type: ignore[attr-defined]
    said = _said(principal, action, resource_type, detail)
    params = {f"row_{key}": value for key, value in given.items()}
    params.update((f"entry_{key}", value) for key, value in said.items())
    statement = _insert_audited(table, tuple(given), tuple(said))
    saved = session.connection().execute(statement, params).one()
    session.commit()  # nothing to send on an autocommit session
    for column, attribute in zip(table.columns, attributes, strict=True):
        setattr(row, attribute, saved._mapping[column.name])
    return int(saved.audit_entry_id)


@cache
def _mapped(cls: type[Base]) -> tuple[Table, tuple[str, ...]]:
    """The table of `cls` and, column by column, the attribute that maps it."""
    mapper = orm_mapper(cls)
    table = mapper.local_table
    assert isinstance(table, Table)
    return table, tuple(mapper.get_property_by_column(c).key for c in table.columns)


@cache
def _insert_audited(table: Table, keys: tuple[str, ...], said: tuple[str, ...]) -> Select[Any]:
    """`add_audited`'s statement for a row of `table` with the columns `keys`: built once (each
    build costs more CPU than the round trips it saves), its values bound by name."""
    new = (
        insert(table)
        .values({key: bindparam(f"row_{key}", type_=table.c[key].type) for key in keys})
        .returning(*table.columns)
        .cte("new_row")
    )
    logged = _entry_of(new, said)
    return select(new, logged.c.id.label("audit_entry_id")).join_from(new, logged, true())


def change_audited(
    session: Session,
    principal: Principal,
    change: Update,
    params: dict[str, Any],
    action: str,
    resource_type: str,
    resource_id: int,
    detail: dict[str, Any],
) -> bool:
    """Run `change` (an UPDATE of at most the row `resource_id`, built once, its values bound by
    name in `params`) and, when it changed the row, add an audit entry for it: whether it did.
    The caller commits.

    On PostgreSQL in one statement, atomic on its own: the entry's INSERT reads the UPDATE's
    RETURNING (no row changed: no entry); on an autocommit session the pair needs no
    transaction. Elsewhere the UPDATE, then the entry in the session."""
    if session.get_bind().dialect.name != "postgresql":
        changed = session.execute(change, params).rowcount == 1  # type: ignore[attr-defined]
        if changed:
            audit(session, principal, action, resource_type, resource_id, detail)
        return changed
    said = _said(principal, action, resource_type, detail)
    params = {**params, **{f"entry_{key}": value for key, value in said.items()}}
    statement = _change_audited(change, tuple(said))
    return session.connection().execute(statement, params).first() is not None


@cache
def _change_audited(change: Update, said: tuple[str, ...]) -> Select[Any]:
    """`change_audited`'s statement for `change`, built once."""
    table = change.table
    assert isinstance(table, Table)
    changed = change.returning(table.c.id).cte("changed")
    return select(_entry_of(changed, said).c.id)


def _entry_of(rows: CTE, said: tuple[str, ...], detail: ColumnElement[Any] | None = None) -> CTE:
    """The INSERT of an audit entry for each row of `rows` (its `id` as the resource id), the
    other columns `said` bound by name (`entry_<column>`), in a WITH: the ids of the entries.
    `detail`: the entry's detail written by the statement (from the row), not bound."""
    columns = AuditEntry.__table__.c
    bound = [key for key in said if detail is None or key != "detail"]
    written = [bindparam(f"entry_{key}", type_=columns[key].type) for key in bound]
    return (
        insert(AuditEntry)
        .from_select(
            [*bound, *(["detail"] if detail is not None else []), "resource_id"],
            select(*written, *([detail] if detail is not None else []), cast(rows.c.id, String)),
        )
        .returning(AuditEntry.id)
        .cte("logged")
    )


# the columns of an entry that `_said` fills in
_SAID = ("team_id", "user_id", "username", "action", "resource_type", "detail", "created_at")


def audited_change(change: CTE, detail: ColumnElement[Any]) -> Select[Any]:
    """A statement of the rows that `change` (an UPDATE ... RETURNING in a WITH) returns, each
    with an audit entry saved by the same statement (atomic on its own: no row changed, no
    entry), whose detail the statement writes from the row (`detail`) and whose other columns
    are bound (`entry_params`). PostgreSQL; built once by the caller."""
    return select(change).join_from(change, _entry_of(change, _SAID, detail), true())


def entry_params(principal: Principal, action: str, resource_type: str) -> dict[str, Any]:
    """The bound columns of an `audited_change` entry."""
    said = _said(principal, action, resource_type, None)
    return {f"entry_{key}": said[key] for key in _SAID if key != "detail"}


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
