"""Schemas of /api/v1/runs. The request body of POST /runs is the engine's `RunConfig` itself."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backend.teams.schemas import OrmModel, UtcDateTime
from worker.engine.config import StudentSpec


class RunOut(OrmModel):
    id: int
    name: str
    status: str = Field(description="queued -> running -> succeeded | failed | cancelled")
    queue: str
    progress: float
    epoch: int
    step: int
    total_steps: int
    throughput: float | None = Field(description="Samples per second.")
    eta_seconds: float | None
    summary: dict[str, Any]
    error: str | None
    attempts: int
    cancel_requested: bool
    teacher_model_id: int | None
    dataset_id: int | None
    worker: str | None = Field(None, description="The worker (host:pid) that trains or trained it.")
    heartbeat_at: UtcDateTime | None = Field(None, description="Its worker's last sign of life.")
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None
    config: dict[str, Any]


class PlanIn(BaseModel):
    """A teacher, a dataset and a student to look at side by side before configuring a run."""

    model_config = ConfigDict(extra="forbid")

    teacher_model_id: int
    dataset_id: int | None = Field(
        None, description="Gives the student's input shape and classes (default: the teacher's)."
    )
    student: StudentSpec = Field(default_factory=StudentSpec)


class SuggestedPair(BaseModel):
    teacher: str
    student: str
    teacher_shape: list[Any] | None = None
    student_shape: list[Any] | None = None


class PlanOut(BaseModel):
    teacher: dict[str, Any] = Field(description="The teacher's inspection (layers with shapes).")
    student: dict[str, Any] = Field(description="The student's inspection.")
    suggested_pairs: list[SuggestedPair] = Field(description="Stage ends, teacher to student.")
    teacher_params: int | None
    student_params: int | None


class Series(BaseModel):
    steps: list[int]
    values: list[float | None] = Field(description="null where the value was NaN or infinite.")
    epochs: list[int]


class MetricsOut(BaseModel):
    series: dict[str, Series]
