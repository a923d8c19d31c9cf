"""Training callbacks that report to the database and the artifact store.

Metrics are buffered and written in batches (every `DS_METRICS_FLUSH_S` seconds, at each epoch
end and before each checkpoint), never one commit per step. The run row's progress, ETA and
heartbeat are updated with each flush; the cancel flag is read at most once a second.
Each flush also merges its points into the series' rollups (`metric_rollups`: the first, last,
lowest and highest point, with its epoch and value, per bucket of 16, 32, 64, ... 16384 steps) in
the same transaction, so downsampled reads of long series need not read every point; a resume
rebuilds the buckets its dropped points were in.
It also appends the points to each series' chunks of JSON (`worker/metric_chunks.py`), from
which the API serves a whole series as a few rows.
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
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, delete, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core import events
from core.db import session_scope, with_db_retry
from core.db.tables import ROLLUP_WIDTHS, Metric, MetricRollup, Run
from core.settings import get_settings
from core.storage import get_store
from worker.metric_chunks import rebuild_chunks, write_chunks

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
                rebuild_chunks(s, self.run_id, start_step)
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

    def on_samples(self, epoch: int, samples: Any) -> None:
        """The task's samples of the student after epoch `epoch` (`Task.live_samples`: a
        language model's continuations next to the teacher's) into the run's summary under
        `live_samples`, each sample keeping the student's output of every epoch so far, so the
        run page shows them while the run trains; the final summary replaces them with the
        `predictions` artifact. What the training process sends is bounded here (it runs the
        uploaded models): at most LIVE_SAMPLES samples of LIVE_TEXT characters a field."""
        fresh = live_samples(samples)
        if not fresh:
            return

        def write() -> None:
            with session_scope() as s:
                run = s.get(Run, self.run_id)
                if run is None or run.worker != self.worker:
                    raise LostClaim(f"run {self.run_id} was taken over by another worker")
                summary = dict(run.summary or {})
                before = {
                    item.get("index"): item.get("epochs", [])
                    for item in (summary.get(LIVE_KEY) or {}).get("samples", [])
                    if isinstance(item, dict)
                }
                for item in fresh:
                    kept = [e for e in before.get(item["index"], []) if e.get("epoch") != epoch]
                    item["epochs"] = [*kept, {"epoch": epoch, "student": item["student"]}][
                        -LIVE_EPOCHS:
                    ]
                summary[LIVE_KEY] = {"epoch": epoch, "samples": fresh}
                run.summary = summary

        with_db_retry(write)

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
                    write_chunks(s, self.run_id, points)
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


LIVE_KEY = "live_samples"  # the run summary's key of `DbReporter.on_samples`
LIVE_SAMPLES = 8  # samples kept
LIVE_TEXT = 2000  # characters kept of each text field
LIVE_EPOCHS = 50  # the student's outputs of the last this many epochs, per sample
LIVE_FIELDS = ("prompt", "reference", "teacher", "student")


def live_samples(raw: Any) -> list[dict[str, Any]]:
    """The well-formed part of what a training process sent as live samples: dicts with an
    integer index and text fields (cut to LIVE_TEXT characters), at most LIVE_SAMPLES."""
    if not isinstance(raw, list):
        return []
    out: list[dict[str, Any]] = []
    for item in raw:
        if len(out) == LIVE_SAMPLES:
            break
        if not isinstance(item, dict) or not isinstance(item.get("student"), str):
            continue
        index = item.get("index")
        clean: dict[str, Any] = {"index": index if isinstance(index, int) else len(out)}
        for field in LIVE_FIELDS:
            value = item.get(field)
            clean[field] = value[:LIVE_TEXT] if isinstance(value, str) else None
        out.append(clean)
    return out


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


ENDS = ("first", "last", "min", "max")  # the four points M4 keeps of a bucket


def _rank(end: str, step: int, value: float) -> tuple:
    """Smallest wins: the first step, the last, the lowest value, the highest (of equal values
    the first step)."""
    if end == "first":
        return (step,)
    if end == "last":
        return (-step,)
    nan, v = _order(value)
    return (nan, v, step) if end == "min" else (not nan, -v, step)


def rollups(run_id: int, points: list[dict]) -> list[dict]:
    """The rollup rows of `points` alone (one series' point once), per width and bucket: the
    narrowest from the points, each wider one from the rows of the one before."""
    finest = ROLLUP_WIDTHS[0]
    out: dict[tuple[str, int], dict] = {}
    for p in points:
        step, value, epoch = p["step"], p["value"], p.get("epoch", 0)
        _merge(
            out,
            (p["name"], step // finest),
            run_id,
            finest,
            1,
            {end: (step, epoch, value) for end in ENDS},
        )
    rows = list(out.values())
    every = list(rows)
    for finer, width in zip(ROLLUP_WIDTHS, ROLLUP_WIDTHS[1:], strict=False):
        wider: dict[tuple[str, int], dict] = {}
        for r in rows:
            ends = {end: (r[f"{end}_step"], r[f"{end}_epoch"], r[f"{end}_value"]) for end in ENDS}
            _merge(wider, (r["name"], r["bucket"] * finer // width), run_id, width, r["n"], ends)
        rows = list(wider.values())
        every += rows
    return every


def _merge(
    out: dict[tuple[str, int], dict],
    key: tuple[str, int],
    run_id: int,
    width: int,
    n: int,
    ends: dict[str, tuple[int, int, float]],
) -> None:
    """Add `n` points whose first, last, lowest and highest are `ends` to bucket `key`."""
    r = out.get(key)
    if r is None:
        r = out[key] = {"run_id": run_id, "name": key[0], "width": width, "bucket": key[1], "n": 0}
        for end, (step, epoch, value) in ends.items():
            r |= {f"{end}_step": step, f"{end}_epoch": epoch, f"{end}_value": value}
    else:
        for end, (step, epoch, value) in ends.items():
            if _rank(end, step, value) < _rank(end, r[f"{end}_step"], r[f"{end}_value"]):
                r |= {f"{end}_step": step, f"{end}_epoch": epoch, f"{end}_value": value}
    r["n"] += n


def write_rollups(session: Session, run_id: int, points: list[dict]) -> None:
    """Merge `points` (new to the table) into the stored rollups: one upsert per bucket row."""
    rows = rollups(run_id, points)
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    stmt = (postgresql if dialect == "postgresql" else sqlite).insert(MetricRollup)
    old, new = MetricRollup.__table__.c, stmt.excluded
    wins = {
        "first": new.first_step < old.first_step,
        "last": new.last_step > old.last_step,
        "min": (new.min_value < old.min_value)
        | ((new.min_value == old.min_value) & (new.min_step < old.min_step)),
        "max": (new.max_value > old.max_value)
        | ((new.max_value == old.max_value) & (new.max_step < old.max_step)),
    }
    merged: dict[str, Any] = {"n": old.n + new.n}
    for end, won in wins.items():
        for part in ("step", "epoch", "value"):
            column = f"{end}_{part}"
            merged[column] = case((won, new[column]), else_=old[column])
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_id", "name", "width", "bucket"], set_=merged
    )
    session.execute(stmt, rows)


_ROLLUP_COLUMNS = (
    "first_step, first_epoch, first_value, last_step, last_epoch, last_value, "
    "min_step, min_epoch, min_value, max_step, max_epoch, max_value"
)
_KEPT = ",\n        ".join(
    f"MIN(CASE WHEN o_{end} = 1 THEN {end}_{part} END)"
    for end in ENDS
    for part in ("step", "epoch", "value")
)
ROLLUP_FILL = f"""
    INSERT INTO metric_rollups (run_id, name, width, bucket, n, {_ROLLUP_COLUMNS})
    SELECT run_id, name, {{width}}, bucket, COUNT(*),
        {_KEPT}
    FROM (
        SELECT run_id, name, step / {{width}} AS bucket,
            step AS first_step, epoch AS first_epoch, value AS first_value,
            step AS last_step, epoch AS last_epoch, value AS last_value,
            step AS min_step, epoch AS min_epoch, value AS min_value,
            step AS max_step, epoch AS max_epoch, value AS max_value,
            CASE WHEN step = MIN(step) OVER w THEN 1 END AS o_first,
            CASE WHEN step = MAX(step) OVER w THEN 1 END AS o_last,
            ROW_NUMBER() OVER (
                PARTITION BY run_id, name, step / {{width}} ORDER BY value, step) AS o_min,
            ROW_NUMBER() OVER (
                PARTITION BY run_id, name, step / {{width}} ORDER BY value DESC, step) AS o_max
        FROM metrics WHERE run_id = :run AND step >= :start
        WINDOW w AS (PARTITION BY run_id, name, step / {{width}})
    ) AS points
    GROUP BY run_id, name, bucket
"""  # the narrowest rollups of a run's points from step :start on (a bucket's first)
ROLLUP_WIDEN = f"""
    INSERT INTO metric_rollups (run_id, name, width, bucket, n, {_ROLLUP_COLUMNS})
    SELECT run_id, name, {{width}}, wide, SUM(n),
        {_KEPT}
    FROM (
        SELECT run_id, name, n, bucket / {{ratio}} AS wide, {_ROLLUP_COLUMNS},
            CASE WHEN first_step = MIN(first_step) OVER w THEN 1 END AS o_first,
            CASE WHEN last_step = MAX(last_step) OVER w THEN 1 END AS o_last,
            ROW_NUMBER() OVER (
                PARTITION BY run_id, name, bucket / {{ratio}} ORDER BY min_value, min_step
            ) AS o_min,
            ROW_NUMBER() OVER (
                PARTITION BY run_id, name, bucket / {{ratio}} ORDER BY max_value DESC, max_step
            ) AS o_max
        FROM metric_rollups
        WHERE run_id = :run AND width = {{finer}} AND bucket >= :start
        WINDOW w AS (PARTITION BY run_id, name, bucket / {{ratio}})
    ) AS finer
    GROUP BY run_id, name, wide
"""  # the rollups of one width from those of the next narrower (from its bucket :start on)


def rebuild_rollups(session: Session, run_id: int, after_step: int) -> None:
    """Make the run's rollups of the buckets holding steps after `after_step` anew from its
    points (after a resume dropped the points past its checkpoint; or for points written
    without rollups), in SQL: the narrowest from the points, each wider one from the one
    before. Only the buckets from the one holding `after_step + 1` on are touched."""
    step = after_step + 1 if after_step >= 0 else 0
    finer = 0
    for width in ROLLUP_WIDTHS:
        first = step // width
        session.execute(
            delete(MetricRollup).where(
                MetricRollup.run_id == run_id,
                MetricRollup.width == width,
                MetricRollup.bucket >= first,
            )
        )
        if not finer:
            fill = ROLLUP_FILL.format(width=width)
            session.execute(text(fill), {"run": run_id, "start": first * width})
        else:
            widen = ROLLUP_WIDEN.format(width=width, ratio=width // finer, finer=finer)
            session.execute(text(widen), {"run": run_id, "start": first * (width // finer)})
        finer = width


def _dedupe(rows: list[dict]) -> list[dict]:
    """Keep the last value of each (name, step): the unique index refuses duplicates."""
    seen: dict[tuple[str, int], dict] = {}
    for row in rows:
        seen[(row["name"], row["step"])] = row
    return list(seen.values())
