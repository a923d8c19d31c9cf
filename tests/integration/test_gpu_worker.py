"""A worker for a multi-GPU host claims N GPUs for an N-GPU run (worker/gpus.py): a real worker
told it has four GPUs (`DS_WORKER_GPUS=0,1,2,3`, fake on this CPU machine) consumes the queues
`gpu` .. `gpu-4`, a run with `training.gpus: 2` waits in `gpu-2` while fewer than two of them are
free (its summary says so; cancelled meanwhile, it lets the worker go), and trains with two
leased indices in its job's environment, released when it ends.

On a machine without CUDA the lease only sets `CUDA_VISIBLE_DEVICES` for the job: `device: auto`
trains on the CPU (2 gloo processes), as it would with no lease."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.settings import get_settings
from tests.conftest import StudioEnv, WorkerProcess
from worker import gpus

from .conftest import mark_ready_from, run_config, upload_demo, wait_run


@pytest.fixture
def gpu_queues_by_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Runs with `device: auto` go to the GPU queues, as in docker-compose.yml."""
    monkeypatch.setenv("DS_DEFAULT_QUEUE", "gpu")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _wait_waiting(api: TestClient, run_id: int, words: str, timeout: float = 120) -> dict:
    """The run once its summary's `waiting` note holds `words` (it stays queued meanwhile)."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = api.get(f"/runs/{run_id}").json()
        if words in (body.get("summary") or {}).get("waiting", ""):
            return body
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} never said {words!r}: {body}")


MLP = {"source": "zoo", "architecture": "mlp", "kwargs": {"hidden": 16, "depth": 1}}


def _small_inputs(tmp: Path) -> tuple[Path, Path]:
    """An untrained small teacher (.pt2) and 128 random 1x8x8 samples of 4 classes: what the
    lease does not depend on how well the teacher is trained."""
    import numpy as np

    from worker.engine.export import export_pt2
    from worker.engine.students import build_student

    teacher = tmp / "teacher.pt2"
    export_pt2(build_student("mlp", (1, 8, 8), 4, hidden=16, depth=1), (1, 8, 8), teacher)
    rng = np.random.default_rng(0)
    data = tmp / "data.npz"
    np.savez(data, x=rng.random((128, 1, 8, 8), dtype=np.float32), y=rng.integers(0, 4, 128))
    return teacher, data


@pytest.mark.slow
@pytest.mark.one_database
def test_a_four_gpu_worker_leases_two_gpus_to_a_two_gpu_run(
    api: TestClient,
    studio_env: StudioEnv,
    gpu_queues_by_default: None,
    tmp_path: Path,
) -> None:
    files = _small_inputs(tmp_path)
    worker = WorkerProcess(
        studio_env,
        "gpu4",
        # the setting wins over OMP_NUM_THREADS (torch's own in the job: 2)
        extra_env={
            "DS_WORKER_GPUS": "0,1,2,3",
            "DS_WORKER_TORCH_THREADS": "1",
            "OMP_NUM_THREADS": "2",
            "DS_WORKER_NICE": "0",
        },
    ).start()
    held_dir = gpus.lock_dir(studio_env.data_dir)
    held = gpus.Pool(["0", "1", "2", "3"], held_dir).try_lease(3)
    try:
        banner = worker.output()
        for queue in ("gpu", "gpu-2", "gpu-3", "gpu-4", "cpu"):
            assert re.search(rf"\.> {queue}\s+exchange={queue}\(direct\)", banner), banner
        assert ".> gpu-5 " not in banner
        model, dataset = mark_ready_from(api, *upload_demo(api, files))
        training = {"epochs": 1, "gpus": 2, "batch_size": 32}
        body = run_config(model, dataset, student=MLP, training=training)
        created = api.post("/runs", json=body)
        assert created.status_code == 201, created.text
        run = created.json()
        assert run["queue"] == "gpu-2"
        assert run["summary"] == {"waiting": "waiting for a worker with 2 GPUs (queue gpu-2)"}

        assert held is not None and held.devices == ["0", "1", "2"]  # one of four left free
        waiting = _wait_waiting(api, run["id"], "free GPUs")  # the worker took it, and waits
        assert waiting["status"] == "queued", waiting
        assert waiting["summary"]["waiting"].startswith("waiting for 2 free GPUs (1 of 4 free")
        assert api.post(f"/runs/{run['id']}/cancel").status_code in (200, 202)
        # cancelled while it waited: the worker lets it go and takes the next run, which waits
        run = api.post("/runs", json=body).json()
        _wait_waiting(api, run["id"], "free GPUs (1 of 4 free")
        held.release()

        done = wait_run(api, run["id"], timeout=300)
        assert done["status"] == "succeeded", (done.get("error"), worker.output()[-3000:])
        leased = done["summary"]["cuda_visible_devices"].split(",")
        assert len(leased) == 2 and len(set(leased)) == 2 and set(leased) <= {"0", "1", "2", "3"}
        assert "waiting" not in done["summary"]
        assert done["summary"]["student_top1"] is not None
        assert done["summary"]["torch_threads"] == 1  # the worker's setting, in its job
        assert done["summary"]["nice"] == os.getpriority(os.PRIO_PROCESS, 0)  # 0: left as it was
        assert gpus.Pool(["0", "1", "2", "3"], held_dir).free() == 4  # released before the outcome
    finally:
        if held is not None:
            held.release()
        worker.stop()
