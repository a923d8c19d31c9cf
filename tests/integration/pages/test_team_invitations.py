"""The Team page's invitations (AppTest against a live API, see conftest.py): a
team admin invites by name and sees the invitations sent with their answers; the invitee sees
a pending invitation with Accept and Decline; only a studio administrator gets "Add member"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from client import Client
from tests.integration.pages.conftest import LiveApi
from tests.integration.pages.support import APP, TIMEOUT, texts


@dataclass
class Studio:
    url: str
    token: str  # the first admin: studio administrator, owner of "default"


@pytest.fixture(scope="module")
def studio(live_api: LiveApi) -> Studio:
    from backend.bootstrap import create_user
    from core.db import session_scope

    with session_scope() as session:
        create_user(session, "ada", "ada-password-123", "default", "admin")
        create_user(session, "bob", "bob-password-123", "lab-b", "member")
        create_user(session, "cy", "cy-password-1234", "lab-c", "member")
    return Studio(live_api.url, live_api.token)


def _team_page(studio: Studio, token: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["token"] = token
    me = Client(studio.url, token).me()
    at.session_state["me"] = me.model_dump(mode="json")
    at.session_state["team_id"] = me.team_id
    at.run()
    at.switch_page("app_pages/team.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _token(studio: Studio, username: str, password: str) -> str:
    token = Client.login(studio.url, username, password).token
    assert token is not None
    return token


def _frame(at: AppTest, column: str) -> Any:
    return next(f.value for f in at.dataframe if column in f.value.columns)


def test_admin_invites_and_the_invitee_accepts_or_declines(studio: Studio) -> None:
    ada = _token(studio, "ada", "ada-password-123")
    at = _team_page(studio, ada)
    # a team admin (not a studio administrator) invites; there is no direct "Add member"
    assert not [w for w in at.text_input if w.key == "mem_add_user"]
    assert all("owner" not in option for option in at.selectbox(key="inv_role").options)
    assert "No invitations sent yet." in texts(at.caption)
    for name, role in (("bob", "viewer"), ("cy", "member"), ("nobody", "member")):
        at.text_input(key="inv_user").set_value(name)
        at.selectbox(key="inv_role").set_value(role)
        at.button(key="FormSubmitter:member_invite-Invite").click().run()
        assert not at.exception and not at.error, texts(at.error)
    sent = _frame(at, "invited")
    assert {(r["invited"], r["role"], r["status"]) for _, r in sent.iterrows()} == {
        ("bob", "viewer", "pending"),
        ("cy", "member", "pending"),
        ("nobody", "member", "pending"),
    }
    at.text_input(key="inv_user").set_value("bob")
    at.button(key="FormSubmitter:member_invite-Invite").click().run()
    assert "'bob' is already invited" in texts(at.error)

    # bob accepts: he is in the team, and the sidebar offers it
    bob = _token(studio, "bob", "bob-password-123")
    at = _team_page(studio, bob)
    assert "**ada** invites you to **default** as **viewer**" in texts(at.markdown)
    [accept] = [b for b in at.button if (b.key or "").startswith("inv_accept_")]
    accept.click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert "default" in [t["name"] for t in at.session_state["me"]["teams"]]
    assert not [b for b in at.button if (b.key or "").startswith("inv_accept_")]
    default = Client(studio.url, studio.token).me().team_id
    assert "bob" in {m.username for m in Client(studio.url, bob).team_members(default)}

    # cy declines: not a member
    cy = _token(studio, "cy", "cy-password-1234")
    at = _team_page(studio, cy)
    [decline] = [b for b in at.button if (b.key or "").startswith("inv_decline_")]
    decline.click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert not [b for b in at.button if (b.key or "").startswith("inv_")]
    assert (
        Client(studio.url, cy).teams()[0].name == "lab-c"
        and len(Client(studio.url, cy).teams()) == 1
    )

    # ada sees the answers, and withdraws the one nobody answers
    at = _team_page(studio, ada)
    sent = _frame(at, "invited")
    assert dict(zip(sent["invited"], sent["status"], strict=True)) == {
        "bob": "accepted",
        "cy": "declined",
        "nobody": "pending",
    }
    [pending_id] = [
        i.id for i in Client(studio.url, ada).sent_invitations(default) if i.status == "pending"
    ]
    assert at.selectbox(key="inv_withdraw_pick").options == ["nobody as member"]
    at.selectbox(key="inv_withdraw_pick").set_value(pending_id).run()
    at.button(key="inv_withdraw").click().run()
    assert not at.exception and not at.error, texts(at.error)
    sent = _frame(at, "invited")
    assert sent[sent["invited"] == "nobody"].iloc[0]["status"] == "withdrawn"
    assert not [w for w in at.selectbox if w.key == "inv_withdraw_pick"]  # nothing pending


def test_only_a_studio_administrator_adds_directly(studio: Studio) -> None:
    at = _team_page(studio, studio.token)
    assert [w for w in at.text_input if w.key == "mem_add_user"]  # and invites too
    assert [w for w in at.text_input if w.key == "inv_user"]
    at.text_input(key="mem_add_user").set_value("cy")
    at.selectbox(key="mem_add_role").set_value("viewer")
    at.button(key="FormSubmitter:member_add-Add member").click().run()
    assert not at.exception and not at.error, texts(at.error)
    members = _frame(at, "user")
    assert members[members["user"] == "cy"].iloc[0]["role"] == "viewer"
