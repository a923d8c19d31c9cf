"""Datasets: upload (.npz, .zip/.tar of class folders or WebDataset shards, .csv, .parquet,
.jsonl, .txt), list, and look at one dataset.

A text dataset (what `worker.engine.tasks.text.data.describe_text` records at the scan: kind,
rows, the first rows, class counts) shows its kind, rows, sample rows (text and label, or prompt
and completion) and class counts; its token length histogram needs a tokenizer, so it is drawn
when the scan (or a run's teacher) recorded one (`token_lengths`), and the page says which of
the team's Hugging Face models can tokenise it."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from client import PLAN_TIMEOUT_S, ApiError, Dataset, DatasetSamples
from core.catalog.tasks import TASKS
from core.config import DatasetRef
from ui import components as ui
from ui.analysis import split_sizes

VAL_FRACTION = DatasetRef.model_fields["val_fraction"].default  # what a run holds out
# the token lengths' max length to start at: the text tasks' default (task parameter max_length)
MAX_LENGTH = next(
    (p.default for t in TASKS.values() for p in t.params if p.name == "max_length"), 128
)
FORMATS = {
    ".npz": "npz",
    ".zip": "zip",
    ".tar": "tar",
    ".csv": "csv",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".txt": "txt",
}
FORMAT_HELP = {
    "npz": "arrays `x` (samples × …) and `y` (integer labels)",
    "zip": "one folder per class with images inside (or WebDataset .tar shards, stored)",
    "tar": "one folder per class, or WebDataset shards: `<key>.jpg` with `<key>.cls` (class)",
    "csv": "one row per sample: a label column and numeric feature columns (or a text column)",
    "parquet": "a table like .csv: a label column and numeric feature columns",
    "jsonl": "one JSON record a line: `text` and a label, `text` alone (language modelling), or "
    "`prompt` and `completion` (instruction data)",
    "txt": "plain text, one document a line (language modelling, sentence embeddings)",
}
TEXT_KINDS = {
    "classification": "Text classification",
    "lm": "Plain text",
    "instruction": "Prompt / completion",
}


def _upload_form() -> None:
    file = st.file_uploader(
        "Dataset file",
        type=[k.lstrip(".") for k in FORMATS],
        key=f"ds_file_{st.session_state.get('ds_n', 0)}",
        help="; ".join(f".{k}: {v}" for k, v in FORMAT_HELP.items()),
    )
    if file is None:
        st.caption("  \n".join(f"**.{k}** — {v}" for k, v in FORMAT_HELP.items()))
        return
    fmt = FORMATS.get(Path(file.name).suffix.lower())
    if fmt is None:
        st.error(f"'{file.name}' is not one of {', '.join(FORMATS)}; convert it to one of those.")
        return
    left, right = st.columns(2)
    name = left.text_input("Name", placeholder=Path(file.name).stem, key="ds_name")
    label_column = "label"
    if fmt in ("csv", "parquet", "jsonl"):
        label_column = right.text_input(
            "Label column", "label", key="ds_label", help="The column that holds each row's class."
        )
    if st.button("Upload dataset", type="primary", icon=":material/upload:", key="ds_submit"):
        _upload(file, name or Path(file.name).stem, fmt, label_column)


def _upload(file: Any, name: str, fmt: str, label_column: str) -> None:
    bar = st.progress(0.0, text="Uploading…")

    def progress(sent: int, total: int) -> None:
        bar.progress(sent / total if total else 1.0, text=f"Uploading… {ui.fmt_bytes(sent)}")

    dataset = ui.fetch(
        ui.client().upload_dataset,
        file,
        name=name,
        format=fmt,
        label_column=label_column,
        on_progress=progress,
        stop=False,
    )
    bar.empty()
    if dataset is not None:
        st.session_state["ds_selected"] = dataset.id
        st.session_state["ds_n"] = st.session_state.get("ds_n", 0) + 1  # clears the uploader
        st.session_state["ds_flash"] = {"id": dataset.id, "name": dataset.name}
        st.rerun()


def _frame(datasets: list[Dataset]) -> pd.DataFrame:
    rows = []
    for d in datasets:
        info = d.info
        rows.append(
            {
                "id": d.id,
                "name": d.name,
                "format": d.format,
                "status": ui.status_label(d.status),
                "samples": info.num_samples if info else None,
                "classes": info.num_classes if info else None,
                "input": ui.fmt_shape(info.input_shape) if info else "—",
                "size": ui.fmt_bytes(d.size_bytes),
                "created": d.created_at,
            }
        )
    return pd.DataFrame(rows)


def _class_counts(dataset: Dataset) -> pd.DataFrame:
    info = dataset.info
    if info is None or not info.class_counts:
        return pd.DataFrame(columns=["class", "count"])
    counts = info.class_counts
    if isinstance(counts, dict):
        pairs = list(counts.items())
    else:
        names = list(info.classes or range(len(counts)))
        pairs = list(zip([str(n) for n in names], counts, strict=False))
    return pd.DataFrame(pairs, columns=["class", "count"])


def _detail(dataset: Dataset) -> None:
    head, badge = st.columns([5, 1], vertical_alignment="center")
    head.subheader(dataset.name)
    with badge:
        ui.status_badge(dataset.status)
    if dataset.status == "failed":
        st.error(
            f"Scanning failed: {dataset.error or 'no reason given'}. Fix the file and "
            "upload it again."
        )
        return
    if dataset.status != "ready" or dataset.info is None:
        st.info(
            "A worker is scanning the dataset… this page refreshes by itself.",
            icon=":material/hourglass_top:",
        )
        return
    info = dataset.info
    if is_text(dataset):
        _text_detail(dataset)
        return
    cols = st.columns(5)
    cols[0].metric("Samples", ui.fmt_count(info.num_samples))
    cols[1].metric("Classes", info.num_classes if info.num_classes is not None else "—")
    cols[2].metric("Input", ui.fmt_shape(info.input_shape))
    cols[3].metric("Kind", info.kind or dataset.format)
    cols[4].metric("File size", ui.fmt_bytes(dataset.size_bytes))
    counts = _class_counts(dataset)
    left, right = st.columns([3, 2], gap="large")
    with left:
        _samples(dataset)
    with right:
        if _task(dataset) == "detection":  # boxes per class; split by image
            _image_split(dataset)
        elif _task(dataset) == "generation":  # image pairs: split by image, no classes
            _pair_split(dataset)
        else:
            _split(dataset, counts)
        if not counts.empty:
            _counts_chart(counts, "boxes" if _task(dataset) == "detection" else "samples")


def _extra(dataset: Dataset) -> dict[str, Any]:
    return (dataset.info.model_extra or {}) if dataset.info else {}


def is_text(dataset: Dataset) -> bool:
    """Whether the scan read the upload as text (`describe_text`: a text kind and text rows)."""
    samples = _extra(dataset).get("samples")
    rows = isinstance(samples, list) and all(isinstance(r, dict) for r in samples)
    return bool(dataset.info) and dataset.info.kind in TEXT_KINDS and rows  # type: ignore[union-attr]


def text_rows(dataset: Dataset) -> pd.DataFrame:
    """The text dataset's first rows as the scan recorded them (text and label, prompt and
    completion, or text), one column per field."""
    samples = [r for r in _extra(dataset).get("samples") or [] if isinstance(r, dict)]
    columns = list(dict.fromkeys(k for r in samples for k in r))
    return pd.DataFrame(samples, columns=columns)


def length_frame(histogram: dict[str, Any]) -> pd.DataFrame:
    """A token length histogram (`edges` [bins + 1], `counts` [bins]) as bars: from, to, rows."""
    edges, counts = histogram.get("edges") or [], histogram.get("counts") or []
    rows = [
        {"from": int(lo), "to": int(hi), "rows": int(n)}
        for lo, hi, n in zip(edges, edges[1:], counts, strict=False)
    ]
    return pd.DataFrame(rows, columns=["from", "to", "rows"])


def _text_detail(dataset: Dataset) -> None:
    """A text dataset: kind, rows, classes and size; the first rows; class counts and the
    split; the token lengths."""
    info, extra = dataset.info, _extra(dataset)
    assert info is not None
    rows = info.num_samples if info.num_samples is not None else extra.get("rows")
    classes = extra.get("classes") or info.classes
    cols = st.columns(4)
    cols[0].metric("Rows", ui.fmt_count(rows))
    cols[1].metric("Kind", TEXT_KINDS.get(info.kind or "", info.kind or "—"))
    cols[2].metric("Classes", len(classes) if classes else "—")
    cols[3].metric("File size", ui.fmt_bytes(dataset.size_bytes))
    counts = _class_counts(dataset)
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.markdown("**Sample rows**")
        frame = text_rows(dataset)
        st.dataframe(frame, hide_index=True, key=f"ds_text_{dataset.id}", height=300)
        st.caption(f"The first {len(frame)} rows, long texts cut.")
    with right:
        if counts.empty:
            _row_split(int(rows or 0))
        else:
            _split(dataset, counts)
            _counts_chart(counts, "rows")
    _token_lengths(dataset)


def _row_split(n: int) -> None:
    """An unlabelled text dataset's split: round(N x val_fraction) rows held out."""
    val = min(max(round(n * VAL_FRACTION), 1), n - 1) if n >= 2 else 0
    st.markdown("**Train / validation split**")
    cols = st.columns(2)
    cols[0].metric("Train rows", ui.fmt_count(n - val), help="Rows the student trains on.")
    cols[1].metric("Validation rows", ui.fmt_count(val), help="Held out: measured here.")
    st.caption(f"Runs hold out {VAL_FRACTION:.0%} of the rows (seeded by the run's seed).")


