"""The `multi_teacher` scheme: 2 to N frozen teachers, weighted per sample (fixed, or CA-MKD's
confidence), each with its own layer pairs; trained, checkpointed, exported and evaluated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from pydantic import ValidationError
from sklearn.datasets import load_digits
from torch import Tensor, nn

from core.config import RunConfig
from tests.unit.engine.support import (
    TINY_MLP,
    Epochs,
    scheme_config,
    small_digits,
    tiny_teacher,
)
from worker.engine.export import export_pt2
from worker.engine.pipeline import IncompatibleDataError, run_distillation
from worker.engine.schemes import StepView, build_scheme
from worker.engine.schemes.multi_teacher import MultiTeacherScheme, teacher_weights, weighted_kd
from worker.engine.tasks.classification.data import TensorData
from worker.engine.trainer import Cancelled, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[TensorData, TensorData]:
    return small_digits(240)


def _config(**fields: Any) -> RunConfig:
    extra = [{"path": "other.pt2", "weight": 1.0}]
    return scheme_config(
        "multi_teacher",
        {"weighting": "confidence"},
        epochs=2,
        checkpoint_every=4,
        **{"student": TINY_MLP, "teachers": extra, **fields},
    )


def _no_autocast() -> Any:
    import contextlib

    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# the run config


def test_the_config_takes_teachers_with_weights_and_pairs_and_round_trips() -> None:
    config = _config(
        teachers=[
            {"path": "b.pt2", "weight": 2.0, "pairs": [{"student": "layers.0", "teacher": "1"}]},
            {"path": "c.pt2"},
        ]
    )
    assert [t.weight for t in config.teachers] == [2.0, 1.0]
    assert config.teachers[0].pairs[0].teacher == "1"
    assert RunConfig.from_yaml(config.to_yaml()) == config
    assert "teachers" not in yaml.safe_load(_config(teachers=[], scheme="offline").to_yaml())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"teachers": []}, "needs 2 to 8 teachers"),
        ({"teachers": [{"path": f"{i}.pt2"} for i in range(8)]}, "needs 2 to 8 teachers"),
        ({"scheme": "offline"}, "use scheme 'multi_teacher' or drop teachers"),
        ({"losses": [{"name": "ce"}, {"name": "kd"}]}, r"remove \['kd'\] from losses"),
        ({"teachers": [{"path": "b.pt2", "weight": -1}]}, r"must be in \[0.0, 100.0\], got -1"),
        ({"teachers": [{"path": "b.pt2", "model_id": 3}]}, "exactly one of"),
    ],
)
def test_configs_the_scheme_cannot_run_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _config(**fields)


# ----------------------------------------------------------------------------------------------
# the weights and the terms


def test_confidence_weights_sum_to_one_per_sample_and_favour_the_confident_teacher() -> None:
    y = torch.tensor([0, 1, 2, 3])
    sure = F.one_hot(y, 5).float() * 8.0  # teacher 0: confident and right on every sample
    unsure = torch.zeros(4, 5)  # teacher 1: uniform
    wrong = F.one_hot((y + 1) % 5, 5).float() * 8.0  # teacher 2: confident and wrong
    w = teacher_weights([unsure, sure, wrong], y)
    assert w.shape == (4, 3)
    torch.testing.assert_close(w.sum(1), torch.ones(4))
    assert bool((w[:, 1] > w[:, 0]).all()) and bool((w[:, 0] > w[:, 2]).all())
    # CA-MKD: softmax over teachers of -CE
    ce = torch.stack([F.cross_entropy(z, y, reduction="none") for z in (unsure, sure, wrong)], 1)
    torch.testing.assert_close(w, torch.softmax(-ce, 1))
    # per sample: teacher 1 right on sample 0 only, teacher 0 on the others
    mixed = [sure.clone(), sure.clone()]
    mixed[0][0], mixed[1][1:] = wrong[0], wrong[1:]
    w = teacher_weights(mixed, y)
    assert w[0, 1] > 0.99 and bool((w[1:, 0] > 0.99).all())
    fixed = teacher_weights([sure, unsure, wrong], y, torch.tensor([2.0, 1.0, 1.0]))
    torch.testing.assert_close(fixed, torch.tensor([[0.5, 0.25, 0.25]]).expand(4, 3))


def test_the_kd_term_is_the_weighted_sum_of_each_teachers_kl() -> None:
    torch.manual_seed(0)
    s, t1, t2 = torch.randn(6, 10), torch.randn(6, 10), torch.randn(6, 10)
    w = torch.softmax(torch.randn(6, 2), 1)
    t = 3.0
    q = F.softmax(s / t, 1)

    def kl(z: Tensor) -> Tensor:
        p = F.softmax(z / t, 1)
        return (p * (p.log() - q.log())).sum(1)

    expected = (w[:, 0] * kl(t1) + w[:, 1] * kl(t2)).mean() * t * t
    torch.testing.assert_close(weighted_kd(s, [t1, t2], w, t), expected)


def _scheme(
    others: list[nn.Module], pairs: list[list[Any]] | None = None, **params: Any
) -> tuple[MultiTeacherScheme, nn.Module]:
    from worker.engine.students import build_student

    torch.manual_seed(0)
    student = build_student("mlp", (1, 8, 8), 10, hidden=16, depth=1)
    scheme = build_scheme("multi_teacher", **params)
    assert isinstance(scheme, MultiTeacherScheme)
    scheme.bind(others, [1.0] * len(others), pairs or [[] for _ in others], torch.rand(2, 1, 8, 8))
    scheme.setup(tiny_teacher(7), student, nn.ModuleList())
    return scheme, student


def _grads(scheme: MultiTeacherScheme, student: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
    """One step's gradients of the student, as the trainer computes them."""
    student.zero_grad(set_to_none=True)
    t_logits, _ = scheme.teacher_outputs(x, None, False, _no_autocast)
    s_logits = student(x)
    view = StepView(x, y, s_logits, t_logits, 0, _no_autocast)
    terms = scheme.combine({"ce": F.cross_entropy(s_logits, y)}, view)
    torch.stack(list(terms.values())).sum().backward()
    return [p.grad.clone() for p in student.parameters() if p.grad is not None]


