"""Team: invitations waiting for your answer (Accept / Decline), the teams you belong to, their
members and roles, and your API tokens (create — the secret is shown once —, list with prefix,
last use and expiry, revoke).

Admins and owners of the team acted for also manage its members here: invite a user by name
(they accept or decline; the answer is the same whether the name exists or not), see the
invitations sent and their answers, change a role, remove a member (after a confirmation).
Studio administrators may also add a user directly. The API enforces the rules (only owners
grant the owner role or change owners; a team keeps one owner); the page offers only what the
viewer's role allows and shows the API's message otherwise. Everyone else sees the list."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import streamlit as st

from client import ApiError, ApiToken, Invitation, Member, TeamRef
from ui import components as ui

ROLE_HELP = {
    "owner": "everything, including granting the owner role",
    "admin": "manage members, webhooks and the audit log; delete models and datasets",
    "member": "upload, launch, cancel and compare",
    "viewer": "read only",
}
ROLES = list(ROLE_HELP)
MANAGERS = ("owner", "admin")
NEW_TOKEN_KEY = "team_new_token"
REMOVE_KEY = "mem_remove_pending"  # the user id waiting for the removal to be confirmed


# --------------------------------------------------------------------------------------------
# Teams and members
# --------------------------------------------------------------------------------------------


def _teams() -> list[TeamRef]:
    try:
        return ui.client().teams()
    except ApiError as exc:
        if exc.status in (404, 405) and exc.detail == "Not Found":
            me = st.session_state.get("me") or {}
            return [TeamRef.model_validate(t) for t in me.get("teams") or []]
        ui.show_api_error(exc)
        return []


def _received_invitations() -> None:
    """Pending invitations addressed to you, each with Accept and Decline."""
    try:
        pending = ui.client().invitations()
    except ApiError as exc:
        if exc.status != 403:  # a team-scoped or read-only session cannot answer them
            ui.show_api_error(exc)
        return
    if not pending:
        return
    st.subheader("Invitations")
    for inv in pending:
        with st.container(border=True):
            c = st.columns([6, 1.2, 1.2], vertical_alignment="center")
            c[0].markdown(
                f"**{inv.invited_by or 'An admin'}** invites you to **{inv.team_name}** as "
                f"**{inv.role}** — {ROLE_HELP.get(inv.role, '')}."
            )
            if c[1].button(
                "Accept",
                type="primary",
                key=f"inv_accept_{inv.id}",
                icon=":material/check:",
                width="stretch",
            ):
                _answer(inv, accept=True)
            if c[2].button(
                "Decline", key=f"inv_decline_{inv.id}", icon=":material/close:", width="stretch"
            ):
                _answer(inv, accept=False)


def _answer(inv: Invitation, *, accept: bool) -> None:
    api = ui.client()
    try:
        if accept:
            api.accept_invitation(inv.id)
        else:
            api.decline_invitation(inv.id)
    except ApiError as exc:
        ui.show_api_error(exc)
        return
    if accept:
        try:  # the sidebar's team selector lists the new team from now on
            st.session_state["me"] = api.me().model_dump(mode="json")
        except ApiError:
            pass
        st.toast(
            f"You joined {inv.team_name} as {inv.role}; switch to it in the sidebar.",
            icon=":material/group_add:",
        )
    else:
        st.toast(f"Declined the invitation to {inv.team_name}.", icon=":material/close:")
    st.rerun()


def _team_section(teams: list[TeamRef]) -> TeamRef | None:
    current_id = st.session_state.get("team_id")
    current = next((t for t in teams if t.id == current_id), teams[0] if teams else None)
    if current is None:
        ui.empty_state("You belong to no team yet — ask an admin to invite you to one.")
        return None
    frame = pd.DataFrame(
        [
            {
                "team": t.name + ("  ← acting for" if t.id == current.id else ""),
                "your role": t.role,
                "what you can do": ROLE_HELP.get(t.role, ""),
            }
            for t in teams
        ]
    )
    st.dataframe(frame, hide_index=True, key="team_teams")
    if len(teams) > 1:
        st.caption("Switch team with the selector in the sidebar; every page then acts for it.")
    return current


def _members(team: TeamRef) -> None:
    st.subheader(f"Members of {team.name}")
    try:
        members = ui.client().team_members(team.id)
    except ApiError as exc:
        if exc.status in (404, 405) and exc.detail == "Not Found":
            st.info(
                "This API version does not list team members yet. Until it does, an admin "
                "can see them with `distill-studio` on the server.",
                icon=":material/info:",
            )
        else:
            ui.show_api_error(exc)
        return
    if not members:
        ui.empty_state("No members listed.")
        return
    me = (st.session_state.get("me") or {}).get("username")
    frame = pd.DataFrame(
        [
            {
                "user": m.username + (" (you)" if m.username == me else ""),
                "role": m.role,
                "can": ROLE_HELP.get(m.role, ""),
            }
            for m in sorted(members, key=lambda m: (_role_rank(m.role), m.username))
        ]
    )
    st.dataframe(frame, hide_index=True, key="team_members")
    if team.role in MANAGERS and not (st.session_state.get("me") or {}).get("read_only"):
        _manage_members(team, members)
    else:
        st.caption("Ask a team owner or admin to invite people or change roles.")


def grantable_roles(my_role: str) -> list[str]:
    """The roles `my_role` may give: owners all of them, admins all but owner."""
    return ROLES if my_role == "owner" else [r for r in ROLES if r != "owner"]


def manageable(my_role: str, members: list[Member], me: str | None) -> list[Member]:
    """The members whose role `my_role` may change or who it may remove (never yourself here:
    an admin demoting or removing themself would lose this page)."""
    return [m for m in members if m.username != me and (my_role == "owner" or m.role != "owner")]


def _is_studio_admin() -> bool:
    me = st.session_state.get("me") or {}
    return bool(me.get("is_superuser")) and not me.get("read_only")


def _manage_members(team: TeamRef, members: list[Member]) -> None:
    roles = grantable_roles(team.role)
    with st.form("member_invite", border=True, clear_on_submit=True):
        st.markdown("**Invite a member** — they join when they accept the invitation")
        c = st.columns([2, 4, 1.4], vertical_alignment="bottom")  # room for the role's words
        invitee = c[0].text_input("Username", key="inv_user", max_chars=100)
        invite_role = c[1].selectbox(
            "Role", roles, index=roles.index("member"), key="inv_role", format_func=_role_label
        )
        invited = c[2].form_submit_button("Invite", icon=":material/forward_to_inbox:")
    if invited:
        _invite(team, invitee.strip(), invite_role)
    if _is_studio_admin():
        with st.form("member_add", border=True, clear_on_submit=True):
            st.markdown("**Add a member** — an existing user, at once (studio administrators)")
            c = st.columns([2, 4, 1.4], vertical_alignment="bottom")
            username = c[0].text_input("Username", key="mem_add_user", max_chars=100)
            role = c[1].selectbox(
                "Role",
                roles,
                index=roles.index("member"),
                key="mem_add_role",
                format_func=_role_label,
            )
            submitted = c[2].form_submit_button("Add member", icon=":material/person_add:")
        if submitted:
            _add_member(team, username.strip(), role)
    _sent_invitations(team)

    me = (st.session_state.get("me") or {}).get("username")
    others = {m.user_id: m for m in manageable(team.role, members, me)}
    if not others:
        st.caption(
            "There is nobody else whose role you can change"
            + ("; only an owner changes owners." if team.role != "owner" else ".")
        )
        return
    with st.container(border=True):
        st.markdown("**Change a role or remove a member**")
        c = st.columns([3, 2, 2, 2], vertical_alignment="bottom")
        user_id = c[0].selectbox(
            "Member",
            list(others),
            key="mem_pick",
            format_func=lambda i: f"{others[i].username} ({others[i].role})",
        )
        member = others[user_id]
        new_role = c[1].selectbox(
            "New role",
            roles,
            index=roles.index(member.role) if member.role in roles else 0,
            key=f"mem_role_{user_id}",
            format_func=_role_label,
        )
        if c[2].button(
            "Change role",
            icon=":material/manage_accounts:",
            key="mem_role_save",
            disabled=new_role == member.role,
            width="stretch",
        ):
            _change_role(team, member, new_role)
        if c[3].button(
            "Remove…", icon=":material/person_remove:", key="mem_remove", width="stretch"
        ):
            st.session_state[REMOVE_KEY] = user_id
        if team.role != "owner":
            st.caption("Owners are not listed: only an owner changes or removes owners.")
    if st.session_state.get(REMOVE_KEY) != user_id:  # picked someone else: ask again
        st.session_state.pop(REMOVE_KEY, None)
        return
    _confirm_removal(team, member)


def _role_label(role: str) -> str:
    return f"{role} — {ROLE_HELP[role]}" if role in ROLE_HELP else role


def _invite(team: TeamRef, username: str, role: str) -> None:
    if not username:
        st.error("Give the username of the person to invite, then invite them.")
        return
    try:
        sent = ui.client().invite(team.id, username, role)
    except ApiError as exc:
        ui.show_api_error(exc)
        return
    st.toast(
        f"Invited {sent.username} to {team.name} as {sent.role}; they join when they accept.",
        icon=":material/forward_to_inbox:",
    )
    st.rerun()


def invitations_frame(invitations: list[Invitation]) -> pd.DataFrame:
    """The invitations a team sent, for its admins: who, which role, the answer, when."""
    frame = pd.DataFrame(
        [
            {
                "invited": i.username,
                "role": i.role,
                "status": i.status,
                "invited by": i.invited_by,
                "sent": i.created_at,
                "answered": i.answered_at,
            }
            for i in invitations
        ],
        columns=["invited", "role", "status", "invited by", "sent", "answered"],
    )
    for column in ("sent", "answered"):
        frame[column] = pd.to_datetime(frame[column], utc=True, errors="coerce")
    return frame


def _sent_invitations(team: TeamRef) -> None:
    try:
        sent = ui.client().sent_invitations(team.id)
    except ApiError as exc:
        ui.show_api_error(exc)
        return
    if not sent:
        st.caption("No invitations sent yet.")
        return
    st.markdown("**Invitations sent**")
    stamp = st.column_config.DatetimeColumn(format="distance")
    st.dataframe(
        invitations_frame(sent),
        hide_index=True,
        key="team_invitations",
        placeholder=ui.MISSING_CELL,
        column_config={"sent": stamp, "answered": stamp},
    )
    _withdraw(team, [i for i in sent if i.status == "pending"])


def _withdraw(team: TeamRef, pending: list[Invitation]) -> None:
    if not pending:
        return
    by_id = {i.id: i for i in pending}
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    chosen = left.selectbox(
        "Withdraw an invitation",
        list(by_id),
        index=None,
        placeholder="Pick a pending invitation…",
        key="inv_withdraw_pick",
        format_func=lambda i: f"{by_id[i].username} as {by_id[i].role}",
    )
    clicked = right.button(
        "Withdraw",
        icon=":material/cancel_schedule_send:",
        key="inv_withdraw",
        disabled=chosen is None,
        width="stretch",
    )
    if not clicked or chosen is None:
        return
    try:
        ui.client().withdraw_invitation(team.id, chosen)
    except ApiError as exc:
        ui.show_api_error(exc)
        return
    st.session_state.pop("inv_withdraw_pick", None)
    st.toast(f"Withdrew the invitation of {by_id[chosen].username}.", icon=":material/undo:")
    st.rerun()


def _add_member(team: TeamRef, username: str, role: str) -> None:
    if not username:
        st.error("Give the username of an existing user, then add them.")
        return
    try:
        added = ui.client().add_member(team.id, username, role)
    except ApiError as exc:
        ui.show_api_error(exc)
        return
    st.toast(
        f"Added {added.username} to {team.name} as {added.role}.", icon=":material/person_add:"
    )
    st.rerun()


def _change_role(team: TeamRef, member: Member, role: str) -> None:
    try:
        ui.client().set_member_role(team.id, member.user_id, role)
    except ApiError as exc:
        ui.show_api_error(exc)
        return
    st.toast(f"{member.username} is now {role} of {team.name}.", icon=":material/manage_accounts:")
    st.rerun()


def _confirm_removal(team: TeamRef, member: Member) -> None:
    with st.container(border=True):
        st.warning(
            f"Remove **{member.username}** ({member.role}) from {team.name}? They lose access "
            "to its models, datasets and runs at once; add them again to undo.",
            icon=":material/person_remove:",
        )
        c = st.columns([1, 1, 4])
        confirmed = c[0].button("Remove", type="primary", key="mem_remove_yes", width="stretch")
        if c[1].button("Cancel", key="mem_remove_no", width="stretch"):
            st.session_state.pop(REMOVE_KEY, None)
            st.rerun()
    if not confirmed:
        return
    st.session_state.pop(REMOVE_KEY, None)
    try:
        ui.client().remove_member(team.id, member.user_id)
    except ApiError as exc:
        ui.show_api_error(exc)
        return
    st.toast(f"Removed {member.username} from {team.name}.", icon=":material/person_remove:")
    st.rerun()


def _role_rank(role: str) -> int:
    order = ["owner", "admin", "member", "viewer"]
    return order.index(role) if role in order else len(order)


# --------------------------------------------------------------------------------------------
# API tokens
# --------------------------------------------------------------------------------------------


def session_prefix() -> str | None:
    """The visible prefix of this session's own token (`ds_<prefix>_<secret>`)."""
    parts = str(st.session_state.get("token") or "").split("_")
    return parts[1] if len(parts) >= 3 else None


