"""Issue 9, items 4-6: the account attacks of a hostile member of a shared studio.

- a team-scoped, short-lived token mints an unscoped, never-expiring one (tokens never widen);
- 100 wrong passwords in parallel, then the right one (login throttling, per (account, address)
  and per address, shared by every API process through the broker);
- a viewer creates a team, creates accounts and adds anyone to it (who may create what).

Each was run against the code before the fix and succeeded; these tests show it no longer does.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi.testclient import TestClient

from .api_helpers import auth, set_env
from .servers import ApiServer


def _user(username: str, team: str, role: str) -> None:
    from backend.bootstrap import create_user
    from core.db import session_scope

    with session_scope() as session:
        create_user(session, username, f"{username}-password-1", team, role)


def _login(client: TestClient, username: str) -> dict[str, str]:
    r = client.post(
        "/auth/token", data={"username": username, "password": f"{username}-password-1"}
    )
    assert r.status_code == 200, r.text
    return auth(r.json()["access_token"])


def _audit(api: TestClient, team_id: int, action: str) -> list[dict[str, Any]]:
    r = api.get(
        "/audit", params={"action": action, "limit": 200}, headers={"X-Team-Id": str(team_id)}
    )
    assert r.status_code == 200, r.text
    return r.json()["items"]


# -- 4. tokens never widen ----------------------------------------------------------------------


def test_a_scoped_short_token_cannot_mint_a_wider_one(api: TestClient) -> None:
    home = api.get("/auth/me").json()["team_id"]
    lab = api.post("/teams", json={"name": "lab"}).json()["id"]
    in_lab = {"X-Team-Id": str(lab)}
    scoped = api.post(
        "/auth/tokens",
        headers=in_lab,
        json={"name": "lab-1d", "team_scoped": True, "expires_in_days": 1},
    ).json()
    short = auth(scoped["token"])
    short_expiry = datetime.fromisoformat(scoped["expires_at"])

    # the attack: an unscoped, never-expiring token from a team-scoped one valid 1 day
    r = api.post(
        "/auth/tokens",
        headers=short,
        json={"name": "forever", "team_scoped": False, "expires_in_days": 0},
    )
    assert r.status_code == 403, r.text
    assert r.json()["detail"] == (
        f"team_scoped: this token is scoped to team {lab}, so the tokens it creates must be "
        "scoped to that team too; send team_scoped: true, or sign in with a password"
    )
    assert home not in [t["id"] for t in api.get("/teams", headers=short).json()]

    # within its scope it may create tokens, but never one that outlives it
    for days in (0, None, 3650):
        r = api.post(
            "/auth/tokens",
            headers=short,
            json={"name": f"child-{days}", "team_scoped": True, "expires_in_days": days},
        )
        assert r.status_code == 201, r.text
        child = r.json()
        assert child["team_id"] == lab and child["expires_at"] is not None
        assert datetime.fromisoformat(child["expires_at"]) <= short_expiry
    r = api.post(
        "/auth/tokens",
        headers=auth(child["token"]),
        json={"name": "grandchild", "team_scoped": True, "expires_in_days": 0},
    )
    assert datetime.fromisoformat(r.json()["expires_at"]) <= short_expiry

    # it sees and revokes only the tokens of its team
    listed = {t["name"] for t in api.get("/auth/tokens", headers=short).json()}
    assert (
        "lab-1d" in listed
        and "child-0" in listed
        and not any(t["team_id"] != lab for t in api.get("/auth/tokens", headers=short).json())
    )
    own = api.get("/auth/tokens").json()
    unscoped = next(t for t in own if t["team_id"] is None)
    assert api.delete(f"/auth/tokens/{unscoped['id']}", headers=short).status_code == 404

    # read-only stays read-only, whoever asks
    ro = api.post(
        "/auth/tokens", headers=short, json={"name": "ro", "team_scoped": True, "read_only": True}
    ).json()
    r = api.post(
        "/auth/tokens", headers=auth(ro["token"]), json={"name": "rw", "team_scoped": True}
    )
    assert r.status_code == 403 and "read-only" in r.json()["detail"]

    # the audit entry goes to every team the new token reaches, never to a team it cannot
    lab_entries = _audit(api, lab, "token.create")
    assert {e["detail"]["name"] for e in lab_entries} >= {"lab-1d", "child-0", "ro"}
    assert not {e["detail"]["name"] for e in _audit(api, home, "token.create")} & {"child-0", "ro"}
    wide = api.post("/auth/tokens", json={"name": "any-team"}).json()  # the login token: any team
    for team in (home, lab):
        assert wide["id"] in [int(e["resource_id"]) for e in _audit(api, team, "token.create")]


def test_a_token_made_before_expiry_default_is_clamped(api: TestClient) -> None:
    """A login token (90 days) asking for the default or 'never' gets at most its own expiry."""
    login = api.post(
        "/auth/token", data={"username": "admin", "password": "admin-password-123"}
    ).json()
    r = api.post("/auth/tokens", headers=auth(login["access_token"]), json={"expires_in_days": 0})
    assert r.status_code == 201
    assert r.json()["expires_at"] is not None
    assert datetime.fromisoformat(r.json()["expires_at"]) <= datetime.fromisoformat(
        login["expires_at"]
    )


# -- 5. login throttling ------------------------------------------------------------------------


def _post_login(
    url: str, username: str, password: str, source: str = "127.0.0.1"
) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=60) as http:
        return http.post(
            f"{url}/api/v1/auth/token", data={"username": username, "password": password}
        )


def test_parallel_password_guessing_is_throttled(sqlite_env, tmp_path) -> None:
    """Two API processes share the counters (Redis on the broker URL): 100 wrong passwords in
    parallel get 5 x 401 and then 429 with Retry-After; the right password from the same address
    waits too, from another address it works; each throttled pair is in the audit log."""
    from backend.bootstrap import ensure_admin
    from core.db import session_scope

    with session_scope() as session:
        ensure_admin(session)
    _user("vic", "default", "member")
    limits = {
        "DS_LOGIN_LIMIT_ACCOUNT_ADDRESS": "5/10 minutes",
        "DS_LOGIN_LIMIT_ADDRESS": "200/10 minutes",
    }
    servers = [ApiServer(sqlite_env, limits, name=f"api{i}").start() for i in range(2)]
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            answers = list(
                pool.map(lambda i: _post_login(servers[i % 2].url, "vic", f"guess-{i}"), range(100))
            )
        took = time.monotonic() - started
        codes = Counter(r.status_code for r in answers)
        print(f"100 parallel wrong passwords over 2 API processes: {dict(codes)} in {took:.2f} s")
        assert codes == {401: 5, 429: 95}, codes
        refused = next(r for r in answers if r.status_code == 429)
        retry = int(refused.headers["Retry-After"])
        assert 0 < retry <= 600
        assert refused.json()["detail"].startswith(
            "too many sign-in attempts for 'vic' from this address"
        )

        same = _post_login(servers[0].url, "vic", "vic-password-1")
        assert same.status_code == 429  # this address must wait, even with the right password
        other = _post_login(servers[1].url, "vic", "vic-password-1", source="127.0.0.2")
        assert other.status_code == 200, other.text  # the account is not locked for others

        # an address guessing many accounts is stopped by the per-address limit
        set_env_limits = {**limits, "DS_LOGIN_LIMIT_ADDRESS": "20/10 minutes"}
        third = ApiServer(sqlite_env, set_env_limits, name="api3").start()
        servers.append(third)
        spray = [
            _post_login(third.url, f"user{i}", "x", source="127.0.0.3").status_code
            for i in range(25)
        ]
        assert spray[:20] == [401] * 20 and set(spray[20:]) == {429}
    finally:
        for server in servers:
            server.stop()

    with session_scope() as session:
        from sqlalchemy import select

        from core.db.tables import AuditEntry

        entries = list(
            session.scalars(select(AuditEntry).where(AuditEntry.action == "auth.throttle"))
        )
    assert len(entries) == 1  # once per throttled window, not once per refused request
    assert entries[0].detail["username"] == "vic" and entries[0].detail["address"] == "127.0.0.1"


def test_throttle_in_process(api: TestClient, app_client: TestClient, monkeypatch) -> None:
    """The same rules in the in-process app, on SQLite and PostgreSQL: 429, Retry-After, audit."""
    set_env(monkeypatch, DS_LOGIN_LIMIT_ACCOUNT_ADDRESS="3/minute")
    for _ in range(3):
        assert (
            app_client.post("/auth/token", data={"username": "admin", "password": "x"}).status_code
            == 401
        )
    r = app_client.post("/auth/token", data={"username": "admin", "password": "admin-password-123"})
    assert r.status_code == 429 and 0 < int(r.headers["retry-after"]) <= 60
    home = api.get("/auth/me").json()["team_id"]
    [entry] = _audit(api, home, "auth.throttle")
    assert entry["detail"]["username"] == "admin" and entry["detail"]["address"] == "testclient"
    assert entry["user_id"] is None  # nobody signed in did this


# -- 6. who may create what ---------------------------------------------------------------------


def test_a_viewer_cannot_create_teams_accounts_or_add_people(api: TestClient, app_client) -> None:
    _user("vera", "default", "viewer")
    vera = _login(app_client, "vera")

    r = app_client.post("/teams", headers=vera, json={"name": "veras-team"})
    assert r.status_code == 403, r.text
    assert r.json()["detail"] == (
        "creating teams is for studio administrators (DS_TEAM_CREATORS=admins); ask one to "
        "create the team and invite you"
    )
    r = app_client.post(
        "/users", headers=vera, json={"username": "puppet", "password": "puppet-pass-1"}
    )
    assert r.status_code == 403


def test_even_when_everyone_creates_teams_nobody_is_added_without_consent(
    api: TestClient, app_client: TestClient, monkeypatch
) -> None:
    set_env(monkeypatch, DS_TEAM_CREATORS="everyone")
    _user("vera", "default", "viewer")
    vera = _login(app_client, "vera")
    team = app_client.post("/teams", headers=vera, json={"name": "veras-team"})
    assert team.status_code == 201 and team.json()["role"] == "owner"
    team_id = team.json()["id"]
    in_team = {**vera, "X-Team-Id": str(team_id)}

    # no accounts, no direct adds (not even of the superuser), no way to tell who exists
    r = app_client.post(
        "/users", headers=in_team, json={"username": "puppet", "password": "puppet-pass-1"}
    )
    assert r.status_code == 403 and "studio administrators" in r.json()["detail"]
    r = app_client.post(f"/teams/{team_id}/members", headers=in_team, json={"username": "admin"})
    assert r.status_code == 403, r.text
    assert f"POST /api/v1/teams/{team_id}/invitations" in r.json()["detail"]
    invited = [
        app_client.post(
            f"/teams/{team_id}/invitations",
            headers=in_team,
            json={"username": name, "role": "admin"},
        )
        for name in ("admin", "nobody")
    ]
    assert [i.status_code for i in invited] == [201, 201]
    assert {
        k: v for k, v in invited[0].json().items() if k not in ("id", "username", "created_at")
    } == {k: v for k, v in invited[1].json().items() if k not in ("id", "username", "created_at")}
    members = app_client.get(f"/teams/{team_id}/members", headers=in_team).json()
    assert [m["username"] for m in members] == ["vera"]

    # the invitee decides
    mine = api.get("/invitations").json()
    assert [(i["team_name"], i["role"], i["invited_by"]) for i in mine] == [
        ("veras-team", "admin", "vera")
    ]
    declined = api.post(f"/invitations/{mine[0]['id']}/decline")
    assert declined.status_code == 200 and declined.json()["status"] == "declined"
    assert api.get("/invitations").json() == []
    assert api.post(f"/invitations/{mine[0]['id']}/accept").status_code == 409
    assert [
        m["username"] for m in app_client.get(f"/teams/{team_id}/members", headers=in_team).json()
    ] == ["vera"]
    sent = app_client.get(f"/teams/{team_id}/invitations", headers=in_team).json()
    assert {(i["username"], i["status"]) for i in sent} == {
        ("admin", "declined"),
        ("nobody", "pending"),
    }


def test_invitations_accept_and_who_sees_them(api: TestClient, app_client: TestClient) -> None:
    home = api.get("/auth/me").json()["team_id"]
    _user("ada", "default", "admin")
    _user("bob", "elsewhere", "member")
    _user("eve", "elsewhere", "member")
    ada, bob, eve = (_login(app_client, u) for u in ("ada", "bob", "eve"))

    # a team admin invites; only owners invite as owner
    r = app_client.post(
        f"/teams/{home}/invitations", headers=ada, json={"username": "bob", "role": "owner"}
    )
    assert r.status_code == 403 and "only an owner" in r.json()["detail"]
    inv = app_client.post(f"/teams/{home}/invitations", headers=ada, json={"username": "bob"})
    assert inv.status_code == 201, inv.text
    assert inv.json()["status"] == "pending" and inv.json()["role"] == "member"
    again = app_client.post(f"/teams/{home}/invitations", headers=ada, json={"username": "bob"})
    assert again.status_code == 409 and "already invited" in again.json()["detail"]
    r = app_client.post(f"/teams/{home}/invitations", headers=ada, json={"username": "ada"})
    assert r.status_code == 409 and "already a member" in r.json()["detail"]

    # only the invitee sees and answers it
    assert app_client.get("/invitations", headers=eve).json() == []
    assert (
        app_client.post(f"/invitations/{inv.json()['id']}/accept", headers=eve).status_code == 404
    )
    assert app_client.get(f"/teams/{home}/invitations", headers=bob).status_code == 404
    [pending] = app_client.get("/invitations", headers=bob).json()
    scoped = app_client.post("/auth/tokens", headers=bob, json={"team_scoped": True}).json()
    r = app_client.post(f"/invitations/{pending['id']}/accept", headers=auth(scoped["token"]))
    assert r.status_code == 403 and "scoped" in r.json()["detail"]
    accepted = app_client.post(f"/invitations/{pending['id']}/accept", headers=bob)
    assert accepted.status_code == 200 and accepted.json()["status"] == "accepted"
    assert {t["id"]: t["role"] for t in app_client.get("/teams", headers=bob).json()}[
        home
    ] == "member"
    assert {"invitation.create", "invitation.accept"} <= {
        e["action"] for e in _audit(api, home, "invitation")
    }

    # a member (not admin) cannot invite; the studio administrator adds directly
    r = app_client.post(f"/teams/{home}/invitations", headers=bob, json={"username": "eve"})
    assert r.status_code == 403
    added = api.post(f"/teams/{home}/members", json={"username": "eve", "role": "viewer"})
    assert added.status_code == 201 and added.json()["role"] == "viewer"
    assert datetime.now(UTC) - timedelta(minutes=5) < datetime.fromisoformat(pending["created_at"])

    # an admin withdraws a pending invitation: its invitee can no longer accept it
    cy = app_client.post(f"/teams/{home}/invitations", headers=ada, json={"username": "cy"}).json()
    assert (
        app_client.delete(f"/teams/{home}/invitations/{cy['id']}", headers=bob).status_code == 403
    )
    gone = app_client.delete(f"/teams/{home}/invitations/{cy['id']}", headers=ada)
    assert gone.status_code == 200 and gone.json()["status"] == "withdrawn"
    assert (
        app_client.delete(f"/teams/{home}/invitations/{cy['id']}", headers=ada).status_code == 409
    )
    assert (
        app_client.delete(f"/teams/{home}/invitations/{pending['id']}", headers=ada).status_code
        == 409
    )
    assert "invitation.withdraw" in {e["action"] for e in _audit(api, home, "invitation")}


def test_team_admins_create_users_only_when_the_setting_says_so(
    api: TestClient, app_client: TestClient, monkeypatch
) -> None:
    _user("ada", "default", "admin")
    _user("mo", "default", "member")
    ada, mo = _login(app_client, "ada"), _login(app_client, "mo")
    body = {"username": "newbie", "password": "newbie-pass-1"}
    r = app_client.post("/users", headers=ada, json=body)
    assert r.status_code == 403 and "DS_USER_CREATORS=admins" in r.json()["detail"]
    set_env(monkeypatch, DS_USER_CREATORS="team_admins")
    assert app_client.post("/users", headers=mo, json=body).status_code == 403  # members never
    made = app_client.post("/users", headers=ada, json=body)
    assert made.status_code == 201 and made.json()["role"] == "member"
    r = app_client.post("/teams", headers=ada, json={"name": "adas"})
    assert r.status_code == 403  # teams stay with DS_TEAM_CREATORS