def _hf_models() -> dict[int, Any]:
    """The team's ready Hugging Face models (format hf) whose inspection found a tokenizer (the
    list leaves inspections out: each checkpoint's is read once per session)."""
    known = st.session_state.setdefault("_ds_tokenizers", {})
    found = {}
    for model in ui.ready_models():
        if model.format != "hf":
            continue
        if model.id not in known:
            detail = ui.fetch(ui.client().model, model.id, stop=False)
            extra = (detail.inspection.model_extra or {}) if detail and detail.inspection else {}
            known[model.id] = extra.get("tokenizer_vocab_size") is not None
        if known[model.id]:
            found[model.id] = model
    return found


def _token_lengths(dataset: Dataset) -> None:
    """The token length histogram (edges, counts, min, max, mean and, with a max length, the
    rows it cuts): the one the scan recorded, or the one a worker counts with the tokenizer of
    a Hugging Face teacher of the team chosen here (`GET /datasets/{id}/token-lengths`)."""
    st.markdown("**Token lengths**")
    histogram = _extra(dataset).get("token_lengths")
    if isinstance(histogram, dict) and histogram.get("counts"):
        _length_chart(histogram)
        return
    models = _hf_models()
    if not models:
        st.caption(
            "Token lengths depend on the tokenizer: upload a Hugging Face teacher with its "
            "tokenizer.json on the Models page to count this dataset's tokens."
        )
        return
    ids = list(models)
    if st.session_state.get("ds_tok_model") not in ids:
        st.session_state["ds_tok_model"] = ids[0]
    left, middle, right = st.columns([3, 2, 2], vertical_alignment="bottom")
    model_id = left.selectbox(
        "Tokenizer of",
        ids,
        key="ds_tok_model",
        format_func=lambda i: f"#{i} {models[i].name} v{models[i].version}",
        help="A Hugging Face teacher of your team: its tokenizer.json counts each row's tokens.",
    )
    max_length = middle.number_input(
        "Max length",
        2,
        1_048_576,
        value=MAX_LENGTH,
        key="ds_tok_max_length",
        help="A run's max length (task parameter): the rows longer than it are counted.",
    )
    text_column = right.text_input("Text column", "text", key="ds_tok_text_column")
    key = (dataset.id, model_id, int(max_length), text_column or "text")
    found = st.session_state.setdefault("_ds_lengths", {})
    if key not in found and st.button(
        "Count tokens", icon=":material/bar_chart:", key="ds_tok_count"
    ):
        slot = st.empty()
        found[key] = ui.fetch(
            ui.client().dataset_token_lengths,
            dataset.id,
            model_id,
            max_length=int(max_length),
            text_column=text_column or "text",
            on_pending=_counting(slot),
            stop=False,
        )
        slot.empty()
    if found.get(key):
        _length_chart(found[key])


