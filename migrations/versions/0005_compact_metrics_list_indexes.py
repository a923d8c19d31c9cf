"""compact metrics, indexes that match the lists

Metrics: the primary key is (run_id, name, step); the surrogate id, the timestamp and the second
index go (on SQLite the table is stored in its key, WITHOUT ROWID). The rows are copied over.

Lists: every list of a team's things is ordered by id, newest first, so each is served by an
index on (team_id, id) (runs also by (team_id, status, id)); those replace the single-column
team_id indexes they start with, and the runs index on (team_id, created_at), which no query used.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 08:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# (table, old single-column index, its column, new index, its columns)
LIST_INDEXES = [
    ("models", "ix_models_team_id", "team_id", "ix_models_team_id_id", ["team_id", "id"]),
    ("datasets", "ix_datasets_team_id", "team_id", "ix_datasets_team_id_id", ["team_id", "id"]),
    ("webhooks", "ix_webhooks_team_id", "team_id", "ix_webhooks_team_id_id", ["team_id", "id"]),
    (
        "invitations",
        "ix_invitations_team_id",
        "team_id",
        "ix_invitations_team_id_id",
        ["team_id", "id"],
    ),
    ("artifacts", "ix_artifacts_run_id", "run_id", "ix_artifacts_run_id_id", ["run_id", "id"]),
    ("runs", "ix_runs_team_id", "team_id", "ix_runs_team_id_id", ["team_id", "id"]),
]
METRIC_COLUMNS = "run_id, name, step, epoch, value"


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _copy_metrics(columns: list, pk: sa.PrimaryKeyConstraint, select: str, **kw: bool) -> None:
    """Make `metrics` anew from `columns` with the rows of the old one (`select` reads them)."""
    op.create_table(
        "metrics_new",
        *columns,
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_metrics_new_run_id_runs", ondelete="CASCADE"
        ),
        pk,
        **kw,
    )
    names = ", ".join(c.name for c in columns if isinstance(c, sa.Column) and c.name != "id")
    op.execute(f"INSERT INTO metrics_new ({names}) {select}")
    op.drop_table("metrics")
    op.rename_table("metrics_new", "metrics")
    if _postgres():
        op.execute("ALTER TABLE metrics RENAME CONSTRAINT pk_metrics_new TO pk_metrics")
        op.execute(
            "ALTER TABLE metrics RENAME CONSTRAINT fk_metrics_new_run_id_runs "
            "TO fk_metrics_run_id_runs"
        )


def upgrade() -> None:
    _copy_metrics(
        [
            sa.Column("run_id", sa.Integer(), nullable=False),
            sa.Column("name", sa.String(length=100), nullable=False),
            sa.Column("step", sa.Integer(), autoincrement=False, nullable=False),
            sa.Column("epoch", sa.Integer(), nullable=False),
            sa.Column("value", sa.Float(), nullable=False),
        ],
        sa.PrimaryKeyConstraint("run_id", "name", "step", name="pk_metrics_new"),
        f"SELECT {METRIC_COLUMNS} FROM metrics",
        sqlite_with_rowid=False,
    )
    for table, old, _column, new, columns in LIST_INDEXES:
        op.drop_index(old, table_name=table)
        op.create_index(new, table, columns, unique=False)
    op.drop_index("ix_runs_team_created", table_name="runs")
    op.create_index("ix_runs_team_id_status_id", "runs", ["team_id", "status", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_runs_team_id_status_id", table_name="runs")
    op.create_index("ix_runs_team_created", "runs", ["team_id", "created_at"], unique=False)
    for table, old, column, new, _columns in reversed(LIST_INDEXES):
        op.drop_index(new, table_name=table)
        op.create_index(old, table, [column], unique=False)
    _copy_metrics(
        [
            sa.Column(
                "id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                autoincrement=True,
                nullable=False,
            ),
            sa.Column("run_id", sa.Integer(), nullable=False),
            sa.Column("name", sa.String(length=100), nullable=False),
            sa.Column("step", sa.Integer(), nullable=False),
            sa.Column("epoch", sa.Integer(), nullable=False),
            sa.Column("value", sa.Float(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.UniqueConstraint("run_id", "name", "step", name="uq_metrics_run_id"),
        ],
        sa.PrimaryKeyConstraint("id", name="pk_metrics_new"),
        f"SELECT {METRIC_COLUMNS}, CURRENT_TIMESTAMP FROM metrics ORDER BY run_id, step, name",
    )
