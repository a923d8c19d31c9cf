"""metric rollups of 16 steps: the M4 summary of each series per bucket of 16 steps

A chart of a 10,000-point series (`max_points=1000`: 250 buckets of 40 steps) has buckets
narrower than the narrowest rollup of 0006 (64 steps), so it took M4 over the points (15-21 ms);
with rollups of 16 steps it merges 625 rollup rows instead. The worker keeps them as it writes
points (`core.db.tables.ROLLUP_WIDTHS` starts at 16); this fills them for the points already
stored, in SQL (one pass: the rows of each bucket numbered by value both ways, as 0006 did).
The wider rollups are unchanged: each is still exact (it was filled from the points or from the
64-step rollups, which the 16-step ones do not replace).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 03:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

WIDTH = 16  # core.db.tables.ROLLUP_WIDTHS[0] when this was written

# As worker/reporting.py ROLLUP_FILL (there for a run from a bucket on; here for every run).
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


def upgrade() -> None:
    op.execute(f"DELETE FROM metric_rollups WHERE width = {WIDTH}")  # none, unless written early
    op.execute(FILL.format(width=WIDTH))


def downgrade() -> None:
    op.execute(f"DELETE FROM metric_rollups WHERE width = {WIDTH}")