def _counting(slot: Any) -> Any:
    """Progress in `slot` while a worker counts the tokens (the API said 202)."""

    def show(pending: Any, waited: float) -> None:
        slot.progress(
            min(waited / PLAN_TIMEOUT_S, 0.99),
            text=f"A worker is counting the tokens… {waited:.0f}s",
        )

    return show


def _length_chart(histogram: dict[str, Any]) -> None:
    frame = length_frame(histogram)
    chart = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("from:Q", bin="binned", title="tokens"),
            x2="to:Q",
            y=alt.Y("rows:Q", title="rows"),
            tooltip=["from", "to", "rows"],
        )
        .properties(height=200)
    )
    st.altair_chart(chart, width="stretch")
    note = (
        f"Shortest {histogram.get('min')}, longest {histogram.get('max')}, mean "
        f"{float(histogram.get('mean') or 0):.1f} tokens"
    )
    if histogram.get("max_length") is not None:
        note += (
            f"; {histogram.get('over_max_length', 0)} rows are longer than the max length "
            f"{histogram['max_length']} and would be cut"
        )
    st.caption(note + ".")


def _task(dataset: Dataset) -> str | None:
    """The task the worker's scan found the upload to be (classification when unsaid)."""
    return (dataset.info.model_extra or {}).get("task") if dataset.info else None


