"""`GET /api/v1/runs/{run_id}/events`: a run's status, progress and metrics as server-sent
events (`text/event-stream`), so a page or script follows a run without polling.

The stream is authorised exactly like `GET /runs/{run_id}` (a run of another team is 404). It

1. subscribes to the run's channel on the broker (503 when the broker does not answer: poll
   `GET /runs/{run_id}` instead);
2. sends the run's current state from the database as a `status` event, so a client that
   connects late misses nothing; with `since_step` (or `Last-Event-ID`, which browsers send when
   they reconnect) also the metric points after that step, as one `metrics` event;
3. relays what the worker publishes (`progress`, `metrics`, `status`), each with `id:` the last
   step it covers; a comment line (`: keepalive`) every 15 s of quiet, when it also reads the
   run again from the database (a lost event, or a change made elsewhere, is sent then);
4. ends after a terminal status (succeeded, failed, cancelled), or after `timeout` seconds when
   given (the client connects again).

No database connection is held while the stream waits: each read opens a short session.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from fastapi.sse import format_sse_event
from redis import RedisError
from sqlalchemy.exc import SQLAlchemyError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from backend.access import OwnedRun
from backend.deps import SessionDep
from backend.errors import NotFound, Unavailable, responses
from backend.events import service
from core import events

log = logging.getLogger(__name__)

router = APIRouter(prefix="/runs", tags=["runs"])

HEARTBEAT_S = 15.0  # a comment line this often while quiet; proxies keep the connection open
KEEPALIVE = b": keepalive\n\n"
BROKER_DOWN = (
    "live events come through the broker, which does not answer; follow the run with "
    "GET /api/v1/runs/{run_id} instead (check DS_BROKER_URL)"
)
EVENT_SCHEMA: dict[str, Any] = {  # one event of the stream (OpenAPI 3.2 `itemSchema`)
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["status", "progress", "metrics"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": '{"kind": <event>, "run_id": ..., "data": {...}}: a status or '
            "progress event holds the run's fields of the same names, a metrics event "
            '{"series": {name: {"steps", "values", "epochs"}}} with the new points',
        },
        "id": {"type": "string", "description": "The last step the event covers."},
    },
    "required": ["event", "data"],
}
EXAMPLE = (
    'event: status\ndata: {"kind":"status","run_id":7,"data":{"status":"running",'
    '"step":40,"epoch":0,"total_steps":120,"progress":0.33,"throughput":812.5,'
    '"eta_seconds":9.8,"error":null}}\nid: 40\n\n'
    'event: metrics\ndata: {"kind":"metrics","run_id":7,"data":{"series":{"loss":'
    '{"steps":[41,60],"values":[1.52,1.47],"epochs":[0,0]}}}}\nid: 60\n\n'
    'event: progress\ndata: {"kind":"progress","run_id":7,"data":{"step":60,"epoch":0,'
    '"total_steps":120,"progress":0.5,"throughput":820.1,"eta_seconds":7.3}}\nid: 60\n\n'
    ": keepalive\n\n"
)


def encode(event: events.RunEvent) -> bytes:
    """One event in the `text/event-stream` wire format."""
    step = event.step
    return format_sse_event(
        data_str=event.model_dump_json(),
        event=event.kind,
        id=str(step) if step is not None else None,
    )


def _changed(before: dict[str, Any], now: dict[str, Any]) -> bool:
    return before.get("status") != now.get("status") or before.get("step") != now.get("step")


async def _relay(
    sub: events.Subscription,
    run_id: int,
    first: list[events.RunEvent],
    deadline: float | None,
) -> AsyncIterator[bytes]:
    """The stream's body: `first`, then what the broker relays, until the run ends."""
    try:
        for event in first:
            yield encode(event)
        if first[0].terminal:
            return
        last = dict(first[0].data)
        while True:
            wait = (
                HEARTBEAT_S if deadline is None else min(HEARTBEAT_S, deadline - time.monotonic())
            )
            if wait <= 0:
                return
            try:
                event = await sub.next(wait)
            except (RedisError, OSError) as exc:  # the broker went away: the client falls back
                log.warning(
                    "run %s: event stream ends, the broker stopped answering (%s)", run_id, exc
                )
                return
            if event is None:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                try:
                    now = await run_in_threadpool(service.state, run_id)
                except SQLAlchemyError as exc:  # the database is away: check again next time
                    log.warning("run %s: event stream could not read the run (%s)", run_id, exc)
                    now = last
                if now is None:  # deleted meanwhile
                    return
                if not _changed(last, now):
                    yield KEEPALIVE
                    continue
                event = events.status_event(run_id, now)
            yield encode(event)
            if event.kind != "metrics":
                last.update(event.data)
            if event.terminal:
                return
    finally:
        with anyio.CancelScope(shield=True):  # also when the client went away (cancelled)
            await sub.close()


@router.get(
    "/{run_id}/events",
    response_class=StreamingResponse,
    summary="Follow a run live: status, progress and metrics as server-sent events",
    responses={
        200: {
            "description": "`text/event-stream`: the current state first, then each change "
            "until the run ends",
            "content": {"text/event-stream": {"itemSchema": EVENT_SCHEMA, "example": EXAMPLE}},
        },
        **responses(401, 403, 404, 422, 503, e503="the broker does not answer: poll the run"),
    },
)
async def run_events(
    session: SessionDep,
    run: OwnedRun,
    since_step: Annotated[
        int | None,
        Query(ge=0, description="Also send the metric points after this step (a reconnect)."),
    ] = None,
    timeout: Annotated[
        float | None,
        Query(gt=0, le=86400, description="End the stream after this many seconds."),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", description="What browsers send on reconnecting."),
    ] = None,
) -> StreamingResponse:
    run_id = run.id
    deadline = None if timeout is None else time.monotonic() + timeout
    await run_in_threadpool(session.close)  # authorised: no connection held while streaming
    if since_step is None and last_event_id and last_event_id.isdigit():
        since_step = int(last_event_id)
    sub = events.Subscription(run_id)
    try:
        await sub.open()  # before reading the state: nothing falls between the two
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("run %s: no event stream, the broker does not answer (%s)", run_id, exc)
        raise Unavailable(BROKER_DOWN.format(run_id=run_id)) from None
    try:
        state = await run_in_threadpool(service.state, run_id)
        if state is None:
            raise NotFound(f"run {run_id} not found")
        first = [events.status_event(run_id, state)]
        if since_step is not None:
            missed = await run_in_threadpool(service.missed_metrics, run_id, since_step)
            first += [missed] if missed is not None else []
    except BaseException:
        with anyio.CancelScope(shield=True):
            await sub.close()
        raise
    return StreamingResponse(
        _relay(sub, run_id, first, deadline),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(sub.close),  # also when the body never started
    )
