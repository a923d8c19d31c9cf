"""The catalog, the engine and the backend agree.

Every catalog loss and student names its engine implementation (`"module:Class"`), which
resolves, and whose constructor takes exactly the catalog's parameters with the same defaults
and types; the loss's own modules are the ones the catalog lists; the defaults fit their own
ranges; entries name their paper and parameters explain themselves; default weights other than 1
are the ones their help cites; the run config's training fields are the catalog's training
settings; the backend serves `catalog.as_json()` unchanged. Adding a loss is one module and one
entry (the toy loss below). No database: the route runs in-process.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import typing
from collections.abc import Callable
from typing import Any

import pytest

from core import catalog
from core.catalog import Entry, LossEntry

# a catalog parameter type -> the annotation of the engine's keyword argument
ANNOTATION = {"float": "float", "int": "int", "bool": "bool", "str": "str", "choice": "str"}


def _keywords(fn: Callable[..., Any], skip: int) -> dict[str, inspect.Parameter]:
    """The keyword parameters of `fn` after its first `skip` positional ones."""
    return dict(list(inspect.signature(fn).parameters.items())[skip:])


def _assert_params_match(entry: Entry, fn: Callable[..., Any], skip: int) -> None:
    engine = _keywords(fn, skip)
    assert [p.name for p in entry.params] == list(engine), entry.name
    for param in entry.params:
        arg = engine[param.name]
        assert arg.default == param.default, f"{entry.name}.{param.name}"
        assert type(arg.default) is type(param.default), f"{entry.name}.{param.name}"
        assert arg.annotation == ANNOTATION[param.type], f"{entry.name}.{param.name}"


def test_catalog_module_imports_no_torch() -> None:
    code = "import sys, core.catalog; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", sorted(catalog.LOSSES))
def test_every_catalog_loss_names_an_engine_class_that_resolves(name: str) -> None:
    from worker.engine.losses import LOSSES, DistillLoss

    entry = catalog.LOSSES[name]
    assert entry.name == name
    assert entry.implementation.startswith("worker.engine.losses."), entry.implementation
    cls = catalog.load(entry.implementation)
    assert isinstance(cls, type) and issubclass(cls, DistillLoss)
    assert LOSSES[name] is cls
    assert not hasattr(cls, "name") or cls.name == "", "the catalog alone names a loss"


def test_no_hand_kept_list_of_losses_or_students_in_the_engine() -> None:
    """The engine's `LOSSES` and `REGISTRY` are views of the catalog, not lists of their own."""
    import worker.engine.losses as losses
    import worker.engine.students as students

    assert list(losses.LOSSES) == list(catalog.LOSSES)
    assert list(students.REGISTRY) == list(catalog.STUDENTS)
    source = inspect.getsource(losses) + inspect.getsource(students)
    assert "worker.engine.losses.kd" not in source and "partial(resnet" not in source
    with pytest.raises(ValueError, match="unknown loss 'kdd'; nearest: kd"):
        losses.loss_class("kdd")


@pytest.mark.parametrize("name", sorted(catalog.LOSSES))
def test_loss_constructor_takes_the_catalog_params_with_their_defaults(name: str) -> None:
    from worker.engine.losses import LOSSES

    _assert_params_match(catalog.LOSSES[name], LOSSES[name].__init__, skip=2)  # self, ctx


@pytest.mark.parametrize("name", sorted(catalog.LOSSES))
def test_loss_needs_pairs_flag_matches_the_engine(name: str) -> None:
    """A loss the catalog marks `needs_pairs` refuses to build without layer pairs; the others
    build without any (and fsp refuses fewer than its `min_pairs`)."""
    from core.config import LossSpec
    from worker.engine.losses import LossContext, build_loss

    entry = catalog.LOSSES[name]
    spec = LossSpec(name=name)
    if entry.needs_pairs:
        with pytest.raises(ValueError):
            build_loss(spec, LossContext(10, [], 100))
    else:
        assert build_loss(spec, LossContext(10, [], 100)).name == name
    if entry.min_pairs > 1:
        pairs = [((4, 4, 4), (4, 4, 4))] * (entry.min_pairs - 1)
        with pytest.raises(ValueError):
            build_loss(spec, LossContext(10, pairs, 100))


