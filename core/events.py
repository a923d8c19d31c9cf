"""Live run events through the broker's pub/sub: what a worker (or the API) says about a run as
it happens, and what `GET /runs/{id}/events` relays to clients as server-sent events.

One channel per run (`channel(run_id, db)`; pub/sub is not scoped by Redis database, so the
name holds the broker URL's database: studios that share a Redis server do not hear each
other). An event is typed (`RunEvent`):

- `status`: the run's state after a transition (queued -> running, succeeded, failed,
  cancelled), with its progress counters and error; also the first event of every stream;
- `progress`: step, epoch, total_steps, progress, throughput, eta_seconds (after each flush);
- `metrics`: the new points of each series since the last flush, in the shape of
  `GET /runs/{id}/metrics` (`{"series": {name: {"steps", "values", "epochs"}}}`).

The database stays the truth: events only say sooner what it holds. `publish()` never raises
into a training run when the broker is briefly away (it logs and goes on); a client that missed
events reads the run and its metrics (`since_step`) again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, Literal

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict

from core.db.tables import TERMINAL_RUN_STATES
from core.settings import get_settings

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "ds:run-events:"
CONNECT_TIMEOUT_S = 1.0  # a publisher never waits long for a broker that is away
QUIET_AFTER_FAILURE_S = 5.0  # and after a failure does not try again for this long
EventKind = Literal["status", "progress", "metrics"]
PROGRESS_FIELDS = ("step", "epoch", "total_steps", "progress", "throughput", "eta_seconds")
STATE_FIELDS = ("status", *PROGRESS_FIELDS, "error")


def channel(run_id: int, db: int = 0) -> str:
    """The pub/sub channel of one run's events, for the broker's database `db`."""
    return f"{CHANNEL_PREFIX}{db}:{run_id}"


def _db(client: redis.Redis | aioredis.Redis) -> int:
    return int(client.connection_pool.connection_kwargs.get("db") or 0)


def redis_url(url: str) -> str:
    """The broker URL as redis-py takes it (`valkey://` and `valkeys://` are Redis URLs)."""
    if url.startswith("valkey"):
        return "redis" + url[len("valkey") :]
    return url


class RunEvent(BaseModel):
    """One event of one run; `data` holds the fields its `kind` names (module docstring)."""

    model_config = ConfigDict(frozen=True)

    kind: EventKind
    run_id: int
    data: dict[str, Any]

    @property
    def step(self) -> int | None:
        """The last step this event covers (an SSE event id), when it names one."""
        if self.kind == "metrics":
            steps = [s for series in self.data.get("series", {}).values() for s in series["steps"]]
            return max(steps) if steps else None
        step = self.data.get("step")
        return int(step) if step is not None else None

    @property
    def terminal(self) -> bool:
        """A status event of a run that has ended (nothing follows it)."""
        return self.kind == "status" and self.data.get("status") in TERMINAL_RUN_STATES


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def status_event(run_id: int, state: Mapping[str, Any]) -> RunEvent:
    """A `status` event from a run's state (its row, or a dict with STATE_FIELDS)."""
    return RunEvent(
        kind="status",
        run_id=run_id,
        data={k: _finite(state[k]) for k in STATE_FIELDS if k in state},
    )


def progress_event(run_id: int, progress: Mapping[str, Any]) -> RunEvent:
    """A `progress` event from the counters a reporter writes to the run row."""
    data = {k: _finite(progress[k]) for k in PROGRESS_FIELDS if k in progress}
    return RunEvent(kind="progress", run_id=run_id, data=data)


def metrics_event(run_id: int, rows: Iterable[Mapping[str, Any]]) -> RunEvent:
    """A `metrics` event from metric rows (name, step, epoch, value), ordered by step per series."""
    series: dict[str, dict[str, list[Any]]] = {}
    for row in sorted(rows, key=lambda r: (r["name"], r["step"])):
        s = series.setdefault(row["name"], {"steps": [], "values": [], "epochs": []})
        s["steps"].append(int(row["step"]))
        s["values"].append(_finite(float(row["value"])))
        s["epochs"].append(int(row.get("epoch") or 0))
    return RunEvent(kind="metrics", run_id=run_id, data={"series": series})


# -- publishing (workers, and the API for its own transitions) ----------------------------------


@lru_cache(maxsize=4)
def _publisher(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        redis_url(url),
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=CONNECT_TIMEOUT_S,
        retry_on_timeout=False,
    )


_quiet_until: dict[str, float] = {}  # broker URL -> when to try it again after a failure


def publish(event: RunEvent) -> bool:
    """Publish `event` on its run's channel; False (logged, never raised) when the broker is
    away: the database holds the truth, and streams re-read it. After a failure the broker is
    left alone for QUIET_AFTER_FAILURE_S, so a training run does not wait on it at every flush."""
    url = get_settings().broker_url
    if time.monotonic() < _quiet_until.get(url, 0.0):
        return False
    try:
        client = _publisher(url)
        client.publish(channel(event.run_id, _db(client)), event.model_dump_json())
        return True
    except (redis.RedisError, OSError) as exc:
        _quiet_until[url] = time.monotonic() + QUIET_AFTER_FAILURE_S
        log.warning(
            "run %s: %s event not published (%s); the broker is left alone for %gs",
            event.run_id,
            event.kind,
            exc,
            QUIET_AFTER_FAILURE_S,
        )
        return False


def publish_status(run: Any) -> bool:
    """Publish a run's state from its row (anything with the STATE_FIELDS attributes and `id`)
    after a status transition."""
    return publish(status_event(run.id, {k: getattr(run, k) for k in STATE_FIELDS}))


# -- subscribing (the API; asyncio) -------------------------------------------------------------


class Subscription:
    """The events of one run as they are published, read with `next()`; one broker connection
    each. `open()` raises `redis.RedisError` / `OSError` when the broker does not answer."""

    def __init__(self, run_id: int, url: str | None = None) -> None:
        self.run_id = run_id
        self._client = aioredis.Redis.from_url(
            redis_url(url or get_settings().broker_url),
            socket_connect_timeout=2 * CONNECT_TIMEOUT_S,
        )
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._closed = False

    async def open(self) -> Subscription:
        try:
            name = channel(self.run_id, _db(self._client))
            await asyncio.wait_for(self._pubsub.subscribe(name), 3.0)
        except BaseException:
            await self.close()
            raise
        return self

    async def next(self, timeout: float) -> RunEvent | None:
        """The next event, or None when `timeout` seconds pass without one. An unreadable
        message is skipped (logged)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if message is None or message.get("type") != "message":
                continue
            try:
                return RunEvent.model_validate(json.loads(message["data"]))
            except ValueError as exc:
                log.warning("run %s: unreadable event skipped (%s)", self.run_id, exc)
        return None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._pubsub.aclose()
            await self._client.aclose()
        except (redis.RedisError, OSError):  # going away anyway
            pass
