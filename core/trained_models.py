"""Every model a run trained, read from its summary (evaluation.json): one row per model with
the same keys whatever the scheme, for the run page, Compare, the API and the CLI.

A summary says which models it holds (worker/engine/pipeline.py writes it):

- `peers` (`online`): [{peer: k, artifacts, student_top1, student_params, ...}], peer 0 being the
  configured student (also the summary's top level) -> "student", "peer 1", "peer 2", ...
- `generations` (`self`, born-again): [{generation: k, artifacts, student_top1, ...}] for
  k = 1..N, the last being the run's student (also the top level) -> "generation 1", ...
- `models` (the convention for any other scheme): [{label, artifacts, <the same evaluation
  keys: student_top1, student_params, student_size_bytes, student_flops,
  student_cpu_latency_ms, ...>}], every model the run trained, its student included; an
  optional `val_prefix` says where the model's validation metrics are logged (`val/p1/`).
- `quantized` (`training.qat`): the int8 model next to the float student -> "int8", its
  parameters and FLOPs those of the float student, its size and latency its own.
- `split` (`split`): the student is the head with the teacher's frozen tail; the head, the part
  that runs on the device, is a row of its own -> "head" (its parameters and CPU latency, the
  end-to-end accuracy), and "head, 8-bit bottleneck" (the accuracy with the bottleneck sent as
  8 bits).

A summary with none of the lists is one model, "student", from the top level. An empty summary
(a run that has not finished) has no models. Torch-free: the backend, the client and the pages
import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# (row key, summary suffix): the row's `top1` is the summary's `student_top1`, ...
FIELDS = (
    ("top1", "top1"),
    ("agreement", "agreement"),
    ("params", "params"),
    ("size_bytes", "size_bytes"),
    ("flops", "flops"),
    ("cpu_latency_ms", "cpu_latency_ms"),
)
ROW_KEYS = ("label", *(key for key, _ in FIELDS), "val_prefix", "artifacts")
INT8_ARTIFACT_KIND = "student_int8"  # the kind of a `quantized` block that names none (older runs)


def _row(label: str, entry: Mapping[str, Any], val_prefix: str | None) -> dict[str, Any]:
    """One model's row from an evaluation dict (`student_<key>` first, then a bare `<key>`)."""
    row: dict[str, Any] = {"label": label}
    for key, suffix in FIELDS:
        value = entry.get(f"student_{suffix}")
        row[key] = entry.get(suffix) if value is None else value
    row["val_prefix"] = val_prefix
    artifacts = entry.get("artifacts")
    row["artifacts"] = dict(artifacts) if isinstance(artifacts, Mapping) else {}
    return row


def _entries(summary: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = summary.get(key)
    if not isinstance(value, list):
        return []
    return [e for e in value if isinstance(e, Mapping)]


SPLIT_ARTIFACTS = {"head_safetensors": "head.safetensors", "head_pt2": "head.pt2"}


def _split_rows(split: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The head of a `split` run, end to end with a float and with an 8-bit bottleneck."""
    rows = []
    for label, key in (("head", "end_to_end"), ("head, 8-bit bottleneck", "end_to_end_8bit")):
        metrics = split.get(key)
        if not isinstance(metrics, Mapping):
            continue
        entry = {
            "top1": metrics.get("val/top1", metrics.get("top1")),
            "params": split.get("head_params"),
            "cpu_latency_ms": split.get("head_latency_ms"),
            "artifacts": SPLIT_ARTIFACTS if label == "head" else {},
        }
        rows.append(_row(label, entry, None))
    return rows


def trained_models(summary: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The run's trained models, the run's student among them; see the module docstring.

    Each row: label, top1, agreement, params, size_bytes, flops, cpu_latency_ms (None where the
    summary does not say), val_prefix (where its validation curves are, e.g. `val/p1/`; None
    when it has no series of its own, as for generations, which share `val/` epoch by epoch)
    and artifacts ({kind: file name} of its weights).
    """
    summary = summary or {}
    rows: list[dict[str, Any]] = []
    for entry in _entries(summary, "peers"):
        k = int(entry.get("peer", len(rows)))
        rows.append(
            _row("student" if k == 0 else f"peer {k}", entry, "val/" if k == 0 else f"val/p{k}/")
        )
    for entry in _entries(summary, "generations"):
        rows.append(_row(f"generation {int(entry.get('generation', len(rows) + 1))}", entry, None))
    for i, entry in enumerate(_entries(summary, "models")):
        label = str(entry.get("label") or f"model {i + 1}")
        prefix = entry.get("val_prefix")
        rows.append(_row(label, entry, prefix if isinstance(prefix, str) else None))
    if not rows and any(f"student_{suffix}" in summary for _, suffix in FIELDS):
        artifacts = summary.get("artifacts")
        weights = (
            {k: v for k, v in artifacts.items() if k.startswith("student_")}
            if isinstance(artifacts, Mapping)
            else {}
        )
        rows.append(_row("student", {**summary, "artifacts": weights}, "val/"))
    split = summary.get("split")
    if isinstance(split, Mapping) and rows:
        rows.extend(_split_rows(split))
    quantized = summary.get("quantized")
    if isinstance(quantized, Mapping) and isinstance(quantized.get("int8"), Mapping) and rows:
        int8 = quantized["int8"]
        student = next((r for r in rows if r["label"] == "student"), rows[-1])
        row = _row("int8", int8, None)
        row["params"], row["flops"] = student["params"], student["flops"]
        name = quantized.get("artifact")
        kind = quantized.get("artifact_kind") or INT8_ARTIFACT_KIND
        row["artifacts"] = {str(kind): name} if isinstance(name, str) else {}
        rows.append(row)
    return rows
