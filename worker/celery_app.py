"""The Celery application: broker settings and queues. Imports no torch.

Queues: `gpu` (one worker process per GPU, `-Q gpu -c 1`) and `cpu` (inspection and CPU training).
Reliability settings follow DESIGN.md: a task is acknowledged only after it finished
(`acks_late`), is given back to the broker if its worker dies (`task_reject_on_worker_lost`),
each worker process reserves one task at a time (prefetch 1), and the broker's visibility timeout
is longer than any job, so a long run is not redelivered while it still trains.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from backend.settings import get_settings

DISTILL = "worker.tasks.distill"
INSPECT_MODEL = "worker.tasks.inspect_model"
SCAN_DATASET = "worker.tasks.scan_dataset"
QUEUES = ("gpu", "cpu")
INSPECT_STUDENT = "worker.tasks.inspect_student"


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


celery_app = make_celery()
