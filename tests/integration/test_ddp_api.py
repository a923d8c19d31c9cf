"""`training.gpus` through the REST API (in-process): the catalog serves it, a run stores it, and
what several GPUs cannot run is refused before queueing (a batch that does not divide, another
scheme, the teacher-output cache). The engine's DDP path is tested in
tests/unit/engine/test_distributed.py; `distill-studio train run.yaml` in test_standalone.py."""

from __future__ import annotations

from fastapi.testclient import TestClient

from .api_helpers import ready_dataset, ready_model, run_config


def test_the_catalog_serves_gpus(api: TestClient) -> None:
    training = {s["name"]: s for s in api.get("/catalog").json()["training"]}
    gpus = training["gpus"]
    assert (gpus["type"], gpus["default"], gpus["ge"], gpus["le"]) == ("int", 1, 1, 16)
    assert "torch.distributed" in gpus["help"]


def test_a_run_stores_gpus_and_what_cannot_run_is_refused(api: TestClient) -> None:
    model_id, dataset_id = ready_model(api), ready_dataset(api)
    body = run_config(model_id, dataset_id)
    body["training"] = {**body["training"], "gpus": 2}
    r = api.post("/runs", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["config"]["training"]["gpus"] == 2
    for bad, words in (
        ({"training": {**body["training"], "gpus": 3}}, "does not divide among training.gpus"),
        ({"training": {**body["training"], "gpus": 0}}, "gpus"),
        ({"scheme": "online"}, "scheme 'offline' only"),
        (
            {"training": {**body["training"], "teacher_cache": "on"}},
            "teacher-output cache is written by one process",
        ),
    ):
        r = api.post("/runs", json={**body, **bad})
        assert r.status_code == 422 and words in r.text, r.text
