"""`/api/v1/auth`: sign in (OAuth2 password flow, so /docs "Authorize" works), who am I, tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordRequestForm

from backend.access import Account
from backend.auth import service
from backend.auth.schemas import ApiTokenCreated, ApiTokenOut, MeOut, TokenCreate, TokenOut
from backend.deps import CurrentUser, SessionDep
from backend.errors import responses
from backend.teams.schemas import TeamOut
from backend.teams.service import user_teams

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/token",
    response_model=TokenOut,
    summary="Sign in with username and password",
    responses=responses(
        401,
        422,
        429,
        503,
        e401="wrong username or password",
        e429="too many sign-in attempts for this account from this address, or from this "
        "address; wait the seconds of the Retry-After header",
    ),
    openapi_extra={
        "requestBody": {
            "content": {
                "application/x-www-form-urlencoded": {
                    "example": {"username": "admin", "password": "a long passphrase"},
                }
            }
        }
    },
)
def login(
    request: Request, session: SessionDep, form: Annotated[OAuth2PasswordRequestForm, Depends()]
) -> TokenOut:
    address = request.client.host if request.client else "unknown"
    row, token = service.login(session, form.username, form.password, address)
    return TokenOut(access_token=token, expires_at=row.expires_at)


@router.get(
    "/me",
    response_model=MeOut,
    responses=responses(401, 403, 503),
    summary="Who you are and which team this request acts for",
)
def me(session: SessionDep, principal: CurrentUser) -> MeOut:
    scope = principal.token.team_id
    teams = [
        TeamOut(id=t.id, name=t.name, role=role)
        for t, role in user_teams(session, principal.user.id)
        if scope in (None, t.id)
    ]
    return MeOut(
        id=principal.user.id,
        username=principal.user.username,
        team_id=principal.team_id,
        role=principal.role,
        read_only=principal.read_only,
        is_superuser=principal.user.is_superuser,
        teams=teams,
    )


@router.post(
    "/tokens",
    response_model=ApiTokenCreated,
    status_code=201,
    responses=responses(401, 403, 422, 503),
    summary="Create an API token for scripts (shown once); never wider than the token you use",
)
def create_token(session: SessionDep, principal: CurrentUser, body: TokenCreate) -> ApiTokenCreated:
    row, token = service.create_token(
        session, principal, body.name, body.read_only, body.team_scoped, body.expires_in_days
    )
    return ApiTokenCreated.model_validate(
        {**ApiTokenOut.model_validate(row).model_dump(), "token": token}
    )


@router.get(
    "/tokens",
    response_model=list[ApiTokenOut],
    responses=responses(401, 503),
    summary="Your API tokens (prefix, scope, last use, expiry; never the secret); a team-scoped "
    "token sees only that team's",
)
def list_tokens(session: SessionDep, principal: CurrentUser) -> list[ApiTokenOut]:
    return [ApiTokenOut.model_validate(r) for r in service.list_tokens(session, principal)]


@router.delete(
    "/tokens/{token_id}",
    response_model=ApiTokenOut,
    responses=responses(401, 403, 404, 422, 503),
    summary="Revoke one of your tokens (refused with 401 from then on)",
)
def revoke_token(session: SessionDep, principal: Account, token_id: int) -> ApiTokenOut:
    return ApiTokenOut.model_validate(service.revoke_token(session, principal, token_id))
