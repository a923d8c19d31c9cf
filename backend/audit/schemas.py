"""Schemas of /api/v1/audit."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from backend.teams.schemas import OrmModel, UtcDateTime


class AuditEntryOut(OrmModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 88,
                    "user_id": 1,
                    "username": "admin",
                    "action": "model.update",
                    "resource_type": "model",
                    "resource_id": "7",
                    "detail": {"tags": {"old": [], "new": ["prod"]}},
                    "created_at": "2026-03-02T10:20:00Z",
                }
            ]
        }
    )

    id: int
    user_id: int | None = Field(description="null once the user was deleted; see username.")
    username: str
    action: str = Field(description="<resource>.<verb>, e.g. model.delete, run.cancel.")
    resource_type: str
    resource_id: str | None
    detail: dict[str, Any] = Field(description="What changed (old and new values), names, ...")
    created_at: UtcDateTime
