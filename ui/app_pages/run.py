"""One run: live progress and loss curves (a fragment that follows the run's live events until
it ends, or refreshes every 2 s where there are none), cancel, and after success the
teacher-vs-student evaluation and the artifacts."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from client import ApiError, Client, Metrics, Run
from core.teacher_cache import cache_line
from core.trained_models import trained_models
from ui import components as ui
from ui import predictions
from ui.analysis import (
    CHART_POINTS,
    curve_models,
    has_curve,
    model_curves,
    models_frame,
    run_events,
)

REFRESH_S = 2.0  # the timed refresh: where there is no live stream, and to start following it
WAIT_S = 3.0  # the longest one run of the fragment waits on the live stream (a click waits too)


# --------------------------------------------------------------------------------------------
# Metrics: fetched incrementally while live, folded into a per-run cache in session state
# --------------------------------------------------------------------------------------------


def _cache(run_id: int) -> dict[str, Any]:
    return st.session_state.setdefault(f"run_metrics_{run_id}", {"series": {}, "last": None})


def _merge(cache: dict[str, Any], metrics: Metrics) -> None:
    for name, series in metrics.series.items():
        points = cache["series"].setdefault(name, {})
        for step, value, epoch in zip(
            series.steps, series.values, series.epochs or [None] * len(series.steps), strict=False
        ):
            points[int(step)] = (value, epoch)
            if cache["last"] is None or step > cache["last"]:
                cache["last"] = int(step)


def load_metrics(api: Client, run_id: int, full: bool) -> pd.DataFrame:
    """All points so far as a long frame (name, step, epoch, value)."""
    cache = _cache(run_id)
    if full:
        cache["series"], cache["last"] = {}, None
    metrics = ui.fetch(
        api.metrics, run_id, since_step=cache["last"], max_points=CHART_POINTS, stop=False
    )
    if metrics is not None:
        _merge(cache, metrics)
    rows = [
        (name, step, epoch, value)
        for name, points in cache["series"].items()
        for step, (value, epoch) in points.items()
        if value is not None
    ]
    return pd.DataFrame(rows, columns=["name", "step", "epoch", "value"])


def line_spec(
    title: str, n_points: int, log: bool = False, percent: bool = False, height: int = 280
) -> dict[str, Any]:
    """Vega-Lite for named series over steps (a plain spec: cheap to redraw every 2 s)."""
    y: dict[str, Any] = {"field": "value", "type": "quantitative", "title": title}
    if log:
        y["scale"] = {"type": "log"}
    if percent:
        y["axis"] = {"format": "%"}
    return {
        "height": height,
        "mark": {"type": "line", "point": n_points < 40},
        "encoding": {
            "x": {
                "field": "step",
                "type": "quantitative",
                "title": "step",
                "axis": {"format": "d"},
            },
            "y": y,
            "color": {
                "field": "name",
                "type": "nominal",
                "title": None,
                "legend": {"orient": "bottom"},
            },
            "tooltip": [
                {"field": "name", "type": "nominal"},
                {"field": "step", "type": "quantitative"},
                {"field": "epoch", "type": "quantitative"},
                {"field": "value", "type": "quantitative", "format": ".4g"},
            ],
        },
    }


def split_series(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(losses incl. validation losses, validation scores in [0, 1], everything else); a
    model's own validation loss (`val/p1/loss`) is a loss too."""
    names = frame["name"]
    is_loss = names.str.contains(r"(?:^|/)loss", regex=True)
    is_score = names.str.startswith("val/") & ~is_loss
    return frame[is_loss], frame[is_score], frame[~is_loss & ~is_score]


def task_metrics(run: Run) -> list[str]:
    """The validation series of the run's task (`val/<metric>` for its catalog `metrics`, the
    loss left out: it is drawn with the losses)."""
    from core.catalog.tasks import TASKS

    task = TASKS.get(str((run.config or {}).get("task") or "classification"))
    return [f"val/{m}" for m in (task.metrics if task else ()) if m != "loss"]


