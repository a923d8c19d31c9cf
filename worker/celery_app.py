"""The worker's Celery application, built from `core.jobs` (task names, queues, reliability
settings). Imports no torch: the tasks import the engine inside the task bodies."""

from __future__ import annotations

from core.jobs import make_celery

celery_app = make_celery()
