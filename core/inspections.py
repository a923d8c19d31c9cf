"""Zoo student inspections, stored in the broker (Redis/Valkey) under their build arguments.

A zoo student's layer table is built by a worker (the API has no torch). The API never waits for
it: `lookup()` answers from the store, or queues INSPECT_STUDENT once per student (however many
requests ask at the same time: the first claims the key with SET NX) and reports it pending, and
the request answers 202 for the caller to ask again. The worker's task stores what it built
(`store_ready`) or why it could not (`store_failed`); every process reads the same store, so the
answer survives restarts of the API and is shared by all its processes.

Entries are JSON under `ds:student-inspection:<job id>`, the job id being a hash of the build
arguments: `{"status": "pending", "since": <unix time>}`, `{"status": "ready", "inspection":
{...}}` or `{"status": "failed", "error": "..."}`. A pending entry older than the inspection
limit (`DS_INSPECT_TIMEOUT_S`) means no worker answered: it is dropped, the caller gets 503 and a
later request queues it again. Failures are kept briefly (a fixed worker may succeed later),
layer tables for long (they depend only on the arguments and the code).

`Store` is that pattern for any worker-built result of a task's arguments: `STUDENTS` (the
module functions below are its methods) and `BUDGETS` (a budget search's measured candidates,
`core.budget`, under `ds:student-budget:`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

import redis
from redis.exceptions import RedisError

from core import jobs
from core.settings import get_settings

log = logging.getLogger(__name__)

PREFIX = "ds:student-inspection:"
READY_TTL_S = 30 * 24 * 3600
FAILED_TTL_S = 600
SOCKET_TIMEOUT_S = 3.0
RETRY_AFTER_S = 2  # what a 202 tells the caller to wait before asking again


@dataclass(frozen=True)
class Entry:
    """What the store knows about one student: pending (since when), ready or failed."""

    status: str
    inspection: dict[str, Any] | None = None  # the stored result (a layer table, costs, ...)
    error: str | None = None
    since: float = 0.0


def build_args(
    architecture: str, kwargs: dict[str, Any], input_shape: list[int], num_classes: int
) -> list[Any]:
    """The INSPECT_STUDENT arguments, normalised (as the API sends them and the worker gets them)."""
    return [architecture, dict(kwargs), [int(d) for d in input_shape], int(num_classes)]


def job_id(args: list[Any]) -> str:
    """A stable id of a student inspection: the hash of its build arguments."""
    text = json.dumps(args, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@lru_cache(maxsize=8)
def _client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=30,
    )


def _client() -> redis.Redis:
    return _client_for(get_settings().broker_url)


class Store:
    """Results a worker builds for the API, under `<prefix><job id>`: the pattern above, for
    any task whose result depends only on its arguments (student inspections, `STUDENTS`; the
    costs of a budget search's candidates, `BUDGETS`). `what` names it in log lines."""

    def __init__(self, prefix: str, what: str) -> None:
        self.prefix, self.what = prefix, what

    def _key(self, job: str) -> str:
        return self.prefix + job

    def read(self, job: str) -> Entry | None:
        """The stored entry of `job`, or None; BrokerDown when the store cannot be reached."""
        try:
            # redis-py types sync and async replies alike (Awaitable | Any); this client is sync
            raw = cast("bytes | None", _client().get(self._key(job)))
        except RedisError as exc:
            log.warning("reading %s %s failed: %s", self.what, job, exc)
            raise jobs.BrokerDown() from exc
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return Entry(
                str(data["status"]),
                data.get("inspection"),
                data.get("error"),
                float(data.get("since", 0.0)),
            )
        except (ValueError, KeyError, TypeError):  # not ours, or damaged: build it again
            return None

    def _write(self, job: str, data: dict[str, Any], ttl: int, *, only_new: bool = False) -> bool:
        try:
            done = _client().set(self._key(job), json.dumps(data), ex=ttl, nx=only_new)
        except RedisError as exc:
            log.warning("writing %s %s failed: %s", self.what, job, exc)
            raise jobs.BrokerDown() from exc
        return bool(done)

    def forget(self, job: str) -> None:
        try:
            _client().delete(self._key(job))
        except RedisError as exc:
            raise jobs.BrokerDown() from exc

    def lookup(self, args: list[Any], task: str) -> Entry:
        """The stored entry of the result built from `args`; when there is none, `task(*args)`
        is queued (once, whoever asks at the same time) and a pending entry returned. Never
        waits for a worker. A pending entry older than the inspection limit is dropped and
        NoWorker raised."""
        job = job_id(args)
        entry = self.read(job)
        if entry is None:
            mine = Entry("pending", since=time.time())
            pending = {"status": "pending", "since": mine.since}
            if self._write(job, pending, _pending_ttl(), only_new=True):
                try:
                    jobs.send_task(task, args, "cpu")
                except jobs.BrokerDown:
                    self.forget(job)
                    raise
                return mine
            entry = self.read(job) or mine  # someone else claimed it just now
        limit = get_settings().inspect_timeout_s
        if entry.status == "pending" and time.time() - entry.since > limit:
            self.forget(job)  # the next request queues it again
            raise jobs.NoWorker(jobs.no_worker_message(limit))
        return entry

    def store_ready(self, args: list[Any], result: dict[str, Any]) -> None:
        """Record what a worker built (its task calls this)."""
        self._write(job_id(args), {"status": "ready", "inspection": result}, READY_TTL_S)

    def store_failed(self, args: list[Any], error: str) -> None:
        """Record why a worker could not build it (its task calls this)."""
        self._write(job_id(args), {"status": "failed", "error": error}, FAILED_TTL_S)


def _pending_ttl() -> int:
    return 2 * get_settings().inspect_timeout_s + 60


STUDENTS = Store(PREFIX, "student inspection")
BUDGETS = Store("ds:student-budget:", "budget search")  # `core.budget`: candidates' costs
# a text dataset's token length histogram with a Hugging Face model's tokenizer (Datasets page)
TOKEN_LENGTHS = Store("ds:token-lengths:", "token length histogram")

# the student inspections' store, as module functions (what the API and the worker call)
read = STUDENTS.read
forget = STUDENTS.forget
lookup = STUDENTS.lookup
store_ready = STUDENTS.store_ready
store_failed = STUDENTS.store_failed


def plant(
    architecture: str,
    kwargs: dict[str, Any],
    input_shape: list[int],
    num_classes: int,
    inspection: dict[str, Any],
) -> str:
    """Store a layer table as if a worker had built it (tests without a worker); its job id."""
    args = build_args(architecture, kwargs, input_shape, num_classes)
    store_ready(args, inspection)
    return job_id(args)
