"""Reliability holds for every training scheme: a real worker's pool process killed mid-run
resumes the run from its checkpoint (every model of the scheme, the generations so far) with
every step once, and a run cancelled in a later round (a born-again generation) stops.

One studio with one worker for the module (SQLite; the engine-level resume of each scheme's
state is in tests/unit/engine/test_scheme_*.py)."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.db import session_scope
from core.db.tables import Run
from tests.integration.conftest import (
    mark_ready_from,
    metric_steps,
    run_config,
    upload_demo,
    wait_run,
    wait_step,
)
from tests.integration.servers import Studio, studio_with_worker

pytestmark = pytest.mark.slow

FAST_RECOVERY = {"DS_HEARTBEAT_S": "0.5", "DS_RUN_STALE_S": "4", "DS_RECOVER_EVERY_S": "1"}
RESNET = {"source": "zoo", "architecture": "resnet8", "kwargs": {"width": 0.5}}


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    with studio_with_worker(tmp_path_factory.mktemp("resume"), FAST_RECOVERY) as s:
        yield s


@pytest.fixture(scope="module")
def inputs(studio: Studio, demo_files: tuple[Path, Path]) -> tuple[dict, dict, dict]:
    """The teacher, the dataset and a second teacher (for `multi_teacher`)."""
    model, dataset = mark_ready_from(studio.api, *upload_demo(studio.api, demo_files))
    second, _ = mark_ready_from(studio.api, *upload_demo(studio.api, demo_files))
    return model, dataset, second


def _holder_pid(run_id: int) -> int:
    with session_scope() as s:
        run = s.get(Run, run_id)
        assert run is not None and run.worker
        return int(run.worker.rsplit(":", 1)[1])


def _artifact_kinds(studio: Studio, run_id: int) -> set[str]:
    return {a["kind"] for a in studio.api.get(f"/runs/{run_id}/artifacts").json()}


def _step_at(studio: Studio, run_id: int, share: float) -> dict:
    """Wait until the run is `share` of the way through its steps; the run then."""
    started = wait_step(studio.api, run_id, 1)
    return wait_step(studio.api, run_id, max(12, int(started["total_steps"] * share)))


# the run config's scheme (and extra fields), epochs, when to kill (a share of the steps, past a
# checkpoint; for born-again, in generation 2 of 2), and artifact kinds the run must have
SCHEMES: dict[str, tuple[dict[str, Any], int, float, set[str]]] = {
    "online": (
        {"scheme": {"name": "online", "params": {"peers": 2}}},
        2,
        0.4,
        {"peer1_student_pt2"},
    ),
    "born_again": (
        {"scheme": {"name": "self", "params": {"generations": 2}}},
        2,
        0.75,
        {"gen1_student_pt2"},
    ),
    "deep_supervision": (
        {"scheme": {"name": "self", "params": {"mode": "deep_supervision"}}},
        2,
        0.4,
        set(),
    ),
    "netaug": ({"scheme": {"name": "netaug", "params": {"widths": "2,3"}}}, 2, 0.4, set()),
    "split": (
        {"scheme": {"name": "split", "params": {"bottleneck": 2}}},
        2,
        0.4,
        {"head_safetensors"},
    ),
    "multi_teacher": (
        {"scheme": "multi_teacher", "teachers": "second", "losses": [{"name": "ce"}]},
        2,
        0.4,
        set(),
    ),
}


@pytest.mark.parametrize("case", sorted(SCHEMES))
def test_a_killed_pool_process_resumes_the_scheme_with_every_step_once(
    studio: Studio, inputs: tuple[dict, dict, dict], case: str
) -> None:
    fields, epochs, share, kinds = SCHEMES[case]
    model, dataset, second = inputs
    if fields.get("teachers") == "second":
        fields = {**fields, "teachers": [{"model_id": second["id"]}]}
    body = run_config(
        model,
        dataset,
        name=f"resume {case}",
        student=RESNET,
        training={"epochs": epochs, "checkpoint_every": 5, "export_onnx": False},
        **fields,
    )
    r = studio.api.post("/runs", json=body)
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    at = _step_at(studio, run_id, share)
    assert at["status"] == "running", f"the run ended before it could be killed: {at}"
    pid = _holder_pid(run_id)
    assert pid in studio.worker.pool_pids()
    os.kill(pid, signal.SIGKILL)

    run = wait_run(studio.api, run_id)
    assert run["status"] == "succeeded", (run, studio.worker.output()[-3000:])
    assert run["attempts"] == 2
    resumed = re.findall(
        rf"run {run_id} resumes from its checkpoint at step (\d+)", studio.worker.output()
    )
    assert resumed and int(resumed[0]) >= at["step"] - 5, "resumed from the last checkpoint"
    steps = metric_steps(studio.api, run_id)
    assert steps == list(range(steps[0], run["total_steps"] + 1)), "every step once"
    assert len(steps) == run["total_steps"], "none missing"
    assert {"student_safetensors", *kinds} <= _artifact_kinds(studio, run_id)


def test_cancelling_a_born_again_run_in_its_second_generation_stops_it(
    studio: Studio, inputs: tuple[dict, dict, dict]
) -> None:
    body = run_config(
        *inputs[:2],
        name="cancel in generation 2",
        student=RESNET,
        scheme={"name": "self", "params": {"generations": 3}},
        # long enough that the half left after the cancel outlasts the worker's cancel check
        # (once a second) on a fast machine: at 2 epochs a generation one run finished first
        training={"epochs": 10, "checkpoint_every": 5, "export_onnx": False},
    )
    run_id = studio.api.post("/runs", json=body).json()["id"]
    at = _step_at(studio, run_id, 0.45)
    assert at["status"] == "running", at
    assert studio.api.post(f"/runs/{run_id}/cancel").status_code in (200, 202)
    run = wait_run(studio.api, run_id)
    assert run["status"] == "cancelled", run
    assert run["step"] < run["total_steps"]
