"""Webhook deliveries: the Celery task that POSTs a signed run event, retrying with backoff.

Torch-free. `worker/tasks.py` imports this module (so the worker registers the task) and calls
`enqueue_run_event(run_id)` when a run ends. The API calls the same recording code for runs it
cancels before any worker saw them (core.webhooks.events.dispatch_run_event).

Every delivery carries

    Content-Type: application/json
    X-Distill-Event: run.succeeded | run.failed | run.cancelled
    X-Distill-Delivery: <delivery id>      (the same on every attempt: deduplicate on it)
    X-Distill-Signature: sha256=<hex HMAC-SHA256(webhook secret, raw body)>

and counts as delivered on any 2xx answer. Otherwise it is tried again after
DS_WEBHOOK_BACKOFF_S x 1, 2, 4, 8, 16 seconds, DS_WEBHOOK_MAX_ATTEMPTS tries in all; each attempt's
status code or error is recorded on the delivery (GET /api/v1/webhooks/{id}/deliveries).

Before each attempt the URL's host is resolved and checked again (core/webhooks/addresses.py:
no loopback, private, link-local, multicast or reserved address unless
DS_WEBHOOK_ALLOWED_NETWORKS names it); a refused address fails the delivery for good without
sending anything. The request then goes to the address that was checked (the URL's host replaced
by the IP, with the name kept in the Host header and, for https, in the TLS SNI and certificate
check), so the name cannot resolve elsewhere in between. Redirects are not followed, and of the
reply only the first `EXCERPT_CHARS` printable characters are kept (control characters dropped).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import httpx
from sqlalchemy import select, update

from core.clock import utcnow
from core.db import session_scope, with_db_retry
from core.db.tables import Webhook, WebhookDelivery
from core.settings import get_settings
from core.signing import sign_payload, webhook_secret
from core.webhooks import addresses
from core.webhooks.events import (
    DELIVER_WEBHOOK,
    FAILED,
    NOT_QUEUED,
    PENDING,
    RETRYING,
    SUCCEEDED,
    record_run_event,
    send,
)
from worker.celery_app import celery_app

log = logging.getLogger(__name__)

USER_AGENT = "DistillStudio-Webhook/1"
MAX_ERROR = 500
EXCERPT_CHARS = 200  # of the receiver's reply, kept on the delivery
READ_BYTES = 4096  # read at most this much of a reply


def backoff_s(attempts: int) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: base x 1, 2, 4, 8, 16, ..."""
    return get_settings().webhook_backoff_s * 2 ** max(attempts - 1, 0)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR else text[:MAX_ERROR] + " ..."


def excerpt(raw: bytes, limit: int = EXCERPT_CHARS) -> str:
    """At most `limit` printable characters of a reply: control characters (escape sequences,
    newlines, NULs, ...) and other unprintable ones are dropped, whitespace runs become one
    space."""
    text = raw.decode("utf-8", errors="replace")
    kept = "".join(ch if ch.isprintable() else " " for ch in text)
    kept = " ".join(kept.split())
    return kept if len(kept) <= limit else kept[:limit] + " ..."


def _post(
    target: addresses.Target, body: bytes, headers: dict[str, str], timeout: float
) -> tuple[int, bytes]:
    """POST to the checked address; the status code and the start of the reply."""
    extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        request = client.build_request(
            "POST",
            target.url,
            content=body,
            headers={**headers, "Host": target.host_header},
            extensions=extensions,
        )
        deadline = time.monotonic() + timeout
        response = client.send(request, stream=True)
        try:
            head = b""
            for chunk in response.iter_raw():
                head += chunk
                if len(head) >= READ_BYTES or time.monotonic() > deadline:
                    break  # enough to show; a slow drip does not hold the worker either
            return response.status_code, head[:READ_BYTES]
        finally:
            response.close()


def _send(
    url: str, body: bytes, headers: dict[str, str], timeout: float
) -> tuple[int | None, str | None, bool]:
    """One attempt: (status code, error, final) where final means "do not try again"."""
    try:
        target = addresses.pin(url)
    except addresses.RefusedAddress as exc:
        return None, _short(f"not sent: {exc}"), True
    except addresses.Unresolvable as exc:
        return None, _short(f"not sent: {exc}"), False
    try:
        code, head = _post(target, body, headers, timeout)
    except httpx.HTTPError as exc:
        return (
            None,
            _short(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__),
            False,
        )
    if 200 <= code < 300:
        return code, None, False
    return code, f"HTTP {code}: {excerpt(head)}".rstrip(": "), False


