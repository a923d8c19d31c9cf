"""Schemas of /api/v1/comparisons."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from backend.teams.schemas import OrmModel, UtcDateTime

MAX_RUNS = 50

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class ComparisonCreate(BaseModel):
    """A named set of runs to look at side by side."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "kd vs kd+at on digits",
                    "run_ids": [12, 14],
                    "description": "does attention transfer help?",
                }
            ]
        },
    )

    name: Name = Field(description="What the comparison is about, e.g. `kd vs kd+at on digits`.")
    run_ids: list[int] = Field(
        min_length=1,
        max_length=MAX_RUNS,
        description=f"Runs of your team, 1 to {MAX_RUNS}; the first one is the baseline.",
    )
    description: Annotated[str, StringConstraints(max_length=2000)] = ""


class ComparisonOut(OrmModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 3,
                    "name": "kd vs kd+at on digits",
                    "description": "does attention transfer help?",
                    "run_ids": [12, 14],
                    "created_by": 1,
                    "created_by_name": "admin",
                    "created_at": "2026-03-02T11:00:00Z",
                }
            ]
        }
    )

    id: int
    name: str
    description: str
    run_ids: list[int] = Field(
        description="In the order they were saved; the first is the baseline."
    )
    created_by: int | None = Field(description="User id of whoever saved it.")
    created_by_name: str | None = Field(None, description="Their username.")
    created_at: UtcDateTime
