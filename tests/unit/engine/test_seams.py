"""The Scheme and Task seams: a toy scheme and a toy task, each one class in this file plus one
catalog entry, run a short training (and a whole run) without any change to the trainer,
pipeline, evaluation or export.

- `MutualScheme` also trains a second copy of the student (a peer, as in deep mutual learning):
  its own models, parameter group, step term and checkpoint key;
- `TargetsTask` regresses a target vector per sample (no classes): its own data, batch,
  validation metric (val/mse), evaluation report, dataset reader and scan, and its keys in a
  model inspection.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.catalog.schemes import SCHEMES, SchemeEntry
from core.catalog.tasks import TASKS, TaskEntry
from core.config import DatasetRef, RunConfig
from tests.unit.engine.support import Epochs
from worker.engine import taps
from worker.engine.export import export_pt2
from worker.engine.pipeline import run_distillation
from worker.engine.schemes import StepView, build_scheme
from worker.engine.schemes.offline import OfflineScheme
from worker.engine.tasks import Batch, IncompatibleDataError, Task, build_task, dataset_task
from worker.engine.tasks.classification import ClassificationTask
from worker.engine.trainer import Cancelled, train

pytestmark = pytest.mark.usefixtures("one_thread")


HERE = __name__  # the implementations below are named "tests.unit.engine.test_seams:Class"


# ----------------------------------------------------------------------------------------------
# a toy scheme: the student and a peer copy train together


class MutualScheme(OfflineScheme):
    """Offline distillation plus a peer copy of the student that learns from the student's
    (detached) outputs; the student learns from the peer's too."""

    def setup(self, teacher: nn.Module, student: nn.Module, losses: nn.ModuleList) -> None:
        super().setup(teacher, student, losses)
        self.peer = copy.deepcopy(student)
        with torch.no_grad():
            for p in self.peer.parameters():
                p.add_(0.01 * torch.randn_like(p))  # a different starting point

    def extra_modules(self) -> list[nn.Module]:
        return [self.peer]

    def trained_modules(self) -> list[nn.Module]:
        return [*super().trained_modules(), self.peer]

    def param_groups(self) -> list[dict[str, Any]]:
        groups = super().param_groups()
        own = {id(p) for p in self.peer.parameters()}
        groups[0]["params"] = [p for p in groups[0]["params"] if id(p) not in own]
        return [*groups, {"params": list(self.peer.parameters())}]

    def combine(self, values: dict[str, Tensor], view: StepView) -> dict[str, Tensor]:
        with view.autocast():
            peer = self.peer(view.inputs).float()
        student = view.student_logits.float()
        mutual = F.kl_div(
            F.log_softmax(student, 1), F.softmax(peer.detach(), 1), reduction="batchmean"
        )
        mutual = mutual + F.kl_div(
            F.log_softmax(peer, 1), F.softmax(student.detach(), 1), reduction="batchmean"
        )
        return {**values, "peer": mutual}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "peer": self.peer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.peer.load_state_dict(state["peer"])


# ----------------------------------------------------------------------------------------------
# a toy task: a target vector per sample, validated by mean squared error


@dataclass
class Targets:
    x: Tensor  # [N, D] float inputs
    t: Tensor  # [N, K] float targets

    def __len__(self) -> int:
        return int(self.x.shape[0])


class TargetsTask(Task):
    """Regress a K-vector per sample; the teacher outputs [N, K]."""

    def load(self, path: Path, ref: Any, **limits: Any) -> Targets:
        with np.load(path, allow_pickle=False) as z:
            return Targets(torch.from_numpy(z["x"]).float(), torch.from_numpy(z["t"]).float())

    def describe(self, path: Path, ref: Any, **limits: Any) -> dict[str, Any]:
        data = self.load(path, ref, **limits)
        return {"num_samples": len(data), "input_shape": list(self.input_shape(data))}

    def inspect_output(self, output_shape: list[int] | None) -> dict[str, Any]:
        return {"targets": output_shape[-1] if output_shape else None}

    def fit_to_teacher(self, teacher: Any, data: Targets) -> Targets:
        if teacher.num_classes != data.t.shape[1]:
            raise IncompatibleDataError("the teacher's output width differs from the targets'")
        return data

    def split(self, data: Targets, val_fraction: float, seed: int) -> tuple[Targets, Targets]:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        n_val = max(1, round(len(data) * val_fraction))
        val, tr = order[:n_val].sort().values, order[n_val:].sort().values
        return Targets(data.x[tr], data.t[tr]), Targets(data.x[val], data.t[val])

    def input_shape(self, data: Targets) -> tuple[int, ...]:
        return tuple(data.x.shape[1:])

    def output_size(self, data: Targets) -> int:
        return int(data.t.shape[1])

    def batch(self, data: Targets, idx: Tensor, device: torch.device) -> Batch:
        return Batch(data.x[idx].to(device), data.t[idx].to(device))

    @torch.inference_mode()
    def validate(
        self,
        student: nn.Module,
        data: Targets,
        batch_size: int,
        device: torch.device,
        autocast: Any,
    ) -> dict[str, float]:
        student.eval()
        out = student(data.x.to(device)).float()
        student.train()
        return {"val/mse": float(F.mse_loss(out, data.t.to(device)))}

    def evaluate(
        self, teacher: nn.Module, student: nn.Module, data: Targets, **options: Any
    ) -> dict[str, Any]:
        with torch.inference_mode():
            return {
                "teacher_mse": float(F.mse_loss(teacher(data.x).float(), data.t)),
                "student_mse": float(F.mse_loss(student(data.x).float(), data.t)),
            }


