"""A whole run on the demo data: a ResNet teacher on digits distilled into a smaller ResNet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import RunConfig
from worker.engine.loading import load_model
from worker.engine.pipeline import IncompatibleDataError, make_demo, run_distillation
from worker.engine.tasks.classification.data import load_dataset, split

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_demo(tmp_path_factory.mktemp("demo"))


def _config(teacher: Path, data: Path, **extra: object) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "digits-kd-at",
            "teacher": {"path": str(teacher)},
            "dataset": {"path": str(data)},
            "student": {"architecture": "resnet8", "kwargs": {"width": 0.5}},
            "layer_pairs": [{"teacher": f"layer{i}", "student": f"layer{i}"} for i in (1, 2, 3)],
            "losses": [
                {"name": "ce"},
                {"name": "kd", "params": {"temperature": 4}},
                {"name": "at", "weight": 100},
            ],
            "training": {"epochs": 15, "batch_size": 64, "lr": 0.1, "device": "cpu"},
            **extra,
        }
    )


def test_demo_files(demo: tuple[Path, Path]) -> None:
    teacher_path, data_path = demo
    teacher = load_model(teacher_path, "pt2")
    data = load_dataset(data_path)
    assert teacher.input_shape == (1, 8, 8) and teacher.num_classes == 10
    assert len(data) == 1797 and data.input_shape == (1, 8, 8)
    assert 0.0 <= float(data.x.min()) and float(data.x.max()) <= 1.0


def test_kd_at_student_close_to_teacher(demo: tuple[Path, Path], tmp_path: Path) -> None:
    teacher_path, data_path = demo
    config = _config(teacher_path, data_path)
    result = run_distillation(config, teacher_path, data_path, tmp_path)
    print(f"teacher {result['teacher_top1']:.4f} student {result['student_top1']:.4f}")
    assert result["teacher_top1"] >= 0.97, "the demo teacher must be good on data it never saw"
    assert result["student_top1"] >= result["teacher_top1"] - 0.04
    assert result["student_params"] * 10 < result["teacher_params"]
    assert result["student_architecture"] == "resnet8"
    assert result["student_kwargs"] == {"width": 0.5, "input_shape": [1, 8, 8], "num_classes": 10}
    names = result["artifacts"]
    assert set(names) == {
        "student_safetensors",
        "student_pt2",
        "student_onnx",
        "config",
        "evaluation",
    }
    assert RunConfig.from_yaml((tmp_path / names["config"]).read_text()) == config
    saved = json.loads((tmp_path / names["evaluation"]).read_text())
    assert saved["student_top1"] == result["student_top1"]
    # both student files load back (safely) and predict what was evaluated
    val = split(load_dataset(data_path), 0.2, config.seed)[1]
    pt2 = load_model(tmp_path / names["student_pt2"], "pt2").module
    st = load_model(tmp_path / names["student_safetensors"], "safetensors").module
    with torch.inference_mode():
        top1 = [(m(val.x).argmax(1) == val.y).float().mean().item() for m in (pt2, st)]
    assert top1 == pytest.approx([result["student_top1"]] * 2, abs=1e-6)


def test_mismatched_data_is_explained(demo: tuple[Path, Path], tmp_path: Path) -> None:
    teacher_path, _ = demo
    np.savez(tmp_path / "tab.npz", x=np.zeros((20, 5), np.float32), y=np.arange(20) % 2)
    with pytest.raises(IncompatibleDataError, match=r"takes inputs of shape \[1, 8, 8\]"):
        run_distillation(
            _config(teacher_path, tmp_path / "tab.npz"),
            teacher_path,
            tmp_path / "tab.npz",
            tmp_path / "out",
        )
    names = np.array(["cat", "dog"] * 10)
    np.savez(tmp_path / "named.npz", x=np.zeros((20, 8, 8), np.float32), y=names)
    with pytest.raises(IncompatibleDataError, match="predicts 10 classes but the dataset has 2"):
        run_distillation(
            _config(teacher_path, tmp_path / "named.npz"),
            teacher_path,
            tmp_path / "named.npz",
            tmp_path / "out",
        )
