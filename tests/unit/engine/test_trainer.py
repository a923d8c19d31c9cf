"""The training loop: determinism, resume after cancel, hint stage, reports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from core.config import RunConfig
from worker.engine.students import build_student
from worker.engine.tasks.classification.data import TensorData, split
from worker.engine.trainer import Callbacks, Cancelled, StepReport, train


class TinyNet(nn.Module):
    """The teacher: conv-bn-relu stage, pooling, dropout, linear head."""

    def __init__(self, channels: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.stage = nn.ReLU()
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(channels * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stage(self.bn(self.conv(x)))
        h = nn.functional.max_pool2d(h, 2)
        return self.fc(self.drop(h.flatten(1)))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: intra-op threads only add overhead, and stall on a busy shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> tuple[TensorData, TensorData]:
    d = load_digits()
    x = torch.tensor(d.images[:330], dtype=torch.float32)[:, None] / 16.0
    data = TensorData(x, torch.tensor(d.target[:330]), [str(i) for i in range(10)])
    return split(data, 0.2, seed=0)


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    torch.manual_seed(123)
    return TinyNet(8)


def _config(**training: object) -> RunConfig:
    return RunConfig.model_validate(
        {
            "teacher": {"path": "unused.pt2"},
            "dataset": {"path": "unused.npz"},
            # the teacher's penultimate vector (fc input, 128) -> the MLP's hidden layer (32)
            "layer_pairs": [{"teacher": "fc", "student": "layers.0", "tap": "input"}],
            "student": {
                "architecture": "mlp",
                "kwargs": {"hidden": 32, "depth": 1, "dropout": 0.2},
            },
            "losses": [
                {"name": "ce"},
                {"name": "kd", "params": {"temperature": 4}},
                {"name": "fitnets", "weight": 0.5},
            ],
            "training": {
                "epochs": 2,
                "batch_size": 32,
                "lr": 0.05,
                "checkpoint_every": 3,
                "device": "cpu",
                **training,
            },
            "seed": 7,
        }
    )


def _run(
    config: RunConfig,
    teacher: nn.Module,
    data: tuple[TensorData, TensorData],
    callbacks: Callbacks | None = None,
    ckpt: Path | None = None,
) -> dict[str, torch.Tensor]:
    result = train(config, teacher, *data, callbacks=callbacks, checkpoint_path=ckpt)
    return {k: v.clone() for k, v in result.student.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Recorder(Callbacks):
    def __init__(self, stop_at: int | None = None) -> None:
        self.reports: list[StepReport] = []
        self.epochs: list[dict[str, float]] = []
        self.checkpoints: list[int] = []
        self.starts: list[tuple[int, int]] = []
        self.stop_at, self.checks = stop_at, 0

    def on_start(self, total_steps: int, start_step: int) -> None:
        self.starts.append((total_steps, start_step))

    def on_step(self, report: StepReport) -> None:
        self.reports.append(report)

    def on_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.epochs.append(metrics)

    def on_checkpoint(self, path: Path, step: int) -> None:
        self.checkpoints.append(step)

    def should_stop(self) -> bool:
        self.checks += 1
        return self.stop_at is not None and self.checks > self.stop_at


def test_same_config_gives_identical_weights(teacher, digits) -> None:
    rec = Recorder()
    a = _run(_config(), teacher, digits, rec)
    b = _run(_config(), teacher, digits)
    assert _same(a, b)
    total = rec.starts[0][0]
    assert rec.starts == [(total, 0)] and total == 2 * 9  # 264 samples / 32 -> 9 batches
    assert len(rec.reports) == total and rec.reports[-1].step == total
    keys = set(rec.reports[0].metrics)
    assert keys == {"loss", "loss/ce", "loss/kd", "loss/fitnets", "lr"}
    assert [0.0 <= e["val/top1"] <= 1.0 for e in rec.epochs] == [True, True]
    different = _run(_config(optimizer="adamw", lr=0.01), teacher, digits)
    assert not _same(a, different)


@pytest.mark.parametrize("stop_at", [5, 9, 13])  # mid-epoch 0, at the epoch edge, mid-epoch 1
def test_resume_after_cancel_equals_uninterrupted(teacher, digits, tmp_path, stop_at) -> None:
    full = _run(_config(), teacher, digits)
    ckpt = tmp_path / "run.ckpt"
    rec = Recorder(stop_at=stop_at)
    with pytest.raises(Cancelled):
        _run(_config(), teacher, digits, rec, ckpt)
    assert rec.checkpoints[-1] == stop_at and ckpt.exists()
    assert not (tmp_path / "run.ckpt.tmp").exists()
    rec2 = Recorder()
    resumed = _run(_config(), teacher, digits, rec2, ckpt)
    assert rec2.starts == [(18, stop_at)]
    assert _same(full, resumed)


def test_resume_refuses_a_checkpoint_of_another_run_length(teacher, digits, tmp_path) -> None:
    with pytest.raises(Cancelled):
        _run(_config(), teacher, digits, Recorder(stop_at=3), tmp_path / "r.ckpt")
    with pytest.raises(ValueError, match="belongs to a run of 18 steps but this config makes 27"):
        _run(_config(epochs=3), teacher, digits, None, tmp_path / "r.ckpt")


def test_log_window_and_hint_stage(teacher, digits) -> None:
    rec = Recorder()
    config = _config(log_every=4, schedule="step")
    config.losses[2].params["hint_epochs"] = 1
    train(config, teacher, *digits, callbacks=rec)
    assert [r.step for r in rec.reports] == [4, 8, 12, 16, 18]
    first, last = rec.reports[0], rec.reports[-1]
    assert set(first.metrics) == {"loss", "loss/fitnets", "lr"}  # hint-only first epoch
    assert {"loss/ce", "loss/kd"} <= set(last.metrics)
    assert last.metrics["lr"] == pytest.approx(0.05 * 0.01)  # two step decays of 0.1
    assert first.throughput > 0 and first.eta_seconds >= 0


def test_cancel_saves_checkpoint_and_raises(teacher, digits, tmp_path) -> None:
    rec = Recorder(stop_at=0)
    with pytest.raises(Cancelled):
        train(_config(), teacher, *digits, callbacks=rec, checkpoint_path=tmp_path / "c.ckpt")
    assert rec.checkpoints == [0]
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert ckpt["step"] == 0
    # the offline scheme's checkpoint: the student and the losses' modules, never the teacher
    models = {k for k in ckpt if isinstance(ckpt[k], dict) and k not in ("optimizer", "scheduler")}
    assert models == {"student", "losses"}
    assert any(k.startswith("2.") for k in ckpt["losses"])  # the fitnets connector's weights
    assert set(ckpt["student"]) == set(
        build_student("mlp", (1, 8, 8), 10, hidden=32, depth=1, dropout=0.2).state_dict()
    )


def test_teacher_gets_no_gradient(digits) -> None:
    torch.manual_seed(0)
    teacher = TinyNet(8)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    train(_config(epochs=1), teacher, *digits)
    assert _same(before, teacher.state_dict())
    assert all(p.grad is None for p in teacher.parameters())
