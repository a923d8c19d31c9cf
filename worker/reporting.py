"""Training callbacks that report to the database and the artifact store.

Metrics are buffered and written in batches (every `DS_METRICS_FLUSH_S` seconds, at each epoch
end and before each checkpoint), never one commit per step. The run row's progress, ETA and
heartbeat are updated with each flush; the cancel flag is read at most once a second.
Each flush also merges its points into the series' rollups (`metric_rollups`: the first, last,
lowest and highest point per bucket of 64, 1024 and 16384 steps), in the same transaction, so
downsampled reads of long series need not read every point; a resume rebuilds the buckets its
dropped points were in.
Database writes are retried with backoff, so a database that is briefly away does not kill a run.

After each flush the new metric points and the progress are published on the run's channel of
the broker (`core.events`), and `announce()` publishes a run's status after each transition, so
`GET /runs/{id}/events` streams them within moments; a broker that is away only delays clients
(they read the database again), never the run.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import case, delete, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core import events
from core.db import session_scope, with_db_retry
from core.db.tables import ROLLUP_WIDTHS, Metric, MetricRollup, Run
from core.settings import get_settings
from core.storage import get_store

if TYPE_CHECKING:
    from worker.engine.trainer import StepReport

log = logging.getLogger(__name__)


class LostClaim(RuntimeError):
    """Another worker took this run over (ours was presumed dead); stop without writing."""


class DbReporter:
    """The engine's `Callbacks` protocol, writing to the database (no torch import here)."""

    def __init__(self, run_id: int, checkpoint_key: str, worker: str) -> None:
        self.run_id = run_id
        self.worker = worker
        self.checkpoint_key = checkpoint_key
        self.flush_every = get_settings().metrics_flush_s
        self.rows: list[dict] = []
        self.progress: dict = {}
        self.last_flush = 0.0  # the first step is written at once: the run shows it trains
        self.last_cancel_check = 0.0
        self.cancelled = False

    # -- engine callbacks -------------------------------------------------------------------
    def on_start(self, total_steps: int, start_step: int) -> None:
        """Resuming from a checkpoint at `start_step`: drop metrics written after it."""
        if start_step:
            log.warning("run %s resumes from its checkpoint at step %d", self.run_id, start_step)

        def write() -> None:
            with session_scope() as s:
                s.execute(
                    delete(Metric).where(Metric.run_id == self.run_id, Metric.step > start_step)
                )
                rebuild_rollups(s, self.run_id, start_step)
                s.execute(
                    update(Run)
                    .where(Run.id == self.run_id)
                    .values(
                        total_steps=total_steps,
                        step=start_step,
                        progress=start_step / max(total_steps, 1),
                        heartbeat_at=datetime.now(UTC),
                    )
                )

        with_db_retry(write)
        events.publish(
            events.progress_event(
                self.run_id,
                {
                    "step": start_step,
                    "total_steps": total_steps,
                    "progress": start_step / max(total_steps, 1),
                },
            )
        )

    def on_step(self, report: StepReport) -> None:
        for name, value in report.metrics.items():
            self.rows.append(
                {
                    "run_id": self.run_id,
                    "name": name,
                    "step": report.step,
                    "epoch": report.epoch,
                    "value": float(value),
                }
            )
        self.progress = {
            "step": report.step,
            "epoch": report.epoch,
            "total_steps": report.total_steps,
            "progress": report.step / max(report.total_steps, 1),
            "throughput": report.throughput,
            "eta_seconds": report.eta_seconds,
        }
        if time.monotonic() - self.last_flush >= self.flush_every:
            self.flush()

    def on_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.rows.append(
                {
                    "run_id": self.run_id,
                    "name": name,
                    "step": step,
                    "epoch": epoch,
                    "value": float(value),
                }
            )
        self.flush()

    def on_checkpoint(self, path: Path, step: int) -> None:
        self.flush()  # metrics up to `step` are in the database before the checkpoint is
        get_store().put_file(self.checkpoint_key, path)

    def should_stop(self) -> bool:
        now = time.monotonic()
        if now - self.last_cancel_check >= 1.0:
            self.last_cancel_check = now

            def read() -> bool:
                with session_scope() as s:
                    return bool(s.scalar(select(Run.cancel_requested).where(Run.id == self.run_id)))

            self.cancelled = with_db_retry(read)
        return self.cancelled

    # -- writing ----------------------------------------------------------------------------
    def flush(self) -> None:
        rows, progress = self.rows, self.progress

        def write() -> None:
            with session_scope() as s:
                if rows:
                    points = _dedupe(rows)
                    s.execute(insert(Metric), points)
                    write_rollups(s, self.run_id, points)
                values = {**progress, "heartbeat_at": datetime.now(UTC)}
                owned = s.execute(
                    update(Run)
                    .where(Run.id == self.run_id, Run.worker == self.worker)
                    .values(**values)
                ).rowcount
                if not owned:
                    raise LostClaim(f"run {self.run_id} was taken over by another worker")

        with_db_retry(write)
        self.rows = []
        self.last_flush = time.monotonic()
        if rows:
            events.publish(events.metrics_event(self.run_id, _dedupe(rows)))
        if progress:
            events.publish(events.progress_event(self.run_id, progress))


