"""Compare runs: results and the config keys that differ (highlighted), the same curve of every
run overlaid, accuracy against size and against CPU latency with the Pareto front marked; save
the comparison for the team and share its link. A run that trained several models (`online`
peers, born-again generations, an int8 student, ...) lists each in a table and puts each on the
accuracy-cost plots as its own point, and each can be left off the plots like a run.

Query parameters: `?runs=3,5,8` (the first is the baseline) or `?comparison=<saved id>`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from client import ApiError, Comparison, Run
from ui import components as ui
from ui import predictions
from ui.analysis import (
    CHART_POINTS,
    DOMINATED,
    FRONT,
    MISSING,
    RESULTS,
    best_cells,
    diff_frame,
    diff_styles,
    models_frame,
    results_frame,
    run_label,
    run_models,
    task_results,
    tradeoff_frame,
)

PICK_LIMIT = 100  # runs offered in the picker (newest first); others come in by id


# --------------------------------------------------------------------------------------------
# Which runs
# --------------------------------------------------------------------------------------------


def _ids_from_query() -> list[int] | None:
    raw = st.query_params.get("runs")
    if not raw:
        return None
    ids = []
    for part in raw.split(","):
        if part.strip().isdigit():
            ids.append(int(part))
    return ids or None


def _open_saved(saved: Comparison) -> None:
    st.session_state["cmp_runs"] = list(saved.run_ids)
    st.session_state["cmp_saved"] = saved.id
    st.session_state["cmp_name"] = saved.name


def _initial_selection(saved: list[Comparison]) -> None:
    """On arrival: runs from ?runs=, or a saved comparison from ?comparison= (once per link)."""
    wanted = _ids_from_query()
    marker = ("runs", tuple(wanted)) if wanted else None
    cid = ui.query_id("comparison")
    if cid is not None:
        marker = ("comparison", cid)
    if marker is None or st.session_state.get("_cmp_arrived") == marker:
        return
    st.session_state["_cmp_arrived"] = marker
    if wanted:
        st.session_state["cmp_runs"] = wanted
        st.session_state.pop("cmp_saved", None)
        return
    comparison = next((c for c in saved if c.id == cid), None)
    if comparison is None:
        comparison = ui.fetch(ui.client().comparison, cid, stop=False)
    if comparison is not None:
        _open_saved(comparison)


def _saved_section(saved: list[Comparison]) -> None:
    if not saved:
        st.caption("No saved comparisons yet — pick runs below and save them for your team.")
        return
    by_id = {c.id: c for c in saved}
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    current = st.session_state.get("cmp_saved")
    choice = left.selectbox(
        "Saved comparisons of your team",
        list(by_id),
        index=list(by_id).index(current) if current in by_id else None,
        placeholder="Open a saved comparison…",
        format_func=lambda i: _saved_label(by_id[i]),
        key=f"cmp_saved_pick_{current}",
    )
    if choice is not None and choice != current:
        _open_saved(by_id[choice])
        st.rerun()
    if current in by_id and right.button(
        "Delete",
        icon=":material/delete:",
        key="cmp_delete",
        width="stretch",
        help="Delete this saved comparison (its runs stay).",
    ):
        try:
            ui.client().delete_comparison(current)
        except ApiError as exc:
            ui.show_api_error(exc)
            return
        st.session_state.pop("cmp_saved", None)
        st.toast(f"Deleted the comparison “{by_id[current].name}”.", icon=":material/delete:")
        st.rerun()


def _saved_label(c: Comparison) -> str:
    who = f" · by {c.created_by_name}" if c.created_by_name else ""
    return f"{c.name} · {len(c.run_ids)} runs{who}"


def _pick_runs() -> list[Run]:
    """The runs to compare, in the order picked (the first is the baseline)."""
    api = ui.client()
    recent, _ = ui.collect(api.runs, PICK_LIMIT)
    by_id: dict[int, Run] = {r.id: r for r in recent}
    selected = [int(i) for i in st.session_state.get("cmp_runs", [])]
    missing = []
    for run_id in selected:
        if run_id not in by_id:
            run = ui.fetch(api.run, run_id, stop=False)
            if run is None:
                missing.append(run_id)
            else:
                by_id[run_id] = run
    if missing:
        st.warning(
            f"Run(s) {', '.join(f'#{i}' for i in missing)} no longer exist in this team; "
            "they are left out.",
            icon=":material/warning:",
        )
    st.session_state["cmp_runs"] = [i for i in selected if i in by_id]
    st.multiselect(
        "Runs to compare",
        list(by_id),
        key="cmp_runs",
        format_func=lambda i: f"{run_label(by_id[i])} ({by_id[i].status})",
        placeholder="Pick two or more runs; type to search by name…",
        help="The first run is the baseline: config values that differ from it are highlighted. "
        f"The {PICK_LIMIT} newest runs are offered; open older ones from the Runs page.",
    )
    return [by_id[i] for i in st.session_state["cmp_runs"]]


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _fmt(kind: str) -> Any:
    def pct(v: Any) -> str:
        return ui.fmt_pct(v) if pd.notna(v) else MISSING

    def count(v: Any) -> str:
        return ui.fmt_count(v) if pd.notna(v) else MISSING

    def size(v: Any) -> str:
        return ui.fmt_bytes(v) if pd.notna(v) else MISSING

    def ms(v: Any) -> str:
        return f"{v:.3g}" if pd.notna(v) else MISSING

    def number(v: Any) -> str:
        return f"{v:,.4g}" if pd.notna(v) else MISSING

    return {"pct": pct, "count": count, "bytes": size, "ms": ms, "number": number}[kind]


def _results(runs: list[Run]) -> None:
    from core.catalog.tasks import TASKS

    st.subheader("Results")
    extra = task_results(runs, {name: task.metrics for name, task in TASKS.items()})
    frame = results_frame(runs, extra)
    frame["status"] = frame["status"].map(ui.status_label)
    if not any(r.summary for r in runs):
        st.caption("No run has finished yet: results appear when runs succeed.")
    formats = {column: _fmt(kind) for column, _, kind, _ in [*RESULTS, *extra]}
    formats["Δ vs teacher (pp)"] = lambda v: f"{v:+.2f}" if pd.notna(v) else MISSING
    styler = frame.style.apply(lambda _: best_cells(frame, extra), axis=None).format(formats)
    st.dataframe(styler, hide_index=True, key="cmp_results")
    st.caption(
        "**Bold green**: the best value of a column (higher accuracy, lower perplexity, "
        "smaller, faster)."
    )
    _every_model(runs)


def _every_model(runs: list[Run]) -> None:
    """Every trained model of the runs, one row each, when a run trained more than one."""
    found = run_models(runs)
    if len(found) <= len({r.id for r, _, _ in found}):
        return
    formats = {"pct": _fmt("pct"), "count": _fmt("count"), "bytes": _fmt("bytes"), "ms": _fmt("ms")}
    frame = models_frame([{**m, "label": label} for _, m, label in found], formats)
    st.markdown(f"**Every trained model** ({len(found)} models of {len(runs)} runs)")
    st.dataframe(frame, hide_index=True, width="stretch", key="cmp_models_table")


def _configs(runs: list[Run]) -> None:
    head, toggle = st.columns([3, 1], vertical_alignment="bottom")
    head.subheader("Config differences")
    show_all = toggle.toggle("Show every key", key="cmp_all_keys")
    frame = diff_frame(runs, show_all)
    if frame.empty:
        st.info("The runs' configs are identical apart from their names.", icon=":material/equal:")
        return
    shown = frame.reset_index()
    styles = diff_styles(frame).reset_index(drop=True)
    styles.insert(0, "config key", "")
    st.dataframe(
        shown.style.apply(lambda _: styles, axis=None),
        placeholder=ui.MISSING_CELL,
        hide_index=True,
        key="cmp_diff",
        height=min(38 + 35 * len(frame), 560),
        column_config={"config key": st.column_config.TextColumn("config key", width="medium")},
    )
    baseline = run_label(runs[0])
    st.caption(f"Highlighted: values that differ from the baseline **{baseline}** (the first run).")


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------


def _series(run: Run, metric: str) -> list[tuple[int, float, int]]:
    """(step, value, epoch) of one series of one run, at most `CHART_POINTS` of them (the API
    downsamples a longer series keeping its extremes); finished runs are cached in the session."""
    cache = st.session_state.setdefault("_cmp_series", {})
    key = f"{run.id}:{metric}"
    if key in cache:
        return cache[key]
    metrics = ui.fetch(
        ui.client().metrics, run.id, names=[metric], max_points=CHART_POINTS, stop=False
    )
    points: list[tuple[int, float, int]] = []
    if metrics is not None and metric in metrics.series:
        s = metrics.series[metric]
        epochs = s.epochs or [0] * len(s.steps)
        points = [
            (int(step), float(v), int(e))
            for step, v, e in zip(s.steps, s.values, epochs, strict=False)
            if v is not None
        ]
    if run.is_terminal:
        cache[key] = points
    return points


METRIC_CHOICES = [
    "val/top1",
    "val/loss",
    "loss",
    "loss/ce",
    "loss/kd",
    "loss/at",
    "loss/fitnets",
    "lr",
]


def _metric_options(runs: list[Run]) -> list[str]:
    """The usual curves, then each run's task's validation metrics (val/miou, val/psnr, ...)
    and its losses."""
    from core.catalog.tasks import TASKS

    names = list(METRIC_CHOICES)
    for run in runs:
        task = TASKS.get(str((run.config or {}).get("task") or "classification"))
        for metric in task.metrics if task else ():
            if f"val/{metric}" not in names:
                names.append(f"val/{metric}")
        for loss in (run.config or {}).get("losses") or []:
            name = f"loss/{loss.get('name')}"
            if name not in names:
                names.append(name)
    return names


def curves_frame(runs: list[Run], metric: str) -> pd.DataFrame:
    rows = [
        (run_label(run), step, epoch, value)
        for run in runs
        for step, value, epoch in _series(run, metric)
    ]
    return pd.DataFrame(rows, columns=["run", "step", "epoch", "value"])


def _curves(runs: list[Run]) -> None:
    head, pick, axis = st.columns([2, 2, 1], vertical_alignment="bottom")
    head.subheader("Curves")
    metric = pick.selectbox("Metric", _metric_options(runs), key="cmp_metric")
    by_epoch = axis.toggle("by epoch", key="cmp_by_epoch", help="Steps differ between batch sizes.")
    frame = curves_frame(runs, metric)
    if frame.empty:
        st.caption(f"None of these runs logged `{metric}`.")
        return
    percent = bool(frame["value"].between(0, 1).all())  # not perplexity, PSNR, ...
    spec = curves_spec(metric, by_epoch, len(frame), percent)
    st.vega_lite_chart(frame, spec, width="stretch")
    absent = sorted(set(map(run_label, runs)) - set(frame["run"]))
    if absent:
        st.caption(f"No `{metric}` in: {', '.join(absent)}.")


# --------------------------------------------------------------------------------------------
# Accuracy against cost, with the Pareto front
# --------------------------------------------------------------------------------------------


def curves_spec(metric: str, by_epoch: bool, n_points: int, bounded: bool = True) -> dict[str, Any]:
    """Vega-Lite: one line per run (a plain spec: no Altair building or validation per run); a
    validation score in percent when its values are `bounded` to [0, 1] (not perplexity)."""
    percent = metric.startswith("val/") and "loss" not in metric and bounded
    axis = "epoch" if by_epoch else "step"
    y: dict[str, Any] = {"field": "value", "type": "quantitative", "title": metric}
    if percent:
        y["axis"] = {"format": "%"}
    return {
        "height": 300,
        "mark": {"type": "line", "point": n_points < 60},
        "encoding": {
            "x": {"field": axis, "type": "quantitative", "title": axis, "axis": {"format": "d"}},
            "y": y,
            "color": {
                "field": "run",
                "type": "nominal",
                "title": None,
                "legend": {"orient": "bottom", "columns": 2, "labelLimit": 320},
            },
            "tooltip": [
                {"field": "run", "type": "nominal"},
                {"field": "step", "type": "quantitative"},
                {"field": "epoch", "type": "quantitative"},
                {"field": "value", "type": "quantitative", "format": ".4g"},
            ],
        },
    }


def scatter_spec(title: str, log: bool) -> dict[str, Any]:
    """Vega-Lite: accuracy against a cost, the Pareto front filled and joined by a step line."""
    x = {
        "field": "cost",
        "type": "quantitative",
        "title": title,
        "scale": {"type": "log", "padding": 24} if log else {"zero": True, "nice": True},
    }
    y = {
        "field": "accuracy",
        "type": "quantitative",
        "title": "top-1",
        "axis": {"format": ".1%"},
        "scale": {"zero": False, "padding": 16, "nice": True},
    }
    colors = {"domain": [FRONT, DOMINATED], "range": ["#0f7b3f", "#9aa0a6"]}
    fills = {"domain": [FRONT, DOMINATED], "range": ["#0f7b3f", "transparent"]}
    return {
        "height": 320,
        "layer": [
            {
                "transform": [{"filter": {"field": "front", "equal": FRONT}}],
                "mark": {
                    "type": "line",
                    "interpolate": "step-after",
                    "color": "#0f7b3f",
                    "strokeDash": [4, 3],
                },
                "encoding": {"x": x, "y": y, "order": {"field": "cost"}},
            },
            {
                "mark": {"type": "point", "size": 120, "strokeWidth": 2},
                "encoding": {
                    "x": x,
                    "y": y,
                    "shape": {
                        "field": "kind",
                        "type": "nominal",
                        "title": None,
                        "legend": {"orient": "bottom"},
                    },
                    "color": {
                        "field": "front",
                        "type": "nominal",
                        "title": None,
                        "scale": colors,
                        "legend": {"orient": "bottom"},
                    },
                    "fill": {"field": "front", "type": "nominal", "scale": fills, "legend": None},
                    "tooltip": [
                        {"field": "label", "type": "nominal"},
                        {"field": "kind", "type": "nominal"},
                        {"field": "cost", "type": "quantitative", "title": title, "format": ".4g"},
                        {"field": "accuracy", "type": "quantitative", "format": ".2%"},
                        {"field": "front", "type": "nominal", "title": "Pareto"},
                    ],
                },
            },
            _labels(x, y, "student", "left", 8),
            _labels(x, y, "teacher", "right", -8),  # teachers sit at the right: label inwards
        ],
    }


def _labels(x: dict, y: dict, kind: str, align: str, dx: int) -> dict[str, Any]:
    return {
        "transform": [{"filter": {"field": "kind", "equal": kind}}],
        "mark": {"type": "text", "align": align, "dx": dx, "dy": -9, "fontSize": 11},
        "encoding": {
            "x": x,
            "y": y,
            "text": {"field": "label", "type": "nominal"},
            "color": {"value": "#5f6368"},
        },
    }


def _teacher_sizes(runs: list[Run]) -> dict[int, float]:
    """File sizes of the runs' teachers whose summaries lack them (one request per teacher)."""
    wanted = {
        r.teacher_model_id
        for r in runs
        if r.teacher_model_id is not None and not (r.summary or {}).get("teacher_size_bytes")
    }
    sizes: dict[int, float] = {}
    for model_id in sorted(wanted):
        model = ui.fetch(ui.client().model, model_id, stop=False)
        if model is not None and model.size_bytes:
            sizes[model_id] = float(model.size_bytes)
    return sizes


