"""The `online` scheme (deep mutual learning) through the REST API: its parameters are checked
before queueing, and a real worker trains the peers and stores each one's artifacts and
evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import mark_ready_from, run_config, upload_demo, wait_run

pytestmark = pytest.mark.slow

MLP = {"source": "zoo", "architecture": "mlp", "kwargs": {"hidden": 32, "depth": 1}}


def test_the_catalog_lists_the_online_scheme_with_its_parameters(api: TestClient) -> None:
    schemes = {s["name"]: s for s in api.get("/catalog").json()["schemes"]}
    online = schemes["online"]
    assert "Deep Mutual Learning" in online["paper"]
    params = {p["name"]: p for p in online["params"]}
    assert params["peers"]["default"] == 2 and (params["peers"]["min"], params["peers"]["max"]) == (
        2,
        8,
    )
    assert {"weight", "temperature"} <= set(params)


def test_bad_scheme_parameters_are_refused_before_queueing(api: TestClient) -> None:
    fake = {"id": 1}
    body = run_config(fake, fake, scheme={"name": "online", "params": {"peers": 12}})
    r = api.post("/runs", json=body)
    assert r.status_code == 422
    assert "'peers' of 'online' must be in [2, 8]" in r.text
    body = run_config(fake, fake, scheme="online", scheme_params={"students": 2})
    r = api.post("/runs", json=body)
    assert r.status_code == 422 and "unknown parameter 'students' for 'online'" in r.text


@pytest.mark.one_database
def test_a_real_worker_trains_every_peer(api, worker, demo_files: tuple[Path, Path]) -> None:
    model, dataset = mark_ready_from(api, *upload_demo(api, demo_files))
    body = run_config(
        model,
        dataset,
        student=MLP,
        scheme={"name": "online", "params": {"peers": 2}},
        training={"epochs": 1, "export_onnx": False},
    )
    r = api.post("/runs", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["config"]["scheme_params"] == {"peers": 2}
    done = wait_run(api, r.json()["id"])
    assert done["status"] == "succeeded", (done, worker.output()[-3000:])
    peers = done["summary"]["peers"]
    assert [p["peer"] for p in peers] == [0, 1]
    assert all(0.0 <= p["student_top1"] <= 1.0 for p in peers)
    arts = {a["kind"]: a["filename"] for a in api.get(f"/runs/{done['id']}/artifacts").json()}
    assert arts["student_safetensors"] == "student.safetensors"
    assert arts["peer1_student_safetensors"] == "peer1_student.safetensors"
    assert arts["peer1_student_pt2"] == "peer1_student.pt2"
    series = api.get(f"/runs/{done['id']}/metrics").json()["series"]
    assert {"loss/mutual", "loss/p1/mutual", "loss/p1/ce", "val/top1", "val/p1/top1"} <= set(series)
