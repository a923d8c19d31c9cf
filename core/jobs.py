"""The job queue both sides share: task names, queues, the Celery app settings, and publishing
to the broker. Celery only: imports no torch, nothing of `backend` or `worker`.

The worker builds its app from `make_celery()` (worker/celery_app.py); the API and the worker's
sweeps publish through `send_task()`, which never hangs when the broker is down: it raises
`BrokerDown` within a few seconds (the API answers 503 with its message).

Queues: `gpu` (runs on one GPU), `gpu-N` for N = 2..16 (runs with `training.gpus: N` on GPUs:
only a worker with at least N GPUs consumes it, `worker/gpus.py`) and `cpu` (inspection and CPU
training, also `training.gpus` > 1 as N CPU processes).
Reliability settings, so that jobs survive a lost worker: a task is acknowledged only after it
finished (`acks_late`), is given back to the broker if its worker dies
(`task_reject_on_worker_lost`), each worker process reserves one task at a time (prefetch 1),
and the broker's visibility timeout is longer than any job, so a long run is not redelivered
while it still trains.
"""

from __future__ import annotations

import logging
import socket
from functools import cached_property, lru_cache
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from kombu import Exchange, Queue
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.transport import redis as kombu_redis
from redis.exceptions import RedisError

from core.catalog.training import TRAINING
from core.settings import get_settings

log = logging.getLogger(__name__)

DISTILL = "worker.tasks.distill"
INSPECT_MODEL = "worker.tasks.inspect_model"
SCAN_DATASET = "worker.tasks.scan_dataset"
MAX_GPUS = int(TRAINING["gpus"].le or 1)  # the most GPUs one run may ask for


def gpu_queue(gpus: int) -> str:
    """The queue of a run on `gpus` GPUs: `gpu` for one, `gpu-N` for N (consumed only by workers
    with at least N GPUs, so a run never lands on a worker too small for it)."""
    return "gpu" if gpus <= 1 else f"gpu-{gpus}"


def gpu_queues(count: int) -> list[str]:
    """The GPU queues a worker with `count` GPUs consumes: `gpu`, `gpu-2`, ... `gpu-<count>`."""
    return [gpu_queue(n) for n in range(1, min(count, MAX_GPUS) + 1)]


QUEUES = ("gpu", "cpu", *(gpu_queue(n) for n in range(2, MAX_GPUS + 1)))
WAITING_KEY = "waiting"  # a queued run's summary key: what it waits for, shown with its status


def waiting_for_worker(gpus: int) -> str:
    """What a run queued for `gpus` > 1 GPUs waits for until a worker that size takes it."""
    return f"waiting for a worker with {gpus} GPUs (queue {gpu_queue(gpus)})"


INSPECT_STUDENT = "worker.tasks.inspect_student"
MEASURE_STUDENTS = "worker.tasks.measure_students"  # a budget search's candidates
TOKEN_LENGTHS = "worker.tasks.token_lengths"  # a text dataset's lengths with a model's tokenizer
DELIVER_WEBHOOK = "worker.tasks.deliver_webhook"

CONNECT_TIMEOUT_S = 3.0
SOCKET_TIMEOUT_S = 10.0
RETRY_POLICY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.3, "interval_max": 0.5}
BROKER_ERRORS = (KombuOperationalError, RedisError, ConnectionError, socket.timeout, OSError)
BROKER_DOWN = (
    "the job queue (broker) is unreachable, so nothing was started or saved; "
    "check that Redis/Valkey runs at DS_BROKER_URL and retry"
)


class BrokerDown(Exception):
    """The broker (Redis/Valkey) does not answer; the message says what to check."""

    def __init__(self, detail: str = BROKER_DOWN) -> None:
        super().__init__(detail)
        self.detail = detail


def no_worker_message(seconds: float) -> str:
    """What to say when no worker answered within `seconds`."""
    return f"no worker answered in {seconds:g}s; is a worker running? (`distill-studio worker`)"


