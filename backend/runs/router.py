"""`/api/v1/runs`: launch distillation runs, follow them, read their metrics and outputs, and
register a finished run's student as a model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy.orm import Session

from backend.access import (
    OwnedRun,
    Permission,
    TeamMember,
    WritableRun,
    WriterFirst,
    allowed,
    require,
    run_for_write,
)
from backend.artifacts import service as artifacts
from backend.artifacts.schemas import ArtifactOut
from backend.conditional import NOT_MODIFIED, IfNoneMatch, json_or_not_modified
from backend.deps import CredentialsDep, Principal, SessionDep, StoreDep, read_as, write_as
from backend.errors import responses
from backend.models import service as models
from backend.models.schemas import ModelOut, RegisterIn
from backend.runs import service
from backend.runs.schemas import MetricsOut, PlanIn, PlanOut, PlanPending, RunOut
from backend.teams.schemas import Page
from core import inspections
from core.config import RunConfig
from core.db.tables import Status

router = APIRouter(prefix="/runs", tags=["runs"])

RUN_CONFIG_EXAMPLES: dict[str, Any] = {
    "kd_at": {
        "summary": "KD + attention transfer into a ResNet-8",
        "description": "Logit KD (T=4) and attention transfer on the last stage, 15 epochs.",
        "value": {
            "name": "kd + at",
            "teacher": {"model_id": 1},
            "dataset": {"dataset_id": 1, "val_fraction": 0.2},
            "student": {"source": "zoo", "architecture": "resnet8", "kwargs": {"width": 0.5}},
            "layer_pairs": [{"teacher": "layer3", "student": "layer3"}],
            "losses": [
                {"name": "ce", "weight": 1.0},
                {"name": "kd", "weight": 1.0, "params": {"temperature": 4}},
                {"name": "at", "weight": 100, "pairs": [0]},
            ],
            "scheme": "offline",
            "training": {
                "epochs": 15,
                "batch_size": 64,
                "lr": 0.05,
                "optimizer": "sgd",
                "schedule": "cosine",
                "device": "auto",
            },
            "seed": 0,
        },
    },
    "kd_only": {
        "summary": "Plain Hinton KD, default student",
        "value": {"name": "kd", "teacher": {"model_id": 1}, "dataset": {"dataset_id": 1}},
    },
    "from_registered_student": {
        "summary": "Start the student from a registered model",
        "value": {
            "name": "kd from a registered student",
            "teacher": {"model_id": 1},
            "dataset": {"dataset_id": 1},
            "student": {"source": "model", "model": {"model_id": 7}},
            "losses": [{"name": "ce"}, {"name": "kd", "params": {"temperature": 4}}],
            "training": {"epochs": 5},
        },
    },
}


PENDING_202: dict[int | str, dict[str, Any]] = {
    202: {
        "model": PlanPending,
        "description": "a worker is building the zoo student's layer table; nothing was saved: "
        "send the same request again after Retry-After seconds",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before asking again.",
                "schema": {"type": "integer"},
            }
        },
    }
}


def pending(exc: service.StudentPending) -> JSONResponse:
    """The 202 that tells the caller to ask again: the student is being built."""
    body = PlanPending(job_id=exc.job, detail=str(exc), retry_after_s=inspections.RETRY_AFTER_S)
    return JSONResponse(
        body.model_dump(), status_code=202, headers={"Retry-After": str(inspections.RETRY_AFTER_S)}
    )


async def create_run(
    credentials: CredentialsDep,
    config: Annotated[RunConfig, Body(openapi_examples=RUN_CONFIG_EXAMPLES)],
) -> Any:
    # scripts and the pages launch runs in bursts: the caller, the checks, the INSERTs and the
    # publish in one worker-thread hop (the route class answers 401/403 before a body's 422)
    def create(session: Session, principal: Principal) -> Response:
        require(principal, Permission.write)
        try:
            run = service.create_run(session, principal, config)
        except service.StudentPending as exc:  # pairs to check against a student not built yet
            return pending(exc)
        body = RunOut.model_validate(run).model_dump_json()
        return Response(body, status_code=201, media_type="application/json")

    return await write_as(credentials, create, autocommit=True)  # the run saved in one statement


router.add_api_route(
    "",
    create_run,
    methods=["POST"],
    route_class_override=WriterFirst,
    response_model=RunOut,
    status_code=201,
    summary="Launch a run from a run config (teacher.model_id, dataset.dataset_id, ...)",
    responses={
        **PENDING_202,
        **responses(
            401,
            403,
            404,
            409,
            422,
            503,
            e404="a referenced model or dataset is not in your team",
            e409="a referenced model or dataset is not ready, or archived",
            e422="the config is invalid (unknown loss, layer not found, ...)",
            e503="broker unreachable (nothing saved) or no worker answered",
        ),
    },
)


@router.post(
    "/plan",
    response_model=PlanOut,
    responses={
        **PENDING_202,
        **responses(
            401,
            403,
            404,
            409,
            422,
            503,
            e503="broker unreachable, or no worker built the student within DS_INSPECT_TIMEOUT_S",
        ),
    },
    summary="Teacher and student layer tables side by side, with suggested layer pairs",
)
def plan(
    session: SessionDep,
    principal: TeamMember,
    body: Annotated[
        PlanIn,
        Body(
            openapi_examples={
                "zoo": {
                    "summary": "a zoo student",
                    "value": {
                        "teacher_model_id": 1,
                        "dataset_id": 1,
                        "student": {"architecture": "resnet8", "kwargs": {"width": 0.5}},
                    },
                }
            }
        ),
    ],
) -> Any:
    try:
        result = service.plan(
            session, principal.team_id, body.teacher_model_id, body.dataset_id, body.student
        )
    except service.StudentPending as exc:
        return pending(exc)
    return PlanOut.model_validate(result)


# The reads below are the API's most frequent requests (pages and scripts poll them). They do
# their database work in one worker-thread hop (`backend.deps.read_as`) and answer with the JSON
# the service wrote (`Response`): FastAPI then neither validates the response again nor encodes
# it; `response_model` still documents it. Each answers with an ETag and 304 to an
# `If-None-Match` that names it, so pollers get no body while nothing changed.


Reader = Callable[[Session, Principal], bytes]
PAGE_MAX = 200  # the most runs one page holds
NAME_QUERY_MAX = 200  # the longest `q`


def runs_page_reader(
    limit: int,
    cursor: str | None,
    status: Status | None,
    teacher_model_id: int | None,
    q: str | None,
) -> Reader:
    """What `GET /runs` reads (here and in `backend.fast_reads`)."""

    def read(session: Session, principal: Principal) -> bytes:
        rows, next_cursor = service.list_runs(
            session,
            principal.team_id,
            limit=limit,
            cursor=cursor,
            status=status.value if status else None,
            teacher_model_id=teacher_model_id,
            q=q,
        )
        return service.runs_page_json(rows, next_cursor)

    return read


def run_reader(run_id: int) -> Reader:
    """What `GET /runs/{run_id}` reads."""

    def read(session: Session, principal: Principal) -> bytes:
        body = service.run_for_read_json(session, run_id, principal.team_id)  # 404 first
        require(principal, Permission.read)
        return body

    return read


def metrics_reader(
    run_id: int, names: str | None, since_step: int | None, max_points: int | None
) -> Reader:
    """What `GET /runs/{run_id}/metrics` reads."""
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None

    def read(session: Session, principal: Principal) -> bytes:
        # the team check is in the read's statements: no look-up of the run before them
        run = service.RunRef(run_id, principal.team_id)
        series = service.metrics(session, run, wanted, since_step, max_points)
        if not series:  # no points, or not the team's run: 404 for that first, as OwnedRun
            service.run_ref(session, run_id, principal.team_id)
        require(principal, Permission.read)
        return service.metrics_json(series)

    return read


@router.get(
    "",
    response_model=Page[RunOut],
    responses={**NOT_MODIFIED, **responses(401, 403, 422, 503)},
    summary="Runs of your team, newest first",
)
async def list_runs(
    credentials: CredentialsDep,
    if_none_match: IfNoneMatch = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 50,
    cursor: str | None = None,
    status: Status | None = None,
    teacher_model_id: int | None = None,
    q: Annotated[
        str | None, Query(max_length=NAME_QUERY_MAX, description="Name contains (any case).")
    ] = None,
) -> Response:
    read = runs_page_reader(limit, cursor, status, teacher_model_id, q)
    return json_or_not_modified(await read_as(credentials, read), if_none_match)


@router.get(
    "/{run_id}",
    response_model=RunOut,
    responses={**NOT_MODIFIED, **responses(401, 403, 404, 422, 503)},
    summary="One run: status, progress, summary",
)
async def get_run(
    credentials: CredentialsDep, run_id: int, if_none_match: IfNoneMatch = None
) -> Response:
    return json_or_not_modified(await read_as(credentials, run_reader(run_id)), if_none_match)


@router.get(
    "/{run_id}/metrics",
    response_model=MetricsOut,
    responses={**NOT_MODIFIED, **responses(401, 403, 404, 422, 503)},
    summary="Metric series of a run",
    description=(
        "Every point of each series, in step order; or, with `max_points`, at most that many "
        "per series: a longer series is downsampled in the database by M4 (the first, last, "
        "smallest and largest point of each of `max_points / 4` buckets of steps; Jugel et al., "
        "VLDB 2014), so a chart drawn from it keeps every spike. Each series says how many "
        "points it has in all (`total`) and whether it was `downsampled`. To follow a run, "
        "read again with `since_step` set to the last step you have: only newer points come."
    ),
)
async def get_metrics(
    credentials: CredentialsDep,
    run_id: int,
    names: Annotated[
        str | None, Query(description="Comma-separated series names; default all.")
    ] = None,
    since_step: Annotated[int | None, Query(description="Only steps after this one.")] = None,
    max_points: Annotated[
        int | None,
        Query(
            ge=service.MIN_POINTS,
            le=service.MAX_POINTS,
            description="At most this many points per series (downsampled, M4); default all.",
        ),
    ] = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    read = metrics_reader(run_id, names, since_step, max_points)
    return json_or_not_modified(await read_as(credentials, read), if_none_match)


@router.post(
    "/{run_id}/cancel",
    response_model=RunOut,
    summary="Cancel a run (queued: at once, 200; running: the worker stops it, 202)",
    responses={
        202: {"model": RunOut, "description": "the worker will stop it shortly"},
        **responses(401, 403, 404, 409, 422, 503, e409="the run already finished"),
    },
)
async def cancel_run(
    credentials: CredentialsDep, run_id: int, response: Response
) -> RunOut | Response:
    def cancel(session: Session, principal: Principal) -> tuple[RunOut | bytes, bool]:
        if allowed(principal, Permission.write):  # a waiting run of the team: one statement
            cancelled = service.cancel_waiting(session, principal, run_id)
            if cancelled is not None:
                return cancelled, True
        run = run_for_write(run_id, session, principal)  # 404, then 403
        run, at_once = service.cancel(session, principal, run)
        return RunOut.model_validate(run), at_once

    out, at_once = await write_as(credentials, cancel, autocommit=True)  # each write one statement
    if isinstance(out, bytes):
        return Response(out, media_type="application/json")
    if not at_once:
        response.status_code = 202
    return out


@router.post(
    "/{run_id}/retry",
    response_model=RunOut,
    status_code=201,
    summary="Launch a new run with the same config as a finished one (failed, cancelled, ...)",
    responses={
        **PENDING_202,
        **responses(
            401,
            403,
            404,
            409,
            422,
            503,
            e409="the run has not finished, or its teacher or dataset is no longer ready",
            e503="broker unreachable (nothing saved)",
        ),
    },
)
def retry_run(session: SessionDep, principal: TeamMember, run: WritableRun) -> Any:
    try:
        return RunOut.model_validate(service.retry(session, principal, run))
    except service.StudentPending as exc:
        return pending(exc)


@router.post(
    "/{run_id}/register",
    response_model=ModelOut,
    status_code=201,
    summary="Register a succeeded run's student as a model (a teacher or student for later runs)",
    responses=responses(
        401,
        403,
        404,
        409,
        422,
        503,
        e409="the run has not succeeded, or has no student weights",
        e503="broker unreachable; nothing was saved",
    ),
)
def register_run(
    session: SessionDep,
    store: StoreDep,
    principal: TeamMember,
    run: WritableRun,
    body: Annotated[RegisterIn | None, Body()] = None,
) -> ModelOut:
    body = body or RegisterIn()
    model = models.register_run(
        session,
        store,
        principal,
        run,
        name=body.name,
        description=body.description,
        tags=list(body.tags),
    )
    return ModelOut.model_validate(model)


@router.get(
    "/{run_id}/config.yaml",
    response_class=PlainTextResponse,
    summary="The run config as YAML (runs the same with `distill-studio train`)",
    responses={
        200: {
            "content": {
                "text/yaml": {
                    "example": (
                        "name: kd\nteacher:\n  model_id: 1\ndataset:\n  dataset_id: 1\nlosses:\n- name: ce\n"
                        "- name: kd\n  params:\n    temperature: 4\ntraining:\n  epochs: 15\n"
                    )
                }
            }
        },
        **responses(401, 403, 404, 422, 503),
    },
)
def get_config_yaml(run: OwnedRun) -> PlainTextResponse:
    return PlainTextResponse(
        service.config_yaml(run),
        media_type="text/yaml",
        headers={"Content-Disposition": f'inline; filename="run-{run.id}.yaml"'},
    )


@router.get(
    "/{run_id}/artifacts",
    response_model=list[ArtifactOut],
    responses=responses(401, 403, 404, 422, 503),
    summary="A run's outputs",
)
def list_artifacts(session: SessionDep, run: OwnedRun) -> list[ArtifactOut]:
    return [ArtifactOut.model_validate(a) for a in artifacts.list_for_run(session, run)]
