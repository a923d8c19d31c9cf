"""API tokens for scripts: create, list, revoke."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from client.base import BaseClient, Out


class ApiToken(Out):
    id: int
    name: str = "token"
    prefix: str = ""
    team_id: int | None = None
    read_only: bool = False
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    token: str | None = Field(None, description="The secret; only in the answer that created it.")


class TokensApi(BaseClient):
    """`/auth/tokens`."""

    def create_token(
        self,
        name: str = "token",
        *,
        read_only: bool = False,
        team_scoped: bool = False,
        expires_in_days: int | None = None,
    ) -> ApiToken:
        """A new API token for scripts; its secret (`.token`) is shown only this once."""
        body = {
            "name": name,
            "read_only": read_only,
            "team_scoped": team_scoped,
            "expires_in_days": expires_in_days,
        }
        return ApiToken.model_validate(self._json("POST", "/auth/tokens", json=body))

    def tokens(self) -> list[ApiToken]:
        """Your API tokens (never their secrets)."""
        return [ApiToken.model_validate(t) for t in self._json("GET", "/auth/tokens")]

    def revoke_token(self, token_id: int) -> ApiToken:
        """Revoke one of your tokens; it is refused with 401 from then on."""
        return ApiToken.model_validate(self._json("DELETE", f"/auth/tokens/{token_id}"))
