"""The teacher-output cache through the REST API: `training.teacher_cache` is in the catalog,
`on` is refused where the cache cannot apply, and a real worker records the cache in a team's
first run and replays it in the next run with the same teacher, data and recipe, which then
computes the same losses without the teacher forward; the cache is an artifact of both runs
with its size."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import mark_ready_from, run_config, upload_demo, wait_run

MLP = {"source": "zoo", "architecture": "mlp", "kwargs": {"hidden": 32, "depth": 1}}


def test_the_catalog_declares_the_teacher_cache(api: TestClient) -> None:
    training = {s["name"]: s for s in api.get("/catalog").json()["training"]}
    assert training["teacher_cache"]["choices"] == ["off", "auto", "on"]
    assert training["teacher_cache"]["default"] == "off"
    assert training["teacher_cache_top_k"]["default"] == 10


def test_the_cache_on_with_a_feature_loss_is_refused_before_queueing(api: TestClient) -> None:
    fake = {"id": 1}
    body = run_config(
        fake,
        fake,
        training={"teacher_cache": "on"},
        losses=[{"name": "ce"}, {"name": "fitnets"}],
        layer_pairs=[{"teacher": "layer1", "student": "layer1"}],
    )
    r = api.post("/runs", json=body)
    assert r.status_code == 422 and "'fitnets' is a feature loss" in r.text


@pytest.mark.slow
@pytest.mark.one_database
def test_a_second_run_of_the_team_replays_the_first_runs_cache(
    api, worker, demo_files: tuple[Path, Path]
) -> None:
    model, dataset = mark_ready_from(api, *upload_demo(api, demo_files))
    training = {"epochs": 1, "export_onnx": False, "teacher_cache": "on", "log_every": 1}
    body = run_config(model, dataset, student=MLP, training=training, augment={"flip": True})
    runs = []
    for _ in range(2):
        r = api.post("/runs", json=body)
        assert r.status_code == 201, r.text
        done = wait_run(api, r.json()["id"])
        assert done["status"] == "succeeded", (done, worker.output()[-3000:])
        runs.append(done)
    first, second = (run["summary"]["teacher_cache"] for run in runs)
    batches = first["recorded_batches"]
    assert batches > 0 and first["replayed_batches"] == 0 and first["top_k"] == 10
    assert second["replayed_batches"] == batches and second["recorded_batches"] == 0
    assert second["key"] == first["key"]
    losses = [
        api.get(f"/runs/{run['id']}/metrics", params={"names": "loss"}).json()["series"]["loss"]
        for run in runs
    ]
    # the replay computes the same losses, to float rounding: the two runs are two worker
    # processes, and CPU matrix products may round differently between processes (seen in the LM
    # cache's test: 1.3e-7 apart at 0.135, in one CI run)
    assert losses[1]["values"] == pytest.approx(losses[0]["values"], rel=1e-6, abs=1e-6)
    for run in runs:
        arts = {a["kind"]: a for a in api.get(f"/runs/{run['id']}/artifacts").json()}
        cache = arts["teacher_cache"]
        assert cache["filename"] == "teacher_cache.npz"
        assert cache["size_bytes"] == run["summary"]["teacher_cache"]["size_bytes"] > 0