def validation_groups(
    scores: pd.DataFrame, metrics: list[str]
) -> list[tuple[str, pd.DataFrame, bool]]:
    """The validation scores as charts (title, points, percent axis): the series that stay in
    [0, 1] (accuracy, agreement, cosine, mIoU, ...) share one chart in percent; any other
    (perplexity, PSNR in dB, ...) gets its own, so no scale flattens another. The task's
    catalog metrics come first, in their catalog order."""
    if scores.empty:
        return []
    names = list(scores["name"].unique())
    order = [m for m in metrics if m in names] + sorted(n for n in names if n not in metrics)
    bounded = [n for n in order if scores.loc[scores["name"] == n, "value"].between(0, 1).all()]
    groups: list[tuple[str, pd.DataFrame, bool]] = []
    if bounded:
        groups.append(("score", scores[scores["name"].isin(bounded)], True))
    for name in order:
        if name not in bounded:
            groups.append((name.removeprefix("val/"), scores[scores["name"] == name], False))
    return groups


def _model_curves(frame: pd.DataFrame, run: Run) -> None:
    """Validation top-1 of every trained model (peers, generations, ...), one line each."""
    cfg = run.config or {}
    models = [m for m in curve_models(run.summary, cfg, frame["name"].unique()) if has_curve(m)]
    if len(models) < 2:
        return
    epochs = (cfg.get("training") or {}).get("epochs")
    curves = model_curves(frame, models, "top1", int(epochs) if epochs else None)
    st.markdown("**Validation top-1 of every trained model**")
    if curves.empty:
        st.caption("Each model's validation accuracy appears after its first epoch.")
        return
    spec = line_spec("top-1", len(curves), percent=True)
    st.vega_lite_chart(curves, spec, width="stretch", key="run_model_curves")


def _charts(frame: pd.DataFrame, run: Run) -> None:
    if frame.empty:
        st.caption("No metrics reported yet — they appear after the first logged steps.")
        return
    losses, scores, rest = split_series(frame)
    left, right = st.columns([3, 2])
    with left:
        head, toggle = st.columns([3, 2])
        head.markdown("**Loss terms**")
        log = toggle.toggle("log scale", key="run_log")
        if losses.empty:
            st.caption("No loss values yet.")
        else:
            log = log and bool((losses["value"] > 0).all())
            st.vega_lite_chart(losses, line_spec("loss", len(losses), log=log), width="stretch")
    with right:
        st.markdown("**Validation**")
        if scores.empty:
            st.caption("Validation runs at the end of each epoch.")
        for title, group, percent in validation_groups(scores, task_metrics(run)):
            spec = line_spec(title, len(group), percent=percent)
            st.vega_lite_chart(group, spec, width="stretch")
    _model_curves(frame, run)
    if not rest.empty:
        with st.expander("Other series (learning rate, …)", icon=":material/show_chart:"):
            for name, group in rest.groupby("name"):
                spec = line_spec(str(name), len(group), height=160)
                st.vega_lite_chart(group, spec, width="stretch")


# --------------------------------------------------------------------------------------------
# Live panel
# --------------------------------------------------------------------------------------------


def _progress(run: Run) -> None:
    epochs = (run.config.get("training") or {}).get("epochs")
    text = f"{run.progress:.0%}"
    if run.status == "queued":
        text = f"queued on `{run.queue or '?'}` — {run.waiting or 'waiting for a worker'}"
    st.progress(min(max(float(run.progress or 0.0), 0.0), 1.0), text=text)
    cols = st.columns(4)
    cols[0].metric("Epoch", f"{_epoch(run, epochs)}/{epochs}" if epochs else run.epoch)
    cols[1].metric("Step", f"{run.step:,}/{run.total_steps:,}" if run.total_steps else run.step)
    cols[2].metric(
        "Throughput",
        "—" if run.throughput is None else f"{run.throughput:,.0f}/s",
        help="Training samples per second.",
    )
    if run.is_terminal:
        duration = None
        if run.started_at and run.finished_at:
            duration = (run.finished_at - run.started_at).total_seconds()
        cols[3].metric("Duration", ui.fmt_duration(duration))
    else:
        cols[3].metric("ETA", ui.fmt_duration(run.eta_seconds))


