"""The `netaug` scheme through the REST API: the catalog lists it with its parameters and paper,
configs it cannot run are refused before queueing (saying why and what works), and a real
worker trains a tiny student inside its wider twins and stores only the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import mark_ready_from, run_config, upload_demo, wait_run

pytestmark = pytest.mark.slow

MLP = {"source": "zoo", "architecture": "mlp", "kwargs": {"hidden": 16, "depth": 1}}


def test_the_catalog_lists_the_netaug_scheme_with_its_parameters(api: TestClient) -> None:
    schemes = {s["name"]: s for s in api.get("/catalog").json()["schemes"]}
    entry = schemes["netaug"]
    assert "Network Augmentation for Tiny Deep Learning" in entry["paper"]
    assert "alpha * L([W_tiny, W_aug])" in entry["help"]
    params = {p["name"]: p for p in entry["params"]}
    assert params["widths"]["type"] == "str" and params["widths"]["default"] == "1.5,2,3"
    assert params["alpha"]["default"] == 1.0
    assert (params["alpha"]["min"], params["alpha"]["max"]) == (0.0, 100.0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"scheme": {"name": "netaug", "params": {"alpha": 500}}},
            "'alpha' of 'netaug' must be in [0.0, 100.0]",
        ),
        (
            {"scheme": {"name": "netaug", "params": {"widths": "0.5,2"}}},
            "widths must be multiples of the student's width in (1, 8]",
        ),
        (
            {"scheme": "netaug", "scheme_params": {"width": "2"}},
            "unknown parameter 'width' for 'netaug'",
        ),
        (
            {"scheme": "netaug", "student": {"source": "model", "model": {"model_id": 1}}},
            "an uploaded student (source 'model') is a fixed graph that cannot be widened",
        ),
        (
            {"scheme": "netaug", "student": {"source": "zoo", "architecture": "shufflenetv2"}},
            "use a student of mlp, resnet, wrn, vgg",
        ),
    ],
)
def test_configs_netaug_cannot_run_are_refused_before_queueing(
    api: TestClient, fields: dict, message: str
) -> None:
    fake = {"id": 1}
    r = api.post("/runs", json=run_config(fake, fake, **fields))
    assert r.status_code == 422, r.text
    assert message in r.text


@pytest.mark.one_database
def test_a_real_worker_trains_the_tiny_student_inside_its_wider_twins(
    api, worker, demo_files: tuple[Path, Path]
) -> None:
    model, dataset = mark_ready_from(api, *upload_demo(api, demo_files))
    body = run_config(
        model,
        dataset,
        student=MLP,
        scheme={"name": "netaug", "params": {"widths": "2,3", "alpha": 1.0}},
        training={"epochs": 1, "export_onnx": False},
    )
    r = api.post("/runs", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["config"]["scheme_params"] == {"widths": "2,3", "alpha": 1.0}
    done = wait_run(api, r.json()["id"])
    assert done["status"] == "succeeded", (done, worker.output()[-3000:])
    assert 0.0 <= done["summary"]["student_top1"] <= 1.0
    assert "peers" not in done["summary"] and "generations" not in done["summary"]
    arts = {a["kind"]: a["filename"] for a in api.get(f"/runs/{done['id']}/artifacts").json()}
    assert arts["student_safetensors"] == "student.safetensors"
    assert not [k for k in arts if k.startswith(("peer", "gen", "aug"))]  # the tiny model only
    series = api.get(f"/runs/{done['id']}/metrics").json()["series"]
    assert {"loss/ce", "loss/kd", "loss/aug/ce", "loss/aug/kd", "val/top1"} <= set(series)
