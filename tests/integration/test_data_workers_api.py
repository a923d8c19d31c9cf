"""`training.data_workers` (batches read in DataLoader worker processes) through the REST API
(in-process): the catalog serves it, a run stores it, a negative count is refused before
queueing. `distill-studio train run.yaml` and the CLI read the same run config."""

from __future__ import annotations

from fastapi.testclient import TestClient

from .api_helpers import ready_dataset, ready_model, run_config


def test_the_catalog_serves_data_workers_and_a_run_stores_it(api: TestClient) -> None:
    training = {s["name"]: s for s in api.get("/catalog").json()["training"]}
    spec = training["data_workers"]
    assert (spec["type"], spec["default"], spec["ge"], spec["le"]) == ("int", 0, 0, 32)
    assert "worker processes" in spec["help"]
    body = run_config(ready_model(api), ready_dataset(api))
    body["training"] = {**body.get("training", {}), "data_workers": 4}
    r = api.post("/runs", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["config"]["training"]["data_workers"] == 4
    body["training"]["data_workers"] = -1
    r = api.post("/runs", json=body)
    assert r.status_code == 422 and "data_workers" in r.text, r.text