def announce(run_id: int) -> None:
    """Publish the run's state as it is in the database (after a status transition). Never
    raises: a database or broker that is away only means clients learn it from the database."""
    try:
        with session_scope() as s:
            run = s.get(Run, run_id)
            if run is not None:
                events.publish_status(run)
    except Exception as exc:  # noqa: BLE001 - the run's outcome is already written
        log.warning("run %s: status not announced (%s)", run_id, exc)


def _order(value: float) -> tuple[bool, float]:
    """Values as the databases order them: NaN above everything (PostgreSQL; SQLite has none)."""
    return (True, 0.0) if math.isnan(value) else (False, value)


def rollups(run_id: int, points: list[dict]) -> list[dict]:
    """The rollup rows of `points` alone (one series' point once), per width and bucket."""
    out: dict[tuple[str, int, int], dict] = {}
    for p in points:
        step, value = p["step"], p["value"]
        for width in ROLLUP_WIDTHS:
            key = (p["name"], width, step // width)
            r = out.get(key)
            if r is None:
                out[key] = {
                    "run_id": run_id,
                    "name": p["name"],
                    "width": width,
                    "bucket": step // width,
                    "n": 1,
                    "first_step": step,
                    "last_step": step,
                    "min_step": step,
                    "min_value": value,
                    "max_step": step,
                    "max_value": value,
                }
                continue
            r["n"] += 1
            r["first_step"] = min(r["first_step"], step)
            r["last_step"] = max(r["last_step"], step)
            if (_order(value), step) < (_order(r["min_value"]), r["min_step"]):
                r["min_step"], r["min_value"] = step, value
            low, high = _order(value), _order(r["max_value"])
            if low > high or (low == high and step < r["max_step"]):
                r["max_step"], r["max_value"] = step, value
    return list(out.values())


def write_rollups(session: Session, run_id: int, points: list[dict]) -> None:
    """Merge `points` (new to the table) into the stored rollups: one upsert per bucket row."""
    rows = rollups(run_id, points)
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    stmt = (postgresql if dialect == "postgresql" else sqlite).insert(MetricRollup)
    old, new = MetricRollup.__table__.c, stmt.excluded
    lower = (new.min_value < old.min_value) | (
        (new.min_value == old.min_value) & (new.min_step < old.min_step)
    )
    higher = (new.max_value > old.max_value) | (
        (new.max_value == old.max_value) & (new.max_step < old.max_step)
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_id", "name", "width", "bucket"],
        set_={
            "n": old.n + new.n,
            "first_step": case(
                (new.first_step < old.first_step, new.first_step), else_=old.first_step
            ),
            "last_step": case((new.last_step > old.last_step, new.last_step), else_=old.last_step),
            "min_step": case((lower, new.min_step), else_=old.min_step),
            "min_value": case((lower, new.min_value), else_=old.min_value),
            "max_step": case((higher, new.max_step), else_=old.max_step),
            "max_value": case((higher, new.max_value), else_=old.max_value),
        },
    )
    session.execute(stmt, rows)


ROLLUP_FILL = """
    INSERT INTO metric_rollups (run_id, name, width, bucket, n, first_step, last_step,
                                min_step, min_value, max_step, max_value)
    SELECT run_id, name, {width}, bucket, COUNT(*), MIN(step), MAX(step),
        MIN(CASE WHEN low = 1 THEN step END), MIN(CASE WHEN low = 1 THEN value END),
        MIN(CASE WHEN high = 1 THEN step END), MIN(CASE WHEN high = 1 THEN value END)
    FROM (
        SELECT run_id, name, step, value, step / {width} AS bucket,
            ROW_NUMBER() OVER (
                PARTITION BY run_id, name, step / {width} ORDER BY value, step) AS low,
            ROW_NUMBER() OVER (
                PARTITION BY run_id, name, step / {width} ORDER BY value DESC, step) AS high
        FROM metrics WHERE run_id = :run AND step >= :start
    ) AS points
    GROUP BY run_id, name, bucket
"""  # the rollups of a run's points from a bucket's start on, from the points (in SQL)


def rebuild_rollups(session: Session, run_id: int, after_step: int) -> None:
    """Make the run's rollups of the buckets holding steps after `after_step` anew from its
    points (after a resume dropped the points past its checkpoint; or for points written
    without rollups). Only the buckets from the one holding `after_step + 1` on are touched."""
    for width in ROLLUP_WIDTHS:
        first = (after_step + 1) // width if after_step >= 0 else 0
        session.execute(
            delete(MetricRollup).where(
                MetricRollup.run_id == run_id,
                MetricRollup.width == width,
                MetricRollup.bucket >= first,
            )
        )
        session.execute(
            text(ROLLUP_FILL.format(width=width)), {"run": run_id, "start": first * width}
        )


def _dedupe(rows: list[dict]) -> list[dict]:
    """Keep the last value of each (name, step): the unique index refuses duplicates."""
    seen: dict[tuple[str, int], dict] = {}
    for row in rows:
        seen[(row["name"], row["step"])] = row
    return list(seen.values())