class NoWorker(Exception):
    """No worker answered in time; the message says how long was waited and what to start."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def make_celery() -> Celery:
    settings = get_settings()
    app = Celery("distill_studio", broker=settings.broker_url, backend=settings.broker_url)
    app.conf.update(
        # Each queue its own exchange and key: a message for one queue never lands in the other.
        task_queues=tuple(Queue(q, Exchange(q, type="direct"), routing_key=q) for q in QUEUES),
        task_default_queue="cpu",
        task_default_exchange="cpu",
        task_default_routing_key="cpu",
        task_routes={
            INSPECT_MODEL: {"queue": "cpu"},
            SCAN_DATASET: {"queue": "cpu"},
            INSPECT_STUDENT: {"queue": "cpu"},
            MEASURE_STUDENTS: {"queue": "cpu"},
            TOKEN_LENGTHS: {"queue": "cpu"},
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=50,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        result_expires=3600,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        task_track_started=True,
    )
    return app


class _PublishingChannel(kombu_redis.Channel):
    """kombu's Redis channel with one client for its commands: kombu builds a `redis.Redis` for
    each (its table of reply callbacks: about 110 us of CPU), one per published task. A client
    holds no connection of its own (it takes one from the channel's pool for each command), so
    one serves them all."""

    @cached_property
    def _commands(self) -> Any:
        return super()._create_client()

    def _create_client(self, asynchronous: bool = False) -> Any:
        return super()._create_client(asynchronous) if asynchronous else self._commands


class PublishingTransport(kombu_redis.Transport):
    """kombu's Redis transport with `_PublishingChannel`: the API's and the sweeps' publishing
    apps (`_app_for`) on a `redis://` broker."""

    Channel = _PublishingChannel


@lru_cache(maxsize=8)
def _app_for(broker_url: str) -> Celery:
    """A publishing app for `broker_url` with short socket timeouts (it suits a web request)."""
    app = make_celery()
    app.conf.broker_url = broker_url
    app.conf.result_backend = broker_url
    app.conf.broker_connection_timeout = CONNECT_TIMEOUT_S
    app.conf.broker_connection_max_retries = 1
    if urlsplit(broker_url).scheme == "redis":  # rediss and sentinel: kombu's own, by scheme
        app.conf.broker_transport = f"{__name__}:{PublishingTransport.__name__}"
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
        "retry_policy": {
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        },
    }
    app.conf.result_backend_always_retry = False
    return app


def producer_app() -> Celery:
    """The Celery app that publishes to the broker of the current settings."""
    return _app_for(get_settings().broker_url)


def warm_up(app: Celery) -> None:
    """Pay a process's first-publish costs before its first request does: kombu opens a broker
    connection and declares a queue on its first publish to it. With the result backend that
    `_Sent` now spares, the first `POST /runs` of each API process took 25-109 ms more than the
    next ones under load. Any failure (a broker that does not answer) is only logged: the first
    publish tries again (and the API answers 503 then)."""
    try:
        with app.producer_or_acquire() as producer:
            for name in ("cpu", "gpu"):  # where runs go (a `gpu-N` queue's first run declares it)
                producer.maybe_declare(app.amqp.queues[name], retry=False)
    except Exception as exc:  # noqa: BLE001 - only a head start: the first publish tells
        log.warning(
            "the broker could not be readied at start-up (%s); the first publish retries", exc
        )


def reset_producers() -> None:
    """Forget the publishing apps (their result consumer may be broken): start afresh next time."""
    _app_for.cache_clear()


class _Sent:
    """What `send_task` keeps of a published task: its id. Celery's `AsyncResult` would build a
    result backend for it, once in each thread (the Redis backend is not thread-safe), which
    scans every installed package's entry points (10-25 ms); nothing reads these results."""

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.ignored = True


def send_task(task: str, args: list[Any], queue: str) -> str:
    """Publish `task(*args)` on `queue` and return the task id; BrokerDown when unreachable.

    The result is not kept (these tasks write their outcome to the database).
    """
    try:
        result = producer_app().send_task(
            task,
            args=args,
            queue=queue,
            ignore_result=True,
            retry=True,
            retry_policy=RETRY_POLICY,
            result_cls=_Sent,
            add_to_parent=False,  # sent from a worker's task too: independent of it
        )
    except BROKER_ERRORS as exc:
        log.warning("sending %s failed: %s", task, exc)
        raise BrokerDown() from exc
    return result.id
