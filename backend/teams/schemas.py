"""Team schemas, and the pieces every team-scoped collection shares (pages, UTC stamps)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from core.db.tables import Role


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UtcDateTime = Annotated[datetime, AfterValidator(_utc)]
"""A datetime that always leaves the API with its UTC offset (SQLite hands back naive ones)."""

T = TypeVar("T")

TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:+/-]*$"
Tag = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=50, pattern=TAG_PATTERN),
]
"""A tag: letters, digits and . _ : + / - (up to 50 characters), e.g. `cifar10`, `prod`."""
MAX_TAGS = 20


def _unique_tags(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))


Tags = Annotated[list[Tag], Field(max_length=MAX_TAGS), AfterValidator(_unique_tags)]


class OrmModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Page(BaseModel, Generic[T]):
    """One page of a list, newest first; pass `next_cursor` as `?cursor=` for the next page."""

    items: list[T]
    next_cursor: str | None = Field(
        None, description="Opaque; null on the last page.", examples=["djE6NDE"]
    )


class TeamOut(OrmModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"id": 2, "name": "vision-lab", "role": "owner"}]}
    )

    id: int
    name: str
    role: str


class TeamCreate(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "vision-lab"}]})

    name: str = Field(min_length=1, max_length=100, description="Unique across the studio.")


class MemberOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"user_id": 3, "username": "ada", "role": "member"}]}
    )

    user_id: int
    username: str
    role: Role


class MemberAdd(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"username": "ada", "role": "member"}]}
    )

    username: str = Field(min_length=1, max_length=100, description="An existing user.")
    role: Role = Field(Role.member, description="Only owners can grant owner.")


class MemberUpdate(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"role": "admin"}]})

    role: Role


class UserCreate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"username": "ada", "password": "a long passphrase", "role": "member"}]
        }
    )

    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=8, max_length=1000, description="At least 8 characters.")
    role: Role = Field(Role.member, description="Role in the team of this request.")


class UserOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 3,
                    "username": "ada",
                    "is_superuser": False,
                    "team_id": 2,
                    "role": "member",
                    "created_at": "2026-03-02T09:30:00Z",
                }
            ]
        }
    )

    id: int
    username: str
    is_superuser: bool
    team_id: int = Field(description="The team the user was added to.")
    role: Role
    created_at: UtcDateTime


class InvitationCreate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"username": "ada", "role": "member"}]}
    )

    username: str = Field(
        min_length=1,
        max_length=100,
        description="Whom to invite; the answer is the same whether or not the name exists.",
    )
    role: Role = Field(Role.member, description="Only owners invite as owner.")


class InvitationOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 7,
                    "team_id": 2,
                    "team_name": "vision-lab",
                    "username": "ada",
                    "role": "member",
                    "status": "pending",
                    "invited_by": "grace",
                    "created_at": "2026-03-02T09:30:00Z",
                    "answered_at": None,
                }
            ]
        }
    )

    id: int
    team_id: int
    team_name: str
    username: str = Field(description="The invited user.")
    role: Role
    status: str = Field(description="pending, accepted, declined or withdrawn.")
    invited_by: str = Field(description="Username of the admin or owner who invited.")
    created_at: UtcDateTime
    answered_at: UtcDateTime | None
