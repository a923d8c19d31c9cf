"""Team-scoped access: every query of a team-owned table goes through these helpers.

`get_owned` answers 404 for ids of other teams exactly as for ids that do not exist, so a tenant
never learns which ids others use. `page` does keyset pagination, newest (highest id) first, with
an opaque cursor.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, TypeVar

from sqlalchemy import Select, String, cast, select
from sqlalchemy.orm import Session

from backend.errors import Invalid, NotFound
from core.db.tables import (
    Artifact,
    AuditEntry,
    Comparison,
    Dataset,
    Membership,
    Model,
    Run,
    Team,
    Webhook,
    WebhookDelivery,
)

Owned = TypeVar("Owned", Model, Dataset, Run, Artifact, Webhook, Comparison)
Paged = TypeVar("Paged", Model, Dataset, Run, Artifact, Webhook, AuditEntry, WebhookDelivery)

LABELS: dict[type, str] = {
    Model: "model",
    Dataset: "dataset",
    Run: "run",
    Artifact: "artifact",
    Webhook: "webhook",
}
MAX_LIMIT = 200
LAST_ID = 2**31 - 1  # the largest id a table can hold: its key is an `Integer` (int4)


def label(table: type) -> str:
    return LABELS.get(table, table.__name__.lower())


def get_owned(session: Session, table: type[Owned], id_: int, team_id: int) -> Owned:
    """The row `id_` of `table` if it belongs to `team_id`; else 404 "model 7 not found"."""
    row = session.get(table, id_)  # by primary key: the session's cached statement
    if row is None or row.team_id != team_id:
        raise NotFound(f"{label(table)} {id_} not found")
    return row


def scoped(table: type[Owned], team_id: int) -> Select[tuple[Owned]]:
    return select(table).where(table.team_id == team_id)


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, value = raw.split(":", 1)
        if version != "v1":
            raise ValueError(version)
        last_id = int(value)
        if not 0 < last_id <= LAST_ID:
            raise ValueError(value)
        return last_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Invalid(
            "cursor",
            "not a cursor from this API; pass the next_cursor of the previous page",
            loc=["query", "cursor"],
        ) from None


def page(
    session: Session, stmt: Select[Any], table: type[Paged], limit: int, cursor: str | None
) -> tuple[list[Paged], str | None]:
    """Rows of `stmt` newest first, at most `limit`, after `cursor`; and the next cursor."""
    limit = max(1, min(limit, MAX_LIMIT))
    # Always an upper bound on the id, on the first page too (every id is at most LAST_ID): with
    # it PostgreSQL takes the order from the (team_id, id) index, where without statistics (a
    # fresh or restored database) it would read the team's rows by another index and sort them
    # all (tests/integration/test_indexes.py). No `SET LOCAL`, so no transaction is needed.
    stmt = stmt.where(table.id < decode_cursor(cursor) if cursor else table.id <= LAST_ID)
    rows = list(session.scalars(stmt.order_by(table.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].id) if more and rows else None


def user_teams(session: Session, user_id: int) -> list[tuple[Team, str]]:
    """The user's teams with the user's role in each, in the order they joined."""
    rows = session.execute(
        select(Team, Membership.role)
        .join(Membership, Membership.team_id == Team.id)
        .where(Membership.user_id == user_id)
        .order_by(Membership.id)
    )
    return [(team, role) for team, role in rows]


def with_tags(stmt: Select[Any], column: Any, tags: list[str] | None) -> Select[Any]:
    """Only rows whose JSON list `column` holds every tag of `tags`.

    Tags are restricted to `teams.schemas.TAG_PATTERN` (no quotes, backslashes or non-ASCII), so
    `"tag"` occurs in the stored JSON text exactly when the list holds that tag, on SQLite and
    PostgreSQL alike.
    """
    for tag in tags or []:
        stmt = stmt.where(cast(column, String).contains(json.dumps(tag), autoescape=True))
    return stmt
