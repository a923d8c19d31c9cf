"""metric rollups: the M4 summary of each series per bucket of 64 to 16384 steps

The worker keeps them as it writes points; this fills them for the points already stored, in
SQL (one pass per width: the rows of each bucket numbered by value both ways).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

WIDTHS = (64, 256, 1024, 4096, 16384)  # core.db.tables.ROLLUP_WIDTHS when this was written

# As worker/reporting.py ROLLUP_FILL (there for a run from a step; here for every run).
FILL = """
    INSERT INTO metric_rollups (run_id, name, width, bucket, n,
        first_step, first_epoch, first_value, last_step, last_epoch, last_value,
        min_step, min_epoch, min_value, max_step, max_epoch, max_value)
    SELECT run_id, name, {width}, bucket, COUNT(*),
        MIN(CASE WHEN o_first = 1 THEN step END), MIN(CASE WHEN o_first = 1 THEN epoch END),
        MIN(CASE WHEN o_first = 1 THEN value END),
        MIN(CASE WHEN o_last = 1 THEN step END), MIN(CASE WHEN o_last = 1 THEN epoch END),
        MIN(CASE WHEN o_last = 1 THEN value END),
        MIN(CASE WHEN o_min = 1 THEN step END), MIN(CASE WHEN o_min = 1 THEN epoch END),
        MIN(CASE WHEN o_min = 1 THEN value END),
        MIN(CASE WHEN o_max = 1 THEN step END), MIN(CASE WHEN o_max = 1 THEN epoch END),
        MIN(CASE WHEN o_max = 1 THEN value END)
    FROM (
        SELECT run_id, name, step, epoch, value, step / {width} AS bucket,
            ROW_NUMBER() OVER (PARTITION BY run_id, name, step / {width} ORDER BY step) AS o_first,
            ROW_NUMBER() OVER (
                PARTITION BY run_id, name, step / {width} ORDER BY step DESC) AS o_last,
            ROW_NUMBER() OVER (
                PARTITION BY run_id, name, step / {width} ORDER BY value, step) AS o_min,
            ROW_NUMBER() OVER (
                PARTITION BY run_id, name, step / {width} ORDER BY value DESC, step) AS o_max
        FROM metrics
    ) AS points
    GROUP BY run_id, name, bucket
"""


def upgrade() -> None:
    op.create_table(
        "metric_rollups",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("width", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("bucket", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("first_step", sa.Integer(), nullable=False),
        sa.Column("first_epoch", sa.Integer(), nullable=False),
        sa.Column("first_value", sa.Float(), nullable=False),
        sa.Column("last_step", sa.Integer(), nullable=False),
        sa.Column("last_epoch", sa.Integer(), nullable=False),
        sa.Column("last_value", sa.Float(), nullable=False),
        sa.Column("min_step", sa.Integer(), nullable=False),
        sa.Column("min_epoch", sa.Integer(), nullable=False),
        sa.Column("min_value", sa.Float(), nullable=False),
        sa.Column("max_step", sa.Integer(), nullable=False),
        sa.Column("max_epoch", sa.Integer(), nullable=False),
        sa.Column("max_value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_metric_rollups_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "name", "width", "bucket", name="pk_metric_rollups"),
        sqlite_with_rowid=False,
    )
    for width in WIDTHS:
        op.execute(FILL.format(width=width))


def downgrade() -> None:
    op.drop_table("metric_rollups")
