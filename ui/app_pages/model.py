"""One model: status, size, parameters, FLOPs, accuracy where known, its layer table grouped by
stage, its other versions and the runs that used it as their teacher."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from client import Model, Run
from core.hf import TEXT_TASKS
from ui import components as ui
from ui import transformer

RUNS_SHOWN = 20


def _pick() -> int | None:
    models = ui.all_items(ui.client().models)
    if not models:
        ui.empty_state(f"No models yet — upload a teacher on the Models page, or {ui.DEMO_HINT}.")
        return None
    choice = st.selectbox(
        "Model",
        models,
        format_func=lambda m: f"#{m.id} {m.name} v{m.version}",
        index=None,
        placeholder="Choose a model…",
    )
    return choice.id if choice else None


def _header(model: Model) -> None:
    title, badge = st.columns([5, 1], vertical_alignment="center")
    title.title(f"{model.name} · v{model.version}")
    with badge:
        ui.status_badge(model.status)
    facts = [f"format **{model.format}**"]
    if model.architecture:
        facts.append(f"architecture **{model.architecture}**")
    if model.arch_kwargs:
        facts.append("kwargs `" + ", ".join(f"{k}={v}" for k, v in model.arch_kwargs.items()) + "`")
    if model.source_run_id:
        facts.append(f"distilled by run #{model.source_run_id}")
    facts.append(f"sha256 `{model.sha256[:12]}`" if model.sha256 else "")
    st.caption(" · ".join(f for f in facts if f))
    if model.description:
        st.markdown(model.description)


def _body(model: Model) -> None:
    if model.status in ("pending", "running"):
        st.info(
            "Inspecting the model (one dummy forward pass in a worker)… this page refreshes "
            "by itself.",
            icon=":material/hourglass_top:",
        )
        return
    if model.status == "failed":
        st.error(
            f"Inspection failed: {model.error or 'no reason given'}. Fix the file (or the "
            "architecture/kwargs for safetensors) and upload it again."
        )
        return
    runs, more_runs = ui.collect(ui.client().runs, RUNS_SHOWN, teacher_model_id=model.id)
    versions = ui.all_items(ui.client().models, limit=100, name=model.name)
    hf = model.format == "hf" and model.inspection is not None
    if not hf:
        ui.inspection_metrics(model.inspection, model.size_bytes)
    _quality(model, runs, len(versions))
    if hf and not TEXT_TASKS:  # no task reads text yet: say so rather than offer a run
        st.info(transformer.NO_TASK, icon=":material/translate:")
    else:
        st.page_link(
            ui.PAGES["new_run"],
            label="Distil this teacher",
            icon=":material/rocket_launch:",
            query_params={"teacher": str(model.id)},
        )
    rows = card_rows(model.card)
    if rows:
        with st.expander("Model card", icon=":material/badge:"):
            st.table(pd.DataFrame(rows, columns=["field", "value"]), hide_index=True)
    layers_tab, versions_tab, runs_tab = st.tabs(
        [
            "Layers by block" if hf else "Layers by stage",
            f"Versions ({len(versions)})",
            f"Runs with this teacher ({len(runs)}{'+' if more_runs else ''})",
        ]
    )
    with layers_tab:
        st.caption("Layer paths are what you pair between teacher and student on the New run page.")
        if model.inspection is None:
            ui.empty_state("This model has no inspection yet.")
        elif hf:
            transformer.show(model.inspection, key=f"model{model.id}")
        else:
            ui.layers_by_stage(model.inspection, key=f"model{model.id}")
    with versions_tab:
        _versions(model, versions)
    with runs_tab:
        _runs(model, runs, more_runs)


SOURCES = {"upload": "uploaded file", "run": "registered from a run"}
FORMATS = {
    "pt2": "torch.export archive (.pt2)",
    "safetensors": "safetensors weights",
    "hf": "Hugging Face checkpoint (.zip)",
}


def _count(n: float) -> str:
    return f"{n:,}" if isinstance(n, int) else f"{n:,.4g}"


def _size(n: float) -> str:
    """As the rest of the studio shows sizes (KiB/MiB), with the exact byte count."""
    return ui.fmt_bytes(n) if n < 1024 else f"{ui.fmt_bytes(n)} ({int(n):,} bytes)"


CARD_FIELDS: dict[str, tuple[str, Callable[[Any], str]]] = {
    # card key -> (label, formatter), shown in this order; other keys follow as they are
    "source": ("Source", lambda v: SOURCES.get(v, str(v))),
    "format": ("Format", lambda v: FORMATS.get(v, str(v))),
    "input_shape": ("Input shape", ui.fmt_shape),
    "num_classes": ("Classes", _count),
    "classes": ("Class names", lambda v: _names(v)),
    "accuracy": ("Top-1 accuracy", ui.fmt_pct),
    "teacher_accuracy": ("Teacher top-1 accuracy", ui.fmt_pct),
    "agreement": ("Agreement with the teacher", ui.fmt_pct),
    "params": ("Parameters", _count),
    "flops": ("FLOPs (one sample)", lambda v: f"{_count(v)} ({ui.fmt_count(v)})"),
    "size_bytes": ("File size", _size),
    "latency_ms": ("CPU latency (batch 1, median)", lambda v: f"{v:.3g} ms"),
}


def _names(names: list, shown: int = 12) -> str:
    text = ", ".join(str(n) for n in names[:shown])
    return text + (f", … ({len(names):,} in all)" if len(names) > shown else "")


def _plain(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items())
    return str(value)


def card_rows(card: dict | None) -> list[tuple[str, str]]:
    """The model card as (field, value) rows in words: the known facts first, formatted for
    people (sizes in KiB/MiB, counts with separators, accuracies as %), then any other keys as
    they are. Missing or null values are left out (a missing key means unknown)."""
    card = {k: v for k, v in (card or {}).items() if v is not None}
    rows = []
    for key, (label, fmt) in CARD_FIELDS.items():
        if key in card:
            try:
                rows.append((label, fmt(card[key])))
            except (TypeError, ValueError):  # not the type the API documents: show it as is
                rows.append((label, _plain(card[key])))
    rows += [
        (key.replace("_", " ").capitalize(), _plain(value))
        for key, value in card.items()
        if key not in CARD_FIELDS
    ]
    return rows


def teacher_accuracy(model: Model, runs: list[Run]) -> tuple[float | None, str]:
    """The model's top-1 where known, and where it comes from: its card (a registered student's
    held-out accuracy), else the newest succeeded run that used it as the teacher."""
    card = model.card or {}
    if card.get("accuracy") is not None:
        source = f"run #{model.source_run_id}" if model.source_run_id else "its card"
        return float(card["accuracy"]), f"held-out top-1 from {source}"
    for run in runs:
        top1 = (run.summary or {}).get("teacher_top1")
        if run.status == "succeeded" and top1 is not None:
            return float(top1), f"measured by run #{run.id} on dataset #{run.dataset_id}"
    return None, "not measured yet — it is measured when a run with this teacher succeeds"


def _quality(model: Model, runs: list[Run], n_versions: int) -> None:
    accuracy, source = teacher_accuracy(model, runs)
    card = model.card or {}
    cols = st.columns(5)
    cols[0].metric("Top-1 accuracy", ui.fmt_pct(accuracy), help=source)
    latency = card.get("latency_ms")
    if latency is None:
        latency = next(
            (
                (r.summary or {}).get("teacher_cpu_latency_ms")
                for r in runs
                if (r.summary or {}).get("teacher_cpu_latency_ms") is not None
            ),
            None,
        )
    cols[1].metric(
        "CPU latency", "—" if latency is None else f"{latency:.3g} ms", help="Batch of 1, median."
    )
    cols[2].metric("Versions", n_versions, help=f"Models named “{model.name}”.")
    cols[3].metric("Runs as teacher", f"{len(runs)}+" if len(runs) >= RUNS_SHOWN else len(runs))
    best = max(
        (
            (r.summary or {}).get("student_top1")
            for r in runs
            if (r.summary or {}).get("student_top1")
        ),
        default=None,
    )
    cols[4].metric("Best student top-1", ui.fmt_pct(best), help="Among its runs shown below.")
    st.caption(f"Accuracy: {source}.")


def _versions(model: Model, versions: list[Model]) -> None:
    if len(versions) <= 1:
        st.caption(
            f"Only version {model.version}. Upload a file under the same name "
            f"(“{model.name}”) on the Models page to add a new version."
        )
    rows = [
        {
            "id": v.id,
            "version": f"v{v.version}" + (" (this one)" if v.id == model.id else ""),
            "status": ui.status_label(v.status),
            "params": (v.card or {}).get("params"),
            "FLOPs": ui.fmt_count((v.card or {}).get("flops")),
            "accuracy": (v.card or {}).get("accuracy"),
            "size": ui.fmt_bytes(v.size_bytes),
            "source": f"run #{v.source_run_id}" if v.source_run_id else "upload",
            "created": v.created_at,
        }
        for v in sorted(versions, key=lambda v: -v.version)
    ]
    event = st.dataframe(
        pd.DataFrame(rows),
        placeholder=ui.MISSING_CELL,
        hide_index=True,
        on_select="rerun",
        selection_mode="single-row",
        key=f"versions_{model.id}",
        column_config={
            "id": st.column_config.NumberColumn("ID", width="small"),
            "params": st.column_config.NumberColumn("params", format="compact"),
            "accuracy": st.column_config.NumberColumn("top-1", format="percent"),
            "created": st.column_config.DatetimeColumn("created", format="distance"),
        },
    )
    picked = event.selection.rows if event else []
    if picked and rows[picked[0]]["id"] != model.id:
        ui.go("model", id=rows[picked[0]]["id"])


def _runs(model: Model, runs: list[Run], more: bool) -> None:
    if not runs:
        ui.empty_state(
            "No run has used this model as its teacher yet — press *Distil this teacher*.",
            icon=":material/rocket_launch:",
        )
        return
    frame = ui.runs_frame(runs)
    event = st.dataframe(
        frame.drop(columns=["teacher"]),
        placeholder=ui.MISSING_CELL,
        hide_index=True,
        on_select="rerun",
        selection_mode="single-row",
        key=f"model_runs_{model.id}",
        column_config={
            "id": st.column_config.NumberColumn("ID", width="small"),
            "progress": st.column_config.ProgressColumn(
                "progress", min_value=0.0, max_value=1.0, format="percent"
            ),
            "student top-1": st.column_config.NumberColumn(format="percent"),
            "teacher top-1": st.column_config.NumberColumn(format="percent"),
            "agreement": st.column_config.NumberColumn(format="percent"),
            "created": st.column_config.DatetimeColumn("created", format="distance"),
        },
    )
    picked = event.selection.rows if event else []
    if picked:
        ui.go("run", id=runs[picked[0]].id)
    note = f"The {len(runs)} newest runs. " if more else ""
    st.caption(note + "Select a row to open the run; filter by this teacher on the Runs page.")


st.page_link(ui.PAGES["models"], label="All models", icon=":material/arrow_back:")
model_id = ui.query_id()
if model_id is None:
    model_id = _pick()
if model_id is not None:
    if flash := st.session_state.pop("flash", None):
        st.success(flash)
    with st.spinner("Loading the model…"):
        model = ui.fetch(ui.client().model, model_id)
    _header(model)
    _body(model)
    ui.refresh_while(model.status in ("pending", "running"), key=f"model{model.id}")
