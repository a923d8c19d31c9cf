"""metric rollups of 32, 128, 512, 2048 and 8192 steps: each width half the next

A read's buckets take the widest rollup not above their even width, so with widths a 4th of the
next a bucket held 1 to 4 rows of that width: a chart of a 10,000-point series
(`max_points=1000`: buckets of 40 steps) merged 625 rows of width 16, and fetching them cost
twice merging them. With each width half the next a bucket holds 1 to 2 rows (313 of width 32
there). The worker keeps them as it writes points (`core.db.tables.ROLLUP_WIDTHS`); this fills
them for the points already stored, each from the rollups of half its width (exact: M4 of two
buckets is M4 of their four ends), as 0006 widened its widths.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 04:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

WIDTHS = (32, 128, 512, 2048, 8192)  # each widened from half of it (0006 and 0008 filled those)

# As worker/reporting.py ROLLUP_WIDEN with a ratio of 2 (there for a run from a bucket on; here
# for every run).
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
        SELECT run_id, name, n, bucket / 2 AS wide,
            first_step, first_epoch, first_value, last_step, last_epoch, last_value,
            min_step, min_epoch, min_value, max_step, max_epoch, max_value,
            CASE WHEN first_step = MIN(first_step) OVER w THEN 1 END AS o_first,
            CASE WHEN last_step = MAX(last_step) OVER w THEN 1 END AS o_last,
            ROW_NUMBER() OVER (
                PARTITION BY run_id, name, bucket / 2 ORDER BY min_value, min_step
            ) AS o_min,
            ROW_NUMBER() OVER (
                PARTITION BY run_id, name, bucket / 2 ORDER BY max_value DESC, max_step
            ) AS o_max
        FROM metric_rollups
        WHERE width = {finer}
        WINDOW w AS (PARTITION BY run_id, name, bucket / 2)
    ) AS finer
    GROUP BY run_id, name, wide
"""


def _delete() -> None:
    op.execute(f"DELETE FROM metric_rollups WHERE width IN {WIDTHS}")


def upgrade() -> None:
    _delete()  # none, unless written by a worker before this ran
    for width in WIDTHS:
        op.execute(WIDEN.format(width=width, finer=width // 2))


def downgrade() -> None:
    _delete()
