"""Distill Studio's web UI: `streamlit run ui/streamlit_app.py` (API URL from `DS_API_URL`).

The pages talk only to the REST API, through the typed client in `client`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts only ui/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from ui import components as ui  # noqa: E402

st.set_page_config(page_title="Distill Studio", page_icon="⚗️", layout="wide")


def _pages() -> dict[str, list[st.Page]]:
    if not ui.is_logged_in():
        # every page's address opens the login form (a shared link is not "page not found");
        # after signing in, _go_to_wanted_page opens the page the link pointed at
        elsewhere = [
            st.Page(ui.PAGES["login"], title="Log in", url_path=path, visibility="hidden")
            for path in ui.URL_PAGES
        ]
        login = st.Page(
            ui.PAGES["login"], title="Log in", icon=":material/login:", url_path="login"
        )
        return {"": [login, *elsewhere]}
    return {
        "Assets": [
            st.Page(
                ui.PAGES["models"], title="Models", icon=":material/neurology:", url_path="models"
            ),
            st.Page(
                ui.PAGES["datasets"],
                title="Datasets",
                icon=":material/dataset:",
                url_path="datasets",
            ),
            st.Page(
                ui.PAGES["model"],
                title="Model",
                icon=":material/neurology:",
                url_path="model",
                visibility="hidden",
            ),
        ],
        "Distill": [
            st.Page(
                ui.PAGES["new_run"],
                title="New run",
                icon=":material/rocket_launch:",
                url_path="new-run",
            ),
            st.Page(
                ui.PAGES["runs"],
                title="Runs",
                icon=":material/monitoring:",
                url_path="runs",
                default=True,
            ),
            st.Page(
                ui.PAGES["run"],
                title="Run",
                icon=":material/monitoring:",
                url_path="run",
                visibility="hidden",
            ),
            st.Page(
                ui.PAGES["compare"],
                title="Compare",
                icon=":material/compare_arrows:",
                url_path="compare",
            ),
        ],
        "Team": [
            st.Page(
                ui.PAGES["team"], title="Team & tokens", icon=":material/group:", url_path="team"
            ),
        ],
    }


def _sidebar() -> None:
    me = st.session_state.get("me")
    if not me:  # the login page has the whole window
        return
    with st.sidebar:
        teams = me.get("teams") or []
        if len(teams) > 1:
            ids = [t["id"] for t in teams]
            current = st.session_state.get("team_id")
            st.selectbox(
                "Team",
                ids,
                index=ids.index(current) if current in ids else 0,
                format_func=lambda i: next(t["name"] for t in teams if t["id"] == i),
                key="team_id",
                help="Models, datasets and runs belong to a team.",
            )
        elif teams:
            st.caption(f"Team: **{teams[0]['name']}**")
        st.caption(f"Signed in as **{me.get('username', '?')}** · API `{ui.api_url()}`")
        if st.button("Log out", icon=":material/logout:", width="stretch"):
            ui.sign_out()
            st.rerun()


def _remember_wanted_page() -> None:
    """A link opened before signing in (e.g. a shared comparison): remember where it pointed."""
    if ui.is_logged_in() or "_wanted" in st.session_state:
        return
    try:
        path = urlparse(str(st.context.url or "")).path.strip("/").rsplit("/", 1)[-1]
    except Exception:  # noqa: BLE001 - no browser context (tests)
        return
    if path in ui.URL_PAGES:
        st.session_state["_wanted"] = (path, st.query_params.to_dict())


def _go_to_wanted_page() -> None:
    """Right after signing in, open the page the link pointed at, with its query parameters."""
    wanted = st.session_state.pop("_wanted", None) if ui.is_logged_in() else None
    if wanted:
        st.switch_page(ui.PAGES[ui.URL_PAGES[wanted[0]]], query_params=wanted[1])


_remember_wanted_page()
nav = st.navigation(_pages())
_go_to_wanted_page()
_sidebar()
nav.run()