def _epoch(run: Run, epochs: int) -> int:
    """The epoch being trained, counted from 1 (the API counts from 0); all of them when done."""
    if run.status == "succeeded":
        return epochs
    if run.status == "queued" and run.step == 0:
        return 0
    return min(run.epoch + 1, epochs)


def wait_for_update(api: Client, run: Run) -> bool:
    """Wait on the run's live events (at most WAIT_S) for news newer than `run`; False when the
    server has no stream (an older one, or its broker is away)."""
    try:
        api.next_update(run.id, status=run.status, step=run.step, timeout=WAIT_S)
    except ApiError:
        return False
    return True


def live_panel(run_id: int, was_terminal: bool) -> None:
    """Progress, counters and curves until the run ends. Each run of the fragment (after the
    page's) draws, then waits on the run's live events and runs again as soon as one arrives;
    without a stream it refreshes every 2 s."""
    page_run = [True]  # the first call belongs to the page's run: it must not wait
    no_stream = f"run_no_stream_{run_id}"

    @st.fragment(run_every=None if was_terminal else REFRESH_S)
    def _panel() -> None:
        api = ui.client()
        run = ui.fetch(api.run, run_id, stop=False)
        if run is None:
            return
        if run.is_terminal and not was_terminal:
            st.rerun()  # the whole page: evaluation, artifacts, and no more refreshing
        _progress(run)
        frame = load_metrics(api, run_id, full=was_terminal)
        _charts(frame, run)
        _live_samples(run)
        _log(run, frame)
        if page_run[0] or run.is_terminal or st.session_state.get(no_stream):
            return  # the timed refresh runs the fragment next
        if wait_for_update(api, run):
            st.rerun(scope="fragment")  # news (or WAIT_S of quiet): draw it now
        st.session_state[no_stream] = True

    _panel()
    page_run[0] = False


def _live_samples(run: Run) -> None:
    """While a run trains (or after it failed): the task's samples of the student after its
    latest epoch, a language model's continuations next to the teacher's, each with the
    student's output after every epoch so far. A finished run shows its predictions instead."""
    epoch, raw = run.live_samples()
    samples = predictions.text_rows(raw)
    if not samples:
        return
    after = f" after epoch {epoch + 1}" if isinstance(epoch, int) else ""
    with st.expander(
        f"Teacher and student on validation samples{after}",
        icon=":material/notes:",
        expanded=not run.is_terminal,
    ):
        predictions.show_texts(samples)


def epoch_scores(frame: pd.DataFrame) -> dict[int, float]:
    """{epoch: val/top1} from the metrics frame."""
    top1 = frame[frame["name"] == "val/top1"] if not frame.empty else frame
    return {int(e): float(v) for e, v in zip(top1["epoch"], top1["value"], strict=False)}


def _log(run: Run, frame: pd.DataFrame) -> None:
    """What happened to the run: queued, picked up by which worker (attempts), epochs, the end."""
    events = run_events(run, epoch_scores(frame))
    label = f"Worker log · {len(events)} events"
    if run.attempts > 1:
        label += f" · {run.attempts} attempts"
    with st.expander(label, icon=":material/terminal:", expanded=run.status == "failed"):
        if run.status == "failed":
            st.code(run.error or "no reason recorded", language=None, wrap_lines=True)
        table = pd.DataFrame(events, columns=["time", "event", "detail"])
        st.dataframe(
            table,
            placeholder=ui.MISSING_CELL,
            hide_index=True,
            width="stretch",
            key=f"run_log_{run.id}",
            column_config={
                "time": st.column_config.DatetimeColumn("time", format="YYYY-MM-DD HH:mm:ss"),
                "detail": st.column_config.TextColumn("detail", width="large"),
            },
        )
        st.caption(
            "From the run's record: the worker that took it (host:pid), each attempt, every "
            "validated epoch and how it ended. Worker process logs are in the data folder's "
            "`logs/` on the worker's machine."
        )


