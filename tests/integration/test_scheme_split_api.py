"""The `split` scheme through the REST API: the catalog lists it with its paper and parameters,
split points the teacher does not have (or that are not feature maps) are refused before
queueing, and a real worker trains a head for the demo teacher (head.* stored, the split block
in the summary)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.integration.api_helpers import (
    TEACHER_INSPECTION,
    queue_length,
    ready_dataset,
    ready_model,
)
from tests.integration.api_helpers import run_config as api_run_config
from tests.integration.conftest import mark_ready_from, run_config, upload_demo, wait_run


def test_the_catalog_lists_split_with_its_parameters_and_paper(api: TestClient) -> None:
    schemes = {s["name"]: s for s in api.get("/catalog").json()["schemes"]}
    entry = schemes["split"]
    assert "Distilled Split Deep Neural Networks" in entry["paper"]
    params = {p["name"]: p for p in entry["params"]}
    assert params["split_at"]["type"] == "str" and params["split_at"]["default"] == ""
    assert (params["bottleneck"]["min"], params["bottleneck"]["max"]) == (1, 512)
    assert params["feature_weight"]["default"] == 1.0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"split_at": "layer9"}, "layer 'layer9' not in teacher; nearest:"),
        ({"split_at": "fc"}, "teacher layer 'fc' outputs [4], not a feature map"),
    ],
)
def test_a_split_point_the_teacher_cannot_be_cut_at_is_refused_before_queueing(
    api: TestClient, studio_env, params: dict, message: str
) -> None:
    model_id, dataset_id = ready_model(api), ready_dataset(api)
    queued = queue_length(studio_env)
    body = api_run_config(model_id, dataset_id, scheme={"name": "split", "params": params})
    r = api.post("/runs", json=body)
    assert r.status_code == 422, r.text
    assert message in r.text and "stage ends that can be split: layer1, layer2, layer3" in r.text
    assert r.json()["errors"][0]["loc"] == ["body", "scheme_params", "split_at"]
    assert queue_length(studio_env) == queued


def test_a_teacher_without_feature_maps_cannot_be_split(api: TestClient) -> None:
    vector = {
        **TEACHER_INSPECTION,
        "input_shape": [64],
        "layers": [{"path": "fc", "type": "Linear", "input_shape": [64], "output_shape": [4],
                    "params": 260, "stage": None}],
        "stages": [],
    }  # fmt: skip
    model_id, dataset_id = ready_model(api, inspection=vector), ready_dataset(api)
    r = api.post("/runs", json=api_run_config(model_id, dataset_id, scheme="split"))
    assert r.status_code == 422, r.text
    assert "no spatial stage: use scheme 'offline'" in r.text


def test_configs_split_cannot_run_are_refused_by_the_config_itself(api: TestClient) -> None:
    fake = {"id": 1}
    for fields, message in [
        ({"scheme": {"name": "split", "params": {"bottleneck": 0}}}, "'bottleneck' of 'split'"),
        (
            {"scheme": "split", "layer_pairs": [{"teacher": "layer1", "student": "layer1"}]},
            "remove layer_pairs",
        ),
    ]:
        r = api.post("/runs", json=run_config(fake, fake, **fields))
        assert r.status_code == 422, r.text
        assert message in r.text


def test_a_valid_split_point_is_queued(api: TestClient) -> None:
    model_id, dataset_id = ready_model(api), ready_dataset(api)
    body = api_run_config(
        model_id, dataset_id, scheme={"name": "split", "params": {"split_at": "layer2"}}
    )
    r = api.post("/runs", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["config"]["scheme_params"] == {"split_at": "layer2"}


@pytest.mark.slow
@pytest.mark.one_database
def test_a_real_worker_trains_a_split_head(api, worker, demo_files: tuple[Path, Path]) -> None:
    model, dataset = mark_ready_from(api, *upload_demo(api, demo_files))
    body = run_config(
        model,
        dataset,
        losses=[{"name": "ce"}],
        scheme={"name": "split", "params": {"bottleneck": 2}},
        training={"epochs": 1, "export_onnx": False},
    )
    r = api.post("/runs", json=body)
    assert r.status_code == 201, r.text
    done = wait_run(api, r.json()["id"])
    assert done["status"] == "succeeded", (done, worker.output()[-3000:])
    split = done["summary"]["split"]
    assert split["split_at"] == "layer1"  # the demo teacher's first stage end
    channels, height, width = split["feature_shape"]
    assert split["bottleneck_bytes"] == {
        "float32": 2 * height * width * 4,
        "int8": 2 * height * width,
    }
    assert split["head_latency_ms"] > 0
    assert 0.0 <= split["end_to_end"]["val/top1"] <= 1.0
    arts = {a["kind"]: a["filename"] for a in api.get(f"/runs/{done['id']}/artifacts").json()}
    assert arts["head_safetensors"] == "head.safetensors" and arts["head_pt2"] == "head.pt2"
    series = api.get(f"/runs/{done['id']}/metrics").json()["series"]
    assert {"loss/feature", "loss/ce", "val/top1"} <= set(series)
