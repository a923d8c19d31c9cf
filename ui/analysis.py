"""Pure functions behind the pages (no Streamlit, no HTTP): config diffs, Pareto fronts, split
sizes, a run's event history, every trained model of a run (its table and curves), and the
Compare page's tables. Runs are `client.Run`s.
Unit-tested in tests/ui/test_analysis.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from core.trained_models import trained_models

MISSING = "—"
# The most points of one series a chart asks the API for (`max_points`): the API keeps each
# bucket's first, last, lowest and highest point (M4), so 250 buckets across a chart some
# hundreds of pixels wide still show every spike.
CHART_POINTS = 1_000


# --------------------------------------------------------------------------------------------
# Config differences
# --------------------------------------------------------------------------------------------


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested run config as {dotted key: leaf}: `training.lr`, `losses.kd.params.temperature`.

    Lists of dicts with a `name` (losses) are keyed by that name, so adding a loss to one run
    shows up as its own keys instead of shifting every later index; other lists of dicts (layer
    pairs) by index; lists of plain values stay one leaf.
    """
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        if not value and prefix:
            out[prefix] = "{}"
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        names = [v.get("name") for v in value]
        named = all(isinstance(n, str) for n in names) and len(set(names)) == len(names)
        for i, item in enumerate(value):
            label = item["name"] if named else str(i)
            rest = {k: v for k, v in item.items() if not (named and k == "name")}
            key = f"{prefix}.{label}"
            out.update(flatten(rest, key) if rest else {key: "on"})
    elif isinstance(value, list):
        out[prefix] = ", ".join(_leaf(v) for v in value) if value else "[]"
    else:
        out[prefix] = value
    return out