@pytest.mark.parametrize("weighting", ["confidence", "fixed"])
def test_every_teachers_output_reaches_the_students_gradient(weighting: str) -> None:
    """Swapping any one teacher changes the student's gradients: none is ignored."""
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    base, student = _scheme([tiny_teacher(8), tiny_teacher(9)], weighting=weighting)
    reference = _grads(base, student, x, y)
    assert len(reference) == len(list(student.parameters()))
    swapped_1, s1 = _scheme([tiny_teacher(18), tiny_teacher(9)], weighting=weighting)
    swapped_2, s2 = _scheme([tiny_teacher(8), tiny_teacher(19)], weighting=weighting)
    for scheme, model in ((swapped_1, s1), (swapped_2, s2)):
        grads = _grads(scheme, model, x, y)
        assert any(not torch.allclose(a, b) for a, b in zip(reference, grads, strict=True))
    swapped_0, s0 = _scheme([tiny_teacher(8), tiny_teacher(9)], weighting=weighting)
    swapped_0.teacher = tiny_teacher(17)  # the run's own teacher, too
    grads = _grads(swapped_0, s0, x, y)
    assert any(not torch.allclose(a, b) for a, b in zip(reference, grads, strict=True))
    assert all(p.grad is None for t in base.others for p in t.parameters())  # frozen


def test_a_teachers_pairs_give_a_hint_term_through_a_connector() -> None:
    """Teacher 1's pair (its 32-wide hidden layer vs the student's 16-wide one) gets a linear
    connector (linear + BN) that trains, and its hint moves the student's tapped layer."""
    pair = [("layers.0", "1", "output")]
    scheme, student = _scheme([tiny_teacher(8)], [pair])
    connector = scheme.connectors[0][0]
    assert connector.proj.weight.shape == (32, 16)
    trained = {id(p) for g in scheme.param_groups() for p in g["params"]}
    assert all(id(p) in trained for p in scheme.connectors.parameters())
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    scheme.teacher_outputs(x, None, False, _no_autocast)
    s_logits = student(x)
    terms = scheme.combine({}, StepView(x, y, s_logits, s_logits, 0, _no_autocast))
    assert set(terms) == {"mkd", "hint/t1"} and terms["hint/t1"] > 0
    terms["hint/t1"].backward()
    assert connector.proj.weight.grad is not None
    first = dict(student.named_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in first.items() if "0" in n)
    student(x)  # the student's taps are off between steps (validation, export)
    assert all(not taps._handles for taps in scheme._s_taps)


# ----------------------------------------------------------------------------------------------
# training, checkpoints


def _bound(config: RunConfig, data: TensorData, others: list[nn.Module]) -> MultiTeacherScheme:
    scheme = build_scheme(config.scheme, **config.scheme_params)
    assert isinstance(scheme, MultiTeacherScheme)
    pairs = [[(p.student, p.teacher, p.tap) for p in t.pairs] for t in config.teachers]
    return scheme.bind(others, [t.weight for t in config.teachers], pairs, data.x[:2])


