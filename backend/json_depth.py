"""JSON nesting limits: a deeply nested document is a 422, never a RecursionError (500).

Python's `json.loads` recurses once per level of `[` / `{`, so a body of 100,000 `[` used to
reach the recursion limit inside FastAPI's body parsing, or in a service that parses a form
field. `nesting_depth` measures the depth without parsing (strings skipped, brackets counted by
regular expressions and C-level iteration), and:

- `JsonDepthLimit`, an ASGI middleware, checks every JSON request body (Content-Type
  application/json, */*+json, or none: FastAPI parses those as JSON too) as it streams in, and
  answers 422 before the route parses a body nested deeper than DS_MAX_JSON_DEPTH;
- `depth_problem` is what services call for JSON carried in form fields (`kwargs` of a model
  upload).
"""

from __future__ import annotations

import re
from itertools import accumulate

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.settings import get_settings

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_STEP = [0] * 256
for _ch in b"[{":
    _STEP[_ch] = 1
for _ch in b"]}":
    _STEP[_ch] = -1
JSON_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SCAN_AT_MOST = 16 * 1024 * 1024  # bodies this large are uploads (multipart), not JSON


def nesting_depth(raw: bytes | str) -> int:
    """How deeply `[` and `{` nest in a JSON text (brackets inside strings do not count)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", data))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def depth_problem(raw: bytes | str, max_depth: int | None = None) -> str | None:
    """Why a JSON text is refused for its nesting, or None when it is shallow enough."""
    limit = get_settings().max_json_depth if max_depth is None else max_depth
    depth = nesting_depth(raw)
    if depth <= limit:
        return None
    return (
        f"JSON nested {depth} levels deep; at most {limit} are accepted: send a flatter document "
        "(the limit is the studio's DS_MAX_JSON_DEPTH setting)"
    )


class TooDeep(HTTPException):
    """Raised from `receive` when a JSON body is nested too deeply; FastAPI re-raises
    HTTPExceptions from body parsing, so the app's handler answers `{"detail": ...}` with 422."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=422, detail=detail)


def _is_json(scope: Scope) -> bool:
    """Would FastAPI parse this body as JSON? (application/json, */*+json, or no Content-Type)"""
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            return (
                not kind
                or kind == b"application/json"
                or (kind.startswith(b"application/") and kind.endswith(b"+json"))
            )
    return True


class JsonDepthLimit:
    """ASGI middleware: 422 for a JSON request body nested deeper than DS_MAX_JSON_DEPTH,
    checked when its last chunk arrives, before anything parses it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") not in JSON_METHODS
            or not _is_json(scope)
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0

        async def checked_receive() -> Message:
            nonlocal size
            msg = await receive()
            if msg["type"] != "http.request" or size > SCAN_AT_MOST:
                return msg
            body = msg.get("body", b"")
            size += len(body)
            chunks.append(body)
            if size > SCAN_AT_MOST:  # an upload, not JSON FastAPI would parse: stop keeping it
                chunks.clear()
            if not msg.get("more_body", False) and size <= SCAN_AT_MOST:
                problem = depth_problem(b"".join(chunks))
                chunks.clear()
                if problem is not None:
                    raise TooDeep(f"body: {problem}")
            return msg

        await self.app(scope, checked_receive, send)
