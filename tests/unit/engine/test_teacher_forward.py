"""Teacher forwards that skip work no active loss needs (issue 14 item 5): when only feature
losses need the teacher, the offline scheme's teacher forward stops after the last tapped layer
(plain and `.pt2` teachers) and the run computes the same losses as with the whole forward."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.config import RunConfig
from worker.engine.loading import load_model
from worker.engine.schemes.offline import OfflineScheme
from worker.engine.taps import FeatureTaps
from worker.engine.trainer import Callbacks, train

from .support import scheme_config, small_digits


def _teacher() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def _student() -> nn.Sequential:
    torch.manual_seed(4)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


class _Losses(Callbacks):
    def __init__(self) -> None:
        self.losses: list[dict[str, float]] = []

    def on_step(self, report: Any) -> None:
        self.losses.append(report.metrics)


def _count(module: nn.Module) -> list[int]:
    """How many batches of 30 (the training steps') `module` ran on."""
    calls = [0]

    def hook(_m: nn.Module, args: Any, _out: Any) -> None:
        calls[0] += len(args[0]) == 30

    module.register_forward_hook(hook)
    return calls


def _config(losses: list[dict[str, Any]]) -> RunConfig:
    pairs = [{"teacher": "1", "student": "1"}]
    config = scheme_config("offline", {}, losses=losses, layer_pairs=pairs)
    data = config.model_dump()
    data["training"]["log_every"] = 1
    return RunConfig.model_validate(data)


def test_a_feature_loss_alone_stops_the_teacher_after_its_last_tapped_layer() -> None:
    train_data, val_data = small_digits(120)
    runs = []
    for losses in (
        [{"name": "ce"}, {"name": "fitnets"}],
        [{"name": "ce"}, {"name": "fitnets"}, {"name": "kd", "weight": 0.0}],  # reads logits
    ):
        teacher, seen = _teacher(), _Losses()
        tail, tapped = _count(teacher[5]), _count(teacher[1])
        train(_config(losses), teacher, train_data, val_data, student=_student(), callbacks=seen)
        runs.append((seen.losses, tail[0], tapped[0]))
    (cut, cut_tail, cut_tapped), (whole, whole_tail, whole_tapped) = runs
    assert cut_tapped == whole_tapped == 3  # 91 samples: 3 batches of 30 and one of 1
    assert cut_tail == 0 and whole_tail == 3  # the head ran only where kd reads the logits
    assert [s["loss"] for s in cut] == [s["loss"] for s in whole]
    assert [s["loss/fitnets"] for s in cut] == [s["loss/fitnets"] for s in whole]


def test_an_exported_teacher_stops_early_too_with_the_same_features(tmp_path: Path) -> None:
    x = torch.randn(30, 1, 8, 8)
    program = torch.export.export(_teacher().eval(), (x,))
    torch.export.save(program, tmp_path / "t.pt2")
    teacher = load_model(tmp_path / "t.pt2", "pt2").module
    scheme = OfflineScheme()
    scheme.setup(teacher, _student(), nn.ModuleList())
    modules = dict(teacher.named_modules())
    head = _count(modules["5"])
    with FeatureTaps(teacher, [("3", "output")]) as taps:
        whole_logits, whole = scheme.teacher_outputs(x, taps, True, contextlib.nullcontext)
        assert head[0] == 1
        feats: list[Tensor] = scheme.teacher_features(x, taps, contextlib.nullcontext)
    assert head[0] == 1  # the early stop: the head did not run again
    assert whole_logits.shape == (30, 10)
    assert len(feats) == 1 and torch.equal(feats[0], whole[0])
