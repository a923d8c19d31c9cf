"""The worker's Celery application, built from `core.jobs` (task names, queues, reliability
settings). Imports no torch: the tasks import the engine inside the task bodies."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import signals

from core.jobs import make_celery
from core.settings import get_settings
from worker import gpus, sandbox

log = logging.getLogger(__name__)

celery_app = make_celery()


@signals.celeryd_after_setup.connect
def _consume_gpu_queues(sender: str, instance: Any, **_: Any) -> None:
    """After `-Q` is applied: a worker with G GPUs that consumes `gpu` also consumes `gpu-2` ..
    `gpu-G`, and no `gpu-N` beyond its G (worker/gpus.py). Runs before the pool forks, so its
    processes inherit the devices found here."""
    queues = instance.app.amqp.queues
    devices = gpus.worker_devices()
    current = list(queues.consume_from)
    wanted = gpus.worker_queues(current, len(devices))
    for name in current:
        if name not in wanted:
            queues.deselect(name)
    for name in wanted:
        if name not in current:
            queues.select_add(queues[name])  # as declared: its own exchange
    log.info(
        "%s: %d GPU(s) %s; queues %s", sender, len(devices), ",".join(devices), ", ".join(wanted)
    )


@signals.celeryd_after_setup.connect
def _share_the_cores(sender: str, instance: Any, **_: Any) -> None:
    """Each job's torch threads: the worker's share of the cores (`sandbox.job_torch_threads`),
    in the environment its pool processes and their sandboxed children inherit."""
    threads = sandbox.job_torch_threads(
        get_settings().worker_torch_threads,
        getattr(instance, "concurrency", None) or 0,
        sandbox.usable_cores(),
        os.environ.get("OMP_NUM_THREADS"),
    )
    os.environ[sandbox.THREADS_ENV] = str(threads)
    log.info("%s: each job's torch threads: %s", sender, threads or "torch's (OMP_NUM_THREADS)")


@signals.celeryd_after_setup.connect
def _yield_the_cores(sender: str, instance: Any, **_: Any) -> None:
    """The worker, its pool processes and their jobs at a lower CPU priority than the API and
    the database beside them (`sandbox.lower_priority`); before the pool forks."""
    nice = sandbox.lower_priority(get_settings().worker_nice)
    log.info("%s: CPU priority (nice) %d", sender, nice)