@pytest.mark.parametrize("name", sorted(catalog.LOSSES))
def test_loss_aux_modules_are_the_engine_modules_with_parameters(name: str) -> None:
    """Built on two conv pairs of different widths, a loss holds parameters exactly in the
    submodules its entry lists as `aux_modules` (what the optimizer trains and checkpoints
    save), and carries its catalog name."""
    from torch import nn

    from core.config import LossSpec
    from worker.engine.losses import LossContext, build_loss

    entry = catalog.LOSSES[name]
    pairs = [((8, 4, 4), (16, 4, 4)), ((16, 2, 2), (32, 2, 2))] if entry.needs_pairs else []
    s_mods, t_mods = (
        [nn.Conv2d(4, 8, 3), nn.Conv2d(8, 16, 3)],
        [nn.Conv2d(4, 16, 3), nn.Conv2d(16, 32, 3)],
    )
    if entry.reads_attention:  # a paired layer must hold query/key/value projections
        s_mods, t_mods = (
            [nn.ModuleDict({r: nn.Linear(w, w) for r in ("query", "key", "value")}) for w in ws]
            for ws in ((8, 16), (16, 32))
        )
    n = len(pairs)
    ctx = LossContext(
        10,
        pairs,
        100,
        1,
        pair_paths=[("a", "b"), ("c", "d")][:n],
        student_modules=s_mods[:n],
        teacher_modules=t_mods[:n],
    )
    loss = build_loss(LossSpec(name=name), ctx)
    with_params = [child for child, m in loss.named_children() if any(True for _ in m.parameters())]
    assert tuple(with_params) == entry.aux_modules
    assert loss.name == name


@pytest.mark.parametrize("name", sorted(catalog.STUDENTS))
def test_every_catalog_student_names_a_builder_that_resolves(name: str) -> None:
    from worker.engine.students import REGISTRY, build_student

    entry = catalog.STUDENTS[name]
    assert entry.name == name and entry.family
    assert callable(catalog.load(entry.implementation))
    _assert_params_match(entry, REGISTRY[name], skip=2)  # input_shape, num_classes
    if entry.kind == "text":  # built from the Hugging Face teacher by a text task
        assert entry.implementation.startswith("worker.engine.tasks.text.students:")
        with pytest.raises(ValueError, match="built from a Hugging Face teacher"):
            build_student(name, (16,), 10)
        return
    assert entry.implementation.startswith("worker.engine.students."), entry.implementation
    model = build_student(name, (3, 8, 8), 10)
    assert model.arch == name
    if entry.depth is not None and entry.family in ("resnet", "wrn"):
        assert f"{entry.depth}" in name


@pytest.mark.parametrize("name", sorted(catalog.LOSSES))
def test_default_weights_fit_the_run_config_and_are_cited_in_the_help(name: str) -> None:
    """The New run form starts each loss at `default_weight`: a weight the run config accepts,
    and one the help text names when it is not 1 (sp 3000 and pkt 30000 as RepDistiller)."""
    from core.config import LossSpec

    entry = catalog.LOSSES[name]
    assert isinstance(entry.default_weight, float)
    LossSpec(name=name, weight=entry.default_weight)
    if entry.default_weight != 1.0:
        assert f"weight {entry.default_weight:g}" in entry.help, entry.help
    assert catalog.LOSSES["sp"].default_weight == 3000.0
    assert catalog.LOSSES["pkt"].default_weight == 30000.0


def test_schemes_optimizers_and_schedules_match_the_engine() -> None:
    """The run config accepts exactly the catalog's schemes, optimizers and schedules."""
    from pydantic import ValidationError

    from core.config import RunConfig, TrainSettings

    assert list(catalog.SCHEMES)[:3] == ["offline", "online", "self"]
    assert "netaug" in catalog.SCHEMES  # the others follow in the order they were added
    assert all(name == entry.name for name, entry in catalog.SCHEMES.items())
    base = {"teacher": {"path": "t.pt2"}, "dataset": {"path": "d.npz"}}
    assert RunConfig.model_validate({**base, "scheme": "offline"}).scheme == "offline"
    assert RunConfig.model_validate({**base, "scheme": "online"}).scheme == "online"
    assert RunConfig.model_validate({**base, "scheme": "self"}).scheme == "self"
    with pytest.raises(ValidationError, match="unknown scheme"):
        RunConfig.model_validate({**base, "scheme": "no_such_scheme"})
    fields = TrainSettings.model_fields
    assert typing.get_args(fields["optimizer"].annotation) == catalog.OPTIMIZERS
    assert typing.get_args(fields["schedule"].annotation) == catalog.SCHEDULES


def _all_entries() -> list[Entry]:
    return [*catalog.LOSSES.values(), *catalog.STUDENTS.values()]


