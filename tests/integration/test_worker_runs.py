"""A real Celery worker process on real Redis, with SQLite (a worker on PostgreSQL, killed,
redelivered and cut off from its database: test_reliability.py; a running run cancelled:
test_reliability.py too).

The API runs in-process (TestClient); the worker is a separate `celery worker` process sharing
the database, broker and artifact folder — the production topology on one machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import mark_ready_from, run_config, upload_demo, wait_status

pytestmark = pytest.mark.slow


def _upload(api: TestClient, demo_files: tuple[Path, Path]) -> tuple[dict, dict]:
    return mark_ready_from(api, *upload_demo(api, demo_files))


def _wait(api: TestClient, path: str, done: set[str], timeout: float = 180) -> dict:
    return wait_status(api, path, done, timeout)


_config = run_config
TERMINAL = {"succeeded", "failed", "cancelled"}


# a worker's runs on PostgreSQL: test_reliability.py (killed, redelivered, the database away)
@pytest.mark.one_database
def test_inspect_plan_distill_on_a_real_worker(api, worker, demo_files) -> None:
    model, dataset = _upload(api, demo_files)
    layers = {row["path"]: row for row in model["inspection"]["layers"]}
    assert layers["layer3"]["output_shape"][0] == 128  # resnet20 at width 2

    student = {"source": "zoo", "architecture": "resnet8", "kwargs": {"width": 0.5}}
    body = {"teacher_model_id": model["id"], "dataset_id": dataset["id"], "student": student}
    deadline = time.time() + 300  # 202 while the worker builds the student's layer table
    while (plan := api.post("/runs/plan", json=body)).status_code == 202:
        assert time.time() < deadline, plan.text
        time.sleep(0.5)
    assert plan.status_code == 200, plan.text
    pairs = plan.json()["suggested_pairs"]
    assert [p["teacher"] for p in pairs][-1] == "layer3"

    bad_pair = [{"teacher": "layer3", "student": "layer9"}]
    bad = api.post(
        "/runs",
        json=_config(model, dataset, layer_pairs=bad_pair, losses=[{"name": "ce"}, {"name": "at"}]),
    )
    assert bad.status_code == 422
    assert (
        "layer 'layer9' not in student" in bad.json()["detail"] and "layer3" in bad.json()["detail"]
    )

    pair = {"teacher": pairs[-1]["teacher"], "student": pairs[-1]["student"]}
    run = api.post(
        "/runs",
        json=_config(
            model,
            dataset,
            layer_pairs=[pair],
            losses=[{"name": "ce"}, {"name": "kd"}, {"name": "fitnets"}],
        ),
    )
    assert run.status_code == 201, run.text
    done = _wait(api, f"/runs/{run.json()['id']}", {"succeeded", "failed", "cancelled"})
    assert done["status"] == "succeeded", (done, worker.output()[-3000:])
    assert done["attempts"] == 1 and done["progress"] == 1.0
    summary = done["summary"]
    assert summary["student_top1"] > 0.5 and summary["teacher_top1"] > 0.9
    assert summary["torch_threads"] == 1  # the tests' OMP_NUM_THREADS=1, left to torch
    assert summary["nice"] >= 10  # DS_WORKER_NICE's default: below the API's priority

    series = api.get(f"/runs/{done['id']}/metrics").json()["series"]
    assert {"loss", "loss/ce", "loss/kd", "loss/fitnets", "lr", "val/top1"} <= set(series)
    steps = series["loss"]["steps"]
    assert steps == sorted(set(steps)) and steps[-1] == done["total_steps"], "each step once"
    assert len(steps) == done["total_steps"]
    arts = api.get(f"/runs/{done['id']}/artifacts").json()
    assert {a["kind"] for a in arts} >= {
        "student_safetensors",
        "student_pt2",
        "config",
        "evaluation",
    }
    cfg = api.get(f"/artifacts/{next(a['id'] for a in arts if a['kind'] == 'config')}/download")
    assert b"fitnets" in cfg.content


@pytest.mark.parametrize("studio_env", ["sqlite"], indirect=True)
def test_registered_student_trains_in_later_runs_on_a_real_worker(api, worker, demo_files) -> None:
    """A succeeded run's student, registered, is inspected by the worker, then teaches a new
    student in one run and is the starting point of the student of another (its weights carried
    over: with a tiny learning rate one epoch keeps its accuracy)."""
    teacher, dataset = _upload(api, demo_files)
    first = api.post("/runs", json=_config(teacher, dataset, name="kd-r8", training={"epochs": 2}))
    assert first.status_code == 201, first.text
    done = _wait(api, f"/runs/{first.json()['id']}", TERMINAL)
    assert done["status"] == "succeeded", (done, worker.output()[-3000:])

    r = api.post(f"/runs/{done['id']}/register", json={"name": "r8-student", "tags": ["student"]})
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "pending" and r.json()["format"] == "safetensors"
    registered = _wait(api, f"/models/{r.json()['id']}", {"ready", "failed"})
    assert registered["status"] == "ready", (registered, worker.output()[-3000:])
    inspection = registered["inspection"]
    assert inspection["input_shape"] == teacher["inspection"]["input_shape"]
    assert inspection["num_classes"] == teacher["inspection"]["num_classes"]
    assert {"layer3"} <= {layer["path"] for layer in inspection["layers"]}
    assert registered["card"]["accuracy"] == done["summary"]["student_top1"]
    assert registered["lineage"]["source_run_id"] == done["id"]

    zoo = {"source": "zoo", "architecture": "resnet8", "kwargs": {"width": 0.25}}
    taught = api.post(
        "/runs",
        json=_config(registered, dataset, name="taught", student=zoo, training={"epochs": 1}),
    )
    from_model = {"source": "model", "model": {"model_id": registered["id"]}}
    resumed = api.post(
        "/runs",
        json=_config(
            teacher,
            dataset,
            name="resumed",
            student=from_model,
            training={"epochs": 1, "lr": 0.0001},
        ),
    )
    assert taught.status_code == 201, taught.text
    assert resumed.status_code == 201, resumed.text
    taught, resumed = (_wait(api, f"/runs/{r.json()['id']}", TERMINAL) for r in (taught, resumed))
    assert taught["status"] == "succeeded", (taught, worker.output()[-3000:])
    assert resumed["status"] == "succeeded", (resumed["error"], worker.output()[-3000:])
    assert taught["teacher_model_id"] == registered["id"]
    # the registered student, as teacher, scores on the same held-out split what it scored there
    assert taught["summary"]["teacher_top1"] == pytest.approx(
        done["summary"]["student_top1"], abs=0.02
    )
    # started from the registered weights, not from scratch
    assert resumed["summary"]["student_top1"] >= done["summary"]["student_top1"] - 0.05
    # the run config it keeps names the model the user chose, not the worker's scratch file
    config = next(
        a for a in api.get(f"/runs/{resumed['id']}/artifacts").json() if a["kind"] == "config"
    )
    text = api.get(f"/artifacts/{config['id']}/download").text
    assert f"model_id: {registered['id']}" in text and "path:" not in text, text
    used = api.delete(f"/models/{registered['id']}")
    assert used.status_code == 409 and "archive it instead" in used.json()["detail"]
