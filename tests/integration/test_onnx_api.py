"""Teachers in ONNX through the REST API: an `.onnx` upload is accepted, inspected (here by the
worker's task run in-process) into a layer table of module paths with stages, and (one real
worker) distils a student with kd and a feature pair."""

from __future__ import annotations

import io
import time
import warnings
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from tests.conftest import digits_npz
from tests.integration.api_helpers import queue_length, upload_model
from tests.integration.conftest import mark_ready_from, run_config, wait_run

SHAPE = (1, 8, 8)


class Small(nn.Module):
    """A digits teacher: conv stage, pooling, linear head (its `fc` input is a 128-vector)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.stage = nn.ReLU()
        self.fc = nn.Linear(8 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(self.stage(self.conv(x)), 2)
        return self.fc(h.flatten(1))


def onnx_bytes() -> bytes:
    torch.manual_seed(0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: quick
        torch.onnx.export(
            Small().eval(),
            (torch.zeros(2, *SHAPE),),
            buf,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
            dynamo=False,
        )
    return buf.getvalue()


def _until_not_pending(send, timeout: float = 120):
    """Send again while the API answers 202 (a worker builds the zoo student's layer table)."""
    deadline = time.time() + timeout
    while (r := send()).status_code == 202:
        assert time.time() < deadline, r.text
        time.sleep(0.2)
    return r


def _inspect_here(model_id: int) -> str:
    """What a worker does with the queued INSPECT_MODEL message (in-process; the sandbox still
    loads the file in a child process)."""
    from worker.tasks import inspect_model

    return inspect_model(model_id)


def test_onnx_upload_is_inspected_into_a_layer_table(api: TestClient, studio_env) -> None:
    data = onnx_bytes()
    r = upload_model(api, "onnx-teacher", data, "teacher.onnx")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "onnx" and body["status"] == "pending"
    assert queue_length(studio_env) == 1
    assert _inspect_here(body["id"]) == "ready"
    model = api.get(f"/models/{body['id']}").json()
    assert model["status"] == "ready", model
    inspection = model["inspection"]
    assert inspection["input_shape"] == list(SHAPE) and inspection["num_classes"] == 10
    rows = {row["path"]: row for row in inspection["layers"]}
    assert list(rows) == ["conv", "stage", "fc"]
    assert rows["conv"]["type"] == "Conv" and rows["conv"]["output_shape"] == [8, 8, 8]
    assert rows["fc"]["input_shape"] == [128] and rows["fc"]["params"] == 128 * 10 + 10
    assert inspection["params"] == 8 * 9 + 8 + 128 * 10 + 10
    assert [s["end"] for s in inspection["stages"]] == ["stage", "fc"]
    assert model["card"]["format"] == "onnx" and model["card"]["num_classes"] == 10

    declared = upload_model(api, "w", data, "teacher.bin", format="onnx")
    assert declared.status_code == 201 and declared.json()["format"] == "onnx"
    mismatch = upload_model(api, "w", data, "teacher.onnx", format="pt2")
    assert mismatch.status_code == 422 and "named as onnx but format=pt2" in mismatch.text
    unknown = upload_model(api, "w", data, "teacher.tflite")
    assert unknown.status_code == 422 and ".onnx" in unknown.json()["detail"]
    # broken and hostile .onnx files: test_hostile_models.py (a real worker)


@pytest.mark.slow
@pytest.mark.one_database
def test_a_real_worker_distils_from_an_onnx_teacher(
    api: TestClient, worker, tmp_path: Path
) -> None:
    r = upload_model(api, "onnx-teacher", onnx_bytes(), "teacher.onnx")
    assert r.status_code == 201, r.text
    with digits_npz(tmp_path / "digits.npz").open("rb") as fh:
        d = api.post("/datasets", files={"file": ("digits.npz", fh)}, data={"name": "digits"})
    assert d.status_code == 201, d.text
    model, dataset = mark_ready_from(api, r.json(), d.json())
    body = run_config(
        model,
        dataset,
        student={"source": "zoo", "architecture": "mlp", "kwargs": {"hidden": 32, "depth": 1}},
        losses=[{"name": "ce"}, {"name": "kd"}, {"name": "fitnets", "weight": 0.5}],
        layer_pairs=[{"teacher": "fc", "student": "layers.0", "tap": "input"}],
        training={"epochs": 1, "export_onnx": False},
    )
    bad = {**body, "layer_pairs": [{"teacher": "fc2", "student": "layers.0", "tap": "input"}]}
    refused = _until_not_pending(lambda: api.post("/runs", json=bad))  # the worker builds the MLP
    assert refused.status_code == 422 and "fc2" in refused.text  # the teacher's layer table
    run = _until_not_pending(lambda: api.post("/runs", json=body))
    assert run.status_code == 201, run.text
    done = wait_run(api, run.json()["id"])
    assert done["status"] == "succeeded", (done, worker.output()[-3000:])
    names = set(api.get(f"/runs/{done['id']}/metrics").json()["series"])
    assert any("fitnets" in n for n in names) and any("kd" in n for n in names), names
    summary = done["summary"]  # the evaluation ran the ONNX teacher too
    assert 0.0 <= summary["teacher_top1"] <= 1.0 and 0.0 <= summary["student_top1"] <= 1.0
