"""Schemas of /api/v1/auth."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from backend.teams.schemas import OrmModel, TeamOut, UtcDateTime

EXAMPLE_TOKEN = "ds_k3q9x2mv_hZvd3ggKgyc9HjEEZsXV38vFwCVY_MXpFbq2_urxHjQ"
_API_TOKEN = {
    "id": 4,
    "name": "ci",
    "prefix": "k3q9x2mv",
    "team_id": 1,
    "read_only": True,
    "created_at": "2026-03-02T09:30:00Z",
    "last_used_at": "2026-03-05T18:02:11Z",
    "expires_at": "2026-04-01T09:30:00Z",
    "revoked_at": None,
}


class TokenOut(BaseModel):
    """OAuth2 token response: send `Authorization: Bearer <access_token>`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": EXAMPLE_TOKEN,
                    "token_type": "bearer",
                    "expires_at": "2026-04-01T09:30:00Z",
                }
            ]
        }
    )

    access_token: str
    token_type: str = "bearer"
    expires_at: UtcDateTime | None


class MeOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 1,
                    "username": "admin",
                    "team_id": 1,
                    "role": "owner",
                    "read_only": False,
                    "is_superuser": True,
                    "teams": [
                        {"id": 1, "name": "default", "role": "owner"},
                        {"id": 2, "name": "vision-lab", "role": "admin"},
                    ],
                }
            ]
        }
    )

    id: int
    username: str
    team_id: int = Field(description="The team this request acts for.")
    role: str = Field(description="Your role in that team.")
    read_only: bool = False
    is_superuser: bool = Field(
        False, description="A studio administrator: creates users and teams."
    )
    teams: list[TeamOut]


class TokenCreate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "ci", "read_only": True, "team_scoped": True, "expires_in_days": 30}
            ]
        }
    )

    name: str = Field("token", min_length=1, max_length=100)
    read_only: bool = Field(False, description="Only GET requests work with it.")
    team_scoped: bool = Field(
        False,
        description="Bind the token to the team of this request (X-Team-Id is then fixed). "
        "Required when the token you use is itself scoped.",
    )
    expires_in_days: int | None = Field(
        None,
        ge=0,
        le=3650,
        description="Default DS_TOKEN_TTL_DAYS; 0 never expires. Never later than the expiry of "
        "the token you use: a later one is cut to it.",
    )


class ApiTokenOut(OrmModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_API_TOKEN]})

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
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{**_API_TOKEN, "last_used_at": None, "token": EXAMPLE_TOKEN}]
        }
    )

    token: str = Field(description="The token itself; shown only this once.")
