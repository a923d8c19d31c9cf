"""Sending work to the workers through the broker, with short timeouts.

`enqueue()` publishes a task and returns its id; `call()` publishes one and waits for its result.
Neither hangs when the broker is down: both raise `BrokerUnavailable` (503) within a few seconds,
and `call()` raises `WorkerTimeout` (503) when no worker answers. Request handlers only
`enqueue()`: no request waits for a worker (a request that needs a worker's result answers 202
and the result is stored where the next request finds it, as `backend.runs.inspections` does);
`call()` is for scripts and tests (warming a worker up).

The producer app is built from the current settings (same task names, queues and serializers as
`worker.celery_app`), one per broker URL, with short socket timeouts that suit a web request.
"""

from __future__ import annotations

import logging
import socket
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from kombu import Connection
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from backend.errors import Unavailable
from backend.settings import get_settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
SOCKET_TIMEOUT_S = 10.0
_RETRY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.3, "interval_max": 0.5}
_BROKER_ERRORS = (KombuOperationalError, RedisError, ConnectionError, socket.timeout, OSError)


class BrokerUnavailable(Unavailable):
    def __init__(self) -> None:
        super().__init__(
            "the job queue (broker) is unreachable, so nothing was started or saved; "
            "check that Redis/Valkey runs at DS_BROKER_URL and retry"
        )


class WorkerTimeout(Unavailable):
    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"no worker answered in {seconds:g}s; is a worker running? (`distill-studio worker`)"
        )


class TaskFailed(Exception):
    """The task ran and raised; the message is the worker's."""


@lru_cache(maxsize=8)
def _app_for(broker_url: str) -> Celery:
    from worker.celery_app import make_celery

    app = make_celery()
    app.conf.broker_url = broker_url
    app.conf.result_backend = broker_url
    app.conf.broker_connection_timeout = CONNECT_TIMEOUT_S
    app.conf.broker_connection_max_retries = 1
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": SOCKET_TIMEOUT_S,
    }
    app.conf.redis_socket_connect_timeout = CONNECT_TIMEOUT_S
    app.conf.redis_socket_timeout = SOCKET_TIMEOUT_S
    app.conf.redis_retry_on_timeout = False
    app.conf.result_backend_transport_options = {
        **app.conf.result_backend_transport_options,
        "retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                         "interval_max": 0.2},
    }
    app.conf.result_backend_always_retry = False
    return app


def producer_app() -> Celery:
    """The Celery app that publishes to the broker of the current settings."""
    return _app_for(get_settings().broker_url)


def enqueue(task: str, args: list[Any], queue: str) -> str:
    """Publish `task(*args)` on `queue` and return the task id; BrokerUnavailable when unreachable.

    The result is not kept (these tasks write their outcome to the database).
    """
    try:
        result = producer_app().send_task(
            task, args=args, queue=queue, ignore_result=True, retry=True, retry_policy=_RETRY
        )
    except _BROKER_ERRORS as exc:
        log.warning("enqueue %s failed: %s", task, exc)
        raise BrokerUnavailable() from exc
    return result.id


def call(task: str, args: list[Any], timeout: float, queue: str = "cpu") -> Any:
    """Run `task(*args)` on a worker and wait up to `timeout` seconds for its result.

    BrokerUnavailable when the broker is down, WorkerTimeout when no worker answered in time,
    TaskFailed(message) when the task raised.
    """
    app = producer_app()
    try:
        result = app.send_task(task, args=args, queue=queue, retry=True, retry_policy=_RETRY)
    except (*_BROKER_ERRORS, RuntimeError) as exc:  # RuntimeError: result store retries spent
        log.warning("call %s failed: %s", task, exc)
        _app_for.cache_clear()  # its result consumer may be broken: start afresh next time
        raise BrokerUnavailable() from exc
    try:
        return result.get(timeout=timeout, propagate=True, disable_sync_subtasks=False)
    except CeleryTimeout as exc:
        raise WorkerTimeout(timeout) from exc
    except (KombuOperationalError, RedisError) as exc:
        _app_for.cache_clear()
        raise BrokerUnavailable() from exc
    except Exception as exc:  # the task's own exception, rebuilt by Celery
        raise TaskFailed(str(exc) or type(exc).__name__) from exc
    finally:
        try:
            result.forget()
        except _BROKER_ERRORS:
            pass


def broker_ok(timeout: float = 2.0) -> bool:
    """Whether the broker accepts a connection now (for /health)."""
    url = get_settings().broker_url
    try:
        with Connection(url, connect_timeout=timeout,
                        transport_options={"socket_connect_timeout": timeout,
                                           "socket_timeout": timeout}) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        log.info("broker check failed: %s", exc)
        return False