def _pick_models(runs: list[Run]) -> list[str] | None:
    """The trained models to plot (labels), picked like runs when a run trained several (all
    at first; a model left off stays off while it is offered); None: every model."""
    labels = [label for _, _, label in run_models(runs)]
    if len(labels) <= len(runs):
        return None
    hidden = set(st.session_state.get("_cmp_models_hidden", ()))
    current = st.session_state.get("cmp_models")
    if current is not None:  # what was offered last time and is not picked now was left off
        offered = set(st.session_state.get("_cmp_models_offered", ()))
        hidden = (hidden | (offered - set(current))) - set(current)
    st.session_state["_cmp_models_hidden"] = sorted(hidden)
    st.session_state["_cmp_models_offered"] = labels
    st.session_state["cmp_models"] = [x for x in labels if x not in hidden]
    chosen = st.multiselect(
        "Trained models on the plots",
        labels,
        key="cmp_models",
        placeholder="Pick the models to plot…",
        help="Runs that trained several models (peers, generations, an int8 student) give one "
        "point per model.",
    )
    return list(chosen)


def _tradeoffs(runs: list[Run]) -> None:
    st.subheader("Accuracy against cost")
    models = _pick_models(runs)
    left, right = st.columns(2)
    size = tradeoff_frame(runs, "size_bytes", _teacher_sizes(runs), models)
    if size.empty:  # older summaries may only have parameter counts
        size, size_title = tradeoff_frame(runs, "params", models=models), "parameters"
    else:
        size = size.assign(cost=size["cost"] / 1024)
        size_title = "size on disk (KiB)"
    latency = tradeoff_frame(runs, "cpu_latency_ms", models=models)
    for col, frame, title in (
        (left, size, size_title),
        (right, latency, "CPU latency, 1 sample (ms)"),
    ):
        with col:
            if frame.empty:
                ui.empty_state(
                    f"No run has both top-1 and {title} yet.", icon=":material/scatter_plot:"
                )
                continue
            spread = frame["cost"].max() / max(frame["cost"].min(), 1e-12)
            data = frame.drop(columns=["on_front"])
            st.vega_lite_chart(data, scatter_spec(title, log=spread > 20), width="stretch")
    st.caption(
        "Filled green points are on the **Pareto front**: no other model is both at least as "
        "accurate and at least as cheap. Hollow points are dominated."
    )


