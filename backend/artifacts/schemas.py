"""Schemas of artifacts."""

from __future__ import annotations

from backend.teams.schemas import OrmModel, UtcDateTime


class ArtifactOut(OrmModel):
    id: int
    run_id: int | None
    kind: str
    filename: str
    size_bytes: int
    sha256: str
    created_at: UtcDateTime
