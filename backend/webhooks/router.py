"""`/api/v1/webhooks`: URLs told when a team's runs end (admins and owners)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from backend.access import ManagedWebhook, Manager, TeamMember
from backend.deps import SessionDep
from backend.errors import responses
from backend.teams.schemas import Page
from backend.webhooks import service
from backend.webhooks.schemas import (
    DeliveryOut,
    Event,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
    WebhookUpdate,
)

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


@router.post(
    "",
    response_model=WebhookCreated,
    status_code=201,
    responses=responses(401, 403, 422, 503),
    summary="Register a URL to be told when runs end; the signing secret is shown once",
)
def create_webhook(session: SessionDep, principal: Manager, body: WebhookCreate) -> WebhookCreated:
    hook, secret = service.create_webhook(
        session, principal, body.url, list(body.events), body.description
    )
    return WebhookCreated.model_validate(
        {**WebhookOut.model_validate(hook).model_dump(), "secret": secret}
    )


@router.get(
    "",
    response_model=list[WebhookOut],
    responses=responses(401, 403, 503),
    summary="Your team's webhooks",
)
def list_webhooks(session: SessionDep, principal: Manager) -> list[WebhookOut]:
    return [WebhookOut.model_validate(h) for h in service.list_webhooks(session, principal.team_id)]


@router.get(
    "/{webhook_id}",
    response_model=WebhookOut,
    responses=responses(401, 403, 404, 422, 503),
    summary="One webhook",
)
def get_webhook(hook: ManagedWebhook) -> WebhookOut:
    return WebhookOut.model_validate(hook)


@router.patch(
    "/{webhook_id}",
    response_model=WebhookOut,
    responses=responses(401, 403, 404, 422, 503),
    summary="Change a webhook's URL, events or description, or pause it (active: false)",
)
def update_webhook(
    session: SessionDep, principal: TeamMember, hook: ManagedWebhook, body: WebhookUpdate
) -> WebhookOut:
    values = body.model_dump(exclude_unset=True, exclude_none=True)
    return WebhookOut.model_validate(service.update_webhook(session, principal, hook, values))


@router.delete(
    "/{webhook_id}",
    status_code=204,
    response_class=Response,
    responses={
        204: {"description": "deleted, with its delivery records"},
        **responses(401, 403, 404, 422, 503),
    },
    summary="Delete a webhook (its pending retries stop)",
)
def delete_webhook(session: SessionDep, principal: TeamMember, hook: ManagedWebhook) -> Response:
    service.delete_webhook(session, principal, hook)
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=Page[DeliveryOut],
    responses=responses(401, 403, 404, 422, 503),
    summary="Deliveries of a webhook, newest first: status, attempts, last status code and error",
)
def list_deliveries(
    session: SessionDep,
    hook: ManagedWebhook,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    status: Literal["pending", "retrying", "succeeded", "failed"] | None = None,
    event: Event | None = None,
) -> Page[DeliveryOut]:
    rows, next_cursor = service.list_deliveries(
        session, hook, limit=limit, cursor=cursor, status=status, event=event
    )
    return Page[DeliveryOut](
        items=[DeliveryOut.model_validate(r) for r in rows], next_cursor=next_cursor
    )
