"""Run events turned into webhook deliveries for the worker to send (shared by API and worker).

A delivery row is written per active webhook of the run's team that subscribed to the event;
its `body` holds the exact JSON sent on every attempt, signed with
`X-Distill-Signature: sha256=<hex HMAC-SHA256(secret, body)>` (core/signing.py). The worker task
`worker.tasks.deliver_webhook` (worker/webhooks.py) sends it and retries with exponential backoff.
The same (webhook, run, event) is delivered once, however often the event is reported.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import jobs
from core.clock import as_utc, utcnow
from core.db.tables import TERMINAL_RUN_STATES, Run, Webhook, WebhookDelivery
from core.jobs import DELIVER_WEBHOOK

log = logging.getLogger(__name__)

PENDING, RETRYING, SUCCEEDED, FAILED = "pending", "retrying", "succeeded", "failed"
NOT_QUEUED = "not queued: the broker was unreachable"  # a worker's sweep sends it again


# -- run events -------------------------------------------------------------------------------


def _stamp(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat() if value is not None else None


def run_event_body(run: Run, event: str, delivery_id: int, webhook_id: int) -> str:
    """The JSON sent for a run event (compact, keys sorted: the bytes that are signed)."""
    payload = {
        "event": event,
        "delivery_id": delivery_id,
        "webhook_id": webhook_id,
        "team_id": run.team_id,
        "sent_for": _stamp(utcnow()),
        "run": {
            "id": run.id,
            "name": run.name,
            "status": run.status,
            "error": run.error,
            "progress": run.progress,
            "summary": run.summary or {},
            "teacher_model_id": run.teacher_model_id,
            "dataset_id": run.dataset_id,
            "created_at": _stamp(run.created_at),
            "started_at": _stamp(run.started_at),
            "finished_at": _stamp(run.finished_at),
            "url": f"/api/v1/runs/{run.id}",
        },
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str)


# The active webhooks of a team without a delivery of an event for a run yet (whether each
# subscribed to the event is in its JSON list, checked by `hooks_to_tell`): built once.
_UNTOLD = (
    select(Webhook)
    .where(
        Webhook.team_id == bindparam("team_id"),
        Webhook.active.is_(True),
        ~select(WebhookDelivery.id)
        .where(
            WebhookDelivery.webhook_id == Webhook.id,
            WebhookDelivery.run_id == bindparam("run_id"),
            WebhookDelivery.event == bindparam("event"),
        )
        .exists(),
    )
    .order_by(Webhook.id)
)


def hooks_to_tell(session: Session, team_id: int, run_id: int, event: str) -> list[Webhook]:
    """The team's active webhooks subscribed to `event` that have no delivery of it for the run."""
    hooks = session.scalars(_UNTOLD, {"team_id": team_id, "run_id": run_id, "event": event})
    return [hook for hook in hooks if event in (hook.events or [])]


def record_run_event(session: Session, run_id: int) -> list[int]:
    """Write a delivery per subscribed active webhook for the run's terminal state; their ids.

    Nothing for a run that has not ended, and nothing again for deliveries already recorded.
    """
    run = session.get(Run, run_id)
    if run is None or run.status not in TERMINAL_RUN_STATES:
        return []
    event = f"run.{run.status}"
    created: list[WebhookDelivery] = []
    for hook in hooks_to_tell(session, run.team_id, run.id, event):
        delivery = WebhookDelivery(
            webhook_id=hook.id,
            team_id=run.team_id,
            event=event,
            run_id=run.id,
            body="",
            status=PENDING,
            attempts=0,
            created_at=utcnow(),
        )
        session.add(delivery)
        session.flush()
        delivery.body = run_event_body(run, event, delivery.id, hook.id)
        created.append(delivery)
    try:
        session.commit()
    except IntegrityError:  # another process recorded the same event just now; it sends them
        session.rollback()
        return []
    return [d.id for d in created]


def send(session: Session, delivery_ids: list[int]) -> None:
    """Queue the deliveries for the worker; when the broker is down, say so on each of them."""
    for delivery_id in delivery_ids:
        try:
            jobs.send_task(DELIVER_WEBHOOK, [delivery_id], "cpu")
        except jobs.BrokerDown as exc:
            log.warning("webhook delivery %s not queued: %s", delivery_id, exc.detail)
            delivery = session.get(WebhookDelivery, delivery_id)
            if delivery is not None:
                delivery.last_error = NOT_QUEUED
                session.commit()


def dispatch_run_event(session: Session, run_id: int) -> list[int]:
    """Record and queue the deliveries of a run that just ended (never raises for the broker)."""
    ids = record_run_event(session, run_id)
    send(session, ids)
    return ids
