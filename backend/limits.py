"""Request-body limits, enforced while the body streams in.

FastAPI/Starlette parse a whole multipart body (spooling files to disk) before a route runs, and
read a whole JSON body into memory, so a size check in a route or service comes too late to save
the server from receiving gigabytes. `BodyLimit` wraps the ASGI `receive` channel and counts the
body bytes as they arrive:

- upload routes (`POST /api/v1/models`, `POST /api/v1/datasets`) may send DS_MAX_UPLOAD_MB plus
  `MULTIPART_SLACK` for the form fields and boundaries (the services then hold the file itself to
  exactly DS_MAX_UPLOAD_MB);
- every other request body (JSON, forms) at most `MAX_OTHER_BODY` bytes.

A declared `Content-Length` over the limit is answered 413 before a byte is read; a body sent
without one (chunked) or with a lying one is cut off with 413 at the first chunk past the limit,
and the rest is never read (uvicorn then closes the connection).
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.artifacts.service import too_large_message
from core.settings import get_settings

MULTIPART_SLACK = 1024 * 1024  # form fields and boundaries around an upload
MAX_OTHER_BODY = 4 * 1024 * 1024  # JSON documents and small forms
UPLOAD_ROUTES = frozenset({("POST", "/api/v1/models"), ("POST", "/api/v1/datasets")})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class BodyTooLarge(HTTPException):
    """Raised from `receive` when the body passes the limit; FastAPI re-raises HTTPExceptions
    from body parsing, so the app's handler answers `{"detail": ...}` with 413."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


def body_limit(scope: Scope) -> tuple[int, str]:
    """The byte limit of this request's body and the message a client gets past it."""
    path = scope.get("path", "").rstrip("/") or "/"
    if (scope.get("method"), path) in UPLOAD_ROUTES:
        limit = get_settings().max_upload_bytes
        return limit + MULTIPART_SLACK, too_large_message(limit)
    return MAX_OTHER_BODY, (
        f"request body is larger than {MAX_OTHER_BODY // (1024 * 1024)} MiB; "
        "only uploads (POST /models, POST /datasets) take large bodies"
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimit:
    """ASGI middleware: 413 as soon as a request body passes its limit (see the module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        limit, message = body_limit(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
            return

        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(message)
            return msg

        async def tracked_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            # read outside FastAPI's body parsing (so no handler answered): answer here
            if started:
                raise
            await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