# --------------------------------------------------------------------------------------------
# Header, evaluation, artifacts
# --------------------------------------------------------------------------------------------


def _header(run: Run) -> None:
    title, badge, action = st.columns([5, 1, 1], vertical_alignment="center")
    title.title(f"{run.name}")
    with badge:
        ui.status_badge(run.status)
    if run.is_terminal:
        with action:
            _retry_button(run)
    else:
        if run.cancel_requested:
            action.caption("Stopping…")
        elif action.button(
            "Cancel", icon=":material/stop_circle:", key="run_cancel", width="stretch"
        ):
            done = ui.fetch(ui.client().cancel_run, run.id, stop=False)
            if done is not None:
                st.toast(
                    "Cancellation requested; the run stops at its next step.",
                    icon=":material/stop_circle:",
                )
                st.rerun()
    cfg = run.config or {}
    student = cfg.get("student") or {}
    kwargs = ", ".join(f"{k}={v}" for k, v in (student.get("kwargs") or {}).items())
    losses = " + ".join(
        f"{loss.get('weight', 1):g}·{loss.get('name')}" for loss in cfg.get("losses") or []
    )
    facts = [
        f"run #{run.id}",
        f"teacher #{run.teacher_model_id}" if run.teacher_model_id else "",
        f"student **{student.get('architecture', '?')}**" + (f" ({kwargs})" if kwargs else ""),
        f"dataset #{run.dataset_id}" if run.dataset_id else "",
        f"losses {losses}" if losses else "",
        f"{len(cfg.get('layer_pairs') or [])} layer pairs",
        f"queue `{run.queue}`" if run.queue else "",
        f"attempt {run.attempts}" if run.attempts > 1 else "",
    ]
    st.caption(" · ".join(f for f in facts if f))


def _retry_button(run: Run) -> None:
    label = "Run again" if run.status == "succeeded" else "Retry"
    if not st.button(
        label,
        icon=":material/replay:",
        key="run_retry",
        width="stretch",
        help="Launch a new run with exactly this config.",
    ):
        return
    api = ui.client()
    try:
        new = api.retry_run(run.id)
    except ApiError as exc:
        if exc.status in (404, 405) and exc.detail == "Not Found":  # an API without /retry
            new = ui.fetch(api.create_run, run.config, stop=False)
        else:
            ui.show_api_error(exc)
            return
    if new is not None:
        st.session_state["run_flash"] = (
            f"Run **{new.name}** #{new.id} queued — a retry of #{run.id}."
        )
        ui.go("run", id=new.id)


def _ratio(a: Any, b: Any) -> str:
    try:
        return f"{float(a) / float(b):.2f}×" if a and b else "—"
    except (TypeError, ValueError):
        return "—"


def _ms(value: Any) -> str:
    return "—" if value is None else f"{value:.2f} ms"


def _db(value: Any) -> str:
    return "—" if value is None else f"{value:.2f} dB"


def _ssim(value: Any) -> str:
    return "—" if value is None else f"{value:.4f}"


EVALUATION_ROWS = [
    ("Top-1 accuracy", "top1", ui.fmt_pct),
    ("Top-5 accuracy", "top5", ui.fmt_pct),
    ("mAP@[.5:.95] (COCO)", "map", ui.fmt_pct),
    ("mAP@.5", "map50", ui.fmt_pct),
    ("mIoU", "miou", ui.fmt_pct),
    ("PSNR vs the targets", "psnr", _db),
    ("SSIM vs the targets", "ssim", _ssim),
    ("PSNR vs the teacher's outputs", "psnr_vs_teacher", _db),
    ("SSIM vs the teacher's outputs", "ssim_vs_teacher", _ssim),
    ("Parameters", "params", ui.fmt_count),
    ("Size", "size_bytes", ui.fmt_bytes),
    ("FLOPs", "flops", ui.fmt_count),
    ("CPU latency, 1 sample", "cpu_latency_ms", _ms),
    ("CPU latency, batch of 64", "cpu_latency_b64_ms", _ms),
]


