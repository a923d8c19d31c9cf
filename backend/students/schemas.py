"""Schemas of `/students/search`: a cost target and a search space in, the cost table out."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Target(BaseModel):
    """One bound: parameters, FLOPs per sample, or CPU latency at batch 1 in milliseconds."""

    model_config = ConfigDict(extra="forbid")

    params: float | None = Field(None, description="At most this many parameters.")
    flops: float | None = Field(None, description="At most this many FLOPs per sample.")
    latency_ms: float | None = Field(
        None, description="At most this CPU latency at batch 1 (one thread), in ms."
    )


class SearchIn(BaseModel):
    """What to search: a zoo architecture's depth/width grid (`architecture`, `kwargs` as the
    base) or students derived from a zoo teacher (`teacher_model_id` alone); the inputs from
    `dataset_id`, the teacher, or `input_shape` + `num_classes`."""

    model_config = ConfigDict(extra="forbid")

    target: Target
    architecture: str | None = Field(
        None, description="Zoo student with depth/width parameters (resnet, wrn, vgg, mlp, ...)."
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="The architecture's parameters the factors scale."
    )
    teacher_model_id: int | None = Field(
        None, description="Without architecture: search students derived from this zoo teacher."
    )
    dataset_id: int | None = None
    input_shape: list[int] | None = Field(None, min_length=1, max_length=4)
    num_classes: int | None = Field(None, ge=1, le=100_000)


class CandidateOut(BaseModel):  # type: ignore[no-redef]
    architecture: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    params: int
    flops: int
    latency_ms: float | None = None
    percent_of_budget: float


class FailedOut(BaseModel):  # type: ignore[no-redef]
    architecture: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    error: str


class SearchOut(BaseModel):
    """The candidates that meet the target, largest first (no accuracy: costs only)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "metric": "params",
                    "budget": 20000.0,
                    "candidates": [
                        {
                            "architecture": "resnet",
                            "kwargs": {"depth": 8, "width": 0.5},
                            "params": 19810,
                            "flops": 386688,
                            "latency_ms": 0.35,
                            "percent_of_budget": 99.0,
                        }
                    ],
                    "tried": 35,
                    "rejected": 30,
                    "failed": [],
                    "message": "5 of 35 candidates meet 20,000 parameters; the largest is "
                    "resnet {'depth': 8, 'width': 0.5} at 99.0% of it",
                    "input_shape": [1, 8, 8],
                    "num_classes": 10,
                }
            ]
        }
    )

    metric: str
    budget: float
    candidates: list[CandidateOut]
    tried: int = Field(description="Candidates measured.")
    rejected: int = Field(description="Candidates over the budget.")
    failed: list[FailedOut] = Field(default_factory=list)
    message: str
    input_shape: list[int]
    num_classes: int
