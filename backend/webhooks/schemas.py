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
        raise ValueError(
            "give an http:// or https:// URL with a host, e.g. https://ci.example.com/hook"
        )
    if parts.username or parts.password:
        raise ValueError(
            "leave credentials out of the URL; check the X-Distill-Signature header instead"
        )
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
            "examples": [
                {
                    "url": "https://ci.example.com/distill-hook",
                    "events": ["run.succeeded", "run.failed"],
                    "description": "tell CI when a run ends",
                }
            ]
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


_WEBHOOK = {
    "id": 5,
    "url": "https://ci.example.com/distill-hook",
    "description": "tell CI when a run ends",
    "events": ["run.succeeded", "run.failed"],
    "active": True,
    "secret_prefix": "whsec_TFoI6U",
    "created_at": "2026-03-02T09:45:00Z",
}


class WebhookOut(OrmModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_WEBHOOK]})

    id: int
    url: str
    description: str
    events: list[str]
    active: bool
    secret_prefix: str = Field(description="The start of the signing secret, to tell them apart.")
    created_at: UtcDateTime


class WebhookCreated(WebhookOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {**_WEBHOOK, "secret": "whsec_TFoI6Uw3Mn3y4LzR_qPnKYTue4Sc3GpiGuHM5tCYOlo"}
            ]
        }
    )

    secret: str = Field(
        description="Signing secret, shown only this once: every delivery carries "
        "`X-Distill-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`."
    )


class DeliveryOut(OrmModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 17,
                    "webhook_id": 5,
                    "event": "run.succeeded",
                    "run_id": 12,
                    "status": "retrying",
                    "attempts": 2,
                    "last_status_code": 502,
                    "last_error": "HTTP 502 from ci.example.com",
                    "created_at": "2026-03-02T10:13:00Z",
                    "last_attempt_at": "2026-03-02T10:13:30Z",
                    "next_attempt_at": "2026-03-02T10:15:30Z",
                    "delivered_at": None,
                }
            ]
        }
    )

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