@pytest.mark.parametrize("entry", _all_entries(), ids=lambda e: e.name)
def test_defaults_fit_their_ranges_and_every_param_has_help(entry: Entry) -> None:
    assert entry.title and entry.help
    assert len({p.name for p in entry.params}) == len(entry.params)
    for p in entry.params:
        assert p.help.strip(), f"{entry.name}.{p.name} has no help text"
        assert p.check(p.default) is None, f"{entry.name}.{p.name}: {p.check(p.default)}"
        assert (p.type == "choice") == (p.choices is not None), f"{entry.name}.{p.name}"
        if p.min is not None and p.max is not None:
            assert p.min <= p.max, f"{entry.name}.{p.name}"
    assert entry.check_params(entry.defaults()) == []


@pytest.mark.parametrize("name", sorted(catalog.SCHEMES))
def test_scheme_defaults_fit_their_ranges(name: str) -> None:
    entry = catalog.SCHEMES[name]
    assert entry.title and entry.help and entry.implementation
    assert all(p.help.strip() and p.check(p.default) is None for p in entry.params)


def test_every_loss_but_ce_and_every_zoo_student_names_its_paper() -> None:
    """`ce` is the plain task loss and `mlp` a generic network: neither has a paper."""
    losses = [e.name for e in catalog.LOSSES.values() if not e.paper.strip()]
    students = [e.name for e in catalog.STUDENTS.values() if not e.paper.strip()]
    assert losses == ["ce"]
    assert students == ["mlp"]
    assert {e.kind for e in catalog.LOSSES.values()} <= set(typing.get_args(catalog.LossKind))


def test_backend_route_serves_exactly_the_catalog() -> None:
    from fastapi.testclient import TestClient

    from backend.app import create_app
    from backend.deps import get_principal

    app = create_app()
    app.dependency_overrides[get_principal] = lambda: None  # no database, no token
    response = TestClient(app).get("/api/v1/catalog")
    assert response.status_code == 200
    assert response.json() == json.loads(json.dumps(catalog.as_json()))
    # and every entry of it round-trips: nothing in the catalog is lost on the way
    assert [e["name"] for e in response.json()["losses"]] == list(catalog.LOSSES)


def test_training_fields_are_the_catalog_training_settings() -> None:
    """Every training field of the run config is a catalog setting with the same default,
    range and choices (declared once in `core.catalog.training`), and the API enforces it."""
    from pydantic import ValidationError

    from core.config import DatasetRef, LossSpec, RunConfig, TrainSettings

    fields = TrainSettings.model_fields
    assert list(fields) == list(catalog.TRAINING)
    defaults = TrainSettings().model_dump()
    for name, spec in catalog.TRAINING.items():
        default = list(spec.default) if spec.type == "floats" else spec.default
        assert defaults[name] == default, name
        if spec.type == "choice":
            assert typing.get_args(fields[name].annotation) == spec.choices, name
        for key, bound in spec.bounds().items():
            if spec.type != "floats":
                found = [getattr(m, key) for m in fields[name].metadata if hasattr(m, key)]
                assert found == [bound], f"{name}.{key}"
        lo, hi = spec.form_range()
        for value in (lo, hi):  # what the form offers at its limits, the API accepts
            if value is not None and spec.type in ("int", "float"):
                TrainSettings.model_validate({name: value})
    assert typing.get_args(fields["optimizer"].annotation) == catalog.OPTIMIZERS
    assert typing.get_args(fields["schedule"].annotation) == catalog.SCHEDULES
    assert typing.get_args(fields["device"].annotation) == catalog.DEVICES
    with pytest.raises(ValidationError, match=r"lr\n.*must be in \(0.0, 10.0\], got 11"):
        TrainSettings.model_validate({"lr": 11.0})
    with pytest.raises(ValidationError, match="'sgd' or 'adamw'"):
        TrainSettings.model_validate({"optimizer": "adam"})
    from core.catalog.training import LOSS_WEIGHT, SEED, VAL_FRACTION

    assert LossSpec.model_fields["weight"].default == LOSS_WEIGHT.default
    assert RunConfig.model_fields["seed"].default == SEED.default
    assert DatasetRef.model_fields["val_fraction"].default == VAL_FRACTION.default
    LossSpec(name="pkt", weight=LOSS_WEIGHT.form_range()[1])
    with pytest.raises(ValidationError, match="100000"):
        LossSpec(name="pkt", weight=200_000.0)