QUALITY_ROWS = 9  # the rows of EVALUATION_ROWS before the costs (parameters, size, ...)
QUALITY_KEYS = {"top1", "top5", "map", "map50", "miou", "psnr", "ssim"}  # no cost ratio
QUALITY_KEYS |= {"psnr_vs_teacher", "ssim_vs_teacher"}
HEADLINES = (("top1", "Student top-1"), ("map", "Student mAP"), ("miou", "Student mIoU"))


OTHER_LABELS = {"ece": "ECE (calibration error)", "map75": "mAP@.75", "pixel_acc": "Pixel accuracy"}
LOWER_IS_BETTER = {"perplexity", "loss", "ece"}  # a metric whose smaller value is the better


def headline(
    summary: dict[str, Any], metrics: list[str] | None = None
) -> tuple[str, float | None, float | None]:
    """The task's main quality figure (top-1, detection's mAP, segmentation's mIoU, else the
    first of the task's catalog `metrics` the summary has for the student: a text task's
    accuracy, perplexity, cosine, ...): its label and the student's and teacher's values."""
    found = list(HEADLINES) + [
        (m, f"Student {m.replace('_', ' ')}") for m in metrics or () if m not in LOWER_IS_BETTER
    ]
    found += [(m, f"Student {m}") for m in metrics or () if m in LOWER_IS_BETTER and m != "loss"]
    found += [
        (key, f"Student {label[0].lower()}{label[1:]}") for label, key, _ in other_rows(summary)
    ]
    for key, label in found:  # else the first other figure the summary gives for the student
        if summary.get(f"student_{key}") is not None:
            return label, summary[f"student_{key}"], summary.get(f"teacher_{key}")
    return HEADLINES[0][1], None, None


def _fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and 0 <= value <= 1


def _number(value: Any) -> str:
    return "—" if value is None else f"{value:,.4g}"


