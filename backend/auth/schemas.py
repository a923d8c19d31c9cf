"""Schemas of /api/v1/auth."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from backend.teams.schemas import OrmModel, TeamOut, UtcDateTime


class TokenOut(BaseModel):
    """OAuth2 token response: send `Authorization: Bearer <access_token>`."""

    access_token: str
    token_type: str = "bearer"
    expires_at: UtcDateTime | None


class MeOut(BaseModel):
    id: int
    username: str
    team_id: int = Field(description="The team this request acts for.")
    role: str = Field(description="Your role in that team.")
    read_only: bool = False
    teams: list[TeamOut]


class TokenCreate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "ci", "read_only": True, "team_scoped": True, "expires_in_days": 30}]
        }
    )

    name: str = Field("token", min_length=1, max_length=100)
    read_only: bool = Field(False, description="Only GET requests work with it.")
    team_scoped: bool = Field(
        False, description="Bind the token to the team of this request (X-Team-Id is then fixed)."
    )
    expires_in_days: int | None = Field(
        None, ge=0, le=3650, description="Default DS_TOKEN_TTL_DAYS; 0 never expires."
    )


class ApiTokenOut(OrmModel):
    id: int
    name: str
    prefix: str
    team_id: int | None
    read_only: bool
    created_at: UtcDateTime
    last_used_at: UtcDateTime | None
    expires_at: UtcDateTime | None
    revoked_at: UtcDateTime | None


class ApiTokenCreated(ApiTokenOut):
    token: str = Field(description="The token itself; shown only this once.")