# --------------------------------------------------------------------------------------------
# Save and share
# --------------------------------------------------------------------------------------------


def _predictions(runs: list[Run]) -> None:
    """The runs' teacher and student predictions on the same validation images, drawn (dense
    tasks: each run's `predictions` artifact), one block per run that has them."""
    api = ui.client()
    found = []
    for run in runs:
        if run.status == "succeeded":
            artifacts = ui.fetch(api.artifacts, run.id, stop=False) or []
            if any(a.kind == predictions.KIND for a in artifacts):
                found.append((run, artifacts))
    if not found:
        return
    st.subheader("Predictions side by side")
    st.caption(
        "The same validation images for every run: ground truth, teacher, student (and the "
        "input, for image-to-image runs)."
    )
    for run, artifacts in found:
        st.markdown(f"**{run_label(run)}**")
        predictions.show(api, artifacts, limit=2)


def _share_link(comparison_id: int) -> str:
    try:
        base = str(st.context.url or "").split("?", 1)[0]
    except Exception:  # noqa: BLE001 - no browser context (tests)
        base = ""
    return f"{base or '/compare'}?comparison={comparison_id}"


def _save(runs: list[Run]) -> None:
    st.subheader("Save and share")
    with st.form("cmp_save_form", border=True):
        left, right = st.columns([2, 3])
        name = left.text_input(
            "Name", key="cmp_name", placeholder="e.g. kd vs kd+at on digits", max_chars=200
        )
        description = right.text_input("Note (optional)", key="cmp_description", max_chars=2000)
        submitted = st.form_submit_button(
            "Save comparison for the team", icon=":material/bookmark_add:", type="primary"
        )
    if submitted:
        if not name.strip():
            st.error("Give the comparison a name first, so your team can find it.")
        else:
            saved = ui.fetch(
                ui.client().create_comparison,
                name.strip(),
                [r.id for r in runs],
                description,
                stop=False,
            )
            if saved is not None:
                st.session_state["cmp_saved"] = saved.id
                st.session_state["cmp_flash"] = saved.id
                st.rerun()
    current = st.session_state.get("cmp_saved")
    if current is not None:
        if st.session_state.pop("cmp_flash", None) == current:
            st.success("Saved. Everyone in your team finds it under *Saved comparisons*.")
        st.caption("Share this link with your team (copy it with the button on the right):")
        st.code(_share_link(current), language=None)


# --------------------------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------------------------

st.title("Compare runs")
with st.spinner("Loading comparisons…"):
    saved_page = ui.fetch(ui.client().comparisons, limit=100)
saved_items = saved_page.items if saved_page else []
_initial_selection(saved_items)
_saved_section(saved_items)
with st.spinner("Loading runs…"):
    chosen = _pick_runs()
if len(chosen) < 2:
    ui.empty_state(
        "Pick at least two runs above — or select runs on the Runs page and press *Compare*. "
        "The first run is the baseline.",
        icon=":material/compare_arrows:",
    )
    st.stop()
_results(chosen)
_configs(chosen)
_curves(chosen)
_tradeoffs(chosen)
_predictions(chosen)
_save(chosen)
ui.refresh_while(any(not r.is_terminal for r in chosen), every=5, key="compare")
