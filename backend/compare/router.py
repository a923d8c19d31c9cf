"""`/api/v1/comparisons`: save a set of runs to compare, and share it with the team."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from backend.access import DeletableComparison, OwnedComparison, Writer
from backend.compare import service
from backend.compare.schemas import ComparisonCreate, ComparisonModelOut, ComparisonOut
from backend.deps import CurrentUser, SessionDep, TeamDep
from backend.errors import responses
from backend.teams.schemas import Page
from core.db.tables import Comparison

router = APIRouter(prefix="/comparisons", tags=["comparisons"])


def _out(row: Comparison, names: dict[int, str]) -> ComparisonOut:
    out = ComparisonOut.model_validate(row)
    out.created_by_name = names.get(row.created_by) if row.created_by is not None else None
    return out


@router.post(
    "",
    response_model=ComparisonOut,
    status_code=201,
    responses=responses(401, 403, 404, 422, 503),
    summary="Save a comparison of runs for the team (the first run is the baseline)",
)
def create_comparison(
    session: SessionDep, principal: Writer, body: ComparisonCreate
) -> ComparisonOut:
    row = service.create(session, principal, body.name, body.run_ids, body.description)
    return _out(row, {principal.user.id: principal.user.username})


@router.get(
    "",
    response_model=Page[ComparisonOut],
    responses=responses(401, 422, 503),
    summary="Your team's saved comparisons, newest first",
)
def list_comparisons(
    session: SessionDep,
    team_id: TeamDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> Page[ComparisonOut]:
    rows, next_cursor = service.list_comparisons(session, team_id, limit=limit, cursor=cursor)
    names = service.usernames(session, rows)
    return Page[ComparisonOut](items=[_out(r, names) for r in rows], next_cursor=next_cursor)


@router.get(
    "/{comparison_id}",
    response_model=ComparisonOut,
    responses=responses(401, 404, 422, 503),
    summary="One saved comparison",
)
def get_comparison(session: SessionDep, row: OwnedComparison) -> ComparisonOut:
    return _out(row, service.usernames(session, [row]))


@router.get(
    "/{comparison_id}/models",
    response_model=list[ComparisonModelOut],
    responses=responses(401, 404, 422, 503),
    summary="Every trained model of the comparison's runs (peers, generations, int8, ...)",
)
def comparison_models(session: SessionDep, row: OwnedComparison) -> list[ComparisonModelOut]:
    return [ComparisonModelOut.model_validate(m) for m in service.models(session, row)]


@router.delete(
    "/{comparison_id}",
    status_code=204,
    response_class=Response,
    responses=responses(401, 403, 404, 422, 503),
    summary="Delete a saved comparison (whoever saved it, or a team admin or owner)",
)
def delete_comparison(
    session: SessionDep, principal: CurrentUser, row: DeletableComparison
) -> Response:
    service.delete(session, principal, row)
    return Response(status_code=204)
