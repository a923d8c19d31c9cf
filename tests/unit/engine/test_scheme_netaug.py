"""The `netaug` scheme: the tiny student trains inside wider models that share its weights (its
tensors are their leading slices), one augmented width sampled per step with weight alpha; the
export is the tiny model and its weights are the shared slice; a resume ends where an
uninterrupted run does."""

from __future__ import annotations

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
from tests.unit.engine.support import (
    CE_KD,
    Epochs,
    scheme_config,
    small_digits,
    tiny_teacher,
)
from worker.engine.export import export_pt2
from worker.engine.schemes import build_scheme
from worker.engine.schemes.netaug import NetAugScheme, parse_widths, wider
from worker.engine.students import build_student
from worker.engine.tasks.classification.data import TensorData
from worker.engine.trainer import Cancelled, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[TensorData, TensorData]:
    return small_digits(200)


def _config(params: dict[str, Any] | None = None, **fields: Any) -> RunConfig:
    return scheme_config("netaug", params or {}, **{"losses": CE_KD, **fields})


def _copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def _leading(shape: torch.Size) -> tuple[slice, ...]:
    return tuple(slice(0, int(s)) for s in shape)


# ----------------------------------------------------------------------------------------------
# the run config


def test_the_config_takes_the_scheme_with_its_widths_and_alpha() -> None:
    config = _config({"widths": "2, 3", "alpha": 0.5})
    assert config.resolved_scheme_params() == {"widths": "2, 3", "alpha": 0.5}
    assert RunConfig.from_yaml(config.to_yaml()) == config
    assert _config().resolved_scheme_params() == {"widths": "1.5,2,3", "alpha": 1.0}
    assert parse_widths("3, 1.5;2") == [1.5, 2.0, 3.0]


@pytest.mark.parametrize(
    ("params", "fields", "message"),
    [
        ({"widths": "1,2"}, {}, r"widths must be multiples of the student's width in \(1, 8\]"),
        ({"widths": "two"}, {}, "separated by commas"),
        ({"alpha": -1}, {}, r"'alpha' of 'netaug' must be in \[0.0, 100.0\]"),
        ({}, {"student": {"architecture": "mobilenetv2"}}, "'mobilenetv2' \\(mobilenetv2\\)"),
        (
            {},
            {"student": {"source": "model", "model": {"path": "student.pt2"}}},
            "an uploaded student \\(source 'model'\\) is a fixed graph that cannot be widened",
        ),
        ({}, {"student": {"architecture": "wrn_16_1"}}, "at width 1 has no shortcut"),
        (
            {},
            {"losses": [{"name": "ce"}, {"name": "grad_match"}]},
            r"\['grad_match'\] read the student model itself",
        ),
    ],
)
def test_configs_the_scheme_cannot_run_are_refused_saying_why(
    params: dict[str, Any], fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _config(params, **fields)


# ----------------------------------------------------------------------------------------------
# the wider twins and the shared weights


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("resnet8", {"width": 0.25}),
        ("resnet", {"depth": 8, "width": 0.5}),
        ("resnet8x4", {}),
        ("wrn_16_2", {}),
        ("wrn", {"depth": 10, "width": 0.75}),
        ("vgg8", {"width": 0.125}),
        ("mlp", {"hidden": 16, "depth": 2}),
    ],
)
def test_a_zoo_student_widens_into_a_model_that_holds_it_as_its_first_channels(
    arch: str, kwargs: dict[str, Any]
) -> None:
    student = build_student(arch, (1, 8, 8), 10, **kwargs)
    big = wider(student, 2.0)
    ours, theirs = dict(student.named_parameters()), dict(big.named_parameters())
    assert ours.keys() == theirs.keys()
    assert all(
        all(b >= a for a, b in zip(p.shape, theirs[k].shape, strict=True)) for k, p in ours.items()
    )
    assert sum(p.numel() for p in theirs.values()) > 2 * sum(p.numel() for p in ours.values())


def test_a_student_without_a_zoo_architecture_is_refused_saying_what_works() -> None:
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match="this student has none .* use a zoo or derived student"):
        wider(plain, 2.0)
    scheme = build_scheme("netaug")
    shuffle = build_student("shufflenetv2", (1, 8, 8), 10, width=0.5)
    with pytest.raises(ValueError, match="cannot be widened"):
        scheme.setup(tiny_teacher(), shuffle, nn.ModuleList())
    # WRN-16-1's first stage has no shortcut convolution (16 -> 16), a wider one has
    wrn = build_student("wrn_16_1", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="does not hold it as its first channels"):
        scheme.setup(tiny_teacher(), wrn, nn.ModuleList())


