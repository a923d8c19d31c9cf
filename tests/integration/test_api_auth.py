"""Signing in, tokens, teams and health."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .api_helpers import (
    CLOSED_BROKER,
    auth,
    other_team_token,
    set_env,
    set_row,
)


def test_login_good_and_bad(app_client) -> None:
    r = app_client.post("/auth/token", data={"username": "admin", "password": "admin-password-123"})
    assert r.status_code == 401  # no admin yet: the same answer as a wrong password
    from backend.bootstrap import ensure_admin
    from core.db import session_scope

    with session_scope() as session:
        info = ensure_admin(session)
    assert info.username == "admin" and info.password == "admin-password-123"
    assert info.token.startswith("ds_")

    good = app_client.post(
        "/auth/token", data={"username": "admin", "password": "admin-password-123"}
    )
    assert good.status_code == 200, good.text
    body = good.json()
    assert body["token_type"] == "bearer" and body["access_token"].startswith("ds_")
    assert datetime.fromisoformat(body["expires_at"]) > datetime.now(UTC) + timedelta(days=80)

    bad = app_client.post("/auth/token", data={"username": "admin", "password": "nope"})
    assert bad.status_code == 401 and bad.json() == {"detail": "wrong username or password"}
    assert bad.headers["www-authenticate"] == "Bearer"

    me = app_client.get("/auth/me", headers=auth(body["access_token"]))
    assert me.status_code == 200
    assert me.json()["username"] == "admin" and me.json()["role"] == "owner"
    assert me.json()["teams"] == [{"id": info.team_id, "name": "default", "role": "owner"}]


def test_401_without_or_with_bad_tokens(app_client, admin_token) -> None:
    missing = app_client.get("/models")
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    for bad in ("nonsense", "ds_abcdefgh_" + "x" * 43, admin_token + "x"):
        r = app_client.get("/models", headers=auth(bad))
        assert r.status_code == 401 and r.json()["detail"].startswith("unknown API token"), bad

    from sqlalchemy import select

    from backend.security import token_hash
    from core.db import session_scope
    from core.db.tables import ApiToken

    with session_scope() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash(admin_token)))
        token_id = row.id
        stored = session.execute(select(ApiToken.prefix, ApiToken.token_hash)).all()
    assert all(
        admin_token not in (prefix, digest) for prefix, digest in stored
    )  # only a keyed hash
    assert row.prefix == admin_token.split("_")[1] and len(row.token_hash) == 64
    assert app_client.get("/models", headers=auth(admin_token)).status_code == 200
    set_row("ApiToken", token_id, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    expired = app_client.get("/models", headers=auth(admin_token))
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]
    set_row("ApiToken", token_id, expires_at=None, revoked_at=datetime.now(UTC))
    revoked = app_client.get("/models", headers=auth(admin_token))
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]


def test_health_and_openapi(app_client, monkeypatch) -> None:
    r = app_client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["database"] is True and body["broker"] is True
    assert body["version"]

    spec = app_client.get("http://testserver/openapi.json").json()
    assert spec["info"]["title"] == "Distill Studio"
    schemes = spec["components"]["securitySchemes"]
    assert any(
        s.get("flows", {}).get("password", {}).get("tokenUrl") == "/api/v1/auth/token"
        for s in schemes.values()
    )
    assert app_client.get("http://testserver/docs").status_code == 200

    set_env(monkeypatch, DS_BROKER_URL=CLOSED_BROKER)
    degraded = app_client.get("/health")
    assert degraded.status_code == 200
    assert degraded.json()["status"] == "degraded" and degraded.json()["broker"] is False


def test_database_down_is_503(app_client, admin_token, monkeypatch) -> None:
    set_env(monkeypatch, DS_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:9/none")
    r = app_client.get("/health")
    assert r.status_code == 503 and r.json()["database"] is False
    listed = app_client.get("/models", headers=auth(admin_token))
    assert listed.status_code == 503
    assert listed.json() == {"detail": "database unavailable, retry in a few seconds"}


def test_tokens_read_only_and_revoke(api) -> None:
    created = api.post("/auth/tokens", json={"name": "script", "read_only": True})
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    assert created.json()["read_only"] and created.json()["prefix"] == token.split("_")[1]

    reader = {"Authorization": f"Bearer {token}"}
    assert api.get("/models", headers=reader).status_code == 200
    refused = api.post(
        "/models", headers=reader, files={"file": ("t.pt2", b"x")}, data={"name": "t"}
    )
    assert refused.status_code == 403 and "read-only" in refused.json()["detail"]
    run = api.post("/runs", headers=reader, json={"name": "x"})
    assert run.status_code == 403

    listed = api.get("/auth/tokens").json()
    assert created.json()["id"] in [t["id"] for t in listed] and all(
        "token" not in t for t in listed
    )
    revoked = api.delete(f"/auth/tokens/{created.json()['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert api.get("/models", headers=reader).status_code == 401


def test_team_header_and_roles(api, app_client) -> None:
    bob = other_team_token(app_client)
    me = api.get("/auth/me").json()
    other = app_client.get("/auth/me", headers=auth(bob)).json()
    assert other["team_id"] != me["team_id"]

    foreign = api.get("/models", headers={"X-Team-Id": str(other["team_id"])})
    assert foreign.status_code == 403
    assert foreign.json()["detail"] == f"X-Team-Id: you are not a member of team {other['team_id']}"
    assert api.get("/models", headers={"X-Team-Id": str(me["team_id"])}).status_code == 200

    from backend.bootstrap import create_user
    from core.db import session_scope

    with session_scope() as session:
        create_user(session, "vera", "vera-password-1", "default", "viewer")
    viewer = app_client.post(
        "/auth/token", data={"username": "vera", "password": "vera-password-1"}
    )
    headers = auth(viewer.json()["access_token"])
    assert app_client.get("/models", headers=headers).status_code == 200
    r = app_client.post(
        "/models", headers=headers, files={"file": ("t.pt2", b"x")}, data={"name": "t"}
    )
    assert r.status_code == 403 and "viewer" in r.json()["detail"]

    teams = api.get("/teams").json()
    assert [t["name"] for t in teams] == ["default"]
