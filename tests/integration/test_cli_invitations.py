"""`distill-studio teams invite | invitations | accept | decline` against a real API server (the
fixtures of test_cli_remote: uvicorn in a thread, SQLite, the real broker)."""

from __future__ import annotations

import json

from typer.testing import CliRunner, Result

from cli.main import app

from .test_cli_remote import cli, server  # noqa: F401 - fixtures


def _user(username: str, team: str, role: str = "member") -> None:
    from backend.bootstrap import create_user
    from core.db import session_scope

    with session_scope() as session:
        create_user(session, username, f"{username}-password-1", team, role)


def _as(url: str, username: str, *args: str, code: int = 0) -> Result:
    from client import Client

    token = Client.login(url, username, f"{username}-password-1").token
    result = CliRunner().invoke(
        app, list(args), env={"DS_API_URL": url, "DS_TOKEN": token, "DS_TEAM_ID": ""}
    )
    assert result.exit_code == code, (result.output, result.stderr)
    return result


def test_invite_list_accept_and_decline_from_the_cli(cli, server: str) -> None:  # noqa: F811
    _user("ada", "lab-a")
    _user("bob", "lab-b")
    team_id = json.loads(cli("teams", "list", "--json").stdout)[0]["id"]

    # the admin invites; a made-up name answers the same (no usernames learnt)
    out = cli("teams", "invite", str(team_id), "ada", "--role", "viewer").stdout
    assert out.startswith("invitation ") and "ada to default as viewer" in out
    ghost = json.loads(cli("teams", "invite", str(team_id), "ghost", "--json").stdout)
    assert ghost["status"] == "pending" and ghost["username"] == "ghost"
    bob_inv = json.loads(cli("teams", "invite", str(team_id), "bob", "--json").stdout)
    again = cli("teams", "invite", str(team_id), "bob", code=1)
    assert "error (409): 'bob' is already invited" in again.stderr
    sent = cli("teams", "invitations", "--sent", str(team_id)).stdout
    assert "ghost" in sent and "pending" in sent and "invited by" in sent

    # the invitees answer
    mine = json.loads(_as(server, "ada", "teams", "invitations", "--json").stdout)
    assert [(i["team_name"], i["role"], i["invited_by"]) for i in mine] == [
        ("default", "viewer", "admin")
    ]
    joined = _as(server, "ada", "teams", "accept", str(mine[0]["id"])).stdout
    assert joined.strip() == f"you joined default as viewer; act for it with --team {team_id}"
    teams = json.loads(_as(server, "ada", "teams", "list", "--json").stdout)
    assert {t["name"]: t["role"] for t in teams} == {"lab-a": "member", "default": "viewer"}
    assert (
        "declined the invitation to default"
        in _as(server, "bob", "teams", "decline", str(bob_inv["id"])).stdout
    )
    refused = _as(server, "bob", "teams", "accept", str(bob_inv["id"]), code=1)
    assert f"error (409): invitation {bob_inv['id']} was already declined" in refused.stderr
    other = _as(server, "bob", "teams", "accept", str(ghost["id"]), code=1)  # not addressed to bob
    assert f"error (404): invitation {ghost['id']} not found" in other.stderr

    # only studio administrators add directly, create users or (by default) teams
    added = _as(server, "ada", "teams", "add", str(team_id), "bob", code=1)
    assert "error (403)" in added.stderr
    created = _as(server, "bob", "teams", "create", "bobs", code=1)
    assert "error (403): creating teams is for studio administrators" in created.stderr
    withdrawn = cli("teams", "withdraw", str(team_id), str(ghost["id"])).stdout
    assert withdrawn.strip() == "withdrew the invitation of ghost to default"
    assert (
        "already withdrawn"
        in cli("teams", "withdraw", str(team_id), str(ghost["id"]), code=1).stderr
    )
    statuses = {
        i["username"]: i["status"]
        for i in json.loads(cli("teams", "invitations", "--sent", str(team_id), "--json").stdout)
    }
    assert statuses == {"ada": "accepted", "ghost": "withdrawn", "bob": "declined"}
