"""Webhooks: URLs told when runs end, and their deliveries (admins and owners)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from pydantic import Field

from client.base import BaseClient, Out
from client.pagination import PAGE_SIZE, Page, walk


class Webhook(Out):
    id: int
    url: str
    description: str = ""
    events: list[str] = Field(default_factory=list)
    active: bool = True
    secret_prefix: str = ""
    created_at: datetime | None = None
    secret: str | None = Field(None, description="Only in the answer that created it.")


class WebhookDelivery(Out):
    id: int
    webhook_id: int
    event: str
    run_id: int | None = None
    status: str = "pending"
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime | None = None
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None


class WebhooksApi(BaseClient):
    """`/webhooks`."""

    def create_webhook(
        self, url: str, events: list[str] | None = None, description: str = ""
    ) -> Webhook:
        """Register a URL told when runs end; `.secret` (for checking signatures) is shown
        only in this answer."""
        body: dict[str, Any] = {"url": url, "description": description}
        if events is not None:
            body["events"] = events
        return Webhook.model_validate(self._json("POST", "/webhooks", json=body))

    def webhooks(self) -> list[Webhook]:
        """The team's webhooks (their secrets' prefixes only)."""
        return [Webhook.model_validate(w) for w in self._json("GET", "/webhooks")]

    def webhook(self, webhook_id: int) -> Webhook:
        return Webhook.model_validate(self._json("GET", f"/webhooks/{webhook_id}"))

    def update_webhook(
        self,
        webhook_id: int,
        *,
        url: str | None = None,
        events: list[str] | None = None,
        description: str | None = None,
        active: bool | None = None,
    ) -> Webhook:
        """Change a webhook's URL, events or description, or pause / resume it."""
        body = self._query(url=url, events=events, description=description, active=active)
        return Webhook.model_validate(self._json("PATCH", f"/webhooks/{webhook_id}", json=body))

    def delete_webhook(self, webhook_id: int) -> None:
        self._send("DELETE", f"/webhooks/{webhook_id}")

    def deliveries(
        self,
        webhook_id: int,
        *,
        status: str | None = None,
        event: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[WebhookDelivery]:
        """Deliveries of a webhook, newest first: status, attempts, last status code and error."""
        params = self._query(status=status, event=event, limit=limit, cursor=cursor)
        return Page[WebhookDelivery].model_validate(
            self._json("GET", f"/webhooks/{webhook_id}/deliveries", params=params)
        )

    def iter_deliveries(
        self, webhook_id: int, *, page_size: int = PAGE_SIZE, **filters: Any
    ) -> Iterator[WebhookDelivery]:
        """Every delivery of a webhook matching the filters of `deliveries()`, page by page."""
        return walk(lambda **kw: self.deliveries(webhook_id, **kw), page_size=page_size, **filters)
