"""Runs: every distillation run with its status, progress and key metrics; filter by status,
teacher and name; open one, or select several and compare them. Loads 50 runs at a time."""

from __future__ import annotations

import streamlit as st

from client import Model, Run
from ui import components as ui

STATUSES = ["all", "queued", "running", "succeeded", "failed", "cancelled"]
PAGE = 50


def _counts(runs: list[Run], more: bool) -> None:
    cols = st.columns(4)
    active = sum(r.status in ("queued", "running") for r in runs)
    cols[0].metric("Runs shown", f"{len(runs)}+" if more else len(runs))
    cols[1].metric("Active", active)
    cols[2].metric("Succeeded", sum(r.status == "succeeded" for r in runs))
    cols[3].metric("Failed", sum(r.status == "failed" for r in runs))


def _table(runs: list[Run], teachers: dict[int, str]) -> list[Run]:
    """The table; returns the selected runs."""
    pct = st.column_config.NumberColumn(format="percent")
    event = st.dataframe(
        ui.runs_frame(runs, teachers),
        placeholder=ui.MISSING_CELL,
        hide_index=True,
        on_select="rerun",
        selection_mode="multi-row",
        key="runs_table",
        column_config={
            "id": st.column_config.NumberColumn("ID", width="small"),
            "progress": st.column_config.ProgressColumn(
                "progress", min_value=0.0, max_value=1.0, format="percent", width="small"
            ),
            "student": st.column_config.TextColumn("student", width="small"),
            "student top-1": pct,
            "teacher top-1": pct,
            "agreement": pct,
            "created": st.column_config.DatetimeColumn("created", format="distance"),
        },
    )
    rows = event.selection.rows if event else []
    return [runs[i] for i in rows if i < len(runs)]


def _actions(selected: list[Run]) -> None:
    row = st.container(horizontal=True, vertical_alignment="center", gap="small")
    if not selected:
        row.caption("Select a row to open its run, or several rows to compare them.")
        return
    if len(selected) == 1:
        run = selected[0]
        if row.button(f"Open run #{run.id}", icon=":material/open_in_new:", type="primary"):
            ui.go("run", id=run.id)
        row.caption("Select more rows to compare them.")
        return
    ids = ",".join(str(r.id) for r in selected)
    if row.button(
        f"Compare {len(selected)} runs", icon=":material/compare_arrows:", type="primary"
    ):
        ui.go("compare", runs=ids)
    row.caption(f"Selected: {', '.join(f'#{r.id}' for r in selected)}")


def _teacher_filter(models: list[Model]) -> int | None:
    by_id = {m.id: m for m in models}
    return st.selectbox(
        "Teacher",
        [None, *by_id],
        key="runs_teacher",
        format_func=lambda i: "all" if i is None else f"#{i} {by_id[i].name} v{by_id[i].version}",
    )


head, action = st.columns([4, 1], vertical_alignment="bottom")
head.title("Runs")
if action.button("New run", icon=":material/rocket_launch:", type="primary", width="stretch"):
    ui.go("new_run")
with st.spinner("Loading teachers…"):
    models = ui.all_items(ui.client().models, limit=200)
teacher_names = {m.id: f"{m.name} v{m.version}" for m in models}
left, middle, right = st.columns([3, 2, 1])
query = left.text_input("Search", key="runs_q", placeholder="run name…")
with middle:
    teacher = _teacher_filter(models)
status = right.selectbox(
    "Status",
    STATUSES,
    key="runs_status",
    format_func=lambda s: s if s == "all" else ui.status_label(s),
)
filters = (query, teacher, status)
if st.session_state.get("_runs_filters") != filters:  # new filters start from the first page
    st.session_state["_runs_filters"] = filters
    st.session_state["runs_limit"] = PAGE
limit = st.session_state.setdefault("runs_limit", PAGE)
with st.spinner("Loading runs…"):
    runs, more = ui.collect(
        ui.client().runs,
        limit,
        q=query or None,
        status=None if status == "all" else status,
        teacher_model_id=teacher,
    )
if not runs:
    if query or status != "all" or teacher is not None:
        ui.empty_state(
            "No runs match these filters — clear the search, or pick another status or teacher.",
            icon=":material/search_off:",
        )
    else:
        ui.empty_state(f"No runs yet — start one on the New run page, or {ui.DEMO_HINT}.")
else:
    _counts(runs, more)
    chosen = _table(runs, teacher_names)
    _actions(chosen)
    if more and st.button(f"Load {PAGE} more", key="runs_more", icon=":material/expand_more:"):
        st.session_state["runs_limit"] = limit + PAGE
        st.rerun()
ui.refresh_while(any(r.status in ("queued", "running") for r in runs), every=3, key="runs")
