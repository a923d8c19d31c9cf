"""Schemas of artifacts."""

from __future__ import annotations

from pydantic import ConfigDict

from backend.teams.schemas import OrmModel, UtcDateTime


class ArtifactOut(OrmModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 31,
                    "run_id": 12,
                    "kind": "student_safetensors",
                    "filename": "student.safetensors",
                    "size_bytes": 312480,
                    "sha256": "9f2c1e0b7d4a5c3e8f6a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6",
                    "created_at": "2026-03-02T10:12:45Z",
                }
            ]
        }
    )

    id: int
    run_id: int | None
    kind: str
    filename: str
    size_bytes: int
    sha256: str
    created_at: UtcDateTime
