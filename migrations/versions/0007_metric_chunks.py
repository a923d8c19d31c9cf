"""metric chunks: each series' points as chunks of the JSON the API serves (1,024 points a row)

The worker appends to them as it writes points; this fills them for the points already stored,
series by series in step order (the floats are written by Python: the shortest text that reads
back as the same double, which neither database's own float text is on both).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 22:00:00
"""

from __future__ import annotations

from itertools import groupby
from typing import Any

import sqlalchemy as sa
from alembic import op
from pydantic_core import to_json

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

CHUNK_POINTS = 1024  # core.db.tables.CHUNK_POINTS when this was written


def _items(values: tuple[Any, ...]) -> str:
    return to_json(list(values), inf_nan_mode="null")[1:-1].decode()


def _chunks(rows: list[Any]) -> list[dict[str, Any]]:
    """Chunk rows of the points `rows` ((run_id, name, step, epoch, value), ordered so)."""
    out = []
    for (run_id, name), group in groupby(rows, key=lambda r: (r[0], r[1])):
        series = list(group)
        for chunk, start in enumerate(range(0, len(series), CHUNK_POINTS)):
            _, _, steps, epochs, values = zip(*series[start : start + CHUNK_POINTS], strict=True)
            out.append(
                {
                    "run_id": run_id,
                    "name": name,
                    "chunk": chunk,
                    "n": len(steps),
                    "first_step": steps[0],
                    "last_step": steps[-1],
                    "steps_json": _items(steps),
                    "epochs_json": _items(epochs),
                    "values_json": _items(values),
                }
            )
    return out


def upgrade() -> None:
    chunks = op.create_table(
        "metric_chunks",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("chunk", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("first_step", sa.Integer(), nullable=False),
        sa.Column("last_step", sa.Integer(), nullable=False),
        sa.Column("steps_json", sa.Text(), nullable=False),
        sa.Column("epochs_json", sa.Text(), nullable=False),
        sa.Column("values_json", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_metric_chunks_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "name", "chunk", name="pk_metric_chunks"),
        sqlite_with_rowid=False,
    )
    bind = op.get_bind()
    runs = bind.execute(sa.text("SELECT DISTINCT run_id FROM metrics ORDER BY run_id")).all()
    for (run_id,) in runs:  # a run at a time: memory bounded by the longest run
        rows = bind.execute(
            sa.text(
                "SELECT run_id, name, step, epoch, value FROM metrics WHERE run_id = :run "
                "ORDER BY name, step"
            ),
            {"run": run_id},
        ).all()
        filled = _chunks(rows)
        for start in range(0, len(filled), 500):
            bind.execute(sa.insert(chunks), filled[start : start + 500])


def downgrade() -> None:
    op.drop_table("metric_chunks")
