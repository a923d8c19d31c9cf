"""The FastAPI application: REST API v1 under /api/v1, OpenAPI at /docs.

Every route needs `Authorization: Bearer <token>` except `POST /api/v1/auth/token` (sign in) and
`GET /api/v1/health`. Run it with `distill-studio api` (uvicorn, `create_app` as factory).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import text

from backend import errors, openapi_examples, queue
from backend.artifacts.router import router as artifacts_router
from backend.audit.router import router as audit_router
from backend.auth.router import router as auth_router
from backend.catalog.router import router as catalog_router
from backend.compare.router import router as compare_router
from backend.datasets.router import router as datasets_router
from backend.events.router import router as events_router
from backend.fast_reads import FastReads
from backend.json_depth import JsonDepthLimit
from backend.limits import BodyLimit
from backend.models.router import router as models_router
from backend.runs.router import router as runs_router
from backend.students.router import router as students_router
from backend.teams.router import invitations_router, users_router
from backend.teams.router import router as teams_router
from backend.webhooks.router import router as webhooks_router
from core import jobs
from core.db import get_engine

log = logging.getLogger(__name__)
API_PREFIX = "/api/v1"


def _version() -> str:
    try:
        return version("distill-studio")
    except PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        return "0.0.0"


__version__ = _version()


class Health(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "ok", "database": True, "broker": True, "version": "0.1.0"}]
        }
    )

    status: str
    database: bool
    broker: bool
    version: str


def database_ok() -> bool:
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        log.warning("database check failed: %s", exc)
        return False


health_router = APIRouter(tags=["health"])


@health_router.get(
    "/health",
    response_model=Health,
    summary="Is the API up, and can it reach the database and broker?",
    responses={
        503: {
            "model": Health,
            "description": "the database is unreachable",
            "content": {
                "application/json": {
                    "example": {
                        "status": "degraded",
                        "database": False,
                        "broker": True,
                        "version": "0.1.0",
                    }
                }
            },
        }
    },
)
def health() -> Any:
    db, broker = database_ok(), queue.broker_ok()
    body = Health(
        status="ok" if db and broker else "degraded",
        database=db,
        broker=broker,
        version=__version__,
    )
    return JSONResponse(body.model_dump(), status_code=200 if db else 503)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    """At start-up, in the background (a broker that is down never holds the start): ready the
    broker connection the first run's publish would otherwise open (`jobs.warm_up`)."""
    producer = jobs.producer_app()
    threading.Thread(target=jobs.warm_up, args=(producer,), name="warm-up", daemon=True).start()
    yield


def create_app(*, fast_reads: bool = True) -> FastAPI:
    """The API; `fast_reads=False` without `backend.fast_reads` (every request through FastAPI's
    routes: the tests compare the two)."""
    app = FastAPI(
        lifespan=lifespan,
        title="Distill Studio",
        version=__version__,
        description=(
            "Knowledge distillation as a service: upload a teacher, pick a student, layer pairs "
            "and losses, launch runs on GPU workers, and compare them. Sign in with "
            "**Authorize** (username and password), or send `Authorization: Bearer <token>`."
        ),
    )
    errors.install(app)
    openapi_examples.install(app)
    app.add_middleware(JsonDepthLimit)  # 422 for deeply nested JSON, before parsing it
    app.add_middleware(BodyLimit)  # 413 while the body streams in, before parsing it
    if fast_reads:  # the polled reads of runs and metrics, answered before FastAPI's routing
        app.add_middleware(FastReads)
    # the router tries routes in this order: the runs' (the most requested) first
    for router in (
        health_router,
        runs_router,
        events_router,
        auth_router,
        teams_router,
        users_router,
        catalog_router,
        models_router,
        datasets_router,
        students_router,
        artifacts_router,
        audit_router,
        webhooks_router,
    ):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(compare_router, prefix=API_PREFIX)
    app.include_router(invitations_router, prefix=API_PREFIX)
    return app
