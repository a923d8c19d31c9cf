"""Schemas of /api/v1/comparisons."""

from __future__ import annotations

from typing import Annotated, Any

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


class ComparisonModelOut(BaseModel):
    """One trained model of a compared run (`core.trained_models`): a run that trained several
    (`online` peers, born-again generations, an int8 student, ...) has a row for each."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "run_id": 14,
                    "run_name": "dml 3 peers",
                    "run_status": "succeeded",
                    "label": "peer 1",
                    "top1": 0.912,
                    "agreement": 0.95,
                    "params": 78042,
                    "size_bytes": 316416,
                    "flops": 1210000,
                    "cpu_latency_ms": 0.41,
                    "val_prefix": "val/p1/",
                    "artifacts": {"peer1_student_pt2": "peer1_student.pt2"},
                }
            ]
        }
    )

    run_id: int
    run_name: str
    run_status: str
    label: str = Field(
        description="`student`, `peer k`, `generation k`, `int8`, or a scheme's own label."
    )
    top1: float | None = None
    agreement: float | None = None
    params: float | None = None
    size_bytes: float | None = None
    flops: float | None = None
    cpu_latency_ms: float | None = None
    val_prefix: str | None = Field(
        None, description="Where its validation series are (`val/p1/` -> `val/p1/top1`)."
    )
    artifacts: dict[str, Any] = Field(
        default_factory=dict, description="Its weight artifacts: {kind: file name}."
    )