def _leaf(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    return a == b


IGNORED_KEYS = ("name",)  # differs for every run and is shown as the column header anyway


def config_diff(
    configs: Sequence[Mapping[str, Any]], ignore: Iterable[str] = IGNORED_KEYS
) -> tuple[list[str], list[dict[str, Any]]]:
    """(keys that differ between the configs, one flat dict per config with only those keys).

    A key missing from a config counts as a difference (shown as "—")."""
    flat = [flatten(c) for c in configs]
    keys: list[str] = []
    for f in flat:
        keys.extend(k for k in f if k not in keys)
    skip = set(ignore)
    differing = []
    for key in keys:
        if key in skip:
            continue
        values = [f.get(key, MISSING) for f in flat]
        if any(not _same(values[0], v) for v in values[1:]):
            differing.append(key)
    return differing, [{k: f.get(k, MISSING) for k in differing} for f in flat]


def differs_from_first(values: Sequence[Any]) -> list[bool]:
    """Per value, whether it differs from the first one (the baseline); the first is False."""
    return [i > 0 and not _same(values[0], v) for i, v in enumerate(values)]


# --------------------------------------------------------------------------------------------
# Pareto front
# --------------------------------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[bool]:
    """Which points are Pareto-optimal when *lower cost* (first) and *higher accuracy* (second)
    are both better: no other point is at least as good on both and strictly better on one.

    Points with a missing or non-finite coordinate are never on the front. Equal points are both
    on it. O(n log n): sort by cost, then by accuracy descending, and sweep.
    """
    valid = [
        i
        for i, (cost, acc) in enumerate(points)
        if cost is not None and acc is not None and math.isfinite(cost) and math.isfinite(acc)
    ]
    order = sorted(valid, key=lambda i: (points[i][0], -points[i][1]))
    on_front = [False] * len(points)
    best_acc = -math.inf
    best_cost: float | None = None
    for i in order:
        cost, acc = points[i]
        if acc > best_acc:
            on_front[i], best_acc, best_cost = True, acc, cost
        elif acc == best_acc and cost == best_cost:
            on_front[i] = True  # a duplicate of a front point
    return on_front


# --------------------------------------------------------------------------------------------
# Dataset split (mirrors worker.engine.tasks.classification.data.split, torch-free)
# --------------------------------------------------------------------------------------------


def split_sizes(
    class_counts: Mapping[str, int] | Sequence[int], val_fraction: float
) -> tuple[int, int]:
    """(train samples, validation samples) of the engine's stratified split: per class,
    round(n_c * val_fraction) samples, at least 1 and at most n_c - 1 (none for a single one)."""
    counts = (
        list(class_counts.values()) if isinstance(class_counts, Mapping) else list(class_counts)
    )
    val = 0
    for n in counts:
        n = int(n)
        k = min(max(round(n * val_fraction), 1), n - 1) if n >= 2 else 0
        val += k
    return sum(int(n) for n in counts) - val, val


# --------------------------------------------------------------------------------------------
# A run's history (what the worker did, from the run's own fields)
# --------------------------------------------------------------------------------------------


def run_events(run: Any, epoch_scores: Mapping[int, float] | None = None) -> list[dict[str, Any]]:
    """The run's life as a list of {time, event, detail}, oldest first: created and queued,
    picked up by a worker (with the attempt count), each validated epoch, cancel requests, and
    how it ended (with the error). `run` is a `client.Run`."""
    events: list[dict[str, Any]] = []

    def add(when: datetime | None, event: str, detail: str = "") -> None:
        events.append({"time": when, "event": event, "detail": detail})

    add(run.created_at, "queued", f"on queue `{run.queue or '?'}`")
    worker = getattr(run, "worker", None)
    attempts = int(run.attempts or 0)
    if run.started_at is not None or attempts:
        who = f"worker `{worker}`" if worker else "a worker"
        detail = f"{who}, attempt {attempts}" if attempts else who
        if attempts > 1:
            detail += f" — the {attempts - 1} earlier attempt(s) lost their worker and resumed"
        add(run.started_at, "running", detail)
    for epoch, score in sorted((epoch_scores or {}).items()):
        add(None, f"epoch {epoch + 1} validated", f"val/top1 {score:.2%}")
    if run.cancel_requested and run.status != "cancelled":
        add(None, "cancel requested", "the worker stops at its next step")
    heartbeat = getattr(run, "heartbeat_at", None)
    if not run.is_terminal and heartbeat is not None:
        add(heartbeat, "last heartbeat", f"step {run.step:,} of {run.total_steps:,}")
    if run.is_terminal:
        detail = {
            "succeeded": "student, evaluation and artifacts stored",
            "cancelled": "stopped on request; the last checkpoint is kept",
            "failed": run.error or "no reason recorded",
        }.get(run.status, "")
        add(run.finished_at, run.status, detail)
    return events


# --------------------------------------------------------------------------------------------
# The Compare page's tables
# --------------------------------------------------------------------------------------------

HIGHLIGHT = "background-color: rgba(255, 189, 69, 0.35)"
BEST = "font-weight: 700; color: #0f7b3f"
FRONT, DOMINATED = "Pareto front", "dominated"

RESULTS = [  # (column, summary key, format, higher is better)
    ("student top-1", "student_top1", "pct", True),
    ("teacher top-1", "teacher_top1", "pct", None),
    ("agreement", "agreement", "pct", True),
    ("params", "student_params", "count", False),
    ("size", "student_size_bytes", "bytes", False),
    ("FLOPs", "student_flops", "count", False),
    ("CPU latency (ms)", "student_cpu_latency_ms", "ms", False),
]


LOWER_IS_BETTER = ("perplexity", "loss", "ece")  # metrics whose smaller value is the better
Result = tuple[str, str, str, bool | None]  # (column, summary key, format, higher is better)


def run_label(run: Any) -> str:
    return f"#{run.id} {run.name}"


def task_results(runs: list[Any], metrics: dict[str, Sequence[str]]) -> list[Result]:
    """Result columns for the runs' tasks' catalog metrics that `RESULTS` lacks (`metrics`:
    task name -> its metrics): student and teacher `<metric>` where a run's summary has them
    (a text task's accuracy, perplexity, cosine, ...); percent when every value is a fraction
    of 1, and the better direction from the metric (perplexity: lower)."""
    known = {key for _, key, _, _ in RESULTS}
    found: list[Result] = []
    for run in runs:
        summary = run.summary or {}
        for metric in metrics.get(str((run.config or {}).get("task") or "classification"), ()):
            for who, higher in (("student", metric not in LOWER_IS_BETTER), ("teacher", None)):
                key = f"{who}_{metric}"
                if key in known or summary.get(key) is None:
                    continue
                values = [(r.summary or {}).get(key) for r in runs]
                fraction = all(0 <= v <= 1 for v in values if isinstance(v, (int, float)))
                kind = "pct" if fraction and higher is not False else "number"
                found.append((f"{who} {metric.replace('_', ' ')}", key, kind, higher))
                known.add(key)
    return found


def results_frame(runs: list[Any], extra: Sequence[Result] = ()) -> pd.DataFrame:
    """One row per run: its status, the summary's results (`RESULTS`, then `extra`: the tasks'
    own) and student minus teacher top-1."""
    rows = []
    for run in runs:
        summary = run.summary or {}
        row: dict[str, Any] = {"run": run_label(run), "status": run.status}
        for column, key, _, _ in [*RESULTS, *extra]:
            row[column] = summary.get(key)
        t1, s1 = summary.get("teacher_top1"), summary.get("student_top1")
        row["Δ vs teacher (pp)"] = (s1 - t1) * 100 if s1 is not None and t1 is not None else None
        rows.append(row)
    columns = ["run", "status", *[c for c, *_ in [*RESULTS, *extra]], "Δ vs teacher (pp)"]
    return pd.DataFrame(rows, columns=columns)


def best_cells(frame: pd.DataFrame, extra: Sequence[Result] = ()) -> pd.DataFrame:
    """A frame of CSS strings marking the best value of each result column (ties all marked)."""
    styles = pd.DataFrame("", index=frame.index, columns=frame.columns)
    if len(frame) < 2:
        return styles
    for column, _, _, higher in [*RESULTS, *extra]:
        values = pd.to_numeric(frame[column], errors="coerce")
        if higher is None or values.notna().sum() < 2 or values.nunique() < 2:
            continue
        best = values.max() if higher else values.min()
        styles.loc[values == best, column] = BEST
    return styles


def diff_frame(runs: list[Any], show_all: bool = False) -> pd.DataFrame:
    """One row per config key (only keys that differ, unless `show_all`), one column per run."""
    configs = [run.config or {} for run in runs]
    if show_all:
        flat = [flatten(c) for c in configs]
        keys = [k for k in dict.fromkeys(k for f in flat for k in f) if k != "name"]
        values = [{k: f.get(k, MISSING) for k in keys} for f in flat]
    else:
        keys, values = config_diff(configs)
    data = {
        run_label(run): [_cell(v.get(k, MISSING)) for k in keys]
        for run, v in zip(runs, values, strict=True)
    }
    return pd.DataFrame(data, index=pd.Index(keys, name="config key"))


def _cell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def diff_styles(frame: pd.DataFrame) -> pd.DataFrame:
    """CSS marking each cell that differs from the baseline (the first column)."""
    styles = pd.DataFrame("", index=frame.index, columns=frame.columns)
    for key, row in frame.iterrows():
        marks = differs_from_first(list(row.values))
        for column, marked in zip(frame.columns, marks, strict=True):
            if marked:
                styles.loc[key, column] = HIGHLIGHT
    return styles


def model_label(run: Any, model: Mapping[str, Any], alone: bool) -> str:
    """A trained model's name across runs: the run's label, and the model's unless it is the
    run's only one (`#4 dml · peer 1`, `#3 kd`)."""
    return run_label(run) if alone else f"{run_label(run)} · {model['label']}"


def run_models(runs: list[Any]) -> list[tuple[Any, dict[str, Any], str]]:
    """(run, trained model row, its label across runs) for every trained model of `runs`."""
    out: list[tuple[Any, dict[str, Any], str]] = []
    for run in runs:
        models = trained_models(run.summary)
        out.extend((run, m, model_label(run, m, len(models) == 1)) for m in models)
    return out


MODEL_COLUMNS = [  # (column, row key, format of RESULTS)
    ("top-1", "top1", "pct"),
    ("agreement", "agreement", "pct"),
    ("params", "params", "count"),
    ("size", "size_bytes", "bytes"),
    ("FLOPs", "flops", "count"),
    ("CPU latency (ms)", "cpu_latency_ms", "ms"),
]


def models_frame(
    models: Sequence[Mapping[str, Any]], formats: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """One row per trained model (`trained_models` rows): model, top-1, agreement, params, size,
    FLOPs, CPU latency, artifacts (their file names); `formats` ({"pct" | "count" | "bytes" |
    "ms": value -> str}) turns the values into text."""

    def cell(value: Any, kind: str) -> Any:
        return formats[kind](value) if formats and kind in formats else value

    rows = [
        {
            "model": m["label"],
            **{column: cell(m.get(key), kind) for column, key, kind in MODEL_COLUMNS},
            "artifacts": ", ".join(sorted((m.get("artifacts") or {}).values())),
        }
        for m in models
    ]
    return pd.DataFrame(rows, columns=["model", *[c for c, *_ in MODEL_COLUMNS], "artifacts"])


def curve_models(
    summary: Mapping[str, Any] | None, config: Mapping[str, Any], names: Iterable[str]
) -> list[dict[str, Any]]:
    """The models whose curves the run page draws: the finished run's trained models, or while
    it trains, what its config and series say: the student and each peer with `val/p{k}/`
    series, or a born-again `self` run's generations."""
    models = trained_models(summary)
    if models:
        return models
    peers = sorted(
        {int(m.group(1)) for n in names if (m := re.match(r"val/p(\d+)/", n)) is not None}
    )
    if peers:
        found = [{"label": "student", "val_prefix": "val/"}]
        return found + [{"label": f"peer {k}", "val_prefix": f"val/p{k}/"} for k in peers]
    params = config.get("scheme_params") or {}
    if config.get("scheme") == "self" and params.get("mode", "born_again") == "born_again":
        n = int(params.get("generations", 2))
        if n > 1:
            return [{"label": f"generation {g}", "val_prefix": None} for g in range(1, n + 1)]
    return []


def has_curve(model: Mapping[str, Any]) -> bool:
    """Whether `model_curves` can draw the model: its own series, or a born-again generation."""
    return bool(model.get("val_prefix")) or str(model.get("label", "")).startswith("generation ")


def model_curves(
    frame: pd.DataFrame,
    models: Sequence[Mapping[str, Any]],
    metric: str = "top1",
    epochs_per_round: int | None = None,
) -> pd.DataFrame:
    """The validation `metric` of every trained model as (name, step, epoch, value), `name`
    the model's label: a model's own series (`val_prefix` + metric, e.g. `val/p1/top1`), and
    for born-again generations (no series of their own) the run's `val/<metric>` cut by epoch,
    generation g being epochs [(g-1)·E, g·E) with E = `epochs_per_round` (training.epochs)."""
    columns = ["name", "step", "epoch", "value"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    parts = []
    for m in models:
        prefix, label = m.get("val_prefix"), str(m["label"])
        if prefix:
            part = frame[frame["name"] == f"{prefix}{metric}"]
        elif label.startswith("generation ") and epochs_per_round:
            g = int(label.split()[-1])
            part = frame[frame["name"] == f"val/{metric}"]
            epoch = pd.to_numeric(part["epoch"], errors="coerce")
            lo, hi = (g - 1) * epochs_per_round, g * epochs_per_round
            part = part[(epoch >= lo) & (epoch < hi)]
        else:
            continue
        if not part.empty:
            parts.append(part.assign(name=label))
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def tradeoff_frame(
    runs: list[Any],
    cost_key: str,
    teacher_costs: Mapping[int, float] | None = None,
    models: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Every trained model of the runs (and each distinct teacher) as points: label, kind, cost,
    accuracy, on_front and front ("Pareto front" or "dominated"), the front computed over all
    of them. A run that trained several models (peers, generations, an int8 student) gives one
    point per model, labelled `#id name · peer 1`.

    `cost_key` is a summary suffix: `size_bytes`, `params`, `flops` or `cpu_latency_ms`;
    `teacher_costs` fills a teacher's cost the summary lacks (e.g. its file size); `models`
    keeps only the trained models of these labels (teachers stay)."""
    rows: list[dict[str, Any]] = []
    teachers: set[Any] = set()
    keep = None if models is None else set(models)
    for _run, model, label in run_models(runs):
        if keep is None or label in keep:
            rows.append(
                {
                    "label": label,
                    "kind": "student",
                    "cost": model.get(cost_key),
                    "accuracy": model.get("top1"),
                }
            )
    for run in runs:
        s = run.summary or {}
        key = (run.teacher_model_id, s.get("teacher_top1"))
        if run.teacher_model_id is not None and key not in teachers and s.get("teacher_top1"):
            teachers.add(key)
            rows.append(
                {
                    "label": f"teacher #{run.teacher_model_id}",
                    "kind": "teacher",
                    "cost": s.get(f"teacher_{cost_key}")
                    or (teacher_costs or {}).get(run.teacher_model_id),
                    "accuracy": s.get("teacher_top1"),
                }
            )
    frame = pd.DataFrame(rows, columns=["label", "kind", "cost", "accuracy"])
    frame["cost"] = pd.to_numeric(frame["cost"], errors="coerce")
    frame["accuracy"] = pd.to_numeric(frame["accuracy"], errors="coerce")
    frame = frame.dropna(subset=["cost", "accuracy"]).reset_index(drop=True)
    points = list(zip(frame["cost"], frame["accuracy"], strict=True))
    frame["on_front"] = pareto_front(points) if points else []
    frame["front"] = [FRONT if on else DOMINATED for on in frame["on_front"]]
    return frame
