"""Schemas of /api/v1/models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backend.teams.schemas import OrmModel, Tags, UtcDateTime


class _CardFacts(BaseModel):
    source: str = Field(description="upload, or run (a registered student).")
    format: str = Field(description="pt2 | safetensors | onnx")
    input_shape: list[int]
    num_classes: int
    classes: list[str]
    accuracy: float = Field(description="Top-1 on the run's held-out split.")
    teacher_accuracy: float
    agreement: float = Field(
        description="Share of held-out samples where student and teacher agree."
    )
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


_MODEL: dict[str, Any] = {
    "id": 7,
    "name": "resnet8-kd",
    "version": 1,
    "description": "a registered student",
    "format": "safetensors",
    "architecture": "resnet8",
    "arch_kwargs": {"width": 0.5, "input_shape": [1, 8, 8], "num_classes": 10},
    "size_bytes": 312480,
    "sha256": "9f2c1e0b7d4a5c3e8f6a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6",
    "status": "ready",
    "error": None,
    "card": {
        "source": "run",
        "format": "safetensors",
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "accuracy": 0.94,
        "teacher_accuracy": 0.97,
        "agreement": 0.95,
        "size_bytes": 312480,
        "params": 78042,
        "flops": 1203456,
        "latency_ms": 0.41,
    },
    "tags": ["student", "digits"],
    "archived": False,
    "source_run_id": 12,
    "lineage": {
        "source_run_id": 12,
        "teacher_model_id": 1,
        "dataset_id": 1,
        "run_config": {"name": "kd-r8", "teacher": {"model_id": 1}, "dataset": {"dataset_id": 1}},
    },
    "created_at": "2026-03-02T10:13:05Z",
}


class ModelOut(OrmModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_MODEL]})

    id: int
    name: str
    version: int
    description: str
    format: str = Field(
        description="pt2 (torch.export archive), safetensors (zoo weights) or onnx (ONNX graph)."
    )
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
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_MODEL,
                    "inspection": {
                        "input_shape": [1, 8, 8],
                        "output_shape": [10],
                        "num_classes": 10,
                        "params": 78042,
                        "flops": 1203456,
                        "layers": [
                            {
                                "path": "conv1",
                                "type": "Conv2d",
                                "input_shape": [1, 8, 8],
                                "output_shape": [8, 8, 8],
                                "params": 72,
                                "stage": 0,
                            },
                            {
                                "path": "layer3",
                                "type": "Sequential",
                                "input_shape": [16, 4, 4],
                                "output_shape": [32, 2, 2],
                                "params": 51264,
                                "stage": 2,
                            },
                            {
                                "path": "fc",
                                "type": "Linear",
                                "input_shape": [32],
                                "output_shape": [10],
                                "params": 330,
                                "stage": None,
                            },
                        ],
                        "stages": [
                            {
                                "index": 2,
                                "resolution": [2, 2],
                                "channels": 32,
                                "layers": ["layer3"],
                                "end": "layer3",
                            }
                        ],
                    },
                }
            ]
        }
    )

    inspection: dict[str, Any] | None = Field(
        description="Input/output shapes, parameters and every layer with its output shape."
    )


class ModelUpdate(BaseModel):
    """Fields to change; those left out stay as they are."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "description": "ResNet-32x4 on CIFAR-100, 79.4% top-1",
                    "tags": ["cifar100", "teacher"],
                }
            ]
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

    name: str | None = Field(
        None, min_length=1, max_length=200, description="Default: '<run name>-student'."
    )
    description: str | None = Field(None, max_length=10_000)
    tags: Tags = Field(default_factory=list)
