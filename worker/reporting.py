"""Training callbacks that report to the database and the artifact store.

Metrics are buffered and written in batches (every `DS_METRICS_FLUSH_S` seconds, at each epoch
end and before each checkpoint), never one commit per step. The run row's progress, ETA and
heartbeat are updated with each flush; the cancel flag is read at most once a second.
Database writes are retried with backoff, so a database that is briefly away does not kill a run.

After each flush the new metric points and the progress are published on the run's channel of
the broker (`core.events`), and `announce()` publishes a run's status after each transition, so
`GET /runs/{id}/events` streams them within moments; a broker that is away only delays clients
(they read the database again), never the run.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, insert, select, update

from core import events
from core.db import session_scope, with_db_retry
from core.db.tables import Metric, Run
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
                    s.execute(insert(Metric), _dedupe(rows))
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


def _dedupe(rows: list[dict]) -> list[dict]:
    """Keep the last value of each (name, step): the unique index refuses duplicates."""
    seen: dict[tuple[str, int], dict] = {}
    for row in rows:
        seen[(row["name"], row["step"])] = row
    return list(seen.values())
