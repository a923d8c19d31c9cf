"""A series' points as chunks of the JSON they are served as (`metric_chunks`), kept by the
writer of the points so that a read of a whole series fetches a few rows, not one per point.

Each flush appends its points to the last chunk of each series (one `UPDATE ... SET x = x || :more`
while it has room for `CHUNK_POINTS`, new chunks after), in the flush's transaction, so the
chunks and the points never disagree. The points stay the truth: a resume that drops points
rebuilds the chunks from the first one that held a dropped point, and a flush whose points come
before a series' last chunk's end (never, as the trainer reports steps) rebuilds that series.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import groupby
from operator import itemgetter
from typing import Any

from pydantic_core import to_json
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from core.db.tables import CHUNK_POINTS, Metric, MetricChunk

Point = tuple[int, int, float]  # (step, epoch, value) of one series, in step order


def items(values: Sequence[Any]) -> str:
    """The items of the JSON array of `values`, without its brackets: what the API sends (a
    float as the shortest text that reads back as the same double, NaN and infinities null)."""
    return to_json(list(values), inf_nan_mode="null")[1:-1].decode()


def _chunk_row(run_id: int, name: str, chunk: int, points: Sequence[Point]) -> dict[str, Any]:
    steps, epochs, values = zip(*points, strict=True)
    return {
        "run_id": run_id,
        "name": name,
        "chunk": chunk,
        "n": len(points),
        "first_step": steps[0],
        "last_step": steps[-1],
        "steps_json": items(steps),
        "epochs_json": items(epochs),
        "values_json": items(values),
    }


_LAST_CHUNK = (
    select(MetricChunk.chunk, MetricChunk.n, MetricChunk.last_step)
    .where(MetricChunk.run_id == bindparam("run"), MetricChunk.name == bindparam("name"))
    .order_by(MetricChunk.chunk.desc())
    .limit(1)
)
_APPEND = (
    update(MetricChunk)
    .where(
        MetricChunk.run_id == bindparam("run"),
        MetricChunk.name == bindparam("series"),
        MetricChunk.chunk == bindparam("at"),
    )
    .values(
        n=MetricChunk.n + bindparam("more_n"),
        last_step=bindparam("more_last"),
        steps_json=MetricChunk.steps_json + bindparam("more_steps"),
        epochs_json=MetricChunk.epochs_json + bindparam("more_epochs"),
        values_json=MetricChunk.values_json + bindparam("more_values"),
    )
)


def _append(session: Session, run_id: int, name: str, points: Sequence[Point], last: Any) -> None:
    """Append `points` (after every stored one of the series) to its chunks; `last` is its last
    chunk's row of `_LAST_CHUNK` (None: it has none)."""
    chunk, room = (-1, 0) if last is None else (last.chunk, CHUNK_POINTS - last.n)
    head, rest = points[:room], points[room:]
    if head:
        more = _chunk_row(run_id, name, chunk, head)
        session.execute(
            _APPEND,
            {
                "run": run_id,
                "series": name,
                "at": chunk,
                "more_n": more["n"],
                "more_last": more["last_step"],
                "more_steps": "," + more["steps_json"],
                "more_epochs": "," + more["epochs_json"],
                "more_values": "," + more["values_json"],
            },
        )
    rows = [
        _chunk_row(run_id, name, chunk + 1 + i, rest[start : start + CHUNK_POINTS])
        for i, start in enumerate(range(0, len(rest), CHUNK_POINTS))
    ]
    if rows:
        session.execute(insert(MetricChunk), rows)


def write_chunks(session: Session, run_id: int, points: Iterable[dict[str, Any]]) -> None:
    """Add the flush's `points` (new to the table, one per series and step) to the chunks."""
    ordered = sorted(points, key=itemgetter("name", "step"))
    for name, group in groupby(ordered, itemgetter("name")):
        series = [(p["step"], p.get("epoch", 0), p["value"]) for p in group]
        last = session.execute(_LAST_CHUNK, {"run": run_id, "name": name}).first()
        if last is not None and series[0][0] <= last.last_step:  # not after: rebuild
            _rebuild_series(session, run_id, name, series[0][0] - 1)
        else:
            _append(session, run_id, name, series, last)


def _rebuild_series(session: Session, run_id: int, name: str, after_step: int) -> None:
    """Make the series' chunks anew from the first that holds a step after `after_step`."""
    in_series = (MetricChunk.run_id == run_id, MetricChunk.name == name)
    first = session.scalar(
        select(func.min(MetricChunk.chunk)).where(*in_series, MetricChunk.last_step > after_step)
    )
    if first is None:
        return
    session.execute(delete(MetricChunk).where(*in_series, MetricChunk.chunk >= first))
    kept_last = session.scalar(select(func.max(MetricChunk.last_step)).where(*in_series))
    points = select(Metric.step, Metric.epoch, Metric.value).where(
        Metric.run_id == run_id, Metric.name == name
    )
    if kept_last is not None:
        points = points.where(Metric.step > kept_last)
    rows: list[Point] = [(r[0], r[1], r[2]) for r in session.execute(points.order_by(Metric.step))]
    if rows:
        last = session.execute(_LAST_CHUNK, {"run": run_id, "name": name}).first()
        _append(session, run_id, name, rows, last)


def rebuild_chunks(session: Session, run_id: int, after_step: int) -> None:
    """After a resume dropped the run's points past `after_step`: the chunks that held any of
    them are made anew from the points that are left (a series without chunks stays so)."""
    names = session.scalars(
        select(MetricChunk.name)
        .where(MetricChunk.run_id == run_id, MetricChunk.last_step > after_step)
        .distinct()
    ).all()
    for name in names:
        _rebuild_series(session, run_id, name, after_step)


def build_chunks(session: Session, run_id: int) -> None:
    """The run's chunks made anew from all its points (for points written without them)."""
    session.execute(delete(MetricChunk).where(MetricChunk.run_id == run_id))
    rows = session.execute(
        select(Metric.name, Metric.step, Metric.epoch, Metric.value)
        .where(Metric.run_id == run_id)
        .order_by(Metric.name, Metric.step)
    )
    for name, group in groupby(rows, itemgetter(0)):
        _append(session, run_id, name, [(r[1], r[2], r[3]) for r in group], None)
