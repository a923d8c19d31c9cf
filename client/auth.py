"""Signing in, who you are, and whether the studio is up."""

from __future__ import annotations

from datetime import datetime
from typing import Self

import httpx
from pydantic import Field

from client.base import BaseClient, Out
from client.teams import TeamRef


class Token(Out):
    access_token: str
    token_type: str = "bearer"
    expires_at: datetime | None = None


class Me(Out):
    id: int
    username: str
    team_id: int | None = None
    role: str | None = None
    read_only: bool = False
    is_superuser: bool = False
    teams: list[TeamRef] = Field(default_factory=list)


class Health(Out):
    status: str
    database: bool | str | None = Field(None, description="Whether the database answers.")
    broker: bool | str | None = Field(None, description="Whether the broker answers.")
    version: str | None = None


class AuthApi(BaseClient):
    """`/auth/token`, `/auth/me`, `/health`."""

    @classmethod
    def login(
        cls,
        base_url: str,
        username: str,
        password: str,
        *,
        http: httpx.Client | None = None,
        timeout: float = 30,
    ) -> Self:
        """Exchange a username and password for a token; returns a logged-in client."""
        client = cls(base_url, http=http, timeout=timeout)
        token = client.get_token(username, password)
        client.token = token.access_token
        return client

    def get_token(self, username: str, password: str) -> Token:
        """A session token for a username and password."""
        data = {"username": username, "password": password}
        return Token.model_validate(self._json("POST", "/auth/token", data=data))

    def me(self) -> Me:
        """The signed-in user, the team acted for and the user's teams."""
        return Me.model_validate(self._json("GET", "/auth/me"))

    def health(self) -> Health:
        """Whether the API, its database and its broker answer."""
        return Health.model_validate(self._json("GET", "/health"))
