"""Webhooks: registering, changing and listing URLs and their deliveries.

Run events become deliveries in `core.webhooks.events` (shared with the worker, which records
the events of runs it finishes); the worker task `worker.tasks.deliver_webhook`
(worker/webhooks.py) sends them and retries with exponential backoff.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.audit.service import audit
from backend.deps import Principal
from backend.errors import Invalid
from backend.models.service import changes
from backend.teams.service import page
from core.clock import utcnow
from core.db.tables import Webhook, WebhookDelivery
from core.signing import new_webhook_salt, webhook_secret
from core.webhooks import addresses

log = logging.getLogger(__name__)

# -- managing webhooks ------------------------------------------------------------------------


def check_destination(url: str) -> None:
    """Refuse (422) a URL whose host is or resolves to an address webhooks may not reach
    (loopback, private, link-local, ...: see core/webhooks/addresses.py).

    A host that does not resolve now is accepted: every delivery resolves and checks it again.
    """
    try:
        addresses.check_url(url)
    except addresses.RefusedAddress as exc:
        raise Invalid("url", str(exc), loc=["body", "url"]) from None
    except addresses.Unresolvable:
        log.info("webhook host of %s does not resolve yet; checked again at delivery", url)


def create_webhook(
    session: Session, principal: Principal, url: str, events: list[str], description: str
) -> tuple[Webhook, str]:
    """A new webhook of the caller's team and its signing secret (shown only this once)."""
    check_destination(url)
    salt = new_webhook_salt()
    secret = webhook_secret(salt)
    hook = Webhook(
        team_id=principal.team_id,
        url=url,
        events=events,
        description=description,
        active=True,
        secret_salt=salt,
        secret_prefix=secret[:12],
        created_by=principal.user.id,
        created_at=utcnow(),
    )
    session.add(hook)
    session.flush()
    audit(session, principal, "webhook.create", "webhook", hook.id, {"url": url, "events": events})
    session.commit()
    return hook, secret


def list_webhooks(session: Session, team_id: int) -> list[Webhook]:
    return list(
        session.scalars(select(Webhook).where(Webhook.team_id == team_id).order_by(Webhook.id))
    )


def update_webhook(
    session: Session, principal: Principal, hook: Webhook, values: dict[str, Any]
) -> Webhook:
    """Change the webhook; a new URL is checked like a new webhook's."""
    if "url" in values and values["url"] != hook.url:
        check_destination(values["url"])
    changed = changes(hook, values)
    if changed:
        audit(session, principal, "webhook.update", "webhook", hook.id, {"changes": changed})
        session.commit()
    return hook


def delete_webhook(session: Session, principal: Principal, hook: Webhook) -> None:
    """Delete the webhook and its delivery records; queued attempts find it gone and stop."""
    audit(session, principal, "webhook.delete", "webhook", hook.id, {"url": hook.url})
    session.delete(hook)
    session.commit()


def list_deliveries(
    session: Session,
    hook: Webhook,
    *,
    limit: int,
    cursor: str | None,
    status: str | None,
    event: str | None,
) -> tuple[list[WebhookDelivery], str | None]:
    stmt = select(WebhookDelivery).where(
        WebhookDelivery.webhook_id == hook.id, WebhookDelivery.team_id == hook.team_id
    )
    if status:
        stmt = stmt.where(WebhookDelivery.status == status)
    if event:
        stmt = stmt.where(WebhookDelivery.event == event)
    return page(session, stmt, WebhookDelivery, limit, cursor)