def test_api_serves_the_typed_fields_under_extra() -> None:
    """`GET /catalog` keeps its shape (the same keys per entry); `extra` now carries the typed
    fields the form reads (a loss's default weight, a student's family and fixed depth), and
    `training` the training settings (choices, ranges, defaults)."""
    served = json.loads(json.dumps(catalog.as_json()))
    keys = {"name", "title", "help", "params", "paper", "kind", "needs_pairs", "extra"}
    for kind in ("losses", "students", "schemes", "tasks"):
        assert all(set(e) == keys for e in served[kind]), kind
    losses = {e["name"]: e for e in served["losses"]}
    for name, entry in catalog.LOSSES.items():
        extra = losses[name]["extra"]
        assert extra["default_weight"] == entry.default_weight
        assert extra["min_pairs"] == entry.fewest_pairs()
        assert extra["aux_modules"] == list(entry.aux_modules)
        assert "implementation" not in losses[name]
    assert losses["sp"]["extra"]["default_weight"] == 3000
    students = {e["name"]: e for e in served["students"]}
    assert students["resnet20"]["extra"] == {"family": "resnet", "depth": 20}
    assert served["optimizers"] == ["sgd", "adamw"]
    # and the training settings the run config validates with, for forms and scripts
    training = {s["name"]: s for s in served["training"]}
    assert list(training) == list(catalog.TRAINING)
    assert training["optimizer"]["choices"] == served["optimizers"]
    assert training["schedule"]["choices"] == served["schedules"]
    assert (training["lr"]["gt"], training["lr"]["le"], training["lr"]["default"]) == (
        0.0,
        10.0,
        0.05,
    )


TOY_LOSS = '''
"""Toy loss for the catalog test: L = scale * mean((s - t)^2) over the logits."""

from __future__ import annotations

from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


class Toy(DistillLoss):
    """L = scale * mean((s - t)^2): the student's logits pulled towards the teacher's."""

    def __init__(self, ctx: LossContext, scale: float = 0.5) -> None:
        super().__init__(ctx)
        self.scale = float(scale)

    def forward(self, out: StepOutputs) -> Tensor:
        return self.scale * (out.student_logits - out.teacher_logits.detach()).pow(2).mean()
'''


def test_adding_a_loss_is_one_module_and_one_entry(tmp_path, monkeypatch) -> None:
    """A toy loss module written under `tmp_path` plus one catalog entry pointing at it (added
    to `catalog.LOSSES` for this test only) is accepted by the run config, served by the API's
    catalog, and trains: one step of a run that uses it, with the value reported."""
    import torch

    from core.config import RunConfig
    from worker.engine.students import build_student
    from worker.engine.tasks.classification.data import TensorData
    from worker.engine.trainer import Callbacks, StepReport, train

    (tmp_path / "toy_catalog_loss.py").write_text(TOY_LOSS)
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = LossEntry(
        "toy",
        "Toy logit matching",
        "scale * mean((s - t)^2) over the logits.",
        (catalog.param("scale", "float", 0.5, "Factor of the squared difference.", 0.0, 10.0),),
        paper="(a test)",
        kind="logits",
        implementation="toy_catalog_loss:Toy",
    )
    monkeypatch.setitem(catalog.LOSSES, "toy", entry)

    config = RunConfig.model_validate(
        {
            "teacher": {"path": "unused.pt2"},
            "dataset": {"path": "unused.npz"},
            "student": {"architecture": "mlp", "kwargs": {"hidden": 8, "depth": 1}},
            "losses": [{"name": "ce"}, {"name": "toy", "weight": 2.0, "params": {"scale": 1.5}}],
            "training": {"epochs": 1, "batch_size": 16, "device": "cpu", "export_onnx": False},
        }
    )
    assert "toy" in [e["name"] for e in catalog.as_json()["losses"]]
    torch.manual_seed(0)
    teacher = build_student("mlp", (1, 8, 8), 3, hidden=16, depth=1).eval()
    x = torch.rand(24, 1, 8, 8)
    y = torch.arange(24) % 3
    classes = ["a", "b", "c"]
    steps: list[dict[str, float]] = []

    class Record(Callbacks):
        def on_step(self, report: StepReport) -> None:
            steps.append(dict(report.metrics))

    result = train(
        config,
        teacher,
        TensorData(x[:16], y[:16], classes),
        TensorData(x[16:], y[16:], classes),
        callbacks=Record(),
    )
    assert len(steps) == 1 and steps[0]["loss/toy"] > 0  # one step, the toy term counted
    assert result.student is not None