def _image_split(dataset: Dataset) -> None:
    """A detection dataset's split: round(N x val_fraction) images held out (not by class)."""
    extra = (dataset.info.model_extra or {}) if dataset.info else {}
    n = int(dataset.info.num_samples or 0) if dataset.info else 0
    val = min(max(round(n * VAL_FRACTION), 1), n - 1) if n >= 2 else 0
    st.markdown("**Train / validation split**")
    cols = st.columns(3)
    cols[0].metric("Train images", ui.fmt_count(n - val), help="Images the student trains on.")
    cols[1].metric("Validation images", ui.fmt_count(val), help="Held out: mAP is measured here.")
    cols[2].metric("Boxes", ui.fmt_count(extra.get("num_boxes")))
    empty = extra.get("images_without_boxes")
    st.caption(
        f"Runs hold out {VAL_FRACTION:.0%} of the images (seeded by the run's seed)"
        + (f"; {empty} images have no boxes (allowed)." if empty else ".")
    )


def _pair_split(dataset: Dataset) -> None:
    """An image-to-image dataset's split: round(N x val_fraction) pairs held out; whether it
    has targets (without them the student learns from, and is measured against, the teacher)."""
    extra = (dataset.info.model_extra or {}) if dataset.info else {}
    n = int(dataset.info.num_samples or 0) if dataset.info else 0
    val = min(max(round(n * VAL_FRACTION), 1), n - 1) if n >= 2 else 0
    targets = bool(extra.get("has_targets"))
    st.markdown("**Train / validation split**")
    cols = st.columns(3)
    cols[0].metric("Train images", ui.fmt_count(n - val), help="Inputs the student trains on.")
    cols[1].metric("Validation images", ui.fmt_count(val), help="Held out: PSNR/SSIM here.")
    cols[2].metric("Targets", ui.fmt_shape(extra.get("target_shape")) if targets else "none")
    st.caption(
        f"Runs hold out {VAL_FRACTION:.0%} of the images (seeded by the run's seed); "
        + (
            "PSNR and SSIM are measured against the teacher's outputs and the targets."
            if targets
            else "without targets the student learns from the teacher's outputs alone."
        )
    )


def _split(dataset: Dataset, counts: pd.DataFrame) -> None:
    """The train/validation split a run uses (stratified per class, val_fraction 0.2 default)."""
    st.markdown("**Train / validation split**")
    if counts.empty:
        st.caption("Class counts unknown: the split is shown once the scan records them.")
        return
    train, val = split_sizes(dict(zip(counts["class"], counts["count"], strict=True)), VAL_FRACTION)
    cols = st.columns(2)
    cols[0].metric("Train", ui.fmt_count(train), help="Samples the student is trained on.")
    cols[1].metric(
        "Validation",
        ui.fmt_count(val),
        help="Held out: top-1 of teacher and student is measured here.",
    )
    st.caption(
        f"Runs hold out {VAL_FRACTION:.0%} of every class by default (stratified, seeded by the "
        "run's seed); change it under *New run → Training → Advanced → Validation share*."
    )