def test_the_augmented_model_runs_on_the_students_own_tensors(
    digits: tuple[TensorData, TensorData],
) -> None:
    torch.manual_seed(0)
    student = build_student("resnet8", (1, 8, 8), 10, width=0.25)
    scheme = NetAugScheme(widths="2,3")
    scheme.setup(tiny_teacher(), student, nn.ModuleList())
    x = digits[0].x[:8]
    # the widest model, materialised from the shared weights, computes what the step computes
    for index in (0, 1):
        model = wider(student, scheme.widths[index])
        model.load_state_dict({**model.state_dict(), **scheme.augmented_state_dict(index)})
        scheme.augmented[index].eval()
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(scheme.augmented_forward(index, x), model(x))
        shared = scheme.augmented_state_dict(index)
        for k, p in student.named_parameters():
            assert torch.equal(shared[k][_leading(p.shape)], p)
    scheme.augmented.train()
    # the augmented loss's gradient reaches the student's own parameters (the same tensors)
    student.zero_grad()
    scheme.augmented_forward(1, x).square().mean().backward()
    grads = {k: p.grad for k, p in student.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    # and a change to the student is a change to every augmented width
    with torch.no_grad():
        before = scheme.augmented_forward(0, x)
        student.conv1.weight.add_(0.5)
        assert not torch.allclose(before, scheme.augmented_forward(0, x))


# ----------------------------------------------------------------------------------------------
# training: the export is the shared slice, and the augmented term changed it


class Spy(NetAugScheme):
    """Records the metric keys each step combined."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.keys: list[set[str]] = []

    def combine(self, values: dict[str, Tensor], view: Any) -> dict[str, Tensor]:
        out = super().combine(values, view)
        self.keys.append(set(out))
        return out


def test_the_trained_student_is_the_shared_slice_and_the_augmented_term_moved_it(
    digits: tuple[TensorData, TensorData],
) -> None:
    train_data, val_data = digits
    config = _config({"widths": "1.5,2,3", "alpha": 1.0})
    scheme = Spy(widths="1.5,2,3", alpha=1.0)
    rec = Epochs()
    result = train(config, tiny_teacher(), train_data, val_data, scheme=scheme, callbacks=rec)
    assert result.student is scheme.student and result.students == [scheme.student]
    # every step added one sampled width's configured logit losses, weighted by alpha
    assert len(scheme.sampled) == result.steps and len(set(scheme.sampled)) > 1
    assert all({"ce", "kd", "aug/ce", "aug/kd"} <= keys for keys in scheme.keys)
    assert {"loss/aug/ce", "loss/aug/kd"} <= rec.steps[-1]
    # the student (what the pipeline exports) is exactly the leading slice of every width
    exported = result.student.state_dict()
    for index in range(len(scheme.widths)):
        shared = scheme.augmented_state_dict(index)
        for k, p in result.student.named_parameters():
            assert torch.equal(shared[k][_leading(p.shape)], exported[k])
    # the export holds the tiny model only
    tiny = build_student("resnet8", (1, 8, 8), 10, width=0.25).state_dict()
    assert {k: v.shape for k, v in exported.items()} == {k: v.shape for k, v in tiny.items()}
    # the same run without the augmented term ends elsewhere: the wide models trained it
    plain = train(_config({"alpha": 0.0}), tiny_teacher(), train_data, val_data)
    moved = [k for k, v in plain.student.state_dict().items() if not torch.equal(v, exported[k])]
    assert "conv1.weight" in moved and "fc.weight" in moved
    # the widest model's own channels trained too
    fresh = Spy(widths="1.5,2,3")
    torch.manual_seed(config.seed)
    fresh.setup(
        tiny_teacher(), build_student("resnet8", (1, 8, 8), 10, width=0.25), nn.ModuleList()
    )
    assert not torch.equal(
        fresh.augmented[-1].fc.weight, scheme.augmented[-1].fc.weight.detach().cpu()
    )


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(
    digits: tuple[TensorData, TensorData], tmp_path: Path
) -> None:
    train_data, val_data = digits
    config = _config({"widths": "2,3"})
    full_scheme = NetAugScheme(widths="2,3")
    full = train(config, tiny_teacher(), train_data, val_data, scheme=full_scheme)
    with pytest.raises(Cancelled):
        train(
            config,
            tiny_teacher(),
            train_data,
            val_data,
            callbacks=Epochs(stop_at=3),
            checkpoint_path=tmp_path / "c.ckpt",
        )
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert ckpt["step"] == 3 and len(ckpt["augmented"]) == 2 and "sampler" in ckpt
    resumed_scheme = NetAugScheme(widths="2,3")
    resumed = train(
        config,
        tiny_teacher(),
        train_data,
        val_data,
        scheme=resumed_scheme,
        checkpoint_path=tmp_path / "c.ckpt",
    )
    assert resumed_scheme.sampled == full_scheme.sampled[3:]  # the same widths, every step once
    a, b = full.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for m1, m2 in zip(full_scheme.augmented, resumed_scheme.augmented, strict=True):
        s1, s2 = m1.state_dict(), m2.state_dict()
        assert all(torch.equal(s1[k], s2[k]) for k in s1)
    fewer = _config({"widths": "2"})
    with pytest.raises(ValueError, match="holds 2 augmented widths; this run has 1"):
        train(fewer, tiny_teacher(), train_data, val_data, checkpoint_path=tmp_path / "c.ckpt")


# ----------------------------------------------------------------------------------------------
# the CLI: distill-studio train run.yaml


def test_distill_studio_train_runs_netaug_and_exports_the_tiny_model(tmp_path: Path) -> None:
    """`distill-studio train run.yaml` (no server) with `scheme: {name: netaug, ...}`."""
    from typer.testing import CliRunner

    from cli.main import app

    d = load_digits()
    np.savez(tmp_path / "data.npz", x=(d.images[:200, None] / 16.0).astype("float32"),
             y=d.target[:200])  # fmt: skip
    export_pt2(tiny_teacher().eval(), (1, 8, 8), tmp_path / "teacher.pt2")
    doc = yaml.safe_load(_config({"widths": "2,3", "alpha": 0.5}).to_yaml())
    doc["teacher"], doc["dataset"] = {"path": "teacher.pt2"}, {"path": "data.npz"}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["train", str(tmp_path / "run.yaml"), "--out", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert 0.0 <= summary["student_top1"] <= 1.0 and "peers" not in summary
    weights = load_file(out / "student.safetensors")
    tiny = build_student("resnet8", (1, 8, 8), 10, width=0.25).state_dict()
    assert {k: tuple(v.shape) for k, v in weights.items()} == {
        k: tuple(v.shape) for k, v in tiny.items()
    }
    saved = RunConfig.from_yaml((out / "run.yaml").read_text())
    assert saved.scheme == "netaug" and saved.scheme_params == {"widths": "2,3", "alpha": 0.5}
