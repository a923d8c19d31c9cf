"""The three reads that the pages and scripts poll, answered without FastAPI's routing and
dependency solving: `GET /api/v1/runs`, `/runs/{id}` and `/runs/{id}/metrics`.

For such a read FastAPI's machinery (matching the route among the routers, solving its
dependencies, validating each parameter) cost about 0.28 ms of CPU of the 0.9 ms the API spent
on it, more than its two statements (docs/benchmarks.md). `FastReads` sits in front of the app
and answers a request of these three itself when it recognises it whole: the path, each query
parameter and header in a plain form that FastAPI would read the same way (an integer without
sign or spaces, a known status, a value within the route's bounds; the routes' constants), a
bearer token. It reads with the routes' own readers (`backend.runs.router`: `run_reader`, ...)
in one worker-thread hop (`backend.deps.read_as`) and answers as they do
(`backend.conditional.json_or_not_modified`).

Anything else goes to the app unchanged: another path or method, a parameter it does not
know or a value it does not take as plain (FastAPI then answers, a 422 included), and every
read that fails (401, 403, 404, a lost database's 503: FastAPI reads again, and its error
handlers answer). A read has no effect but noting a token's use once a minute, so a second
read changes nothing.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from fastapi.security.utils import get_authorization_scheme_param
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.conditional import json_or_not_modified
from backend.deps import Credentials, read_as
from backend.runs import service
from backend.runs.router import (
    NAME_QUERY_MAX,
    PAGE_MAX,
    Reader,
    metrics_reader,
    run_reader,
    runs_page_reader,
)
from core.db.tables import Status

PREFIX = "/api/v1/runs"
_RUN = re.compile(r"/(\d{1,18})(/metrics)?")
_INT = re.compile(r"-?\d{1,18}")
_STATUSES = {s.value: s for s in Status}


class Plain(Exception):
    """A parameter that is not in a form read the same way here and by FastAPI."""


def _int(value: str, low: int | None = None, high: int | None = None) -> int:
    if not _INT.fullmatch(value):
        raise Plain(value)
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        raise Plain(value)
    return number


def _text(value: str, longest: int | None = None) -> str:
    if longest is not None and len(value) > longest:
        raise Plain(value)
    return value


def _page(query: dict[str, str]) -> Reader:
    status = query.get("status")
    if status is not None and status not in _STATUSES:
        raise Plain(status)
    teacher = query.get("teacher_model_id")
    q = query.get("q")
    return runs_page_reader(
        _int(query.get("limit", "50"), 1, PAGE_MAX),
        query.get("cursor"),
        _STATUSES[status] if status is not None else None,
        _int(teacher) if teacher is not None else None,
        _text(q, NAME_QUERY_MAX) if q is not None else None,
    )


def _metrics(run_id: int, query: dict[str, str]) -> Reader:
    since, most = query.get("since_step"), query.get("max_points")
    return metrics_reader(
        run_id,
        query.get("names"),
        _int(since) if since is not None else None,
        _int(most, service.MIN_POINTS, service.MAX_POINTS) if most is not None else None,
    )


# each read's query parameters: those FastAPI reads for the route; anything else is not plain
_KNOWN = {
    "page": {"limit", "cursor", "status", "teacher_model_id", "q"},
    "run": set(),
    "metrics": {"names", "since_step", "max_points"},
}


def _reader(path: str, query_string: bytes) -> Reader | None:
    """The reader of a plain read of these three; None for anything else."""
    if not path.startswith(PREFIX):
        return None
    rest = path[len(PREFIX) :]
    if rest:
        match = _RUN.fullmatch(rest)
        if match is None:
            return None
        kind = "metrics" if match.group(2) else "run"
    else:
        kind = "page"
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    query = dict(pairs)  # the last of repeated ones, as FastAPI reads a single value
    if not set(query) <= _KNOWN[kind] or "" in query.values():
        return None
    try:
        if kind == "page":
            return _page(query)
        run_id = int(match.group(1))  # type: ignore[union-attr]
        return run_reader(run_id) if kind == "run" else _metrics(run_id, query)
    except Plain:
        return None


def _headers(scope: Scope) -> tuple[Credentials, str | None] | None:
    """The bearer token, X-Team-Id and If-None-Match (the first of each, as FastAPI reads
    them); None without a token, or with an X-Team-Id that is not a plain integer."""
    found: dict[bytes, str] = {}
    for key, value in scope["headers"]:
        if key in (b"authorization", b"x-team-id", b"if-none-match") and key not in found:
            found[key] = value.decode("latin-1")
    scheme, token = get_authorization_scheme_param(found.get(b"authorization"))
    if scheme.lower() != "bearer" or not token:
        return None
    team = found.get(b"x-team-id")
    if team is not None and not _INT.fullmatch(team):
        return None
    return Credentials(token, int(team) if team is not None else None), found.get(b"if-none-match")


class FastReads:
    """ASGI middleware: answers the plain polled reads itself (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            reader = _reader(scope["path"], scope["query_string"])
            headers = _headers(scope) if reader is not None else None
            if reader is not None and headers is not None:
                credentials, if_none_match = headers
                try:
                    body = await read_as(credentials, reader)
                except Exception:  # noqa: BLE001 - FastAPI reads again and answers the error
                    pass
                else:
                    await json_or_not_modified(body, if_none_match)(scope, receive, send)
                    return
        await self.app(scope, receive, send)
