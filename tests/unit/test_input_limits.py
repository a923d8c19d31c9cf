"""Input limits without a server: JSON nesting depth (backend/json_depth.py) and the run config's
finite floats, ranges and caps (core/config.py, core/catalog/__init__.py)."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import ValidationError

from backend.json_depth import depth_problem, nesting_depth
from core import catalog
from core.config import LossSpec, ModelRef, RunConfig, TrainSettings


@pytest.mark.parametrize(
    "text,depth",
    [
        ("1", 0),
        ("[]", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('["[[[[", "{{{{"]', 1),
        ('{"a": "\\"[[["}', 1),
        ("[" * 50 + "]" * 50, 50),
    ],
)
def test_nesting_depth_skips_strings(text: str, depth: int) -> None:
    assert nesting_depth(text) == depth
    if text.startswith(("[", "{")):
        json.loads(text)  # the samples are real JSON


def test_a_hostile_body_is_measured_quickly() -> None:
    for body in ("[" * 4_000_000, "[]" * 2_000_000, '["' + "x" * 4_000_000 + '"]'):
        start = time.perf_counter()
        nesting_depth(body)
        assert time.perf_counter() - start < 5  # generous: about 0.2 s on a busy laptop


def test_depth_problem_names_depth_limit_and_setting() -> None:
    assert depth_problem("[[1]]", 2) is None
    problem = depth_problem("[" * 100_000, 32)
    assert problem is not None and "100000 levels" in problem and "at most 32" in problem
    assert "DS_MAX_JSON_DEPTH" in problem


def test_catalog_parameters_must_be_finite_and_in_range() -> None:
    [temperature] = catalog.LOSSES["kd"].params
    assert temperature.check(4.0) is None and temperature.check(100) is None
    for bad in (float("nan"), float("inf"), float("-inf")):
        assert temperature.check(bad) == f"must be a finite number in [0.1, 100], got {bad}"
    assert temperature.check(1e9) == "must be in [0.1, 100], got 1000000000.0"
    [hint] = catalog.LOSSES["fitnets"].params
    assert "finite" in hint.check(float("inf"))  # an int parameter: no OverflowError
    assert len(hint.check([1] * 10_000)) < 100  # long values are cut in the message


def test_run_config_floats() -> None:
    with pytest.raises(ValidationError, match=r"must be a finite number in \(0.0, 10.0\], got nan"):
        TrainSettings(lr=float("nan"))
    with pytest.raises(ValidationError, match=r"item 1 must be in \[0.0, 1.0\], got 2"):
        TrainSettings(step_milestones=[0.5, 2])
    with pytest.raises(ValidationError, match="'a.b.0' must be a finite number, got -inf"):
        ModelRef(model_id=1, kwargs={"a": {"b": [float("-inf")]}})
    with pytest.raises(ValidationError, match="nested deeper than 32"):
        ModelRef(model_id=1, kwargs={"a": json.loads("[" * 40 + "]" * 40)})
    assert LossSpec(name="at", weight=100).weight == 100  # ints within float ranges still pass


def test_caps_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"teacher": {"model_id": 1}, "dataset": {"dataset_id": 1}}
    pairs = [{"teacher": "a", "student": "b"}] * 65
    with pytest.raises(ValidationError, match="65 layer pairs given; a run takes at most 64"):
        RunConfig.model_validate({**base, "layer_pairs": pairs})
    RunConfig.model_validate({**base, "layer_pairs": pairs[:64], "losses": [{"name": "at"}]})
    monkeypatch.setenv("DS_MAX_LAYER_PAIRS", "4")
    with pytest.raises(ValidationError, match="DS_MAX_LAYER_PAIRS"):
        RunConfig.model_validate({**base, "layer_pairs": pairs[:5]})
    with pytest.raises(ValidationError, match="17 losses given; a run takes at most 16"):
        RunConfig.model_validate({**base, "losses": [{"name": "ce"}] * 17})