def attempt_delivery(delivery_id: int) -> float | None:
    """Make one attempt and record it; seconds until the next attempt, or None when done."""
    settings = get_settings()
    with session_scope() as s:
        delivery = s.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status in (SUCCEEDED, FAILED):
            return None
        hook = s.get(Webhook, delivery.webhook_id)
        if hook is None or not hook.active:
            delivery.status, delivery.next_attempt_at = FAILED, None
            delivery.last_error = "the webhook was paused or deleted before delivery"
            return None
        url, body, event, salt = hook.url, delivery.body.encode(), delivery.event, hook.secret_salt
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Accept-Encoding": "identity",  # the excerpt is read raw: no compressed replies
        "X-Distill-Event": event,
        "X-Distill-Delivery": str(delivery_id),
        "X-Distill-Signature": sign_payload(webhook_secret(salt), body),
    }
    code, error, final = _send(url, body, headers, settings.webhook_timeout_s)
    now = utcnow()
    with session_scope() as s:
        delivery = s.get(WebhookDelivery, delivery_id)
        if delivery is None:  # the webhook was deleted meanwhile
            return None
        delivery.attempts += 1
        delivery.last_attempt_at, delivery.last_status_code, delivery.last_error = now, code, error
        if error is None:
            delivery.status, delivery.delivered_at, delivery.next_attempt_at = SUCCEEDED, now, None
            return None
        if final or delivery.attempts >= settings.webhook_max_attempts:
            delivery.status, delivery.next_attempt_at = FAILED, None
            log.warning("webhook delivery %s failed for good: %s", delivery_id, error)
            return None
        wait = backoff_s(delivery.attempts)
        delivery.status, delivery.next_attempt_at = RETRYING, now + timedelta(seconds=wait)
        return wait


@celery_app.task(name=DELIVER_WEBHOOK, bind=True, max_retries=None, acks_late=True)
def deliver_webhook(self, delivery_id: int) -> str:
    """Send one webhook delivery; schedules itself again (with backoff) until it is done."""
    wait = with_db_retry(lambda: attempt_delivery(delivery_id))
    if wait is not None:
        raise self.retry(countdown=wait, queue="cpu")
    return "done"


def enqueue_run_event(run_id: int) -> list[int]:
    """Record a delivery per subscribed webhook of the run's team, and queue them.

    Call it when a run reaches succeeded, failed or cancelled. It never raises: a broken
    webhook setup must not fail the run (problems are logged and kept on the deliveries).
    """
    try:

        def record() -> list[int]:
            with session_scope() as s:
                return record_run_event(s, run_id)

        ids = with_db_retry(record, attempts=5)
    except Exception:  # noqa: BLE001
        log.exception("could not record webhook deliveries for run %s", run_id)
        return []
    try:  # through core.jobs, which publishes to the broker of the current settings
        with session_scope() as s:
            send(s, ids)
    except Exception:  # noqa: BLE001 - the database went away after recording
        log.exception("could not queue webhook deliveries %s", ids)
    return ids


def resend_unqueued_deliveries() -> list[int]:
    """Queue again the deliveries that could not be queued while the broker was away.

    Each is taken with a conditional UPDATE, so of several workers sweeping at once only one
    sends it; if the broker is still away, `send` marks it again for the next sweep.
    """
    with session_scope() as s:
        ids = list(
            s.scalars(
                select(WebhookDelivery.id).where(
                    WebhookDelivery.status == PENDING, WebhookDelivery.last_error == NOT_QUEUED
                )
            )
        )
        taken = [
            delivery_id
            for delivery_id in ids
            if s.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.last_error == NOT_QUEUED,
                )
                .values(last_error=None)
            ).rowcount
        ]
    if taken:
        log.warning("re-sending webhook deliveries %s that the broker missed", taken)
        with session_scope() as s:
            send(s, taken)
    return taken
