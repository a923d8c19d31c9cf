"""`core.trained_models`: every summary shape (one student, `online` peers, born-again
generations, a QAT int8 student, the generic `models` list) gives one row per trained model; and
the pages' helpers built on it (ui.analysis: the model table, per-model curves, Compare points)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from client import Run
from core.trained_models import ROW_KEYS, trained_models
from ui.analysis import (
    curve_models,
    has_curve,
    model_curves,
    models_frame,
    run_models,
    tradeoff_frame,
)

STUDENT = {
    "teacher_top1": 0.95,
    "student_top1": 0.9,
    "agreement": 0.92,
    "student_params": 1000,
    "student_size_bytes": 4096,
    "student_flops": 20000,
    "student_cpu_latency_ms": 0.5,
}


def _peer(k: int, top1: float) -> dict[str, Any]:
    return {
        "peer": k,
        "artifacts": {"student_pt2": "student.pt2"}
        if k == 0
        else {f"peer{k}_student_pt2": f"peer{k}_student.pt2"},
        **STUDENT,
        "student_top1": top1,
    }


def test_an_empty_summary_has_no_models() -> None:
    assert trained_models({}) == [] and trained_models(None) == []
    assert trained_models({"onnx_export_error": "x"}) == []


def test_one_student_is_one_row_from_the_top_level() -> None:
    [row] = trained_models(STUDENT)
    assert tuple(row) == ROW_KEYS
    assert row == {
        "label": "student",
        "top1": 0.9,
        "agreement": 0.92,
        "params": 1000,
        "size_bytes": 4096,
        "flops": 20000,
        "cpu_latency_ms": 0.5,
        "val_prefix": "val/",
        "artifacts": {},
    }


def test_online_peers_are_student_then_peer_k() -> None:
    summary = {**STUDENT, "peers": [_peer(0, 0.9), _peer(1, 0.8), _peer(2, 0.85)]}
    rows = trained_models(summary)
    assert [r["label"] for r in rows] == ["student", "peer 1", "peer 2"]
    assert [r["top1"] for r in rows] == [0.9, 0.8, 0.85]
    assert [r["val_prefix"] for r in rows] == ["val/", "val/p1/", "val/p2/"]
    assert rows[1]["artifacts"] == {"peer1_student_pt2": "peer1_student.pt2"}


def test_born_again_generations_in_order_the_last_being_the_student() -> None:
    gens = [
        {"generation": k, "artifacts": {}, **STUDENT, "student_top1": top1}
        for k, top1 in ((1, 0.7), (2, 0.75), (3, 0.9))
    ]
    rows = trained_models({**STUDENT, "generations": gens})
    assert [r["label"] for r in rows] == ["generation 1", "generation 2", "generation 3"]
    assert [r["top1"] for r in rows] == [0.7, 0.75, 0.9]
    assert all(r["val_prefix"] is None for r in rows)  # they share val/ epoch by epoch


def test_a_qat_run_adds_its_int8_student_with_its_own_size_and_latency() -> None:
    quantized = {
        "artifact": "student_int8.pt",
        "fp32": {"top1": 0.9, "size_bytes": 4096, "cpu_latency_ms": 0.5},
        "int8": {"top1": 0.88, "size_bytes": 1100, "cpu_latency_ms": 0.3},
    }
    student, int8 = trained_models({**STUDENT, "quantized": quantized})
    assert student["label"] == "student" and int8["label"] == "int8"
    assert (int8["top1"], int8["size_bytes"], int8["cpu_latency_ms"]) == (0.88, 1100, 0.3)
    assert (int8["params"], int8["flops"]) == (1000, 20000)  # the float student's
    assert int8["artifacts"] == {"student_int8": "student_int8.pt"}


def test_the_generic_models_list_of_any_other_scheme() -> None:
    models = [
        {"label": "tiny", "student_top1": 0.8, "student_params": 10, "val_prefix": "val/"},
        {"label": "head", "top1": 0.7, "size_bytes": 99, "artifacts": {"head_pt2": "head.pt2"}},
        {"student_top1": 0.6},
    ]
    rows = trained_models({**STUDENT, "models": models})
    assert [r["label"] for r in rows] == ["tiny", "head", "model 3"]
    assert (rows[0]["top1"], rows[0]["params"], rows[0]["val_prefix"]) == (0.8, 10, "val/")
    assert (rows[1]["top1"], rows[1]["size_bytes"], rows[1]["val_prefix"]) == (0.7, 99, None)
    assert rows[1]["artifacts"] == {"head_pt2": "head.pt2"}


def test_a_split_runs_head_is_a_row_with_its_own_cost() -> None:
    split = {
        "head_params": 300,
        "head_latency_ms": 0.1,
        "end_to_end": {"val/top1": 0.86, "val/loss": 0.4},
        "end_to_end_8bit": {"val/top1": 0.85, "val/loss": 0.41},
    }
    student, head, head8 = trained_models({**STUDENT, "split": split})
    assert student["label"] == "student" and student["params"] == 1000
    assert (head["label"], head["top1"], head["params"], head["cpu_latency_ms"]) == (
        "head",
        0.86,
        300,
        0.1,
    )
    assert head["artifacts"] == {"head_safetensors": "head.safetensors", "head_pt2": "head.pt2"}
    assert (head8["label"], head8["top1"]) == ("head, 8-bit bottleneck", 0.85)


def _run(run_id: int, name: str, summary: dict[str, Any], **config: Any) -> Run:
    return Run(id=run_id, name=name, status="succeeded", summary=summary, config=config)


def test_models_frame_and_compare_points_label_each_model_with_its_run() -> None:
    dml = _run(4, "dml", {**STUDENT, "peers": [_peer(0, 0.9), _peer(1, 0.8)]})
    kd = _run(3, "kd", {**STUDENT, "student_top1": 0.85})
    labels = [label for _, _, label in run_models([kd, dml])]
    assert labels == ["#3 kd", "#4 dml · student", "#4 dml · peer 1"]
    frame = models_frame(trained_models(dml.summary))
    assert list(frame["model"]) == ["student", "peer 1"]
    assert list(frame["top-1"]) == [0.9, 0.8]
    points = tradeoff_frame([kd, dml], "size_bytes")
    students = points[points["kind"] == "student"]
    assert list(students["label"]) == labels and list(students["accuracy"]) == [0.85, 0.9, 0.8]
    assert "teacher" not in set(points["kind"])  # no teacher model id: no teacher point
    only = tradeoff_frame([kd, dml], "size_bytes", models=["#4 dml · peer 1"])
    assert list(only["label"]) == ["#4 dml · peer 1"]


def _frame(rows: list[tuple[str, int, int, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["name", "step", "epoch", "value"])


def test_model_curves_of_peers_and_of_generations() -> None:
    peers = [
        {"label": "student", "val_prefix": "val/"},
        {"label": "peer 1", "val_prefix": "val/p1/"},
    ]
    frame = _frame(
        [("val/top1", 3, 0, 0.5), ("val/p1/top1", 3, 0, 0.4), ("val/p1/loss", 3, 0, 1.0)]
    )
    curves = model_curves(frame, peers)
    assert list(zip(curves["name"], curves["value"], strict=True)) == [
        ("student", 0.5),
        ("peer 1", 0.4),
    ]
    gens = [{"label": f"generation {g}", "val_prefix": None} for g in (1, 2)]
    frame = _frame([("val/top1", 3 * (e + 1), e, 0.1 * (e + 1)) for e in range(4)])
    curves = model_curves(frame, gens, epochs_per_round=2)
    assert list(curves["name"]) == ["generation 1"] * 2 + ["generation 2"] * 2
    assert list(curves["epoch"]) == [0, 1, 2, 3]


def test_curve_models_while_training_come_from_series_and_config() -> None:
    assert [m["label"] for m in curve_models({}, {}, ["val/top1", "val/p2/top1"])] == [
        "student",
        "peer 2",
    ]
    born_again = {"scheme": "self", "scheme_params": {"generations": 3}}
    assert len(curve_models({}, born_again, ["val/top1"])) == 3
    deep = {"scheme": "self", "scheme_params": {"mode": "deep_supervision"}}
    assert curve_models({}, deep, ["val/top1", "val/head1/top1"]) == []
    assert [m["label"] for m in curve_models(STUDENT, {}, [])] == ["student"]
    qat = {**STUDENT, "quantized": {"int8": {"top1": 0.8}}}
    assert [has_curve(m) for m in curve_models(qat, {}, [])] == [True, False]  # int8: no series
