"""Schemas of /api/v1/runs. The request body of POST /runs is the engine's `RunConfig` itself."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backend.teams.schemas import OrmModel, UtcDateTime
from core.config import StudentSpec


class RunOut(OrmModel):
    # every field but `summary` and `config` is a column of `runs` of the same name: the reads
    # of runs select them (`service.RUN_COLUMNS`) and write this JSON without this model
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 12,
                    "name": "kd + at",
                    "status": "succeeded",
                    "queue": "gpu",
                    "progress": 1.0,
                    "epoch": 15,
                    "step": 1350,
                    "total_steps": 1350,
                    "throughput": 4210.5,
                    "eta_seconds": None,
                    "summary": {
                        "teacher_top1": 0.97,
                        "student_top1": 0.94,
                        "agreement": 0.95,
                        "student_params": 78042,
                        "student_size_bytes": 312480,
                        "student_cpu_latency_ms": 0.41,
                    },
                    "error": None,
                    "attempts": 1,
                    "cancel_requested": False,
                    "teacher_model_id": 1,
                    "dataset_id": 1,
                    "worker": "gpu-box-1:4121",
                    "heartbeat_at": "2026-03-02T10:12:58Z",
                    "created_at": "2026-03-02T10:00:00Z",
                    "started_at": "2026-03-02T10:00:02Z",
                    "finished_at": "2026-03-02T10:13:00Z",
                    "config": {
                        "name": "kd + at",
                        "teacher": {"model_id": 1},
                        "dataset": {"dataset_id": 1},
                        "losses": [
                            {"name": "ce"},
                            {"name": "kd", "params": {"temperature": 4}},
                            {"name": "at", "weight": 100, "pairs": [0]},
                        ],
                        "training": {"epochs": 15},
                    },
                }
            ]
        }
    )

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
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "teacher": {
                        "params": 1092138,
                        "layers": [
                            {"path": "layer3", "type": "Sequential", "output_shape": [128, 2, 2]}
                        ],
                    },
                    "student": {
                        "params": 78042,
                        "layers": [
                            {"path": "layer3", "type": "Sequential", "output_shape": [32, 2, 2]}
                        ],
                    },
                    "suggested_pairs": [
                        {
                            "teacher": "layer3",
                            "student": "layer3",
                            "teacher_shape": [128, 2, 2],
                            "student_shape": [32, 2, 2],
                        }
                    ],
                    "teacher_params": 1092138,
                    "student_params": 78042,
                }
            ]
        }
    )

    teacher: dict[str, Any] = Field(description="The teacher's inspection (layers with shapes).")
    student: dict[str, Any] = Field(description="The student's inspection.")
    suggested_pairs: list[SuggestedPair] = Field(description="Stage ends, teacher to student.")
    teacher_params: int | None
    student_params: int | None


class PlanPending(BaseModel):
    """202: a worker is building the student's layer table; nothing was saved. Send the same
    request again after `Retry-After` seconds (the student is built once, however often asked)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "pending",
                    "job_id": "3f2a9c0d1b7e4a5f8c6d2e1f0a9b8c7d",
                    "detail": "a worker is building the layer table of the student 'resnet8'; "
                    "nothing was saved: send the same request again in 2s",
                    "retry_after_s": 2,
                }
            ]
        }
    )

    status: str = Field("pending", description="Always `pending`.")
    job_id: str = Field(
        description="The student inspection being built (a hash of its build "
        "arguments): the same for everyone who asks for it."
    )
    detail: str
    retry_after_s: int = Field(description="Ask again after this many seconds.")


class Series(BaseModel):
    steps: list[int]
    values: list[float | None] = Field(description="null where the value was NaN or infinite.")
    epochs: list[int]
    total: int = Field(
        0, description="Points of the series in all (after `since_step`), however many are sent."
    )
    downsampled: bool = Field(
        False, description="True when fewer points than `total` are sent (`max_points`, M4)."
    )


class MetricsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "series": {
                        "loss": {
                            "steps": [1, 2, 3],
                            "values": [2.31, 1.87, 1.52],
                            "epochs": [1, 1, 1],
                            "total": 3,
                            "downsampled": False,
                        },
                        "val/top1": {
                            "steps": [3],
                            "values": [0.71],
                            "epochs": [1],
                            "total": 1,
                            "downsampled": False,
                        },
                    }
                }
            ]
        }
    )

    series: dict[str, Series]
