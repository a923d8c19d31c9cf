"""Alembic makes the schema on SQLite and PostgreSQL alike, round-trips, and matches the tables."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import core.db.tables  # noqa: F401
from backend.migrate import downgrade, upgrade
from core.db import Base, get_engine


def _diff() -> list:
    with get_engine().connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, Base.metadata)


def test_upgrade_downgrade_upgrade_and_no_autogenerate_diff(studio_env) -> None:
    # studio_env already upgraded to head
    tables = set(inspect(get_engine()).get_table_names())
    assert {
        "teams",
        "users",
        "api_tokens",
        "models",
        "datasets",
        "runs",
        "metrics",
        "artifacts",
    } <= tables
    downgrade("base")
    assert set(inspect(get_engine()).get_table_names()) <= {"alembic_version"}
    upgrade("head")
    assert _diff() == []
