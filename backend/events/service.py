"""What a run's event stream reads from the database: its current state (the first event of
every stream, and a check while the stream is quiet) and the metric points a client missed.

Each read opens and closes its own short session: a stream never holds a database connection
while it waits for events.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from backend.runs import service as runs
from core import events
from core.db import get_sessionmaker
from core.db.tables import Run


def state(run_id: int) -> dict[str, Any] | None:
    """The run's status and progress counters (`core.events.STATE_FIELDS`); None once deleted."""
    columns = [getattr(Run, name) for name in events.STATE_FIELDS]
    with get_sessionmaker()() as session:
        row = session.execute(select(*columns).where(Run.id == run_id)).first()
    return dict(zip(events.STATE_FIELDS, row, strict=True)) if row is not None else None


def missed_metrics(run_id: int, since_step: int) -> events.RunEvent | None:
    """The points after `since_step` as one `metrics` event (None when there are none): what a
    client that reconnects with `since_step` or `Last-Event-ID` did not see; a long gap comes
    downsampled like `GET /runs/{id}/metrics?max_points=` (`downsampled` says so)."""
    with get_sessionmaker()() as session:
        run = session.get(Run, run_id)
        series = (
            runs.plain(runs.metrics(session, run, None, since_step, max_points=runs.MAX_POINTS))
            if run is not None
            else {}
        )
    if not series:
        return None
    return events.RunEvent(kind="metrics", run_id=run_id, data={"series": series})
