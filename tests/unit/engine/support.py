"""Helpers the engine tests share."""

from __future__ import annotations

from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn

from core.config import RunConfig
from worker.engine.tasks.classification.data import TensorData, split
from worker.engine.trainer import Callbacks

TINY_RESNET = {"architecture": "resnet8", "kwargs": {"width": 0.25}}
TINY_MLP = {"architecture": "mlp", "kwargs": {"hidden": 16, "depth": 1}}
CE_KD = [{"name": "ce"}, {"name": "kd"}]


def small_digits(n: int) -> tuple[TensorData, TensorData]:
    """The first `n` of scikit-learn's digits (1 x 8 x 8 in [0, 1]), split 75 / 25."""
    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32)[:, None] / 16.0
    data = TensorData(x, torch.tensor(d.target[:n]), [str(i) for i in range(10)])
    return split(data, 0.25, seed=0)


def tiny_teacher(seed: int = 7, hidden: int = 32, classes: int = 10) -> nn.Module:
    """A small MLP teacher of 8 x 8 digits (untrained, seeded)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def scheme_config(
    name: str,
    params: dict[str, Any],
    /,
    *,
    epochs: int = 1,
    checkpoint_every: int = 2,
    **fields: Any,
) -> RunConfig:
    """A run config of scheme `name` for the engine tests (its files are not read: the tests hand the
    models and data to `train` themselves): a tiny resnet student and CE unless `fields`, which
    replace top-level entries, say otherwise."""
    return RunConfig.model_validate(
        {
            "teacher": {"path": "unused.pt2"},
            "dataset": {"path": "unused.npz", "val_fraction": 0.25},
            "student": TINY_RESNET,
            "losses": [{"name": "ce"}],
            "scheme": {"name": name, "params": params},
            "training": {
                "epochs": epochs,
                "batch_size": 30,
                "lr": 0.05,
                "device": "cpu",
                "checkpoint_every": checkpoint_every,
                "export_onnx": False,
            },
            **fields,
        }
    )


class Epochs(Callbacks):
    """Records each epoch's metrics and each step's metric names; stops after `stop_at` checks."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.epochs: list[dict[str, float]] = []
        self.steps: list[set[str]] = []
        self.stop_at, self.checks = stop_at, 0

    def on_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.epochs.append(metrics)

    def on_step(self, report: Any) -> None:
        self.steps.append(set(report.metrics))

    def should_stop(self) -> bool:
        self.checks += 1
        return self.stop_at is not None and self.checks > self.stop_at
