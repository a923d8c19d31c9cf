"""The `split` scheme (head network distillation, Matsubara et al. 2019): a head with a
bottleneck learns the teacher's feature at the split point; the teacher's tail stays frozen and
serves the rest; the head is exported on its own with its bytes per sample and latency."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from torch import Tensor, nn

from core.config import RunConfig
from core.split_point import split_layer
from tests.unit.engine.support import (
    Epochs,
    scheme_config,
    small_digits,
)
from worker.engine.export import export_pt2
from worker.engine.loading import load_model
from worker.engine.pipeline import run_distillation
from worker.engine.schemes import build_scheme
from worker.engine.schemes.split import SplitHead, SplitModel, SplitScheme
from worker.engine.students import build_student
from worker.engine.taps import inspect_model
from worker.engine.tasks.classification.data import TensorData
from worker.engine.trainer import Cancelled, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[TensorData, TensorData]:
    return small_digits(200)


def _eager_teacher() -> nn.Module:
    torch.manual_seed(7)
    return build_student("resnet8", (1, 8, 8), 10, width=0.5).eval()


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("split") / "teacher.pt2"
    export_pt2(_eager_teacher(), (1, 8, 8), path)
    return path


def _pt2_teacher(path: Path) -> nn.Module:
    return load_model(path, "pt2").module


def _config(params: dict[str, Any] | None = None, **fields: Any) -> RunConfig:
    return scheme_config("split", params or {"split_at": "layer1"}, epochs=2, **fields)


def _hash(state: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# the config and the split point


def test_the_catalog_entry_and_the_config_take_the_parameters() -> None:
    config = _config({"split_at": "layer2", "bottleneck": 2})
    assert config.resolved_scheme_params() == {
        "split_at": "layer2",
        "bottleneck": 2,
        "feature_weight": 1.0,
    }
    with pytest.raises(ValidationError, match="bottleneck"):
        _config({"bottleneck": 0})
    with pytest.raises(ValidationError, match="remove layer_pairs"):
        _config(layer_pairs=[{"teacher": "layer1", "student": "layer1"}])
    with pytest.raises(ValidationError, match="leave student at a zoo architecture"):
        _config(student={"source": "model", "model": {"path": "student.pt2"}})
    with pytest.raises(ValidationError, match="matches features"):
        _config(losses=[{"name": "ce"}, {"name": "feature_l2"}])


def test_the_split_point_is_checked_against_the_teachers_layer_table() -> None:
    inspection = inspect_model(_eager_teacher(), (1, 8, 8))
    assert split_layer(inspection, "")["path"] == "layer1"  # the first stage's end
    assert split_layer(inspection, "layer2")["output_shape"] == [16, 4, 4]
    with pytest.raises(ValueError, match=r"layer 'layer9' not in teacher; nearest: .*stage ends"):
        split_layer(inspection, "layer9")
    with pytest.raises(ValueError, match="'fc' outputs \\[10\\], not a feature map"):
        split_layer(inspection, "fc")
    vector = inspect_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), (1, 8, 8))
    with pytest.raises(ValueError, match="no spatial stage: use scheme 'offline'"):
        split_layer(vector, "")


def test_a_layer_the_teacher_calls_twice_cannot_be_cut() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.act = nn.ReLU()
            self.fc = nn.Linear(4, 10)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(self.act(self.act(self.conv(x))).mean((2, 3)))

    scheme = build_scheme("split", split_at="act")
    with pytest.raises(ValueError, match="calls layer 'act' 2 times"):
        scheme.setup(Twice().eval(), build_student("resnet8", (1, 8, 8), 10), nn.ModuleList())


def test_the_head_ends_in_the_bottleneck_at_the_split_points_resolution() -> None:
    head = SplitHead((1, 8, 8), (32, 4, 4), bottleneck=3)
    z = head.encoder(torch.randn(2, 1, 8, 8))
    assert z.shape == (2, 3, 4, 4)
    assert head(torch.randn(2, 1, 8, 8)).shape == (2, 32, 4, 4)


# ----------------------------------------------------------------------------------------------
# training: the tail frozen, the head learns the feature, resume


def test_the_teachers_tail_is_unchanged_and_the_head_learns_its_feature(
    digits: tuple[TensorData, TensorData], teacher_file: Path
) -> None:
    train_data, val_data = digits
    teacher = _pt2_teacher(teacher_file)  # an unflattened .pt2 graph, as uploads are
    before = _hash({**dict(teacher.named_parameters()), **dict(teacher.named_buffers())})
    scheme = build_scheme("split", split_at="layer1", bottleneck=4)
    rec = Epochs()
    config = _config({"split_at": "layer1", "bottleneck": 4}, training={
        "epochs": 3, "batch_size": 30, "lr": 0.05, "device": "cpu", "export_onnx": False,
    })  # fmt: skip
    result = train(config, teacher, train_data, val_data, callbacks=rec, scheme=scheme)
    after = _hash({**dict(teacher.named_parameters()), **dict(teacher.named_buffers())})
    assert after == before  # every parameter and BatchNorm statistic of the teacher, bitwise
    assert isinstance(result.student, SplitModel) and result.student.teacher is teacher
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all("loss/feature" in names and "loss/ce" in names for names in rec.steps)
    # the optimizer updates the head only
    assert isinstance(scheme, SplitScheme) and scheme.head is not None
    trained = {id(p) for g in scheme.param_groups() for p in g["params"]}
    assert trained == {id(p) for p in scheme.head.parameters()}
    # the head reproduces the teacher's feature better than at the start
    x = val_data.x[:32]
    fresh = SplitScheme(split_at="layer1", bottleneck=4)
    torch.manual_seed(config.seed)
    fresh.setup(
        _pt2_teacher(teacher_file), build_student("resnet8", (1, 8, 8), 10), nn.ModuleList()
    )

    def feature_error(head: nn.Module) -> float:
        with torch.inference_mode():
            target = inspect_feature(teacher, "layer1", x)
            return float(((head.eval()(x) - target) ** 2).mean())

    assert feature_error(scheme.head) < 0.75 * feature_error(fresh.head)  # type: ignore[arg-type]
    assert 0.0 <= rec.epochs[-1]["val/top1"] <= 1.0


def inspect_feature(teacher: nn.Module, path: str, x: Tensor) -> Tensor:
    from worker.engine.taps import FeatureTaps

    with FeatureTaps(teacher, [(path, "output")]) as taps:
        teacher(x)
        return taps.features[0]


def test_the_end_to_end_model_runs_the_tail_on_the_heads_feature(teacher_file: Path) -> None:
    teacher = _pt2_teacher(teacher_file)
    head = SplitHead((1, 8, 8), (8, 8, 8), bottleneck=2).eval()
    model = SplitModel(head, teacher, "layer1").eval()
    x = torch.randn(3, 1, 8, 8)
    eager = _eager_teacher()  # the same weights, run by hand from layer1 on
    with torch.inference_mode():
        f = head(x)
        want = eager.fc(torch.flatten(eager.avgpool(eager.layer3(eager.layer2(f))), 1))
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(model(x), teacher(x))


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(
    digits: tuple[TensorData, TensorData], teacher_file: Path, tmp_path: Path
) -> None:
    train_data, val_data = digits
    config = _config()
    whole = train(config, _pt2_teacher(teacher_file), train_data, val_data)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Cancelled):
        train(config, _pt2_teacher(teacher_file), train_data, val_data,
              callbacks=Epochs(stop_at=3), checkpoint_path=ckpt)  # fmt: skip
    held = torch.load(ckpt, weights_only=True)
    assert set(held["head"]) == set(whole.student.head.state_dict())  # type: ignore[union-attr]
    assert not any(k.startswith("teacher") for k in held["head"])  # the tail is the upload
    resumed = train(config, _pt2_teacher(teacher_file), train_data, val_data, checkpoint_path=ckpt)
    assert resumed.steps == whole.steps
    assert _hash(resumed.student.head.state_dict()) == _hash(whole.student.head.state_dict())  # type: ignore[union-attr]


# ----------------------------------------------------------------------------------------------
# the whole run: the head exported, bytes, latency; the CLI


def _files(tmp_path: Path, teacher_file: Path) -> tuple[Path, Path, np.ndarray]:
    d = load_digits()
    x = (d.images[:200, None] / 16.0).astype("float32")
    np.savez(tmp_path / "data.npz", x=x, y=d.target[:200])
    return teacher_file, tmp_path / "data.npz", x


def test_a_whole_run_exports_the_head_and_reports_bytes_and_latency(
    tmp_path: Path, teacher_file: Path
) -> None:
    teacher_path, data_path, x = _files(tmp_path, teacher_file)
    config = _config(
        {"split_at": "layer2", "bottleneck": 2},
        teacher={"path": str(teacher_path)},
        dataset={"path": str(data_path), "val_fraction": 0.25},
    )
    out = tmp_path / "out"
    summary = run_distillation(config, teacher_path, data_path, out)
    arts = summary["artifacts"]
    assert {"head_safetensors", "head_pt2", "student_pt2"} <= set(arts)
    assert summary["student_architecture"] == ""  # head + tail is no zoo model to register
    report = json.loads((out / "evaluation.json").read_text())["split"]
    assert report["split_at"] == "layer2" and report["feature_shape"] == [16, 4, 4]
    assert report["bottleneck_bytes"] == {"float32": 2 * 4 * 4 * 4, "int8": 2 * 4 * 4}
    assert report["input_bytes_float32"] == 4 * 64
    assert report["head_latency_ms"] > 0 and report["encoder_latency_ms"] > 0
    assert report["end_to_end"]["val/top1"] == pytest.approx(summary["student_top1"], abs=1e-6)
    assert 0.0 <= report["end_to_end_8bit"]["val/top1"] <= 1.0
    # the head on its own: its weights and its graph give the head's output
    head = SplitHead((1, 8, 8), (16, 4, 4), bottleneck=2)
    head.load_state_dict(load_file(out / arts["head_safetensors"]))
    inputs = torch.from_numpy(x[:16])
    with torch.inference_mode():
        torch.testing.assert_close(
            load_model(out / arts["head_pt2"], "pt2").module(inputs), head.eval()(inputs)
        )
        # the deployed model (student.pt2) is head + the teacher's tail
        deployed = SplitModel(head, _pt2_teacher(teacher_path), "layer2").eval()
        torch.testing.assert_close(
            load_model(out / arts["student_pt2"], "pt2").module(inputs), deployed(inputs),
            rtol=1e-4, atol=1e-5,
        )  # fmt: skip


def test_distill_studio_train_runs_split(tmp_path: Path, teacher_file: Path) -> None:
    """`distill-studio train run.yaml` (no server) with `scheme: {name: split, ...}`."""
    from typer.testing import CliRunner

    from cli.main import app

    _, data_path, _ = _files(tmp_path, teacher_file)
    (tmp_path / "teacher.pt2").write_bytes(teacher_file.read_bytes())
    doc = yaml.safe_load(_config({"bottleneck": 3}).to_yaml())
    doc["teacher"], doc["dataset"] = {"path": "teacher.pt2"}, {"path": "data.npz"}
    doc["training"]["epochs"] = 1
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["train", str(tmp_path / "run.yaml"), "--out", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["split"]["split_at"] == "layer1"  # the default: the first stage's end
    assert summary["split"]["bottleneck_bytes"]["int8"] == 3 * 8 * 8
    assert {"head.pt2", "head.safetensors"} <= {p.name for p in out.iterdir()}
    assert RunConfig.from_yaml((out / "run.yaml").read_text()).scheme_params == {"bottleneck": 3}
