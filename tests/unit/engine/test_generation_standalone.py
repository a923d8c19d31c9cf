"""`distill-studio train run.yaml` with an image-to-image dataset of inputs only (a .zip of
inputs/): a tiny run, no server, distils a generator's outputs and features and writes the
studio's artifacts with PSNR/SSIM against the teacher and the drawn inputs and outputs."""

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
from worker.engine.tasks.generation import GenerationTask
from worker.engine.tasks.generation.data import GenData, synthetic_digits, write_zip

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_a_generation_run_through_the_cli(tmp_path: Path) -> None:
    digits = synthetic_digits(24, seed=5)
    write_zip(GenData(digits.x, None, 1), tmp_path / "inputs.zip")
    torch.manual_seed(0)
    teacher = build_student("gen_resnet", (1, 16, 16), 1, width=0.5, blocks=2).eval()
    export_pt2(teacher, (1, 16, 16), tmp_path / "teacher.pt2", GenerationTask())
    config = {
        "name": "gen-cli",
        "task": "generation",
        "teacher": {"path": "teacher.pt2"},
        "dataset": {"path": "inputs.zip"},
        "student": {"architecture": "gen_resnet", "kwargs": {"width": 0.25, "blocks": 1}},
        "layer_pairs": [{"teacher": "blocks.1", "student": "blocks.0"}],
        "losses": [{"name": "recon_l1"}, {"name": "fitnets", "weight": 1.0}],
        "training": {"epochs": 1, "batch_size": 8, "device": "cpu", "export_onnx": False},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["train", str(tmp_path / "run.yaml"), "--out", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {"student_psnr_vs_teacher", "student_ssim_vs_teacher"} <= set(summary)
    assert "teacher_psnr" not in summary and summary["has_targets"] is False  # inputs only
    assert summary["student_flops"] > 0 and "samples" not in summary
    files = {p.name for p in out.iterdir()}
    assert {"student.safetensors", "student.pt2", "evaluation.json", "predictions.json"} <= files
    drawn = json.loads((out / "predictions.json").read_text())
    assert len(drawn) == 4 and {"input", "teacher", "student"} <= set(drawn[0])
    assert "truth" not in drawn[0] and drawn[0]["student_note"].endswith("vs the teacher")
