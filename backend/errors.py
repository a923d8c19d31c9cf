"""Errors a user of the API sees, and how each becomes a JSON response.

Every error body is `{"detail": "<message>"}`, the message naming the field and the fix. Request
validation errors (422) also keep FastAPI's list under `"errors"` (`[{"loc": [...], "msg": ...}]`)
so scripts can point at the field, while `"detail"` stays one readable sentence:
`losses.0: unknown loss 'kdd'; the catalog has: at, ce, fitnets, kd`.

Services raise the `ApiError` subclasses below; they know nothing about HTTP beyond the status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DataError, DisconnectionError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.jobs import BrokerDown, NoWorker

log = logging.getLogger(__name__)

DB_UNAVAILABLE = "database unavailable, retry in a few seconds"
DOES_NOT_FIT = (
    "a value in the request does not fit the database: ids and whole numbers must be below "
    "2147483648, texts within their documented length"
)
UNREADABLE_BODY = (
    "the body could not be read: send UTF-8 JSON (Content-Type: application/json) or form data "
    "that matches its Content-Type"
)


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description='Where: ["body", "losses", 0, "name"].')
    msg: str
    type: str | None = None


class ErrorOut(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"detail": "model 7 not found"},
                {
                    "detail": "losses.0.name: unknown loss 'kdd'; the catalog has: at, ce, fitnets, kd",
                    "errors": [
                        {
                            "loc": ["body", "losses", 0, "name"],
                            "msg": "unknown loss 'kdd'; the catalog has: at, ce, fitnets, kd",
                            "type": "value_error",
                        }
                    ],
                },
            ]
        }
    )

    detail: str = Field(description="What was wrong and how to fix it, in one sentence.")
    errors: list[ErrorItem] | None = Field(
        None, description="422 only: each invalid field with its location."
    )


ERROR_TEXT: dict[int, str] = {
    400: "the request cannot be carried out as sent",
    401: "not signed in, or the token is unknown, expired or revoked",
    403: "your role or token does not allow this (viewer, read-only token, another team's "
    "X-Team-Id, ...)",
    404: "no such resource in your team (other teams' ids answer the same)",
    409: "conflicts with the resource's state (not ready, still in use, already finished, ...)",
    413: "the upload is larger than DS_MAX_UPLOAD_MB",
    422: "a field is invalid; `detail` names it and `errors` lists each one",
    503: "the database, broker or a worker does not answer; nothing was changed, retry",
}


ERROR_EXAMPLES: dict[int, dict[str, Any]] = {
    400: {"detail": "the request cannot be carried out as sent"},
    401: {
        "detail": "not signed in: send `Authorization: Bearer <token>`; get a token from "
        "POST /api/v1/auth/token (username, password)"
    },
    403: {
        "detail": "your role in team 1 is viewer, which cannot change things; that needs the "
        "member role (ask a team owner or admin)"
    },
    404: {"detail": "model 7 not found"},
    409: {"detail": "model 7 is still being inspected; retry when its status is ready"},
    413: {
        "detail": "file is larger than 2048 MiB; split it, or raise DS_MAX_UPLOAD_MB on the server"
    },
    422: {
        "detail": "losses.0.name: unknown loss 'kdd'; the catalog has: at, ce, fitnets, kd",
        "errors": [
            {
                "loc": ["body", "losses", 0, "name"],
                "msg": "unknown loss 'kdd'; the catalog has: at, ce, fitnets, kd",
                "type": "value_error",
            }
        ],
    },
    503: {
        "detail": "the job queue (broker) is unreachable, so nothing was started or saved; "
        "check that Redis/Valkey runs at DS_BROKER_URL and retry"
    },
}
"""An example body of each documented error status (what `/docs` shows)."""


def responses(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, each with the `{"detail": ...}` schema.

    `described` overrides the text of a status: `responses(404, 409, e409="model in use")`.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        text = described.get(f"e{code}", ERROR_TEXT.get(code, "error"))
        out[code] = {"model": ErrorOut, "description": text}
    return out


class ApiError(Exception):
    """An error with an HTTP status and a message for the person who made the request."""

    status_code = 400

    def __init__(
        self,
        detail: str,
        *,
        loc: Sequence[str | int] | None = None,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.errors = errors
        if loc is not None and errors is None:
            self.errors = [{"loc": list(loc), "msg": detail}]


class Unauthorized(ApiError):
    status_code = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class TooLarge(ApiError):
    status_code = 413


class Invalid(ApiError):
    """422 for one field: the message is prefixed with the field (`layer_pairs[0].teacher: ...`)."""

    status_code = 422

    def __init__(self, field: str, message: str, loc: Sequence[str | int] | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message, loc=loc or [field])


class InvalidMany(ApiError):
    """422 for several fields at once: `problems` is a list of (field, message, loc)."""

    status_code = 422

    def __init__(self, problems: list[tuple[str, str, Sequence[str | int]]]) -> None:
        super().__init__(
            "; ".join(f"{field}: {msg}" for field, msg, _ in problems),
            errors=[{"loc": list(loc), "msg": msg} for _, msg, loc in problems],
        )


class Unavailable(ApiError):
    """503: a part the request needs (database, broker, worker) does not answer."""

    status_code = 503


def _loc_text(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        parts = parts[1:]
    return ".".join(parts) or "request"


def _msg_text(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def validation_detail(errors: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """One readable sentence for FastAPI's error list, and the list as `{loc, msg, type}`."""
    items = []
    for err in errors:
        loc, msg = list(err.get("loc", ())), _msg_text(str(err.get("msg", "invalid value")))
        if err.get("type") == "json_invalid":  # loc is ("body", <character offset>)
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            loc, msg = loc[:1], f"not valid JSON ({msg.lower()}{at}); send a JSON object"
        items.append({"loc": loc, "msg": msg, "type": err.get("type", "")})
    seen: list[str] = []
    for item in items:
        line = f"{_loc_text(item['loc'])}: {item['msg']}"
        if line not in seen:
            seen.append(line)
    return "; ".join(seen) or "invalid request", items


