"""Live run events: a run's status, progress and metrics as the server streams them
(`GET /runs/{id}/events`, server-sent events), instead of polling.

    for event in studio.run_events(run.id):
        print(event.kind, event.data)  # status (first: the current state), progress, metrics

The stream starts with the run's current state and ends after a terminal status (or after
`timeout` seconds). `RunsApi.wait()` follows it and falls back to polling when a server has no
stream (an older one: 404) or its broker is away (503).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from typing import Any

import httpx
from pydantic import Field

from client.base import BaseClient, Out
from client.errors import ApiError, detail_of

READ_TIMEOUT_S = 45.0  # the server writes at least a comment line every 15 s
MAX_STREAM_S = 86400.0  # the longest `timeout` the server takes
TERMINAL = ("succeeded", "failed", "cancelled")


class RunEvent(Out):
    """One event of a run: `kind` is status | progress | metrics; `data` holds its fields (a
    status or progress event: the run's fields of the same names; metrics: `{"series": {name:
    {"steps", "values", "epochs"}}}`, the new points). `id` is the last step it covers."""

    kind: str
    run_id: int
    data: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None

    @property
    def terminal(self) -> bool:
        """A status the run does not leave (succeeded, failed, cancelled): the stream ends."""
        return self.kind == "status" and self.data.get("status") in TERMINAL


def parse_sse(lines: Iterable[str]) -> Iterator[RunEvent]:
    """The events of a `text/event-stream` (comment lines and unknown fields skipped)."""
    data: list[str] = []
    event_id: str | None = None
    for line in lines:
        if not line:
            if data:
                body = json.loads("\n".join(data))
                yield RunEvent.model_validate({**body, "id": event_id})
            data, event_id = [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


class EventsApi(BaseClient):
    """`/runs/{id}/events`."""

    def run_events(
        self, run_id: int, *, since_step: int | None = None, timeout: float | None = None
    ) -> Iterator[RunEvent]:
        """A run's events as they happen: its current state first (a `status` event), then each
        `progress`, `metrics` and `status` event until the run ends, or `timeout` seconds pass.
        `since_step`: also the metric points after that step (one `metrics` event).

        Raises `ApiError` when the stream is refused (404: no such run, or a server without
        live events; 503: the server's broker does not answer) or the connection fails."""
        params = self._query(
            since_step=since_step, timeout=None if timeout is None else min(timeout, MAX_STREAM_S)
        )
        with self._stream("GET", f"/runs/{run_id}/events", params=params) as lines:
            yield from parse_sse(lines)

    @contextmanager
    def _stream(self, method: str, path: str, **kwargs: Any) -> Iterator[Iterator[str]]:
        """A streamed answer's lines as they arrive; ApiError for an error answer, and when
        the connection fails or breaks off."""
        url = self._url(path)
        headers = {**self._headers(), "Accept": "text/event-stream"}
        if self._own_http:  # a client passed in keeps its own timeouts (TestClient has none)
            kwargs["timeout"] = httpx.Timeout(self.timeout, read=READ_TIMEOUT_S)
        try:
            with self._http.stream(method, url, headers=headers, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(
                        response.status_code, detail_of(response), method=method, url=url
                    )
                yield response.iter_lines()
        except (httpx.HTTPError, ValueError) as exc:  # ValueError: not an event stream
            raise ApiError(
                0, f"the stream {path} broke off ({exc})", method=method, url=url
            ) from exc

    def next_update(
        self, run_id: int, *, status: str, step: int, timeout: float
    ) -> RunEvent | None:
        """The first event that tells something newer than a run seen at `status` and `step`
        (waiting up to `timeout` seconds); None when nothing changed meanwhile. Raises
        `ApiError` like `run_events` (then poll instead)."""
        with closing(self.run_events(run_id, timeout=timeout)) as stream:
            for event in stream:
                if event.kind == "status" and (
                    event.data.get("status"),
                    event.data.get("step"),
                ) == (
                    status,
                    step,
                ):
                    continue  # the current state, as already seen
                return event
        return None
