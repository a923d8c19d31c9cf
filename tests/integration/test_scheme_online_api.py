"""The `online` scheme (deep mutual learning) through the REST API: its parameters (peer layers
against the student's layer table too) are checked before queueing, and a real worker trains the
peers, matching their features at a peer layer, and stores each one's artifacts and
evaluation."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from tests.integration import api_helpers
from tests.integration.api_helpers import STUDENT_INSPECTION, ready_dataset, ready_model, row_count
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
    assert params["mutual_loss"]["default"] == "kl"
    assert params["mutual_loss"]["choices"] == [
        *("kl", "kd", "dkd", "dist", "logit_std"),
        *("reverse_kl", "gkd_jsd", "skew_kl", "tvd"),  # the token-level divergences
    ]
    assert (params["peer_layers"]["type"], params["peer_layers"]["default"]) == ("str", "")
    assert params["peer_loss"]["default"] == "feature_l2"
    assert {"feature_l2", "at", "fitnets"} <= set(params["peer_loss"]["choices"])
    assert not {"ft", "ka", "kd", "rkd"} & set(params["peer_loss"]["choices"])
    assert params["peer_weight"]["default"] == 1.0
    assert "peer_layers" in online["help"]


def test_peer_layers_are_checked_against_the_students_layer_table_before_queueing(
    api: TestClient,
) -> None:
    """422 for a loss that is not a feature loss, a repeated layer, feature losses on
    layer_pairs, and a layer the student does not have (from its stored layer table); the run
    is created with layers it has."""
    from core import inspections

    teacher, dataset = ready_model(api), ready_dataset(api)
    inspections.plant("resnet8", {"width": 0.25}, [3, 8, 8], 4, STUDENT_INSPECTION)
    runs = row_count("Run")

    def post(params: dict, **fields: object) -> Response:
        scheme = {"name": "online", "params": params}
        return api.post("/runs", json=api_helpers.run_config(teacher, dataset, scheme=scheme,
                                                             **fields))  # fmt: skip

    r = post({"peer_layers": "blocks.1", "peer_loss": "kd"})
    assert r.status_code == 422 and "'peer_loss' of 'online' must be one of" in r.text
    r = post({"peer_layers": "blocks.1,blocks.1"})
    assert r.status_code == 422 and "peer_layers names ['blocks.1'] more than once" in r.text
    r = post({}, layer_pairs=[{"teacher": "layer2", "student": "blocks.1"}],
             losses=[{"name": "ce"}, {"name": "at"}])  # fmt: skip
    assert (
        r.status_code == 422
        and "match features on layer_pairs" in r.text
        and "scheme_params.peer_layers" in r.text
    )
    r = post({"peer_layers": "blocks.1, layer9"})
    assert r.status_code == 422, r.text
    error = r.json()["errors"][0]
    assert error["loc"] == ["body", "scheme_params", "peer_layers"]
    assert error["msg"].startswith("layer 'layer9' not in student; nearest:")
    assert row_count("Run") == runs  # nothing saved
    params = {"peer_layers": "blocks.0,blocks.1", "peer_loss": "at", "mutual_loss": "dist"}
    r = post({**params, "peer_weight": 100.0})
    assert r.status_code == 201, r.text
    assert r.json()["config"]["scheme_params"] == {**params, "peer_weight": 100.0}


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
        scheme={"name": "online", "params": {"peers": 2, "peer_layers": "layers.0"}},
        training={"epochs": 1, "export_onnx": False},
    )
    deadline = time.time() + 300  # 202 while the worker builds the student's layer table
    while (r := api.post("/runs", json=body)).status_code == 202:
        assert time.time() < deadline, r.text
        time.sleep(0.5)
    assert r.status_code == 201, r.text
    assert r.json()["config"]["scheme_params"] == {"peers": 2, "peer_layers": "layers.0"}
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
    assert {"loss/mutual_feat", "loss/p1/mutual_feat"} <= set(series)  # features between peers
