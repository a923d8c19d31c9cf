"""Log in with a username and password, or paste an API token."""

from __future__ import annotations

import streamlit as st

from client import ApiError, Client
from ui import components as ui


def _health() -> None:
    try:
        with Client(ui.api_url(), timeout=5) as probe:
            health = probe.health()
    except ApiError as exc:
        st.warning(exc.detail, icon=":material/cloud_off:")
        return
    parts = [f"API **{health.status}**"]
    if health.version:
        parts.append(f"v{health.version}")
    for part in ("database", "broker"):
        value = getattr(health, part)
        if value is not None:
            ok = value is True or value == "ok"
            parts.append(f"{part} {'ok' if ok else '**unreachable**'}")
    st.caption(" · ".join(parts) + f" · `{ui.api_url()}`")


def _password_form() -> None:
    with st.form("login"):
        username = st.text_input("Username", key="login_username")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Log in", type="primary", width="stretch")
    if not submitted:
        return
    if not username or not password:
        st.error("Enter both a username and a password.")
        return
    try:
        with st.spinner("Logging in…"), Client(ui.api_url()) as anon:
            token = anon.get_token(username, password)
            ui.sign_in(token.access_token)
    except ApiError as exc:
        st.error(exc.detail)
        return
    st.rerun()


def _token_form() -> None:
    with st.form("token_login"):
        token = st.text_input(
            "API token",
            type="password",
            key="login_token",
            help="A token from `distill-studio token create`, or from POST /api/v1/auth/token.",
        )
        submitted = st.form_submit_button("Use token", type="primary", width="stretch")
    if not submitted:
        return
    if not token.strip():
        st.error("Paste a token first.")
        return
    try:
        with st.spinner("Checking the token…"):
            ui.sign_in(token.strip())
    except ApiError as exc:
        st.error(exc.detail)
        return
    st.rerun()


_, middle, _ = st.columns([1, 2, 1])
with middle:
    st.title(":material/science: Distill Studio")
    st.markdown("Distil a large teacher into a small student: upload, pair layers, train, compare.")
    _health()
    with_password, with_token = st.tabs(["Username & password", "API token"])
    with with_password:
        _password_form()
    with with_token:
        _token_form()