def other_rows(summary: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """Rows for the teacher/student figures of the summary that `EVALUATION_ROWS` does not
    name (a text task's perplexity, accuracy, cosine, tokens/s, ...): (label, key, format),
    in percent when both values are fractions of 1."""
    known = {key for _, key, _ in EVALUATION_ROWS}
    keys = [
        k.removeprefix("student_")
        for k, v in summary.items()
        if k.startswith("student_") and isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    keys += [
        k.removeprefix("teacher_")
        for k, v in summary.items()
        if k.startswith("teacher_") and isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    rows = []
    for key in dict.fromkeys(k for k in keys if k not in known):
        t, s = summary.get(f"teacher_{key}"), summary.get(f"student_{key}")
        percent = all(_fraction(v) for v in (t, s) if v is not None) and key not in LOWER_IS_BETTER
        label = OTHER_LABELS.get(key) or key.replace("_", " ").capitalize()
        rows.append((label, key, ui.fmt_pct if percent else _number))
    return rows


def evaluation_frame(summary: dict[str, Any]) -> pd.DataFrame:
    """Teacher vs student: accuracy, parameters, size, FLOPs, CPU latency; for costs the ratio
    teacher / student (how many times smaller or faster the student is)."""
    out = []
    extra = other_rows(summary)
    for label, key, fmt in EVALUATION_ROWS[:QUALITY_ROWS] + extra + EVALUATION_ROWS[QUALITY_ROWS:]:
        t, s = summary.get(f"teacher_{key}"), summary.get(f"student_{key}")
        if t is None and s is None:
            continue
        ratio = "—" if key in QUALITY_KEYS or (label, key, fmt) in extra else _ratio(t, s)
        out.append({"": label, "teacher": fmt(t), "student": fmt(s), "teacher / student": ratio})
    return pd.DataFrame(out, columns=["", "teacher", "student", "teacher / student"])


def quantized_frame(summary: dict[str, Any]) -> pd.DataFrame | None:
    """A `training.qat` run's fp32 and int8 student side by side (accuracy, size, CPU latency
    at batch 1, from evaluation.json's `quantized` block); None for any other run."""
    block = summary.get("quantized")
    if not isinstance(block, dict):
        return None
    fp32, int8 = block.get("fp32") or {}, block.get("int8") or {}
    out = []
    for label, key, fmt in EVALUATION_ROWS:
        if key in fp32 or key in int8:
            a, b = fp32.get(key), int8.get(key)
            ratio = "—" if "accuracy" in label else _ratio(a, b)
            out.append({"": label, "fp32": fmt(a), "int8": fmt(b), "fp32 / int8": ratio})
    return pd.DataFrame(out, columns=["", "fp32", "int8", "fp32 / int8"])


def teachers_frame(summary: dict[str, Any]) -> pd.DataFrame | None:
    """A `multi_teacher` run's teachers next to the student: each one's model, weight and
    held-out top-1 (evaluation.json's `teachers`, teacher 0 the run's), then the student's;
    None for any other run."""
    teachers = summary.get("teachers")
    if not isinstance(teachers, list) or not teachers:
        return None
    rows = [
        {
            "": f"teacher {t.get('teacher')}",
            "model": f"#{t['model_id']}" if t.get("model_id") is not None else t.get("path") or "",
            "weight": f"{t['weight']:g}" if isinstance(t.get("weight"), (int, float)) else "",
            "top-1": ui.fmt_pct(t.get("teacher_top1")),
        }
        for t in teachers
        if isinstance(t, dict)
    ]
    rows.append(
        {"": "student", "model": "", "weight": "", "top-1": ui.fmt_pct(summary.get("student_top1"))}
    )
    return pd.DataFrame(rows, columns=["", "model", "weight", "top-1"])


def _with_teacher_size(run: Run) -> dict[str, Any]:
    """The summary, with the teacher's file size from its model when the worker did not say."""
    summary = dict(run.summary or {})
    if summary.get("teacher_size_bytes") is None and run.teacher_model_id is not None:
        teacher = ui.fetch(ui.client().model, run.teacher_model_id, stop=False)
        if teacher is not None:
            summary["teacher_size_bytes"] = teacher.size_bytes
    return summary


def accuracy_delta(student: float | None, teacher: float | None) -> tuple[str | None, str, str]:
    """The student's top-1 against the teacher's, in percentage points, with the metric's
    colour and arrow: green up, red down, and grey without an arrow when they are equal at the
    shown precision (no green arrow for +0.00)."""
    if student is None or teacher is None:
        return None, "normal", "auto"
    points = round((student - teacher) * 100, 2)
    if points == 0:
        return "same as the teacher (±0.00 pp)", "off", "off"
    return f"{points:+.2f} pp vs teacher", "normal", "auto"


def number_delta(label: str, student: float, teacher: float | None) -> tuple[str | None, str, str]:
    """An unbounded figure's difference to the teacher's (perplexity: lower is better, so its
    colour is inverted: green when the student's is lower)."""
    if teacher is None:
        return None, "normal", "auto"
    diff = student - teacher
    if f"{diff:.3g}" in ("0", "-0"):
        return "same as the teacher", "off", "off"
    lower = any(word in label.lower() for word in LOWER_IS_BETTER)
    return f"{diff:+,.3g} vs teacher", "inverse" if lower else "normal", "auto"


ARTIFACT_KINDS = {
    "student_safetensors": "Student weights (safetensors)",
    "student_pt2": "Student as a torch.export archive (.pt2)",
    "student_onnx": "Student as ONNX",
    "student_int8_onnx": "Student in int8 (ONNX QDQ, for deployment)",
    "student_int8": "Student in int8 (TorchScript, for deployment)",
    "config": "Run config (YAML)",
    "evaluation": "Evaluation report (JSON)",
    "predictions": "Teacher and student predictions on validation images, drawn (JSON of PNGs)",
    "teacher_cache": "Teacher-output cache (the team's top-k teacher logits, replayed by later "
    "runs with the same teacher, data and recipe)",
}


def teacher_cache_line(summary: dict[str, Any]) -> str | None:
    """What the run's teacher-output cache did, in words (None when the run had it off)."""
    return cache_line(summary, ui.fmt_bytes)


def artifact_label(kind: str) -> str:
    """What an artifact is, in words (its API kind, e.g. `student_pt2`, is for scripts)."""
    return ARTIFACT_KINDS.get(kind) or kind.replace("_", " ").capitalize()


def _evaluation(run: Run) -> None:
    summary = _with_teacher_size(run)
    st.subheader("Evaluation")
    cols = st.columns(4)
    if summary.get("student_psnr_vs_teacher") is not None:  # image-to-image: dB and SSIM
        cols[0].metric(
            "Student PSNR vs teacher",
            _db(summary["student_psnr_vs_teacher"]),
            help="PSNR of the student's output images against the teacher's, held-out images.",
        )
        cols[1].metric("Student SSIM vs teacher", _ssim(summary.get("student_ssim_vs_teacher")))
    else:
        label, s1, t1 = headline(summary, [m.removeprefix("val/") for m in task_metrics(run)])
        if s1 is None or _fraction(s1):
            delta, delta_color, arrow = accuracy_delta(s1, t1)
            value = ui.fmt_pct(s1)
        else:  # perplexity and other unbounded figures: the difference, not percentage points
            delta, delta_color, arrow = number_delta(label, s1, t1)
            value = _number(s1)
        cols[0].metric(label, value, delta=delta, delta_color=delta_color, delta_arrow=arrow)
        agreement = next(
            (k for k in ("agreement", *summary) if k in summary and k.endswith("agreement")),
            "agreement",
        )  # a language model's is next_token_agreement
        cols[1].metric(
            agreement.replace("_", " ").capitalize(),
            ui.fmt_pct(summary.get(agreement)),
            help="Share of validation samples (a language model's tokens) where student and "
            "teacher predict the same class (next token).",
        )
    cols[2].metric(
        "Compression",
        _ratio(summary.get("teacher_params"), summary.get("student_params")),
        help="Teacher parameters / student parameters.",
    )
    cols[3].metric(
        "CPU speed-up",
        _ratio(summary.get("teacher_cpu_latency_ms"), summary.get("student_cpu_latency_ms")),
    )
    frame = evaluation_frame(summary)
    if not frame.empty:
        st.dataframe(frame, hide_index=True, width="stretch", key="run_eval")
    quantized = quantized_frame(summary)
    if quantized is not None:
        block = summary["quantized"]
        runtime = f"; both measured in {block['runtime']}" if block.get("runtime") else ""
        st.markdown(f"**The student in int8** ({block.get('backend')} backend{runtime})")
        st.dataframe(quantized, hide_index=True, width="stretch", key="run_quantized")
    teachers = teachers_frame(summary)
    if teachers is not None:
        st.markdown(f"**Each teacher next to the student** ({len(teachers) - 1} teachers)")
        st.dataframe(teachers, hide_index=True, width="stretch", key="run_teachers")
    _every_model(summary)
    _predictions(run)
    if (cache := teacher_cache_line(summary)) is not None:
        st.caption(cache)
    with st.expander("Full summary", icon=":material/receipt_long:"):
        st.json(summary, expanded=False)


def _predictions(run: Run) -> None:
    """A dense task's validation images with the teacher's and the student's predictions drawn
    side by side (the run's `predictions` artifact), when it has them."""
    api = ui.client()
    artifacts = ui.fetch(api.artifacts, run.id, stop=False) or []
    if any(a.kind == predictions.KIND for a in artifacts):
        slot = st.empty()
        drawn = predictions.show(api, artifacts)
        if drawn == "text":
            slot.markdown("**Teacher and student on validation samples**")
            st.caption(
                "The same held-out samples in every run: a language model's greedy "
                "continuations of each prompt, a classifier's predicted class."
            )
        elif drawn:
            slot.markdown("**Teacher and student on validation images**")
            st.caption(
                "One colour per class: boxes scoring at least 0.3 (detection) or each pixel's "
                "class painted over the image (segmentation); for image-to-image generation the "
                "input, the target and each model's output; the same images in every run."
            )


def _every_model(summary: dict[str, Any]) -> None:
    """A table of every trained model (peers, generations, the int8 student, ...) when the run
    trained more than one."""
    models = trained_models(summary)
    if len(models) < 2:
        return
    formats = {"pct": ui.fmt_pct, "count": ui.fmt_count, "bytes": ui.fmt_bytes, "ms": _ms}
    frame = models_frame(models, formats)
    st.markdown(f"**Every trained model** ({len(models)})")
    st.dataframe(frame, hide_index=True, width="stretch", key="run_models")


def _artifacts(run: Run) -> None:
    api = ui.client()
    artifacts = ui.fetch(api.artifacts, run.id, stop=False)
    st.subheader("Artifacts")
    if not artifacts:
        ui.empty_state("This run produced no artifacts.")
        return
    for artifact in artifacts:
        name, meta, button = st.columns([3, 2, 1], vertical_alignment="center")
        name.markdown(f"**{artifact.filename}**  \n{artifact_label(artifact.kind)}")
        meta.caption(f"{ui.fmt_bytes(artifact.size_bytes)} · sha256 `{artifact.sha256[:12]}`")
        with button:
            st.download_button(
                "Download",
                data=_downloader(api, artifact.id),
                file_name=artifact.filename,
                mime="application/octet-stream",
                icon=":material/download:",
                key=f"art_{artifact.id}",
                on_click="ignore",
                width="stretch",
            )


def _downloader(api: Client, artifact_id: int) -> Any:
    return lambda: api.artifact_bytes(artifact_id)[1]


def _config(run: Run) -> None:
    with st.expander("Run config (YAML)", icon=":material/description:"):
        text = ui.fetch(ui.client().run_config_yaml, run.id, stop=False)
        if text is None:
            return
        st.code(text, language="yaml")
        st.download_button(
            "Download config.yaml",
            text,
            file_name=f"run-{run.id}.yaml",
            mime="application/x-yaml",
            icon=":material/save:",
            key="run_yaml",
        )


def _pick() -> int | None:
    runs = ui.all_items(ui.client().runs, limit=100)
    if not runs:
        ui.empty_state(f"No runs yet — start one on the New run page, or {ui.DEMO_HINT}.")
        return None
    choice = st.selectbox(
        "Run",
        runs,
        index=None,
        placeholder="Choose a run…",
        format_func=lambda r: f"#{r.id} {r.name} ({r.status})",
    )
    return choice.id if choice else None


# --------------------------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------------------------

run_id = ui.query_id()
if run_id is None:
    run_id = _pick()
if run_id is not None:
    if flash := st.session_state.pop("run_flash", None):
        st.toast(flash, icon=":material/rocket_launch:")
    with st.spinner("Loading the run…"):
        run = ui.fetch(ui.client().run, run_id)
    links = st.columns([1, 1, 6])
    with links[0]:
        st.page_link(ui.PAGES["runs"], label="All runs", icon=":material/arrow_back:")
    if run.teacher_model_id:
        with links[1]:
            st.page_link(
                ui.PAGES["model"],
                label="Teacher",
                icon=":material/neurology:",
                query_params={"id": str(run.teacher_model_id)},
            )
    _header(run)
    if run.status == "failed":
        st.error(
            f"The run failed: {run.error or 'no reason given'}  \n"
            "Fix the cause (the worker log below has the details), then press **Retry** — or "
            "download the config, change it and launch it from **New run**.",
            icon=":material/cancel:",
        )
    elif run.status == "cancelled":
        st.warning(
            "The run was cancelled; its last checkpoint is kept. **Retry** starts it again "
            "with the same config.",
            icon=":material/block:",
        )
    if run.status == "succeeded":  # the results first, then how training went
        _evaluation(run)
        _artifacts(run)
        st.subheader("Training")
    live_panel(run.id, run.is_terminal)
    _config(run)
