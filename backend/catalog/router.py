"""`/api/v1/catalog`: every loss, student and scheme with its parameters (the UI builds forms from it)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from backend.deps import CurrentUser
from backend.errors import responses
from worker.engine import catalog

router = APIRouter(prefix="/catalog", tags=["catalog"])


class ParamOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    type: str = Field(description="float | int | bool | str | choice")
    default: Any = None
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: list[str] | None = None


class EntryOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    title: str = ""
    help: str = ""
    params: list[ParamOut] = Field(default_factory=list)
    paper: str = ""
    kind: str = ""
    needs_pairs: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)


class CatalogOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    losses: list[EntryOut]
    students: list[EntryOut]
    schemes: list[EntryOut]
    optimizers: list[str]
    schedules: list[str]


@router.get(
    "", response_model=CatalogOut, responses=responses(401, 403, 503),
    summary="Losses, students, schemes, optimizers and schedules",
)
def get_catalog(_principal: CurrentUser) -> dict[str, Any]:
    return catalog.as_json()
