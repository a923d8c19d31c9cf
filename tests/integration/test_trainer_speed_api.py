"""The training loop's speed settings through the REST API (in-process): the catalog serves
`grad_accumulation`, `compile` and `channels_last`, a run stores them, out-of-range values are
refused before queueing. `distill-studio train run.yaml` and the CLI read the same run config."""

from __future__ import annotations

from fastapi.testclient import TestClient

from .api_helpers import ready_dataset, ready_model, run_config


def test_the_catalog_serves_the_speed_settings(api: TestClient) -> None:
    training = {s["name"]: s for s in api.get("/catalog").json()["training"]}
    acc, comp, cl = training["grad_accumulation"], training["compile"], training["channels_last"]
    assert (acc["type"], acc["default"], acc["ge"], acc["le"]) == ("int", 1, 1, 1024)
    assert "micro-batches" in acc["help"]
    assert (comp["type"], comp["default"]) == ("bool", False) and "torch.compile" in comp["help"]
    assert cl["default"] == "auto" and cl["choices"] == ["auto", "on", "off"]


def test_a_run_stores_them_and_bad_values_are_refused(api: TestClient) -> None:
    model_id, dataset_id = ready_model(api), ready_dataset(api)
    speed = {"grad_accumulation": 4, "compile": True, "channels_last": "on"}
    body = run_config(model_id, dataset_id)
    body["training"] = {**body.get("training", {}), **speed}
    r = api.post("/runs", json=body)
    assert r.status_code == 201, r.text
    assert {k: r.json()["config"]["training"][k] for k in speed} == speed
    for bad, words in (
        ({"grad_accumulation": 0}, "grad_accumulation"),
        ({"channels_last": "yes"}, "'auto', 'on' or 'off'"),
    ):
        body["training"] = {**body["training"], **bad}
        r = api.post("/runs", json=body)
        assert r.status_code == 422 and words in r.text, r.text
        body["training"].update(speed)