def _samples(dataset: Dataset) -> None:
    st.markdown("**Samples**")
    with st.spinner("Loading samples…"):
        preview = _fetch_samples(dataset.id)
    if preview is None:
        return
    if preview.kind == "image" and preview.samples:
        per_row = 8
        for start in range(0, len(preview.samples), per_row):
            cols = st.columns(per_row, gap="small")
            for col, sample in zip(cols, preview.samples[start : start + per_row], strict=False):
                col.image(
                    base64.b64decode(sample.data),
                    caption=f"{sample.label}",
                    width="stretch",
                )
        drawn = {
            "detection": "with their boxes drawn (one colour per class)",
            "generation": "each input beside its target",
        }.get(_task(dataset) or "", "spread over the classes")
        st.caption(f"{len(preview.samples)} samples {drawn}, enlarged without smoothing.")
    elif preview.kind == "tabular" and preview.rows:
        frame = pd.DataFrame(
            [[r.label, *r.values] for r in preview.rows],
            columns=[dataset.label_column or "label", *preview.columns],
            index=pd.Index([r.index for r in preview.rows], name="row"),
        )
        st.dataframe(frame, key=f"ds_rows_{dataset.id}", height=300)
        extra = (preview.columns_total or 0) - len(preview.columns)
        note = f" ({extra} more columns not shown)" if extra > 0 else ""
        st.caption(f"The first {len(preview.rows)} rows{note}.")
    else:
        ui.empty_state(
            "No preview recorded for this dataset — it was scanned before previews existed; "
            "upload it again to get one.",
            icon=":material/image_not_supported:",
        )


def _fetch_samples(dataset_id: int) -> DatasetSamples | None:
    try:
        return ui.client().dataset_samples(dataset_id, n=16)
    except ApiError as exc:
        if exc.status in (404, 405) and exc.detail == "Not Found":  # an API without the route
            st.caption("This API does not serve sample previews yet; update the studio.")
        else:
            ui.show_api_error(exc)
        return None


def _counts_chart(counts: pd.DataFrame, unit: str = "samples") -> None:
    st.markdown(f"**{unit.capitalize()} per class**")
    chart = (
        alt.Chart(counts)
        .mark_bar(cornerRadiusTopLeft=3, cornerRadiusTopRight=3)
        .encode(
            x=alt.X("class:N", sort=None, title="class"),
            y=alt.Y("count:Q", title=unit),
            tooltip=["class", "count"],
        )
        .properties(height=220)
    )
    st.altair_chart(chart, width="stretch")


def _list(datasets: list[Dataset]) -> None:
    if not datasets:
        ui.empty_state(f"No datasets yet — upload one above, or {ui.DEMO_HINT}.")
        return
    st.dataframe(
        _frame(datasets),
        placeholder=ui.MISSING_CELL,
        hide_index=True,
        key="datasets_table",
        column_config={
            "id": st.column_config.NumberColumn("ID", width="small"),
            "name": st.column_config.TextColumn("name", width="medium"),
            "samples": st.column_config.NumberColumn("samples", format="localized"),
            "created": st.column_config.DatetimeColumn("Created", format="distance"),
        },
    )
    ids = [d.id for d in datasets]
    if st.session_state.get("ds_selected") not in ids:
        st.session_state["ds_selected"] = ids[0]
    by_id = {d.id: d for d in datasets}
    selected = st.selectbox(
        "Look at",
        ids,
        key="ds_selected",
        format_func=lambda i: f"#{i} {by_id[i].name} ({by_id[i].status})",
    )
    with st.container(border=True):
        _detail(by_id[selected])


def _flash(slot: Any, datasets: list[Dataset]) -> None:
    """The note about a dataset just uploaded, kept until its scan ends."""
    flash = st.session_state.get("ds_flash")
    if not flash:
        return
    status = next((d.status for d in datasets if d.id == flash["id"]), "failed")
    if status in ("pending", "running", "queued"):
        slot.success(
            f"Uploaded **{flash['name']}**; a worker is scanning it — this page refreshes by "
            "itself.",
            icon=":material/hourglass_top:",
        )
        return
    st.session_state.pop("ds_flash")
    if status == "ready":
        slot.success(f"Uploaded **{flash['name']}**: scanned and ready for runs.")


st.title("Datasets")
flash_slot = st.empty()
with st.spinner("Loading datasets…"):
    datasets = ui.all_items(ui.client().datasets)
_flash(flash_slot, datasets)
with st.expander("Upload a dataset", icon=":material/upload:", expanded=not datasets):
    _upload_form()
_list(datasets)
ui.refresh_while(any(d.status in ("pending", "running") for d in datasets), key="datasets")
