"""Fixtures of the integration tests (the API in-process: `app_client`, `api`; the demo files),
and helpers for tests that drive the API and a real worker process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.integration.api_helpers import new_client, signed_in


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The demo teacher (.pt2) and digits dataset (.npz), made once per test session."""
    from worker.engine.pipeline import make_demo

    return make_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def app_client(studio_env) -> Iterator[TestClient]:
    """The app in-process (a fresh app for the current settings), with no credentials."""
    with new_client() as client:
        yield client


@pytest.fixture
def api(app_client: TestClient, admin_token: str) -> TestClient:
    """The app, signed in as the first admin (studio administrator, owner of team "default").

    The same client as `app_client`: a request there with other `headers` acts as someone else.
    """
    return signed_in(app_client, admin_token)


def wait_status(api: TestClient, path: str, done: set[str], timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    body: dict = {}
    while time.time() < deadline:
        body = api.get(path).json()
        if body["status"] in done:
            return body
        time.sleep(0.3)
    raise AssertionError(f"{path} stayed {body.get('status')}: {body}")


def wait_run(api: TestClient, run_id: int, timeout: float = 600) -> dict:
    return wait_status(api, f"/runs/{run_id}", {"succeeded", "failed", "cancelled"}, timeout)


def wait_for(
    api: TestClient, run_id: int, ready: Callable[[dict], bool], timeout: float = 600
) -> dict:
    """The run as soon as `ready(run)` holds; an AssertionError when it ends (or `timeout`
    passes) first."""
    deadline = time.time() + timeout
    body: dict = {}
    while time.time() < deadline:
        body = api.get(f"/runs/{run_id}").json()
        if ready(body):
            return body
        assert body["status"] not in ("succeeded", "failed", "cancelled"), body
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} never got there: {body}")


def wait_step(api: TestClient, run_id: int, step: int, timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = api.get(f"/runs/{run_id}").json()
        if body["step"] >= step or body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} never reached step {step}")


def upload_demo(api: TestClient, demo_files: tuple[Path, Path]) -> tuple[dict, dict]:
    teacher_path, data_path = demo_files
    with open(teacher_path, "rb") as fh:
        r = api.post(
            "/models", files={"file": ("teacher.pt2", fh)}, data={"name": "t", "format": "pt2"}
        )
    assert r.status_code == 201, r.text
    with open(data_path, "rb") as fh:
        d = api.post("/datasets", files={"file": ("digits.npz", fh)}, data={"name": "digits"})
    assert d.status_code == 201, d.text
    return r.json(), d.json()


def upload_lm_demo(api: TestClient, tmp_path: Path, rows: int) -> tuple[int, int]:
    """The demo causal LM (`tests.lm_helpers`, format hf) and `rows` lines of its corpus,
    uploaded and scanned: (model id, dataset id)."""
    from tests.lm_helpers import lm_demo_files

    demo = lm_demo_files()
    with demo.teacher.open("rb") as fh:
        model = api.post(
            "/models", files={"file": ("lm.zip", fh)}, data={"name": "lm", "format": "hf"}
        )
    corpus = demo.write_text(tmp_path / "corpus.txt", rows)
    with corpus.open("rb") as fh:
        dataset = api.post("/datasets", files={"file": ("corpus.txt", fh)}, data={"name": "c"})
    assert model.status_code == 201 and dataset.status_code == 201, (model.text, dataset.text)
    for path in (f"/models/{model.json()['id']}", f"/datasets/{dataset.json()['id']}"):
        ready = wait_status(api, path, {"ready", "failed"})
        assert ready["status"] == "ready", ready
    return model.json()["id"], dataset.json()["id"]


def mark_ready_from(api: TestClient, model: dict, dataset: dict) -> tuple[dict, dict]:
    m = wait_status(api, f"/models/{model['id']}", {"ready", "failed"})
    d = wait_status(api, f"/datasets/{dataset['id']}", {"ready", "failed"})
    assert m["status"] == "ready", (m.get("error"), m)
    assert d["status"] == "ready", d
    return m, d


def run_config(model: dict, dataset: dict, **overrides) -> dict:
    training = {
        "epochs": 3,
        "batch_size": 64,
        "checkpoint_every": 20,
        # the ONNX exporter costs seconds a run; ONNX export has its own tests (test_export_*)
        "export_onnx": False,
        **overrides.pop("training", {}),
    }
    return {
        "name": "integration run",
        "teacher": {"model_id": model["id"]},
        "student": {"source": "zoo", "architecture": "resnet8", "kwargs": {"width": 0.5}},
        "dataset": {"dataset_id": dataset["id"]},
        "losses": [{"name": "ce"}, {"name": "kd"}],
        "training": training,
        **overrides,
    }


def metric_steps(api: TestClient, run_id: int, name: str = "loss") -> list[int]:
    return api.get(f"/runs/{run_id}/metrics", params={"names": name}).json()["series"][name][
        "steps"
    ]
