"""Quantized students through the REST API: `training.qat` is in the catalog, checked before
queueing, and a real worker trains the student through fake quantization, stores its int8
model (ONNX QDQ, `student_int8.onnx`) and the side-by-side evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import mark_ready_from, run_config, upload_demo, wait_run

pytestmark = pytest.mark.slow

MLP = {"source": "zoo", "architecture": "mlp", "kwargs": {"hidden": 32, "depth": 1}}


def test_the_catalog_declares_the_qat_setting(api: TestClient) -> None:
    training = {s["name"]: s for s in api.get("/catalog").json()["training"]}
    qat = training["qat"]
    assert qat["default"] == "none" and qat["choices"] == ["none", "x86", "qnnpack"]
    assert "int8" in qat["help"] and "student_int8.onnx" in qat["help"]


def test_configs_qat_cannot_run_are_refused_before_queueing(api: TestClient) -> None:
    fake = {"id": 1}
    r = api.post("/runs", json=run_config(fake, fake, training={"qat": "int4"}))
    assert r.status_code == 422 and "'none', 'x86' or 'qnnpack'" in r.text
    body = run_config(
        fake, fake, training={"qat": "x86"}, scheme={"name": "online", "params": {"peers": 2}}
    )
    r = api.post("/runs", json=body)
    assert r.status_code == 422 and "use scheme 'offline'" in r.text


@pytest.mark.one_database
def test_a_real_worker_trains_and_exports_an_int8_student(
    api, worker, demo_files: tuple[Path, Path]
) -> None:
    model, dataset = mark_ready_from(api, *upload_demo(api, demo_files))
    body = run_config(
        model, dataset, student=MLP, training={"epochs": 1, "export_onnx": False, "qat": "x86"}
    )
    r = api.post("/runs", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["config"]["training"]["qat"] == "x86"
    done = wait_run(api, r.json()["id"])
    assert done["status"] == "succeeded", (done, worker.output()[-3000:])
    block = done["summary"]["quantized"]
    assert block["backend"] == "x86" and block["int8_weight_tensors"] == 2
    for side in ("fp32", "int8"):
        assert 0.0 <= block[side]["top1"] <= 1.0
        assert block[side]["size_bytes"] > 0 and block[side]["cpu_latency_ms"] > 0
    arts = {a["kind"]: a for a in api.get(f"/runs/{done['id']}/artifacts").json()}
    assert "student_int8" not in arts  # no TorchScript: the int8 model is ONNX QDQ
    assert arts["student_int8_onnx"]["filename"] == "student_int8.onnx"
    assert arts["student_int8_onnx"]["size_bytes"] == block["int8"]["size_bytes"]
    assert block["artifact_format"] == "onnx-qdq" and block["runtime"].startswith("onnxruntime")
    assert block["artifact_int8_weights"]["tensors"] == 2  # the file's int8 weight matrices
    assert arts["student_safetensors"]["filename"] == "student.safetensors"  # fp32, as before
