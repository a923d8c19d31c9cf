"""Schemas of /api/v1/datasets."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backend.teams.schemas import OrmModel, Tags, UtcDateTime


class DatasetOut(OrmModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 1,
                    "name": "digits",
                    "description": "8x8 digits, 1797 images",
                    "format": "npz",
                    "label_column": "label",
                    "size_bytes": 460912,
                    "sha256": "3b7f0c9d2e8a4f6b1c5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b",
                    "status": "ready",
                    "error": None,
                    "info": {
                        "num_samples": 1797,
                        "num_classes": 10,
                        "classes": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
                        "class_counts": [178, 182, 177, 183, 181, 182, 181, 179, 174, 180],
                        "input_shape": [1, 8, 8],
                        "kind": "image",
                    },
                    "tags": ["digits"],
                    "archived": False,
                    "created_at": "2026-03-02T09:40:00Z",
                }
            ]
        }
    )

    id: int
    name: str
    description: str
    format: str = Field(description="npz | zip | tar | csv | parquet | jsonl | txt")
    label_column: str
    size_bytes: int
    sha256: str
    status: str = Field(description="pending -> ready once a worker scanned it, or failed.")
    error: str | None
    info: dict[str, Any] | None = Field(
        description="num_samples, num_classes, classes, class_counts, input_shape, kind."
    )
    tags: list[str]
    archived: bool = Field(description="Hidden from lists unless include_archived=true.")
    created_at: UtcDateTime

    @field_validator("info", mode="after")
    @classmethod
    def _without_preview(cls, info: dict[str, Any] | None) -> dict[str, Any] | None:
        """The sample thumbnails are served by GET /datasets/{id}/samples, not in every list."""
        if info and "preview" in info:
            return {k: v for k, v in info.items() if k != "preview"}
        return info


class SamplePreview(BaseModel):
    index: int = Field(description="The sample's position in the dataset.")
    label: str
    mime: str = Field(description="image/png or image/jpeg.")
    data: str = Field(description="The thumbnail, base64.")


class RowPreview(BaseModel):
    index: int
    label: str
    values: list[float | None]


class DatasetSamplesOut(BaseModel):
    """A few samples recorded by the worker that scanned the dataset (the API never opens an
    upload): image thumbnails spread over the classes, or the first rows of a table."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "kind": "image",
                    "samples": [
                        {
                            "index": 0,
                            "label": "0",
                            "mime": "image/png",
                            "data": "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAASUlEQVR4nGNggAMWDh4B"
                            "EQkZBgYOAQkFDQMLBgYeCRUDG48QBgYBBQOHgIQCBgYRDZuAlIoeBgYJA4+EigkrGBhkLEIK"
                            "elYcAQABlwxBKQxTygAAAABJRU5ErkJggg==",
                        }
                    ],
                    "columns": [],
                    "columns_total": None,
                    "rows": [],
                }
            ]
        }
    )

    kind: str | None = Field(description="image | tabular; null when no preview was recorded.")
    samples: list[SamplePreview] = Field(default_factory=list, description="kind image.")
    columns: list[str] = Field(default_factory=list, description="kind tabular: feature names.")
    columns_total: int | None = Field(None, description="Feature columns in the file.")
    rows: list[RowPreview] = Field(default_factory=list, description="kind tabular.")


class TokenLengthsOut(BaseModel):
    """A text dataset's token lengths with a model's tokenizer: a histogram of equal-width bins
    (`edges` [bins + 1], `counts` [bins]), the shortest, longest and mean row, and, with a max
    length, how many rows are longer (a run would cut them)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": 3,
                    "model_id": 7,
                    "edges": [4.0, 12.0, 20.0, 28.0],
                    "counts": [120, 64, 9],
                    "min": 4,
                    "max": 28,
                    "mean": 11.6,
                    "max_length": 16,
                    "over_max_length": 31,
                }
            ]
        }
    )

    dataset_id: int
    model_id: int
    edges: list[float]
    counts: list[int]
    min: int
    max: int
    mean: float
    max_length: int | None = None
    over_max_length: int | None = None


class DatasetUpdate(BaseModel):
    """Fields to change; those left out stay as they are."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"description": "CIFAR-10, 5k-image subset", "tags": ["cifar10"]}]
        },
    )

    description: str | None = Field(None, max_length=10_000)
    tags: Tags | None = Field(None, description="Replaces the tags.")
    archived: bool | None = Field(None, description="false brings an archived dataset back.")
