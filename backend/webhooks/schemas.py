"""Schemas of /api/v1/webhooks."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from backend.teams.schemas import OrmModel, UtcDateTime

Event = Literal["run.succeeded", "run.failed", "run.cancelled"]
EVENTS: tuple[str, ...] = ("run.succeeded", "run.failed", "run.cancelled")


def _http_url(value: str) -> str:
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("give an http:// or https:// URL with a host, e.g. https://ci.example.com/hook")
    if parts.username or parts.password:
        raise ValueError("leave credentials out of the URL; check the X-Distill-Signature header instead")
    return value


WebhookUrl = Annotated[str, Field(min_length=8, max_length=2000), AfterValidator(_http_url)]


def _unique_events(events: list[str]) -> list[str]:
    if not events:
        raise ValueError(f"give at least one event: {', '.join(EVENTS)}")
    return list(dict.fromkeys(events))


class WebhookCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"url": "https://ci.example.com/distill-hook",
                          "events": ["run.succeeded", "run.failed"],
                          "description": "tell CI when a run ends"}]
        },
    )

    url: WebhookUrl
    events: Annotated[list[Event], AfterValidator(_unique_events)] = Field(
        default_factory=lambda: list(EVENTS), description="Default: every run event."
    )
    description: str = Field("", max_length=1000)


class WebhookUpdate(BaseModel):
    """Fields to change; those left out stay as they are."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"active": False}]})

    url: WebhookUrl | None = None
    events: Annotated[list[Event], AfterValidator(_unique_events)] | None = None
    description: str | None = Field(None, max_length=1000)
    active: bool | None = Field(None, description="false pauses deliveries.")


class WebhookOut(OrmModel):
    id: int
    url: str
    description: str
    events: list[str]
    active: bool
    secret_prefix: str = Field(description="The start of the signing secret, to tell them apart.")
    created_at: UtcDateTime


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="Signing secret, shown only this once: every delivery carries "
        "`X-Distill-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`."
    )


class DeliveryOut(OrmModel):
    id: int
    webhook_id: int
    event: str
    run_id: int | None
    status: str = Field(description="pending -> retrying -> succeeded | failed")
    attempts: int
    last_status_code: int | None = Field(description="HTTP status of the last attempt.")
    last_error: str | None
    created_at: UtcDateTime
    last_attempt_at: UtcDateTime | None
    next_attempt_at: UtcDateTime | None
    delivered_at: UtcDateTime | None
