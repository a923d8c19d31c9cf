"""The whole embedded studio, as a new user gets it, driven only over HTTP.

`distill-studio up` starts SQLite, a Valkey child process, the API, one worker and the UI and
registers the demo teacher and dataset. Through the REST API alone the test then uploads a
teacher (the demo's .pt2) and the digits as an .npz, plans a run,
launches KD + attention transfer on a suggested layer pair, watches it progress, downloads the
student and checks its accuracy on the held-out digits against the teacher's. Ctrl-C (SIGINT)
must stop every process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import digits_npz, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("studio")
    api_port, ui_port, broker_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DS_")}
    env.update(
        DS_DATA_DIR=str(data),
        DS_API_PORT=str(api_port),
        DS_UI_PORT=str(ui_port),
        DS_BROKER_PORT=str(broker_port),
        PYTHONUNBUFFERED="1",
    )
    log = data / "up.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up"],
        cwd=ROOT,
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 240
    text = ""
    while time.time() < deadline:
        text = log.read_text(errors="replace")
        if "Press Ctrl-C to stop." in text or proc.poll() is not None:
            break
        time.sleep(1)
    assert "Press Ctrl-C to stop." in text, text[-4000:]
    token = re.search(r"API token: (\S+)", text).group(1)  # type: ignore[union-attr]
    login = re.search(r"login:\s+(\S+) / (\S+)", text)
    assert login, text
    yield {
        "api": f"http://127.0.0.1:{api_port}",
        "ui": f"http://127.0.0.1:{ui_port}",
        "token": token,
        "username": login.group(1),
        "password": login.group(2),
        "proc": proc,
        "data": data,
        "log": log,
    }
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def test_upload_distill_download_over_http(studio) -> None:
    api = studio["api"]
    # log in with the printed credentials, as a person would
    r = httpx.post(
        f"{api}/api/v1/auth/token",
        data={"username": studio["username"], "password": studio["password"]},
    )
    assert r.status_code == 200, r.text
    http = httpx.Client(
        base_url=f"{api}/api/v1",
        timeout=60,
        headers={"Authorization": f"Bearer {r.json()['access_token']}"},
    )

    # upload a teacher and a dataset as a user would: the demo teacher's own .pt2 (as exported
    # elsewhere) and the bundled digits as an .npz
    demo = _wait_ready(http, "models", "digits-teacher")
    teacher_file = studio["data"] / "teacher.pt2"
    teacher_file.write_bytes(http.get(f"/models/{demo['id']}/download").content)
    with open(teacher_file, "rb") as fh:
        r = http.post(
            "/models",
            files={"file": ("teacher.pt2", fh)},
            data={"name": "uploaded-teacher", "format": "pt2"},
        )
    assert r.status_code == 201, r.text
    digits_file = digits_npz(studio["data"] / "digits.npz")
    with open(digits_file, "rb") as fh:
        r = http.post("/datasets", files={"file": ("digits.npz", fh)}, data={"name": "my-digits"})
    assert r.status_code == 201, r.text
    teacher = _wait_ready(http, "models", "uploaded-teacher")
    dataset = _wait_ready(http, "datasets", "my-digits")
    assert teacher["inspection"]["input_shape"] == [1, 8, 8]
    assert dataset["info"]["num_classes"] == 10 and dataset["info"]["num_samples"] == 1797

    student = {"source": "zoo", "architecture": "resnet8", "kwargs": {"width": 0.5}}
    body = {"teacher_model_id": teacher["id"], "dataset_id": dataset["id"], "student": student}
    deadline = time.time() + 300  # 202 while the worker builds the student's layer table
    while (plan := http.post("/runs/plan", json=body)).status_code == 202:
        assert time.time() < deadline, plan.text
        time.sleep(float(plan.headers["Retry-After"]))
    assert plan.status_code == 200, plan.text
    pairs = plan.json()["suggested_pairs"]
    assert pairs, plan.json()
    assert plan.json()["student_params"] < plan.json()["teacher_params"] / 4

    config = {
        "name": "e2e kd+at",
        "teacher": {"model_id": teacher["id"]},
        "student": student,
        "dataset": {"dataset_id": dataset["id"]},
        "layer_pairs": [{"teacher": pairs[0]["teacher"], "student": pairs[0]["student"]}],
        "losses": [
            {"name": "ce"},
            {"name": "kd", "params": {"temperature": 4}},
            {"name": "at", "weight": 100},
        ],
        "training": {"epochs": 15, "batch_size": 64, "lr": 0.05, "checkpoint_every": 50},
        "seed": 0,
    }
    run = http.post("/runs", json=config)
    assert run.status_code == 201, run.text
    run_id = run.json()["id"]

    seen_progress = set()
    deadline = time.time() + 300
    while time.time() < deadline:
        state = http.get(f"/runs/{run_id}").json()
        seen_progress.add(round(state["progress"], 2))
        if state["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.5)
    assert state["status"] == "succeeded", state
    assert len(seen_progress) >= 3, "progress was not reported live"

    metrics = http.get(f"/runs/{run_id}/metrics").json()["series"]
    for name in ("loss", "loss/ce", "loss/kd", "loss/at", "val/top1"):
        assert metrics.get(name, {}).get("steps"), f"no {name} metrics"
    steps = metrics["loss"]["steps"]
    assert steps == sorted(set(steps)), "duplicated or unordered steps"

    artifacts = {a["kind"]: a for a in http.get(f"/runs/{run_id}/artifacts").json()}
    assert {"student_safetensors", "student_pt2", "config", "evaluation"} <= set(artifacts)
    student_file = studio["data"] / "downloaded_student.pt2"
    student_file.write_bytes(
        http.get(f"/artifacts/{artifacts['student_pt2']['id']}/download").content
    )

    student_acc, teacher_acc = _held_out_accuracy(student_file), _held_out_accuracy(teacher_file)
    summary = state["summary"]
    print(
        f"held-out top-1: teacher {teacher_acc:.4f}, student {student_acc:.4f}; summary {summary}"
    )
    assert student_acc > 0.8, "far above chance (0.1)"
    assert student_acc >= teacher_acc - 0.05, "within a few points of the teacher"
    assert abs(summary["student_top1"] - student_acc) < 1e-6
    assert summary["student_params"] < summary["teacher_params"]


def test_ctrl_c_stops_everything(studio) -> None:
    proc: subprocess.Popen[bytes] = studio["proc"]
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    text = studio["log"].read_text(errors="replace")
    assert "stopped" in text
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{studio['api']}/api/v1/health", timeout=2)


def _wait_ready(http: httpx.Client, kind: str, name: str) -> dict:
    deadline = time.time() + 120
    while time.time() < deadline:
        items = [m for m in http.get(f"/{kind}").json()["items"] if m["name"] == name]
        if items and items[0]["status"] in ("ready", "failed"):
            detail = http.get(f"/{kind}/{items[0]['id']}").json()
            assert detail["status"] == "ready", detail
            return detail
        time.sleep(0.5)
    raise AssertionError(f"{kind} '{name}' never became ready")


def _held_out_accuracy(path: Path) -> float:
    """Top-1 on the run's held-out split (val_fraction 0.2, seed 0) of the bundled digits."""
    import torch
    from sklearn.datasets import load_digits

    from worker.engine.loading import load_model
    from worker.engine.tasks.classification.data import TensorData, split

    digits = load_digits()
    x = torch.tensor(digits.images[:, None] / 16.0, dtype=torch.float32)
    data = TensorData(x, torch.tensor(digits.target), [str(i) for i in range(10)])
    _, val = split(data, 0.2, 0)
    module = load_model(path, "pt2").module
    with torch.inference_mode():
        pred = module(val.x).argmax(1)
    return float(np.mean((pred == val.y).numpy()))
