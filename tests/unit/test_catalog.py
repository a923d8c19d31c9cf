"""The catalog, the engine and the backend agree.

Every catalog loss and student has an engine implementation under the same name (and vice
versa), whose constructor takes exactly the catalog's parameters with the same defaults; the
defaults fit their own ranges; entries name their paper and parameters explain themselves; the
backend serves `catalog.as_json()` unchanged. No database: the route runs in-process.
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
from core.catalog import Entry

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


def test_every_catalog_loss_is_implemented_under_its_name_and_vice_versa() -> None:
    from worker.engine.losses import LOSSES

    assert set(LOSSES) == set(catalog.LOSSES)
    assert all(cls.name == name for name, cls in LOSSES.items())
    assert all(name == entry.name for name, entry in catalog.LOSSES.items())


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
        build_loss(spec, LossContext(10, [], 100))
    if "min_pairs" in entry.extra:
        pairs = [((4, 4, 4), (4, 4, 4))] * (entry.extra["min_pairs"] - 1)
        with pytest.raises(ValueError):
            build_loss(spec, LossContext(10, pairs, 100))


def test_every_catalog_student_is_implemented_under_its_name_and_vice_versa() -> None:
    from worker.engine.students import REGISTRY

    assert set(REGISTRY) == set(catalog.STUDENTS)
    for name, entry in catalog.STUDENTS.items():
        assert entry.name == name
        _assert_params_match(entry, REGISTRY[name], skip=2)  # input_shape, num_classes


def test_schemes_optimizers_and_schedules_match_the_engine() -> None:
    """The trainer implements one scheme, `offline`; the run config accepts exactly the
    catalog's schemes, optimizers and schedules."""
    from pydantic import ValidationError

    from core.config import RunConfig, TrainSettings

    assert list(catalog.SCHEMES) == ["offline"]
    assert all(name == entry.name for name, entry in catalog.SCHEMES.items())
    base = {"teacher": {"path": "t.pt2"}, "dataset": {"path": "d.npz"}}
    assert RunConfig.model_validate({**base, "scheme": "offline"}).scheme == "offline"
    with pytest.raises(ValidationError, match="unknown scheme"):
        RunConfig.model_validate({**base, "scheme": "online"})
    fields = TrainSettings.model_fields
    assert typing.get_args(fields["optimizer"].annotation) == catalog.OPTIMIZERS
    assert typing.get_args(fields["schedule"].annotation) == catalog.SCHEDULES


def _all_entries() -> list[Entry]:
    return [*catalog.LOSSES.values(), *catalog.STUDENTS.values(), *catalog.SCHEMES.values()]


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