# ----------------------------------------------------------------------------------------------
# fixtures: the catalog entries (what a new scheme or task adds to core/catalog/)


@pytest.fixture(autouse=True)
def toy_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        SCHEMES,
        "mutual_toy",
        SchemeEntry(
            "mutual_toy",
            "Mutual (toy)",
            "The student and a peer copy learn from each other.",
            implementation=f"{HERE}:MutualScheme",
        ),
    )
    monkeypatch.setitem(
        TASKS,
        "targets_toy",
        TaskEntry(
            "targets_toy",
            "Targets (toy)",
            "A target vector per sample, validated by MSE.",
            implementation=f"{HERE}:TargetsTask",
            formats=("npz",),
            metrics=("mse",),
        ),
    )


def _teacher(features: int = 6, outputs: int = 3) -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, outputs))


def _targets(n: int = 96, features: int = 6, outputs: int = 3) -> Targets:
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(n, features, generator=gen)
    return Targets(x, x[:, :outputs] * 0.5)


def _config(**fields: Any) -> RunConfig:
    return RunConfig.model_validate(
        {
            "teacher": {"path": "unused.pt2"},
            "dataset": {"path": "unused.npz", "val_fraction": 0.25},
            "student": {"architecture": "mlp", "kwargs": {"hidden": 8, "depth": 1}},
            "losses": [{"name": "kd", "params": {"temperature": 2.0}}],
            "training": {
                "epochs": 2,
                "batch_size": 16,
                "lr": 0.05,
                "device": "cpu",
                "checkpoint_every": 4,
                "export_onnx": False,
            },
            **fields,
        }
    )


# ----------------------------------------------------------------------------------------------
# tests


def test_the_config_names_them_and_the_engine_resolves_the_catalog_entries() -> None:
    config = _config(scheme="mutual_toy", task="targets_toy")
    assert isinstance(build_scheme(config.scheme), MutualScheme)
    assert isinstance(build_task(config.task), TargetsTask)
    assert RunConfig.model_validate(config.model_dump()).task == "targets_toy"
    defaults = _config()
    assert (defaults.scheme, defaults.task) == ("offline", "classification")
    with pytest.raises(ValueError, match="unknown task 'detection_toy'"):
        _config(task="detection_toy")


