"""A real Celery worker process on real Redis, with SQLite and with PostgreSQL.

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


def test_inspect_plan_distill_on_a_real_worker(api, worker, demo_files) -> None:
    model, dataset = _upload(api, demo_files)
    layers = {row["path"]: row for row in model["inspection"]["layers"]}
    assert layers["layer3"]["output_shape"][0] == 128  # resnet20 at width 2

    student = {"source": "zoo", "architecture": "resnet8", "kwargs": {"width": 0.5}}
    plan = api.post("/runs/plan", json={"teacher_model_id": model["id"], "dataset_id": dataset["id"],
                                        "student": student})
    assert plan.status_code == 200, plan.text
    pairs = plan.json()["suggested_pairs"]
    assert [p["teacher"] for p in pairs][-1] == "layer3"

    bad_pair = [{"teacher": "layer3", "student": "layer9"}]
    bad = api.post("/runs", json=_config(model, dataset, layer_pairs=bad_pair,
                                         losses=[{"name": "ce"}, {"name": "at"}]))
    assert bad.status_code == 422
    assert "layer 'layer9' not in student" in bad.json()["detail"] and "layer3" in bad.json()["detail"]

    pair = {"teacher": pairs[-1]["teacher"], "student": pairs[-1]["student"]}
    run = api.post("/runs", json=_config(model, dataset, layer_pairs=[pair],
                                         losses=[{"name": "ce"}, {"name": "kd"}, {"name": "fitnets"}]))
    assert run.status_code == 201, run.text
    done = _wait(api, f"/runs/{run.json()['id']}", {"succeeded", "failed", "cancelled"})
    assert done["status"] == "succeeded", (done, worker.output()[-3000:])
    assert done["attempts"] == 1 and done["progress"] == 1.0
    summary = done["summary"]
    assert summary["student_top1"] > 0.5 and summary["teacher_top1"] > 0.9

    series = api.get(f"/runs/{done['id']}/metrics").json()["series"]
    assert {"loss", "loss/ce", "loss/kd", "loss/fitnets", "lr", "val/top1"} <= set(series)
    steps = series["loss"]["steps"]
    assert steps == sorted(set(steps)) and steps[-1] == done["total_steps"], "each step once"
    assert len(steps) == done["total_steps"]
    arts = api.get(f"/runs/{done['id']}/artifacts").json()
    assert {a["kind"] for a in arts} >= {"student_safetensors", "student_pt2", "config", "evaluation"}
    cfg = api.get(f"/artifacts/{next(a['id'] for a in arts if a['kind'] == 'config')}/download")
    assert b"fitnets" in cfg.content


@pytest.mark.parametrize("studio_env", ["sqlite"], indirect=True)
def test_cancel_running_run(api, worker, demo_files) -> None:
    model, dataset = _upload(api, demo_files)
    run = api.post("/runs", json=_config(model, dataset, training={"epochs": 200, "checkpoint_every": 10}))
    run_id = run.json()["id"]
    deadline = time.time() + 120
    while api.get(f"/runs/{run_id}").json()["step"] < 5 and time.time() < deadline:
        time.sleep(0.2)
    assert api.post(f"/runs/{run_id}/cancel").status_code == 202
    done = _wait(api, f"/runs/{run_id}", {"succeeded", "failed", "cancelled"}, timeout=60)
    assert done["status"] == "cancelled", done
    assert done["step"] < done["total_steps"]
