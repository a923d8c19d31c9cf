"""Sending work to the workers through the broker, with short timeouts.

`enqueue()` publishes a task and returns its id; `call()` publishes one and waits for its result.
Neither hangs when the broker is down: both raise `BrokerUnavailable` (503) within a few seconds,
and `call()` raises `WorkerTimeout` (503) when no worker answers. Request handlers only
`enqueue()`: no request waits for a worker (a request that needs a worker's result answers 202
and the result is stored where the next request finds it, as `core.inspections` does);
`call()` is for scripts and tests (warming a worker up).

The producer app (`core.jobs.producer_app`) is built from the current settings, one per broker
URL, with short socket timeouts that suit a web request; `enqueue()` publishes through
`core.jobs.send_task` and turns its `BrokerDown` into a 503.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout
from kombu import Connection
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from backend.errors import Unavailable
from core import jobs
from core.jobs import BROKER_ERRORS, RETRY_POLICY, BrokerDown, NoWorker, producer_app
from core.settings import get_settings

log = logging.getLogger(__name__)


class BrokerUnavailable(Unavailable, BrokerDown):
    """503: the broker does not answer (a `core.jobs.BrokerDown` with an HTTP status)."""

    def __init__(self) -> None:
        super().__init__(jobs.BROKER_DOWN)


class WorkerTimeout(Unavailable, NoWorker):
    """503: no worker answered in time (a `core.jobs.NoWorker` with an HTTP status)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(jobs.no_worker_message(seconds))


class TaskFailed(Exception):
    """The task ran and raised; the message is the worker's."""


def enqueue(task: str, args: list[Any], queue: str) -> str:
    """Publish `task(*args)` on `queue` and return the task id; BrokerUnavailable when unreachable.

    The result is not kept (these tasks write their outcome to the database).
    """
    try:
        return jobs.send_task(task, args, queue)
    except BrokerDown as exc:
        raise BrokerUnavailable() from exc


def call(task: str, args: list[Any], timeout: float, queue: str = "cpu") -> Any:
    """Run `task(*args)` on a worker and wait up to `timeout` seconds for its result.

    BrokerUnavailable when the broker is down, WorkerTimeout when no worker answered in time,
    TaskFailed(message) when the task raised.
    """
    app = producer_app()
    try:
        result = app.send_task(task, args=args, queue=queue, retry=True, retry_policy=RETRY_POLICY)
    except (*BROKER_ERRORS, RuntimeError) as exc:  # RuntimeError: result store retries spent
        log.warning("call %s failed: %s", task, exc)
        jobs.reset_producers()  # its result consumer may be broken: start afresh next time
        raise BrokerUnavailable() from exc
    try:
        return result.get(timeout=timeout, propagate=True, disable_sync_subtasks=False)
    except CeleryTimeout as exc:
        raise WorkerTimeout(timeout) from exc
    except (KombuOperationalError, RedisError) as exc:
        jobs.reset_producers()
        raise BrokerUnavailable() from exc
    except Exception as exc:  # the task's own exception, rebuilt by Celery
        raise TaskFailed(str(exc) or type(exc).__name__) from exc
    finally:
        try:
            result.forget()
        except BROKER_ERRORS:
            pass


def broker_ok(timeout: float = 2.0) -> bool:
    """Whether the broker accepts a connection now (for /health)."""
    url = get_settings().broker_url
    try:
        with Connection(
            url,
            connect_timeout=timeout,
            transport_options={"socket_connect_timeout": timeout, "socket_timeout": timeout},
        ) as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=timeout
            )
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        log.info("broker check failed: %s", exc)
        return False