def test_a_toy_scheme_and_task_train_through_the_seam(tmp_path: Path) -> None:
    teacher, data = _teacher(), _targets()
    train_data, val_data = TargetsTask().split(data, 0.25, 0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    scheme = build_scheme("mutual_toy")
    rec = Epochs()
    result = train(
        _config(scheme="mutual_toy", task="targets_toy"),
        teacher,
        train_data,
        val_data,
        callbacks=rec,
        scheme=scheme,
        checkpoint_path=tmp_path / "c.ckpt",
    )
    assert [set(e) for e in rec.epochs] == [{"val/mse", "train/loss"}] * 2  # the task's metric
    assert all(s == {"loss", "loss/kd", "loss/peer", "lr"} for s in rec.steps)  # scheme's term
    assert result.steps == 2 * 5  # 72 training samples in batches of 16
    peer, student = scheme.peer.state_dict(), result.student.state_dict()  # type: ignore[attr-defined]
    assert any(not torch.equal(peer[k], student[k]) for k in peer)  # two models trained
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # frozen
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert {"student", "losses", "peer"} <= set(ckpt)  # what the scheme's checkpoint holds
    assert len(ckpt["optimizer"]["param_groups"]) == 2  # the scheme's parameter groups


def test_a_toy_scheme_resumes_exactly_from_its_checkpoint(tmp_path: Path) -> None:
    teacher, (train_data, val_data) = _teacher(), TargetsTask().split(_targets(), 0.25, 0)
    config = _config(scheme="mutual_toy", task="targets_toy")
    torch.manual_seed(3)
    full = train(config, teacher, train_data, val_data).student.state_dict()
    with pytest.raises(Cancelled):
        torch.manual_seed(3)
        train(
            config,
            teacher,
            train_data,
            val_data,
            callbacks=Epochs(stop_at=6),
            checkpoint_path=tmp_path / "r.ckpt",
        )
    torch.manual_seed(3)
    resumed = train(
        config, teacher, train_data, val_data, checkpoint_path=tmp_path / "r.ckpt"
    ).student.state_dict()
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_a_toy_task_runs_a_whole_distillation(tmp_path: Path) -> None:
    """Reading, checking, splitting, training, exporting and evaluating go through the task."""
    data = _targets()
    export_pt2(_teacher().eval(), (6,), tmp_path / "teacher.pt2", build_task("targets_toy"))
    np.savez(tmp_path / "data.npz", x=data.x.numpy(), t=data.t.numpy())
    config = _config(task="targets_toy")
    result = run_distillation(
        config, tmp_path / "teacher.pt2", tmp_path / "data.npz", tmp_path / "out"
    )
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert {"teacher_mse", "student_mse", "student_params", "student_flops"} <= set(report)
    assert "student_top1" not in report  # classification's report is not used
    assert result["student_kwargs"]["input_shape"] == [6]
    assert (tmp_path / "out" / "student.pt2").exists()
    assert "task: targets_toy" in (tmp_path / "out" / "run.yaml").read_text()
    wrong = Targets(data.x, data.t[:, :2])
    np.savez(tmp_path / "wrong.npz", x=wrong.x.numpy(), t=wrong.t.numpy())
    with pytest.raises(IncompatibleDataError, match="output width"):
        run_distillation(
            config, tmp_path / "teacher.pt2", tmp_path / "wrong.npz", tmp_path / "out2"
        )


def _one_stage(rows: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """A toy stage rule: the whole network is one stage."""
    for row in rows:
        row["stage"] = 0
    return [{"index": 0, "layers": list(order), "end": rows[-1]["path"]}]


def test_a_toy_task_drives_the_inspection_and_the_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model inspection reads the output and groups the stages as the task says (no
    num_classes for a task without classes); the worker's scan reaches the task that reads the
    upload's format through the catalog."""
    task = build_task("targets_toy")
    monkeypatch.setattr(task, "stage_rule", "one_stage")
    monkeypatch.setitem(taps.STAGE_RULES, "one_stage", _one_stage)
    inspection = taps.inspect_model(_teacher(), (6,), task=task)
    assert inspection["targets"] == 3 and "num_classes" not in inspection
    assert inspection["stages"] == [{"index": 0, "layers": ["0", "1", "2"], "end": "2"}]
    default = taps.inspect_model(_teacher(), (6,))  # classification, the default task
    assert default["num_classes"] == 3 and "targets" not in default
    assert [s["resolution"] for s in default["stages"]] == [None]  # "spatial": a head only

    assert isinstance(dataset_task("npz"), ClassificationTask)  # the default task reads npz
    assert isinstance(dataset_task("h5"), ClassificationTask)  # whose reader refuses it
    toy = dataclasses.replace(TASKS["targets_toy"], formats=("npt",))
    monkeypatch.setitem(TASKS, "targets_toy", toy)
    scanning = dataset_task("npt")
    assert isinstance(scanning, TargetsTask)
    data = _targets(n=10)
    with (tmp_path / "data.npt").open("wb") as f:
        np.savez(f, x=data.x.numpy(), t=data.t.numpy())
    ref = DatasetRef(path=str(tmp_path / "data.npt"))
    assert scanning.describe(tmp_path / "data.npt", ref) == {
        "num_samples": 10,
        "input_shape": [6],
    }


def test_the_catalog_route_lists_schemes_and_tasks_with_their_parameters() -> None:
    """`GET /catalog` serves every scheme and task entry (the toy ones included, as a new
    entry would be), with the keys every entry has; the implementation stays internal."""
    from fastapi.testclient import TestClient

    from backend.app import create_app
    from backend.deps import get_principal

    app = create_app()
    app.dependency_overrides[get_principal] = lambda: None  # no database, no token
    served = TestClient(app).get("/api/v1/catalog").json()
    assert {"losses", "students", "optimizers", "schedules"} <= set(served)
    keys = {"name", "title", "help", "params", "paper", "kind", "needs_pairs", "extra"}
    for kind, names in (
        ("schemes", list(SCHEMES)),  # every scheme of the catalog, the toy one last
        ("tasks", list(TASKS)),
    ):
        assert [e["name"] for e in served[kind]] == names, kind
        assert all(set(e) == keys for e in served[kind]), kind
    from client.catalog import Catalog

    typed = Catalog.model_validate(served)  # the SDK's model reads them too
    assert typed.task("targets_toy") is not None and typed.scheme("mutual_toy") is not None
    classification = served["tasks"][0]
    extra = classification["extra"]
    assert {k: extra[k] for k in ("formats", "metrics", "stage_rule")} == {
        "formats": ["npz", "zip", "tar", "csv", "parquet"],
        "metrics": ["top1", "loss"],
        "stage_rule": "spatial",
    }
    assert {"ce", "kd"} <= set(extra["losses"]) and "resnet8" in extra["students"]
