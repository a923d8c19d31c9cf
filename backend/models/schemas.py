"""Schemas of /api/v1/models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backend.teams.schemas import OrmModel, Tags, UtcDateTime


class _CardFacts(BaseModel):
    source: str = Field(description="upload, or run (a registered student).")
    format: str = Field(description="pt2 | safetensors")
    input_shape: list[int]
    num_classes: int
    classes: list[str]
    accuracy: float = Field(description="Top-1 on the run's held-out split.")
    teacher_accuracy: float
    agreement: float = Field(description="Share of held-out samples where student and teacher agree.")
    size_bytes: int
    params: int
    flops: int = Field(description="Multiply-adds of one forward of one sample.")
    latency_ms: float = Field(description="CPU, batch 1, median.")


class ModelCard(BaseModel):
    """What a model is, how good and how costly (filled by the upload, the inspection and, for a
    registered student, its run). Only known facts are present: a missing key means unknown."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"properties": _CardFacts.model_json_schema()["properties"]},
    )


class Lineage(BaseModel):
    """Where a registered student came from."""

    model_config = ConfigDict(extra="allow")

    source_run_id: int | None = None
    teacher_model_id: int | None = None
    dataset_id: int | None = None
    run_config: dict[str, Any] | None = None


class ModelOut(OrmModel):
    id: int
    name: str
    version: int
    description: str
    format: str = Field(description="pt2 (torch.export archive) or safetensors (zoo weights).")
    architecture: str | None
    arch_kwargs: dict[str, Any]
    size_bytes: int
    sha256: str
    status: str = Field(description="pending -> ready once a worker inspected it, or failed.")
    error: str | None
    card: ModelCard
    tags: list[str]
    archived: bool = Field(description="Hidden from lists unless include_archived=true.")
    source_run_id: int | None
    lineage: Lineage
    created_at: UtcDateTime


class ModelDetail(ModelOut):
    inspection: dict[str, Any] | None = Field(
        description="Input/output shapes, parameters and every layer with its output shape."
    )


class ModelUpdate(BaseModel):
    """Fields to change; those left out stay as they are."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"description": "ResNet-32x4 on CIFAR-100, 79.4% top-1",
                          "tags": ["cifar100", "teacher"]}]
        },
    )

    description: str | None = Field(None, max_length=10_000)
    tags: Tags | None = Field(None, description="Replaces the tags.")
    archived: bool | None = Field(None, description="false brings an archived model back.")


class RegisterIn(BaseModel):
    """Register a succeeded run's student as a model (its name gets a new version)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "resnet8-kd", "tags": ["student", "cifar10"]}]},
    )

    name: str | None = Field(None, min_length=1, max_length=200,
                             description="Default: '<run name>-student'.")
    description: str | None = Field(None, max_length=10_000)
    tags: Tags = Field(default_factory=list)