def test_training_logs_the_terms_and_a_resumed_run_ends_where_an_uninterrupted_one_does(
    digits: tuple[TensorData, TensorData], tmp_path: Path
) -> None:
    train_data, val_data = digits
    pair = {"student": "layers.0", "teacher": "1"}
    config = _config(teachers=[{"path": "b.pt2", "pairs": [pair]}, {"path": "c.pt2"}])

    def run(**kw: Any) -> Any:
        scheme = _bound(config, train_data, [tiny_teacher(8), tiny_teacher(9, hidden=24)])
        return train(config, tiny_teacher(), train_data, val_data, scheme=scheme, **kw), scheme

    rec = Epochs()
    (full, full_scheme) = run(callbacks=rec)
    assert {"loss/ce", "loss/mkd", "loss/hint/t1"} <= rec.steps[-1]
    assert "loss/hint/t2" not in rec.steps[-1]  # teacher 2 has no pairs
    with pytest.raises(Cancelled):
        run(callbacks=Epochs(stop_at=5), checkpoint_path=tmp_path / "c.ckpt")
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert ckpt["step"] == 5 and "connectors" in ckpt
    resumed, resumed_scheme = run(checkpoint_path=tmp_path / "c.ckpt")
    a, b = full.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = full_scheme.connectors.state_dict(), resumed_scheme.connectors.state_dict()
    assert a and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# the whole run: each teacher's accuracy next to the student's; teachers that differ refused


def _files(tmp_path: Path, n: int = 300) -> None:
    d = load_digits()
    np.savez(tmp_path / "data.npz", x=(d.images[:n, None] / 16.0).astype("float32"),
             y=d.target[:n])  # fmt: skip
    export_pt2(tiny_teacher().eval(), (1, 8, 8), tmp_path / "teacher.pt2")
    export_pt2(tiny_teacher(8, hidden=24).eval(), (1, 8, 8), tmp_path / "other.pt2")
    export_pt2(tiny_teacher(9, classes=7).eval(), (1, 8, 8), tmp_path / "seven.pt2")


def test_a_whole_run_evaluates_each_teacher_next_to_the_student(tmp_path: Path) -> None:
    _files(tmp_path)
    config = _config(
        teacher={"path": str(tmp_path / "teacher.pt2")},
        teachers=[{"path": str(tmp_path / "other.pt2"), "weight": 2.0}],
        dataset={"path": str(tmp_path / "data.npz"), "val_fraction": 0.25},
        scheme={"name": "multi_teacher", "params": {"weighting": "fixed"}},
        training={"epochs": 1, "batch_size": 32, "lr": 0.05, "device": "cpu", "export_onnx": False},
    )
    out = tmp_path / "out"
    summary = run_distillation(config, tmp_path / "teacher.pt2", tmp_path / "data.npz", out)
    report = json.loads((out / "evaluation.json").read_text())
    assert [t["teacher"] for t in report["teachers"]] == [0, 1]
    assert [t["weight"] for t in report["teachers"]] == [1.0, 2.0]
    assert report["teachers"][0]["teacher_top1"] == report["teacher_top1"]
    assert 0.0 <= report["teachers"][1]["teacher_top1"] <= 1.0
    assert report["teachers"][1]["teacher_top1"] != report["teacher_top1"]  # its own forward
    assert 0.0 <= summary["student_top1"] <= 1.0
    assert yaml.safe_load((out / "run.yaml").read_text())["teachers"][0]["weight"] == 2.0


def test_a_teacher_of_other_classes_is_refused_saying_which_and_how(tmp_path: Path) -> None:
    _files(tmp_path, 100)
    config = _config(
        teacher={"path": str(tmp_path / "teacher.pt2")},
        teachers=[{"path": str(tmp_path / "other.pt2")}, {"path": str(tmp_path / "seven.pt2")}],
        dataset={"path": str(tmp_path / "data.npz"), "val_fraction": 0.25},
    )
    with pytest.raises(IncompatibleDataError, match=r"teachers\[1\] outputs \[7\].*\[10\]"):
        run_distillation(config, tmp_path / "teacher.pt2", tmp_path / "data.npz", tmp_path / "o")


def test_distill_studio_train_runs_several_teachers(tmp_path: Path) -> None:
    """`distill-studio train run.yaml` (no server) with teachers' paths relative to the file."""
    from typer.testing import CliRunner

    from cli.main import app

    _files(tmp_path, 200)
    doc = yaml.safe_load(_config().to_yaml())
    doc["teacher"], doc["dataset"] = {"path": "teacher.pt2"}, {"path": "data.npz"}
    doc["teachers"] = [{"path": "other.pt2", "pairs": [{"student": "layers.0", "teacher": "1"}]}]
    doc["training"]["epochs"] = 1
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["train", str(tmp_path / "run.yaml"), "--out", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [t["teacher"] for t in summary["teachers"]] == [0, 1]
    assert (out / "student.pt2").is_file()
