"""Input validation: every float of a run config and of the loss parameters is finite and in its
catalog range before anything is queued; layer pairs and losses per run are capped; deeply
nested JSON in a request body or a form field is a 422, never a 500.

Each test sends the attack that worked before the fix (a NaN temperature answered 201, 10,000
layer pairs were accepted, a 100k-deep `kwargs` form field answered 500) and checks that the
answer names the field, the value and the range or the cap, and that nothing was queued.
Figures in docs/reliability.md ("Input validation").
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .api_helpers import (
    queue_length,
    ready_dataset,
    ready_model,
    row_count,
    run_config,
    set_env,
    upload_model,
)


def post_raw(api: TestClient, path: str, body: Any, content_type: str = "application/json"):
    """POST a body as Python's json writes it, NaN and Infinity included (httpx refuses them)."""
    text = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return api.post(path, content=text, headers={"Content-Type": content_type})


def deep_array(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture
def ids(api: TestClient) -> tuple[int, int]:
    return ready_model(api), ready_dataset(api)


# -- floats: finite and in range -----------------------------------------------------------------


NON_FINITE = [
    # (where in the config, value, the field named in the answer, the range named in the answer)
    (("losses", 1, "params", "temperature"), float("nan"), "temperature", "[0.1, 100"),
    (("losses", 1, "params", "temperature"), float("inf"), "temperature", "[0.1, 100"),
    (("losses", 0, "params", "label_smoothing"), float("-inf"), "label_smoothing", "[0.0, 0.5]"),
    (("losses", 1, "weight"), float("nan"), "losses.1.weight", "[0.0, 100000.0]"),
    (("training", "lr"), float("inf"), "training.lr", "(0.0, 10.0]"),
    (("training", "momentum"), float("nan"), "training.momentum", "[0.0, 1.0)"),
    (
        ("training", "step_milestones"),
        [0.5, float("nan")],
        "training.step_milestones",
        "[0.0, 1.0]",
    ),
    (("student", "kwargs", "width"), float("nan"), "width", "[0.125, 8.0]"),
    (("student", "depth_factor"), float("nan"), "student.depth_factor", "(0.0, 1.0]"),
    (("dataset", "val_fraction"), float("inf"), "dataset.val_fraction", "(0.0, 0.9)"),
    (("teacher", "kwargs", "scale"), float("-inf"), "teacher.kwargs: 'scale'", "finite"),
]


def _put(config: dict[str, Any], where: tuple[Any, ...], value: Any) -> dict[str, Any]:
    node: Any = config
    for key in where[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        else:
            node = node[key]
    node[where[-1]] = value
    return config


@pytest.mark.parametrize(
    "where,value,field,bounds",
    NON_FINITE,
    ids=[".".join(map(str, w)) + f"={v}" for w, v, _, _ in NON_FINITE],
)
def test_non_finite_floats_are_refused_naming_field_value_and_range(
    api: TestClient, studio_env, ids: tuple[int, int], where, value, field: str, bounds: str
) -> None:
    config = _put(run_config(*ids), where, value)
    before = queue_length(studio_env, "cpu") + queue_length(studio_env, "gpu")
    r = post_raw(api, "/runs", config)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    number = value[-1] if isinstance(value, list) else value
    shown = "nan" if number != number else str(number)  # nan / inf / -inf
    assert field in detail and bounds in detail, detail
    assert shown in detail.lower(), detail
    assert row_count("Run") == 0
    assert queue_length(studio_env, "cpu") + queue_length(studio_env, "gpu") == before


def test_out_of_range_loss_parameter_names_the_range(api: TestClient, studio_env, ids) -> None:
    config = run_config(*ids, losses=[{"name": "kd", "params": {"temperature": 1e9}}])
    r = api.post("/runs", json=config)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "temperature" in detail and "1000000000" in detail and "[0.1, 100" in detail, detail


def test_a_finite_config_is_still_accepted(api: TestClient, studio_env, ids) -> None:
    config = run_config(
        *ids,
        training={
            "epochs": 1,
            "batch_size": 8,
            "device": "cpu",
            "schedule": "step",
            "step_milestones": [0.5, 1.0],
        },
    )
    assert api.post("/runs", json=config).status_code == 201


# -- caps: layer pairs and losses ----------------------------------------------------------------


def test_ten_thousand_layer_pairs_are_refused_naming_the_cap(
    api: TestClient, studio_env, ids
) -> None:
    pairs = [{"teacher": "layer1", "student": "layer1"}] * 10_000
    config = run_config(
        *ids,
        layer_pairs=pairs,
        losses=[{"name": "ce"}, {"name": "at", "pairs": list(range(10_000))}],
    )
    r = api.post("/runs", json=config)
    assert r.status_code == 422, r.text[:300]
    detail = r.json()["detail"]
    assert "layer_pairs" in detail and "10000" in detail and "64" in detail, detail
    assert "DS_MAX_LAYER_PAIRS" in detail
    assert row_count("Run") == 0


def test_losses_per_run_are_capped(api: TestClient, studio_env, ids) -> None:
    r = api.post("/runs", json=run_config(*ids, losses=[{"name": "ce"}] * 17))
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "losses" in detail and "17" in detail and "16" in detail and "DS_MAX_LOSSES" in detail
    assert api.post("/runs", json=run_config(*ids, losses=[{"name": "ce"}] * 16)).status_code == 201


def test_the_caps_are_settings(api: TestClient, studio_env, ids, monkeypatch) -> None:
    set_env(monkeypatch, DS_MAX_LOSSES="2")
    r = api.post("/runs", json=run_config(*ids, losses=[{"name": "ce"}] * 3))
    assert r.status_code == 422 and "at most 2" in r.json()["detail"]


# -- deeply nested JSON --------------------------------------------------------------------------


def test_deep_json_in_the_kwargs_form_field_is_422(api: TestClient, studio_env) -> None:
    r = upload_model(
        api,
        "deep",
        data=b"weights",
        filename="w.safetensors",
        architecture="resnet8",
        kwargs=deep_array(100_000),
    )
    assert r.status_code == 422, r.text[:300]
    detail = r.json()["detail"]
    assert detail.startswith("kwargs:") and "nested" in detail and "DS_MAX_JSON_DEPTH" in detail
    assert row_count("Model") == 0


@pytest.mark.parametrize("path", ["/runs", "/webhooks", "/runs/plan", "/teams", "/comparisons"])
def test_deep_json_bodies_are_422(api: TestClient, studio_env, path: str) -> None:
    for body in (
        deep_array(100_000),
        '{"a":' * 5_000 + "1" + "}" * 5_000,
        json.dumps(
            {"name": "x", "teacher": {"model_id": 1, "kwargs": {"a": json.loads(deep_array(200))}}}
        ),
    ):
        r = post_raw(api, path, body)
        assert r.status_code == 422, (path, r.status_code, r.text[:300])
        assert "nested" in r.json()["detail"] and "DS_MAX_JSON_DEPTH" in r.json()["detail"]
    # no Content-Type: FastAPI still parses the body as JSON
    r = api.post(path, content=deep_array(100_000).encode(), headers={"Content-Type": ""})
    assert r.status_code == 422, (path, r.status_code, r.text[:300])


def test_brackets_inside_strings_do_not_count(api: TestClient, studio_env, ids) -> None:
    r = api.post("/runs", json=run_config(*ids, name="[" * 150 + "{" * 40))
    assert r.status_code == 201, r.text