def token_state(token: ApiToken, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    if token.revoked_at is not None:
        return "revoked"
    expires = token.expires_at
    if expires is not None:
        expires = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
        if expires <= now:
            return "expired"
    return "active"


def tokens_frame(tokens: list[ApiToken], teams: dict[int, str]) -> pd.DataFrame:
    mine = session_prefix()
    rows: list[dict[str, Any]] = []
    for t in tokens:
        name = t.name + (" (this session)" if t.prefix and t.prefix == mine else "")
        rows.append(
            {
                "name": name,
                "prefix": f"ds_{t.prefix}_…" if t.prefix else "—",
                "state": token_state(t),
                "access": "read-only" if t.read_only else "read & write",
                "team": teams.get(t.team_id, f"#{t.team_id}") if t.team_id else "any of yours",
                "created": t.created_at,
                "last used": t.last_used_at,
                "expires": t.expires_at,
            }
        )
    columns = ["name", "prefix", "state", "access", "team", "created", "last used", "expires"]
    frame = pd.DataFrame(rows, columns=columns)
    for column in ("created", "last used", "expires"):  # None -> NaT: shown empty
        frame[column] = pd.to_datetime(frame[column], utc=True, errors="coerce")
    return frame


def is_sign_in(token: ApiToken) -> bool:
    """A token made by signing in with a password (the UI's own sessions)."""
    return token.name == "login"


def _create_form(team: TeamRef | None) -> None:
    with st.form("token_form", border=True, clear_on_submit=True):
        st.markdown("**Create a token** for scripts, CI or the Python client")
        c = st.columns([3, 2, 2, 2], vertical_alignment="bottom")
        name = c[0].text_input("Name", key="tok_name", placeholder="e.g. ci-nightly", max_chars=100)
        days = c[1].number_input(
            "Expires in (days)",
            0,
            3650,
            90,
            key="tok_days",
            help="0: never expires. Never later than this session's sign-in: a token cannot "
            "outlive the token that creates it.",
        )
        read_only = c[2].checkbox("Read-only", key="tok_ro", help="Only GET requests work.")
        scoped = c[3].checkbox(
            "This team only",
            key="tok_scoped",
            help=f"Bind it to {team.name if team else 'the current team'}.",
        )
        submitted = st.form_submit_button("Create token", type="primary", icon=":material/key:")
    if not submitted:
        return
    if not name.strip():
        st.error("Name the token (e.g. after the script that uses it), then create it.")
        return
    try:
        created = ui.client().create_token(
            name.strip(), read_only=read_only, team_scoped=scoped, expires_in_days=int(days)
        )
    except ApiError as exc:
        ui.show_api_error(exc)
        return
    st.session_state[NEW_TOKEN_KEY] = {"name": created.name, "token": created.token}
    st.rerun()


def _show_new_token() -> None:
    """The secret of a token just created: shown on this one run of the page, never again."""
    new = st.session_state.pop(NEW_TOKEN_KEY, None)
    if not new:
        return
    with st.container(border=True):
        st.success(
            f"Token **{new['name']}** created. Copy it now — it is shown only this once "
            "(the studio keeps just a hash of it).",
            icon=":material/key:",
        )
        st.code(new["token"], language=None)
        st.caption(
            "Copy it with the button at the right of the box. Use it as "
            "`Authorization: Bearer <token>`, or `Client(url, token)` in Python."
        )


def _revoke(tokens: list[ApiToken]) -> None:
    active = [t for t in tokens if token_state(t) == "active"]
    if not active:
        return
    by_id = {t.id: t for t in active}
    mine = session_prefix()
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    chosen = left.selectbox(
        "Revoke a token",
        list(by_id),
        index=None,
        placeholder="Pick a token to revoke…",
        key="tok_revoke_pick",
        format_func=lambda i: (
            f"{by_id[i].name} · ds_{by_id[i].prefix}_…"
            + (" (this session)" if by_id[i].prefix == mine else "")
        ),
    )
    clicked = right.button(
        "Revoke",
        icon=":material/block:",
        key="tok_revoke",
        disabled=chosen is None,
        width="stretch",
    )
    if chosen is not None and by_id[chosen].prefix == mine:
        st.warning("This is the token of this session: revoking it signs you out.")
    if clicked and chosen is not None:
        try:
            ui.client().revoke_token(chosen)
        except ApiError as exc:
            ui.show_api_error(exc)
            return
        st.session_state.pop("tok_revoke_pick", None)
        if by_id[chosen].prefix == mine:
            ui.sign_out()
        st.toast(
            f"Revoked {by_id[chosen].name}; it stops working at once.", icon=":material/block:"
        )
        st.rerun()


def _tokens(teams: list[TeamRef], team: TeamRef | None) -> None:
    st.subheader("API tokens")
    _show_new_token()
    _create_form(team)
    tokens = ui.fetch(ui.client().tokens, stop=False)
    if tokens is None:
        return
    left, right = st.columns(2)
    show_all = left.toggle("Show revoked and expired tokens", key="tok_all")
    sessions = right.toggle(
        "Show sign-in sessions",
        key="tok_sessions",
        help="Every password sign-in (on this page or POST /auth/token) makes a token named login.",
    )
    mine = session_prefix()
    listed = [
        t
        for t in tokens
        if (show_all or token_state(t) == "active")
        and (sessions or not is_sign_in(t) or t.prefix == mine)
    ]
    listed.sort(key=lambda t: t.created_at or datetime.min.replace(tzinfo=UTC), reverse=True)
    hidden = sum(is_sign_in(t) and t.prefix != mine and token_state(t) == "active" for t in tokens)
    if not listed:
        ui.empty_state("No active tokens — create one above.", icon=":material/key_off:")
    else:
        stamp = st.column_config.DatetimeColumn(format="distance")
        st.dataframe(
            tokens_frame(listed, {t.id: t.name for t in teams}),
            placeholder=ui.MISSING_CELL,
            hide_index=True,
            key="tok_table",
            column_config={
                "name": st.column_config.TextColumn("name", width="medium"),
                "created": stamp,
                "last used": stamp,
                "expires": stamp,
            },
        )
        note = f"{hidden} other sign-in session(s) hidden. " if hidden and not sessions else ""
        st.caption(note + "Last use is recorded at most once a minute.")
    _revoke(tokens)


# --------------------------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------------------------

st.title("Team & tokens")
_received_invitations()
with st.spinner("Loading your teams…"):
    my_teams = _teams()
acting = _team_section(my_teams)
if acting is not None:
    _members(acting)
_tokens(my_teams, acting)
