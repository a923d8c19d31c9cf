"""`/api/v1/audit`: the team's audit log (admins and owners)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from backend.access import Manager
from backend.audit import service
from backend.audit.schemas import AuditEntryOut
from backend.deps import SessionDep
from backend.errors import responses
from backend.teams.schemas import Page

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get(
    "",
    response_model=Page[AuditEntryOut],
    responses=responses(401, 403, 422, 503),
    summary="The team's audit log, newest first (admins and owners)",
)
def list_audit(
    session: SessionDep,
    principal: Manager,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    action: Annotated[
        str | None, Query(max_length=50, description="`model` (every model.*) or `model.delete`.")
    ] = None,
    resource_type: Annotated[str | None, Query(max_length=50)] = None,
    resource_id: Annotated[str | None, Query(max_length=100)] = None,
    user_id: int | None = None,
) -> Page[AuditEntryOut]:
    rows, next_cursor = service.list_entries(
        session,
        principal.team_id,
        limit=limit,
        cursor=cursor,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        user_id=user_id,
    )
    return Page[AuditEntryOut](
        items=[AuditEntryOut.model_validate(r) for r in rows], next_cursor=next_cursor
    )
