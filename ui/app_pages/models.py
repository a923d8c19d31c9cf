"""Models: upload a teacher (.pt2 archive or safetensors weights of a zoo architecture); list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from client import Catalog, Model
from ui import components as ui

FORMATS = {".pt2": "pt2", ".safetensors": "safetensors", ".onnx": "onnx", ".zip": "hf"}


def _parse_shape(text: str) -> list[int] | None:
    try:
        dims = [int(part) for part in text.replace("x", ",").replace("×", ",").split(",") if part]
    except ValueError:
        return None
    return dims if dims and all(d > 0 for d in dims) else None


def _architecture_form(catalog: Catalog) -> tuple[str, dict[str, Any]] | None:
    """Zoo architecture and its kwargs, for safetensors weights. None when the form is invalid."""
    names = [e.name for e in catalog.students]
    arch = st.selectbox(
        "Architecture",
        names,
        key="up_arch",
        format_func=lambda n: f"{catalog.student(n).title} ({n})",
        help="The zoo architecture these weights belong to.",
    )
    entry = catalog.student(arch)
    ui.entry_help(entry)
    kwargs = ui.param_form(entry, f"up_arch.{arch}")
    left, right = st.columns(2)
    shape_text = left.text_input(
        "Input shape",
        "3,32,32",
        key="up_shape",
        help="One sample's shape without the batch: channels,height,width (or features).",
    )
    num_classes = right.number_input("Classes", 2, 100_000, 10, key="up_classes")
    shape = _parse_shape(shape_text)
    if shape is None:
        st.error("Input shape: give positive whole numbers separated by commas, e.g. 3,32,32.")
        return None
    return arch, {"input_shape": shape, "num_classes": int(num_classes), **kwargs}


def _upload_form(catalog: Catalog) -> None:
    file = st.file_uploader(
        "Teacher file",
        type=["pt2", "safetensors", "onnx", "zip"],
        key="up_file",
        help="A `torch.export` archive (.pt2), safetensors weights of a zoo architecture, a "
        "single-file ONNX teacher (run by onnxruntime; no gradients through it), or a Hugging "
        "Face checkpoint folder as a .zip (config.json, model.safetensors, tokenizer.json). "
        "Uploaded files are never unpickled as code.",
    )
    if file is None:
        st.caption(
            "Export a teacher with `torch.export.save(torch.export.export(model, (x,)), "
            "'teacher.pt2')`, save its state dict with safetensors, or export it to one ONNX "
            "file (`torch.onnx.export(model, (x,), 'teacher.onnx')`)."
        )
        return
    fmt = FORMATS.get(Path(file.name).suffix.lower())
    if fmt is None:
        st.error(
            f"'{file.name}' is not .pt2, .safetensors, .onnx or .zip (a Hugging Face "
            "checkpoint); export the model again."
        )
        return
    left, right = st.columns([2, 3])
    name = left.text_input("Name", placeholder=Path(file.name).stem, key="up_name")
    description = right.text_input("Description", key="up_description")
    arch, kwargs = None, None
    if fmt == "safetensors":
        spec = _architecture_form(catalog)
        if spec is None:
            return
        arch, kwargs = spec
    if st.button("Upload teacher", type="primary", icon=":material/upload:", key="up_submit"):
        _upload(file, name or Path(file.name).stem, fmt, arch, kwargs, description)


def _upload(
    file: Any, name: str, fmt: str, arch: str | None, kwargs: dict | None, description: str
) -> None:
    bar = st.progress(0.0, text="Uploading…")

    def progress(sent: int, total: int) -> None:
        bar.progress(sent / total if total else 1.0, text=f"Uploading… {ui.fmt_bytes(sent)}")

    model = ui.fetch(
        ui.client().upload_model,
        file,
        name=name,
        format=fmt,
        architecture=arch,
        kwargs=kwargs,
        description=description,
        on_progress=progress,
        stop=False,
    )
    bar.empty()
    if model is not None:
        st.session_state["flash"] = f"Uploaded **{model.name}** v{model.version}; inspecting it…"
        ui.go("model", id=model.id)


def _frame(models: list[Model], versions: dict[str, int]) -> pd.DataFrame:
    rows = []
    for m in models:
        card = m.card or {}
        insp_params = m.inspection.params if m.inspection else None
        rows.append(
            {
                "id": m.id,
                "name": m.name,
                "version": m.version,
                "versions": versions.get(m.name, 1),
                "status": ui.status_label(m.status),
                "architecture": m.architecture or m.format,
                "params": card.get("params", insp_params),
                "FLOPs": ui.fmt_count(card.get("flops")),
                "top-1": card.get("accuracy"),
                "size": ui.fmt_bytes(m.size_bytes),
                "input": ui.fmt_shape(card.get("input_shape")),
                "classes": card.get("num_classes"),
                "source": f"run #{m.source_run_id}" if m.source_run_id else "upload",
                "created": m.created_at,
            }
        )
    frame = pd.DataFrame(rows)
    if not frame.empty and (frame["versions"] == 1).all():
        frame = frame.drop(columns=["versions"])  # no name has a second version: room for more
    if not frame.empty:
        frame["top-1"] = pd.to_numeric(frame["top-1"], errors="coerce")
        frame["params"] = pd.to_numeric(frame["params"], errors="coerce")
    return frame


def latest_versions(models: list[Model]) -> tuple[list[Model], dict[str, int]]:
    """The newest version of each name (in list order) and how many versions each name has."""
    counts: dict[str, int] = {}
    latest: dict[str, Model] = {}
    for m in models:
        counts[m.name] = counts.get(m.name, 0) + 1
        if m.name not in latest or m.version > latest[m.name].version:
            latest[m.name] = m
    keep = {id(m) for m in latest.values()}
    return [m for m in models if id(m) in keep], counts


def _list(models: list[Model], only_latest: bool) -> None:
    if not models:
        ui.empty_state(f"No models yet — upload a teacher above, or {ui.DEMO_HINT}.")
        return
    shown, versions = latest_versions(models)
    if not only_latest:
        shown = models
    st.caption(
        "Select a row to open the model: its layers, all its versions and the runs that used it."
    )
    event = st.dataframe(
        _frame(shown, versions),
        placeholder=ui.MISSING_CELL,
        hide_index=True,
        on_select="rerun",
        selection_mode="single-row",
        key="models_table",
        column_config={
            "id": st.column_config.NumberColumn("ID", width="small"),
            "version": st.column_config.NumberColumn("v", width="small"),
            "versions": st.column_config.NumberColumn("versions", width="small"),
            "params": st.column_config.NumberColumn("params", format="compact"),
            "top-1": st.column_config.NumberColumn(
                "top-1", format="percent", help="Held-out accuracy, where a run measured it."
            ),
            "created": st.column_config.DatetimeColumn("Created", format="distance"),
        },
    )
    rows = event.selection.rows if event else []
    if rows:
        ui.go("model", id=shown[rows[0]].id)


st.title("Models")
catalog = ui.catalog()
filter_left, filter_right, filter_toggle = st.columns([3, 1, 1], vertical_alignment="bottom")
name_filter = filter_left.text_input("Search", key="models_q", placeholder="model name…")
status_filter = filter_right.selectbox(
    "Status",
    ["all", "ready", "pending", "running", "failed"],
    key="models_status",
    format_func=lambda s: s if s == "all" else ui.status_label(s),
)
only_latest = filter_toggle.toggle(
    "Latest only",
    value=True,
    key="models_latest",
    help="One row per model name: its newest version.",
)
with st.spinner("Loading models…"):
    models = ui.all_items(
        ui.client().models, status=None if status_filter == "all" else status_filter
    )
shown = [m for m in models if name_filter.strip().lower() in m.name.lower()]
filtered = bool(name_filter.strip()) or status_filter != "all"
with st.expander(
    "Upload a teacher", icon=":material/upload:", expanded=not models and not filtered
):
    _upload_form(catalog)
if filtered and not shown:
    ui.empty_state("No models match these filters.", icon=":material/search_off:")
else:
    _list(shown, only_latest)
ui.refresh_while(any(m.status in ("pending", "running") for m in models), key="models")