def _json(
    status: int, detail: Any, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


ERROR_REF = "#/components/schemas/ErrorOut"


BODY_TOO_LARGE = (
    "the request body is larger than its limit (uploads: DS_MAX_UPLOAD_MB; other bodies: 4 MiB)"
)


def _implied_errors(operation: dict[str, Any]) -> None:
    """Statuses every operation of a kind can answer, whatever its route declares: a signed-in
    route 403 (X-Team-Id of a team you are not in, a read-only token) and 503 (the database does
    not answer); a route with a body 413 (`backend.limits.BodyLimit`)."""
    responses = operation.setdefault("responses", {})
    implied = {"403": ERROR_TEXT[403], "503": ERROR_TEXT[503]} if "401" in responses else {}
    if "requestBody" in operation:
        implied["413"] = BODY_TOO_LARGE
    for code, text in implied.items():
        responses.setdefault(code, {"description": text})


def _document_errors(app: FastAPI) -> None:
    """Make the OpenAPI document say what the handlers below send: every 4xx/5xx is
    `{"detail": ...}` JSON (ErrorOut), FastAPI's default 422 schema included, whatever the
    media type of the route's success response."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "ErrorOut" not in components:
            own = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(own.pop("$defs", {}))
            components["ErrorOut"] = own
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                _implied_errors(operation)
                for code, response in operation.get("responses", {}).items():
                    if code[:1] not in ("4", "5"):
                        continue
                    refs = [
                        m.get("schema", {}).get("$ref")
                        for m in response.get("content", {}).values()
                    ]
                    if not refs or all(
                        r in (None, ERROR_REF, "#/components/schemas/HTTPValidationError")
                        for r in refs
                    ):
                        response["content"] = {"application/json": {"schema": {"$ref": ERROR_REF}}}
                        if code == "422":
                            response["description"] = ERROR_TEXT[422]
                    media = response.get("content", {}).get("application/json")
                    if media is not None and media.get("schema", {}).get("$ref") == ERROR_REF:
                        fallback = {"detail": response.get("description", "error")}
                        media.setdefault("example", ERROR_EXAMPLES.get(int(code), fallback))
        if "HTTPValidationError" not in json.dumps(schema.get("paths", {})):
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into `{"detail": ...}` JSON, and document
    them in the OpenAPI document."""
    _document_errors(app)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        extra = {"errors": exc.errors} if exc.errors else {}
        return _json(exc.status_code, exc.detail, exc.headers, **extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, errors = validation_detail(exc.errors())
        return _json(422, detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # Starlette's and FastAPI's answer to a body they cannot parse (not UTF-8, broken
            # multipart, not matching its Content-Type); our own 400s are ApiErrors
            why = "" if exc.detail == "There was an error parsing the body" else f" ({exc.detail})"
            detail = UNREADABLE_BODY + why
            return _json(422, detail, errors=[{"loc": ["body"], "msg": detail}])
        return _json(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(DataError)
    async def _does_not_fit(_request: Request, exc: DataError) -> JSONResponse:
        # e.g. an id beyond the database's integer range: the request's fault, not the server's
        reason = str(getattr(exc, "orig", exc)).splitlines()[0][:200]
        return _json(422, f"{DOES_NOT_FIT} ({reason})")

    @app.exception_handler(OverflowError)
    async def _overflow(_request: Request, exc: OverflowError) -> JSONResponse:
        if "SQLite" in str(exc):  # SQLite's own words for an integer beyond 64 bits
            return _json(422, f"{DOES_NOT_FIT} ({exc})")
        log.exception("unhandled error", exc_info=exc)
        return _json(500, "internal error; the API log has the details")

    @app.exception_handler(BrokerDown)
    @app.exception_handler(NoWorker)
    async def _queue_down(_request: Request, exc: BrokerDown | NoWorker) -> JSONResponse:
        # raised by core (the job queue, the student-inspection store): 503 with its message
        return _json(503, exc.detail)

    @app.exception_handler(OperationalError)
    @app.exception_handler(DisconnectionError)
    async def _db_down(_request: Request, exc: Exception) -> JSONResponse:
        log.warning("database error: %s", exc)
        return _json(503, DB_UNAVAILABLE, {"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _json(500, "internal error; the API log has the details")
