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

# As worker/reporting.py ROLLUP_FILL and ROLLUP_WIDEN (there for a run from a bucket on; here
# for every run): the narrowest rollups from the points, each wider one from the one before.
FILL = """
    INSERT INTO metric_rollups (run_id, name, width, bucket, n,
        first_step, first_epoch, first_value, last_step, last_epoch, last_value,
        min_step, min_epoch, min_value, max_step, max_epoch, max_value)
    SELECT run_id, name, {width}, bucket, COUNT(*),
        MIN(CASE WHEN o_first = 1 THEN first_step END),
        MIN(CASE WHEN o_first = 1 THEN first_epoch END),
        MIN(CASE WHEN o_first = 1 THEN first_value END),
        MIN(CASE WHEN o_last = 1 THEN last_step END),
        MIN(CASE WHEN o_last = 1 THEN last_epoch END),
        MIN(CASE WHEN o_last = 1 THEN last_value END),
        MIN(CASE WHEN o_min = 1 THEN min_step END),
        MIN(CASE WHEN o_min = 1 THEN min_epoch END),
        MIN(CASE WHEN o_min = 1 THEN min_value END),
        MIN(CASE WHEN o_max = 1 THEN max_step END),
        MIN(CASE WHEN o_max = 1 THEN max_epoch END),
        MIN(CASE WHEN o_max = 1 THEN max_value END)
    FROM (
        SELECT run_id, name, step / {width} AS bucket,
            step AS first_step, epoch AS first_epoch, value AS first_value,
            step AS last_step, epoch AS last_epoch, value AS last_value,
            step AS min_step, epoch AS min_epoch, value AS min_value,
            step AS max_step, epoch AS max_epoch, value AS max_value,
            CASE WHEN step = MIN(step) OVER w THEN 1 END AS o_first,
            CASE WHEN step = MAX(step) OVER w THEN 1 END AS o_last,
            ROW_NUMBER() OVER (
                PARTITION BY run_id, name, step / {width} ORDER BY value, step) AS o_min,
            ROW_NUMBER() OVER (
                PARTITION BY run_id, name, step / {width} ORDER BY value DESC, step) AS o_max
        FROM metrics
        WINDOW w AS (PARTITION BY run_id, name, step / {width})
    ) AS points
    GROUP BY run_id, name, bucket
"""
WIDEN = """
    INSERT INTO metric_rollups (run_id, name, width, bucket, n,
        first_step, first_epoch, first_value, last_step, last_epoch, last_value,
        min_step, min_epoch, min_value, max_step, max_epoch, max_value)
    SELECT run_id, name, {width}, wide, SUM(n),
        MIN(CASE WHEN o_first = 1 THEN first_step END),
        MIN(CASE WHEN o_first = 1 THEN first_epoch END),
        MIN(CASE WHEN o_first = 1 THEN first_value END),
        MIN(CASE WHEN o_last = 1 THEN last_step END),
        MIN(CASE WHEN o_last = 1 THEN last_epoch END),
        MIN(CASE WHEN o_last = 1 THEN last_value END),
        MIN(CASE WHEN o_min = 1 THEN min_step END),
        MIN(CASE WHEN o_min = 1 THEN min_epoch END),
        MIN(CASE WHEN o_min = 1 THEN min_value END),
        MIN(CASE WHEN o_max = 1 THEN max_step END),
        MIN(CASE WHEN o_max = 1 THEN max_epoch END),
        MIN(CASE WHEN o_max = 1 THEN max_value END)
    FROM (
        SELECT run_id, name, n, bucket / {ratio} AS wide,
            first_step, first_epoch, first_value, last_step, last_epoch, last_value,
            min_step, min_epoch, min_value, max_step, max_epoch, max_value,
            CASE WHEN first_step = MIN(first_step) OVER w THEN 1 END AS o_first,
            CASE WHEN last_step = MAX(last_step) OVER w THEN 1 END AS o_last,
            ROW_NUMBER() OVER (
                PARTITION BY run_id, name, bucket / {ratio} ORDER BY min_value, min_step
            ) AS o_min,
            ROW_NUMBER() OVER (
                PARTITION BY run_id, name, bucket / {ratio} ORDER BY max_value DESC, max_step
            ) AS o_max
        FROM metric_rollups
        WHERE width = {finer}
        WINDOW w AS (PARTITION BY run_id, name, bucket / {ratio})
    ) AS finer
    GROUP BY run_id, name, wide
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
    op.execute(FILL.format(width=WIDTHS[0]))
    for finer, width in zip(WIDTHS, WIDTHS[1:], strict=False):
        op.execute(WIDEN.format(width=width, ratio=width // finer, finer=finer))


def downgrade() -> None:
    op.drop_table("metric_rollups")
