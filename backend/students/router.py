"""`/api/v1/students/search`: students that meet a parameter, FLOPs or latency budget."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse

from backend.access import TeamMember
from backend.deps import SessionDep
from backend.errors import responses
from backend.runs.router import PENDING_202
from backend.runs.schemas import PlanPending
from backend.students import service
from backend.students.schemas import SearchIn, SearchOut
from core import inspections

router = APIRouter(prefix="/students", tags=["students"])


@router.post(
    "/search",
    response_model=SearchOut,
    responses={
        **PENDING_202,
        **responses(
            401,
            403,
            404,
            409,
            422,
            503,
            e404="the teacher or dataset is not in your team",
            e409="the candidates could not be measured, or the teacher/dataset is not ready",
            e422="no target, several, or not positive; unknown architecture; nothing to search",
            e503="broker unreachable, or no worker measured the candidates in time",
        ),
    },
    summary="Students for a budget: the candidates of a depth/width grid that meet a target",
)
def search_students(
    session: SessionDep,
    principal: TeamMember,
    body: Annotated[
        SearchIn,
        Body(
            openapi_examples={
                "params": {
                    "summary": "resnets under 20k parameters for a dataset",
                    "value": {
                        "target": {"params": 20000},
                        "architecture": "resnet",
                        "dataset_id": 1,
                    },
                },
                "derived": {
                    "summary": "students derived from the teacher, under 0.5 ms",
                    "value": {"target": {"latency_ms": 0.5}, "teacher_model_id": 1},
                },
            }
        ),
    ],
) -> Any:
    try:
        return SearchOut.model_validate(service.search(session, principal.team_id, body))
    except service.SearchPending as exc:
        retry = inspections.RETRY_AFTER_S
        pending = PlanPending(job_id=exc.job, detail=str(exc), retry_after_s=retry)
        return JSONResponse(
            pending.model_dump(), status_code=202, headers={"Retry-After": str(retry)}
        )
