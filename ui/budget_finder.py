"""New run · "Find a student for a budget": the cost table of a depth/width search (no accuracy),
a chosen candidate filled into the student fields, or the best 1-3 launched as a sweep of runs
saved as one comparison (`client.students`).

`finder()` is drawn in the Student section, before its fields (filling sets their state);
`sweep()` beside the launch button, with the run config the form made.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from client import BudgetCandidate, BudgetTable, Catalog, Model, Pending, PendingFn
from client.runs import PLAN_TIMEOUT_S
from ui import components as ui

METRICS = {
    "params": "Parameters",
    "flops": "FLOPs per sample",
    "latency_ms": "CPU latency at batch 1 (ms)",
}
DEFAULT_BOUND = {"params": 50_000.0, "flops": 5_000_000.0, "latency_ms": 1.0}
DERIVED = "derived from the teacher"
STATE = "nr_budget_table"  # the last table (JSON), for the fill and sweep buttons
SEARCHED = ("depth", "width", "hidden")


def searchable(catalog: Catalog) -> list[str]:
    """Zoo students with a depth or width parameter (the rest have nothing to search)."""
    return [e.name for e in catalog.students if any(p.name in SEARCHED for p in e.params)]


def table_rows(table: BudgetTable) -> pd.DataFrame:
    """The cost table as shown: one row per candidate, largest first."""
    return pd.DataFrame(
        [
            {
                "#": i,
                "architecture": c.label,
                "params": c.params,
                "FLOPs": c.flops,
                "latency ms": c.latency_ms,
                "% of budget": c.percent_of_budget,
            }
            for i, c in enumerate(table.candidates, 1)
        ]
    )


def _fill(cand: dict[str, Any], catalog_params: dict[str, str]) -> None:
    """Make the candidate the zoo student of the form (run before the fields are drawn)."""
    s = st.session_state
    arch = cand["architecture"]
    s["nr_student_source"] = "zoo"
    s["nr_student"] = arch
    for name, value in cand["kwargs"].items():
        kind = catalog_params.get(name)
        s[f"nr_student.{arch}.{name}"] = (
            int(value) if kind == "int" else float(value) if kind == "float" else value
        )
    s["nr_flash"] = f"The student is now **{BudgetCandidate.model_validate(cand).label}**."


def _searching(slot: Any) -> PendingFn:
    def show(pending: Pending, waited: float) -> None:
        slot.progress(
            min(waited / PLAN_TIMEOUT_S, 0.99),
            text=f"A worker is building and measuring the candidates… {waited:.0f}s",
        )

    return show


def finder(catalog: Catalog, teacher: Model | None, dataset_id: int | None) -> None:
    """The expander: target, family, Search, the table, and "Use as the student"."""
    s = st.session_state
    with st.expander("Find a student for a budget", icon=":material/straighten:"):
        st.caption(
            "Searches a grid of depth and width factors, builds every candidate on a worker "
            "and measures its parameters, FLOPs and CPU latency (batch 1, one thread). "
            "The table lists those within the budget, the largest first; no accuracy yet."
        )
        left, middle, right = st.columns([2, 2, 3], vertical_alignment="bottom")
        metric = left.selectbox(
            "Target", list(METRICS), format_func=METRICS.__getitem__, key="nr_budget_metric"
        )
        bound = middle.number_input(
            f"At most ({METRICS[metric].lower()})",
            min_value=0.0,
            value=DEFAULT_BOUND[metric],
            format="%g",
            key=f"nr_budget_bound.{metric}",
        )
        families = searchable(catalog)
        if teacher is not None and teacher.architecture:
            families = [DERIVED, *families]
        family = right.selectbox("Student family", families, key="nr_budget_family")
        if st.button("Search", icon=":material/search:", key="nr_budget_search"):
            slot = st.empty()
            args: dict[str, Any] = (
                {"teacher_model_id": teacher.id}
                if family == DERIVED and teacher is not None
                else {"architecture": family}
            )
            found = ui.fetch(
                ui.client().search_students,
                {metric: bound},
                dataset_id=dataset_id,
                **args,
                stop=False,
                on_pending=_searching(slot),
            )
            slot.empty()
            if found is not None:
                s[STATE] = found.model_dump(mode="json")
        if s.get(STATE) is None:
            return
        table = BudgetTable.model_validate(s[STATE])
        (st.info if table.candidates else st.warning)(
            f"{table.message} — tried {table.tried}, rejected {table.rejected}."
        )
        if not table.candidates:
            return
        st.dataframe(table_rows(table), hide_index=True, key="nr_budget_rows")
        pick, use = st.columns([3, 1], vertical_alignment="bottom")
        index = pick.selectbox(
            "Candidate",
            range(len(table.candidates)),
            format_func=lambda i: f"{i + 1}. {table.candidates[i].label}",
            key="nr_budget_pick",
        )
        chosen = table.candidates[index]
        entry = catalog.student(chosen.architecture)
        use.button(
            "Use as the student",
            icon=":material/input:",
            key="nr_budget_use",
            on_click=_fill,
            args=(chosen.model_dump(mode="json"), {p.name: p.type for p in entry.params}),
        )
        if len(table.candidates) > 1:
            st.slider(
                "Launch the best N as a sweep (at the review step)",
                1,
                min(3, len(table.candidates)),
                key="nr_budget_n",
            )


def sweep(config: dict[str, Any]) -> None:
    """ "Launch the best N as a sweep": one run of `config` per candidate, one comparison."""
    s = st.session_state
    if s.get(STATE) is None:
        return
    table = BudgetTable.model_validate(s[STATE])
    best = table.candidates[: int(s.get("nr_budget_n") or 1)]
    if not best:
        return
    if st.button(
        f"Launch the best {len(best)} budget candidates as a sweep",
        icon=":material/stacks:",
        key="nr_budget_sweep",
        width="stretch",
        help="One run of this config per candidate (named after it), saved as one comparison.",
    ):
        with st.spinner("Queueing the runs…"):
            done = ui.fetch(ui.client().launch_candidates, config, best, stop=False)
        if done is not None:
            ui.go("compare", comparison=done.comparison.id)
