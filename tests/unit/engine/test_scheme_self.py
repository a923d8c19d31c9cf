"""The `self` scheme: born-again generations (each freshly initialised, taught by the one
before, optionally by the ensemble of all before) and deep supervision (auxiliary heads that
learn from the deepest one and are gone from the export)."""

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
from tests.unit.engine.support import (
    CE_KD,
    Epochs,
    scheme_config,
    small_digits,
    tiny_teacher,
)
from worker.engine.export import export_pt2
from worker.engine.loading import load_model
from worker.engine.pipeline import run_distillation
from worker.engine.schemes import StepView, build_scheme
from worker.engine.schemes.online import fresh_copy
from worker.engine.schemes.self_distill import HeadExit, SelfScheme
from worker.engine.tasks.classification.data import TensorData
from worker.engine.trainer import Cancelled, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[TensorData, TensorData]:
    return small_digits(200)


def _config(params: dict[str, Any] | None = None, **fields: Any) -> RunConfig:
    return scheme_config("self", params or {"generations": 2}, **{"losses": CE_KD, **fields})


def _hash(state: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


# ----------------------------------------------------------------------------------------------
# the run config


def test_the_config_takes_both_modes_with_their_parameters() -> None:
    config = _config({"mode": "born_again", "generations": 3, "ensemble_last": True})
    assert config.resolved_scheme_params()["generations"] == 3
    assert RunConfig.from_yaml(config.to_yaml()) == config
    deep = _config({"mode": "deep_supervision", "hint_weight": 0.5})
    assert deep.resolved_scheme_params()["mode"] == "deep_supervision"


@pytest.mark.parametrize(
    ("params", "fields", "message"),
    [
        ({"generations": 6}, {}, r"'generations' of 'self' must be in \[1, 5\]"),
        ({"mode": "ban"}, {}, "must be one of"),
        ({"generations": 2}, {"losses": [{"name": "ce"}]}, "add a loss that reads the teacher"),
        (
            {"generations": 2},
            {"losses": [{"name": "ce"}, {"name": "kd"}, {"name": "grad_match"}]},
            r"\['grad_match'\] read the run's teacher model itself",
        ),
        (
            {"mode": "deep_supervision"},
            {"student": {"architecture": "mlp"}},
            "needs a student with at least 2 stages; 'mlp'",
        ),
        (
            {"generations": 2},
            {
                "layer_pairs": [{"teacher": "1", "student": "layer1"}],
                "losses": [{"name": "ce"}, {"name": "fitnets"}],
            },
            "'fitnets' matches features, which scheme 'self'",
        ),
    ],
)
def test_configs_the_scheme_cannot_run_are_refused_saying_why(
    params: dict[str, Any], fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _config(params, **fields)


# ----------------------------------------------------------------------------------------------
# born again


class Spy(SelfScheme):
    """Records each generation's weights at its start and end, and what taught each step."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.starts: list[dict[str, Tensor]] = []
        self.ends: list[dict[str, Tensor]] = []
        self.taught: list[tuple[int, list[str], Tensor, Tensor]] = []

    def setup(self, teacher: nn.Module, student: nn.Module, losses: nn.ModuleList) -> None:
        super().setup(teacher, student, losses)
        self.starts.append(_copy(student.state_dict()))

    def start_round(self, index: int) -> None:
        self.ends.append(_copy(self.student.state_dict()))
        super().start_round(index)
        self.starts.append(_copy(self.student.state_dict()))

    def combine(self, values: dict[str, Tensor], view: StepView) -> dict[str, Tensor]:
        teachers = [_hash(t.state_dict()) for t in self.teachers_now()]
        self.taught.append((self.generation, teachers, view.inputs, view.teacher_logits))
        return super().combine(values, view)


def test_each_generation_starts_fresh_and_is_taught_by_the_one_before(
    digits: tuple[TensorData, TensorData],
) -> None:
    train_data, val_data = digits
    scheme = Spy(mode="born_again", generations=3)
    teacher = tiny_teacher()
    result = train(_config({"generations": 3}), teacher, train_data, val_data, scheme=scheme)
    per_gen = result.steps // 3
    assert len(result.earlier) == 2 and result.student is scheme.student
    finals = [*scheme.ends, _copy(result.student.state_dict())]
    for k in (1, 2):
        start = scheme.starts[k]
        # fresh: differs from the previous generation's initial and final weights ...
        for other in (scheme.starts[k - 1], finals[k - 1]):
            assert not torch.equal(start["conv1.weight"], other["conv1.weight"])
            assert not torch.equal(start["fc.weight"], other["fc.weight"])
        # ... and is the zoo's initialisation under the generation's own seed
        zoo = fresh_copy(result.student, scheme.generation_seed(k)).state_dict()
        assert _hash(zoo) == _hash(start)
        # the frozen generation k holds exactly generation k's final weights
        assert _hash(result.earlier[k - 1].state_dict()) == _hash(finals[k - 1])
        assert not any(p.requires_grad for p in result.earlier[k - 1].parameters())
    # every step of generation k+1 was taught by generation k's final weights alone
    by_gen: dict[int, list[Any]] = {}
    for gen, teachers, x, t_logits in scheme.taught:
        by_gen.setdefault(gen, []).append((teachers, x, t_logits))
    assert [len(by_gen[g]) for g in (0, 1, 2)] == [per_gen] * 3
    assert all(teachers == [] for teachers, _, _ in by_gen[0])  # the run's teacher
    _, x0, t0 = by_gen[0][0]
    with torch.no_grad():
        torch.testing.assert_close(t0, teacher(x0))
    for gen in (1, 2):
        assert all(teachers == [_hash(finals[gen - 1])] for teachers, _, _ in by_gen[gen])
        _, x, t_logits = by_gen[gen][-1]
        with torch.no_grad():
            torch.testing.assert_close(t_logits, result.earlier[gen - 1](x))
    assert all(p.requires_grad for p in result.student.parameters())


def test_the_last_generation_learns_from_the_ensemble_of_all_earlier_ones(
    digits: tuple[TensorData, TensorData],
) -> None:
    train_data, val_data = digits
    scheme = Spy(mode="born_again", generations=3, ensemble_last=True)
    params = {"generations": 3, "ensemble_last": True}
    result = train(_config(params), tiny_teacher(), train_data, val_data, scheme=scheme)
    elders = result.earlier
    hashes = [_hash(e.state_dict()) for e in elders]
    second = [t for gen, t, _, _ in scheme.taught if gen == 1]
    last = [(t, x, z) for gen, t, x, z in scheme.taught if gen == 2]
    assert second and all(t == hashes[:1] for t in second)  # not the last: the one before
    assert last and all(t == hashes for t, _, _ in last)  # the last: all earlier ones
    _, x, z = last[-1]
    with torch.no_grad():
        mean = torch.stack([elders[0](x), elders[1](x)]).mean(0)
        torch.testing.assert_close(z, mean)
        assert not torch.allclose(z, elders[1](x))


def test_a_resume_in_a_later_generation_ends_where_an_uninterrupted_run_does(
    digits: tuple[TensorData, TensorData], tmp_path: Path
) -> None:
    train_data, val_data = digits
    config = _config({"generations": 3, "ensemble_last": True})
    full = train(config, tiny_teacher(), train_data, val_data)
    per_gen = full.steps // 3
    stop = per_gen + 3  # mid generation 2
    with pytest.raises(Cancelled):
        train(config, tiny_teacher(), train_data, val_data, callbacks=Epochs(stop_at=stop),
              checkpoint_path=tmp_path / "c.ckpt")  # fmt: skip
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert ckpt["generation"] == 1 and len(ckpt["generations"]) == 1
    resumed = train(
        config, tiny_teacher(), train_data, val_data, checkpoint_path=tmp_path / "c.ckpt"
    )
    assert resumed.steps == full.steps
    for a, b in zip([*full.earlier, full.student], [*resumed.earlier, resumed.student],
                    strict=True):  # fmt: skip
        assert _hash(a.state_dict()) == _hash(b.state_dict())
    fewer = _config({"generations": 2})
    with pytest.raises(ValueError, match="does not fit|steps but this"):
        train(fewer, tiny_teacher(), train_data, val_data, checkpoint_path=tmp_path / "c.ckpt")


def test_a_resume_right_at_a_generation_boundary_does_not_skip_or_repeat_one(
    digits: tuple[TensorData, TensorData], tmp_path: Path
) -> None:
    train_data, val_data = digits
    config = _config({"generations": 2})
    full = train(config, tiny_teacher(), train_data, val_data)
    per_gen = full.steps // 2
    # the first check of generation 2 comes right after its start_round
    with pytest.raises(Cancelled):
        train(config, tiny_teacher(), train_data, val_data, callbacks=Epochs(stop_at=per_gen),
              checkpoint_path=tmp_path / "c.ckpt")  # fmt: skip
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert (ckpt["step"], ckpt["generation"], len(ckpt["generations"])) == (per_gen, 1, 1)
    resumed = train(
        config, tiny_teacher(), train_data, val_data, checkpoint_path=tmp_path / "c.ckpt"
    )
    assert len(resumed.earlier) == 1
    assert _hash(resumed.student.state_dict()) == _hash(full.student.state_dict())
    assert _hash(resumed.earlier[0].state_dict()) == _hash(full.earlier[0].state_dict())


def test_a_student_that_cannot_be_reinitialised_is_refused_before_the_first_step() -> None:
    scheme = build_scheme("self", generations=2)
    frozen_shape = nn.Sequential(nn.Flatten(), nn.ReLU())  # nothing to re-initialise
    with pytest.raises(ValueError, match="no later generation could start fresh"):
        scheme.setup(tiny_teacher(), frozen_shape, nn.ModuleList())
    build_scheme("self", generations=1).setup(tiny_teacher(), frozen_shape, nn.ModuleList())
    with pytest.raises(ValueError, match="needs a zoo or derived student"):
        build_scheme("self", mode="deep_supervision").setup(
            tiny_teacher(), tiny_teacher(), nn.ModuleList()
        )


# ----------------------------------------------------------------------------------------------
# deep supervision


def _ds_scheme() -> tuple[SelfScheme, nn.Module]:
    from worker.engine.students import build_student

    torch.manual_seed(0)
    student = build_student("resnet8", (1, 8, 8), 10, width=0.25)
    scheme = build_scheme("self", mode="deep_supervision")
    assert isinstance(scheme, SelfScheme)
    scheme.setup(tiny_teacher(), student, nn.ModuleList())
    return scheme, student


def test_heads_sit_at_the_students_stage_ends_and_learn_from_the_deepest() -> None:
    scheme, student = _ds_scheme()
    assert scheme.ends == ["layer1", "layer2", "layer3"]  # resnet8's three stages
    assert len(scheme.heads) == 2
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    t_logits, _ = scheme.teacher_outputs(x, None, True, _no_autocast)
    logits = student(x)
    view = StepView(x, y, logits, t_logits, 0, _no_autocast, [logits])
    terms = scheme.combine({}, view)
    assert set(terms) == {f"head{i}/{k}" for i in (0, 1) for k in ("ce", "kd", "hint")}
    assert all(torch.isfinite(v) and v > 0 for v in terms.values())
    torch.stack(list(terms.values())).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in scheme.heads.parameters())
    # the heads' terms reach the shallow stages, never the deepest head (its output is a target)
    assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0
    assert student.fc.weight.grad is None
    # the taps are gone after the step: a plain forward leaves nothing hooked
    assert scheme._taps is None
    assert all(not m._forward_hooks for m in student.modules())


def _no_autocast() -> Any:
    import contextlib

    return contextlib.nullcontext()


def test_deep_supervision_trains_heads_and_resumes_exactly(
    digits: tuple[TensorData, TensorData], tmp_path: Path
) -> None:
    train_data, val_data = digits
    config = _config({"mode": "deep_supervision"}, training={
        "epochs": 2, "batch_size": 30, "lr": 0.05, "device": "cpu", "checkpoint_every": 2})  # fmt: skip
    rec = Epochs()

    class Heads(SelfScheme):
        def setup(self, teacher: nn.Module, student: nn.Module, losses: nn.ModuleList) -> None:
            super().setup(teacher, student, losses)
            self.initial = _copy(self.heads.state_dict())

    scheme = Heads(mode="deep_supervision")
    full = train(config, tiny_teacher(), train_data, val_data, callbacks=rec, scheme=scheme)
    assert {"loss/head0/ce", "loss/head1/kd", "loss/head1/hint", "loss/kd"} <= rec.steps[-1]
    heads_top1 = [rec.epochs[-1][f"val/head{i}/top1"] for i in (0, 1)]  # each exit's accuracy
    assert all(0.0 <= v <= 1.0 for v in heads_top1) and "val/head2/top1" not in rec.epochs[-1]
    exit0 = HeadExit(scheme.student, scheme.ends, scheme.heads[0], 0).eval()
    with torch.no_grad():
        by_hand = (exit0(val_data.x).argmax(1) == val_data.y).float().mean().item()
    assert by_hand == pytest.approx(heads_top1[0])
    heads = _copy(scheme.heads.state_dict())
    for key, value in heads.items():  # every head weight moved: the optimizer trains them
        if key.endswith("weight"):
            assert not torch.equal(value, scheme.initial[key]), key
    with pytest.raises(Cancelled):
        train(config, tiny_teacher(), train_data, val_data, callbacks=Epochs(stop_at=3),
              checkpoint_path=tmp_path / "c.ckpt")  # fmt: skip
    again = build_scheme("self", mode="deep_supervision")
    assert isinstance(again, SelfScheme)
    resumed = train(config, tiny_teacher(), train_data, val_data, scheme=again,
                    checkpoint_path=tmp_path / "c.ckpt")  # fmt: skip
    assert _hash(resumed.student.state_dict()) == _hash(full.student.state_dict())
    assert _hash(again.heads.state_dict()) == _hash(heads)


def test_the_export_is_the_trained_backbone_without_heads(tmp_path: Path) -> None:
    d = load_digits()
    x = (d.images[:200, None] / 16.0).astype("float32")
    np.savez(tmp_path / "data.npz", x=x, y=d.target[:200])
    export_pt2(tiny_teacher().eval(), (1, 8, 8), tmp_path / "teacher.pt2")
    config = _config(
        {"mode": "deep_supervision"},
        teacher={"path": str(tmp_path / "teacher.pt2")},
        dataset={"path": str(tmp_path / "data.npz"), "val_fraction": 0.25},
    )
    out = tmp_path / "out"
    summary = run_distillation(config, tmp_path / "teacher.pt2", tmp_path / "data.npz", out)
    saved = load_file(out / summary["artifacts"]["student_safetensors"])
    from worker.engine.students import build_student

    backbone = build_student("resnet8", (1, 8, 8), 10, width=0.25)
    assert set(saved) == set(backbone.state_dict())  # the backbone's keys, no head's
    assert not any("head" in k or "adapter" in k for k in saved)
    backbone.load_state_dict(saved)
    exported = load_model(out / "student.pt2", "pt2").module
    inputs = torch.from_numpy(x)
    with torch.inference_mode():
        torch.testing.assert_close(exported(inputs), backbone.eval()(inputs))
    assert "generations" not in json.loads((out / "evaluation.json").read_text())


# ----------------------------------------------------------------------------------------------
# the whole run: every generation exported and evaluated; the CLI


def test_a_whole_run_exports_and_evaluates_every_generation(tmp_path: Path) -> None:
    d = load_digits()
    x = (d.images[:200, None] / 16.0).astype("float32")
    np.savez(tmp_path / "data.npz", x=x, y=d.target[:200])
    export_pt2(tiny_teacher().eval(), (1, 8, 8), tmp_path / "teacher.pt2")
    config = _config(
        {"generations": 3},
        teacher={"path": str(tmp_path / "teacher.pt2")},
        dataset={"path": str(tmp_path / "data.npz"), "val_fraction": 0.25},
    )
    out = tmp_path / "out"
    summary = run_distillation(config, tmp_path / "teacher.pt2", tmp_path / "data.npz", out)
    arts = summary["artifacts"]
    for k in (1, 2):
        for kind in ("student_safetensors", "student_pt2"):
            assert arts[f"gen{k}_{kind}"] == f"gen{k}_{arts[kind]}"
    assert all((out / name).is_file() for name in arts.values())
    report = json.loads((out / "evaluation.json").read_text())
    assert [g["generation"] for g in report["generations"]] == [1, 2, 3]
    assert report["generations"][-1]["student_top1"] == report["student_top1"]
    inputs = torch.from_numpy(x)
    outputs = []
    for g in report["generations"]:
        name = "student.pt2" if g["generation"] == 3 else f"gen{g['generation']}_student.pt2"
        assert 0.0 <= g["student_top1"] <= 1.0
        with torch.inference_mode():
            outputs.append(load_model(out / name, "pt2").module(inputs))
    assert not torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[1], outputs[2])
    assert report["train_steps"] == 3 * (report["train_steps"] // 3)
    assert yaml.safe_load((out / "run.yaml").read_text())["scheme"]["name"] == "self"


def test_distill_studio_train_runs_born_again_generations(tmp_path: Path) -> None:
    """`distill-studio train run.yaml` (no server) with `scheme: {name: self, ...}`."""
    from typer.testing import CliRunner

    from cli.main import app

    d = load_digits()
    np.savez(tmp_path / "data.npz", x=(d.images[:160, None] / 16.0).astype("float32"),
             y=d.target[:160])  # fmt: skip
    export_pt2(tiny_teacher().eval(), (1, 8, 8), tmp_path / "teacher.pt2")
    doc = yaml.safe_load(_config({"generations": 2, "ensemble_last": True}).to_yaml())
    doc["teacher"], doc["dataset"] = {"path": "teacher.pt2"}, {"path": "data.npz"}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["train", str(tmp_path / "run.yaml"), "--out", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [g["generation"] for g in summary["generations"]] == [1, 2]
    assert {"student.pt2", "gen1_student.pt2", "gen1_student.safetensors"} <= {
        p.name for p in out.iterdir()
    }
    saved = RunConfig.from_yaml((out / "run.yaml").read_text())
    assert saved.scheme_params == {"generations": 2, "ensemble_last": True}
