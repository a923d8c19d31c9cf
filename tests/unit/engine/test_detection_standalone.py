"""`distill-studio train run.yaml` with a detection dataset (a COCO .zip): a tiny run, no
server, writes the studio's artifacts with teacher and student mAP and the drawn predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from cli.main import app
from worker.engine.export import export_pt2
from worker.engine.students import build_student
from worker.engine.tasks.detection import DetectionTask
from worker.engine.tasks.detection.data import synthetic_digits, write_zip

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_a_detection_run_through_the_cli(tmp_path: Path) -> None:
    data = synthetic_digits(20, seed=7, digits_per_image=(1, 2))
    write_zip(data, tmp_path / "digits.zip")
    torch.manual_seed(0)
    teacher = build_student("det_centernet", data.input_shape, 10, width=0.25).eval()
    export_pt2(teacher, data.input_shape, tmp_path / "teacher.pt2", DetectionTask())
    config = {
        "name": "det-cli",
        "task": "detection",
        "teacher": {"path": "teacher.pt2"},
        "dataset": {"path": "digits.zip"},
        "student": {"architecture": "det_centernet", "kwargs": {"width": 0.25}},
        "layer_pairs": [{"teacher": "backbone.layer3", "student": "backbone.layer3"}],
        "losses": [{"name": "centernet"}, {"name": "at", "weight": 10.0}],
        "training": {"epochs": 1, "batch_size": 8, "device": "cpu", "export_onnx": False},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["train", str(tmp_path / "run.yaml"), "--out", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {"teacher_map", "student_map", "student_map50", "student_class_ap"} <= set(summary)
    assert 0.0 <= summary["student_map"] <= 1.0 and summary["student_flops"] > 0
    assert "samples" not in summary  # drawn predictions go to their own file
    files = {p.name for p in out.iterdir()}
    assert {"student.safetensors", "student.pt2", "evaluation.json", "predictions.json"} <= files
    drawn = json.loads((out / "predictions.json").read_text())
    assert len(drawn) == 4 and {"truth", "teacher", "student"} <= set(drawn[0])
