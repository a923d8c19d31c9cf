"""A run that hits a limit of its child process (worker/sandbox.py) fails with a message naming
the limit and its setting, and the same worker process goes on serving the next job."""

from __future__ import annotations

import pytest

from tests.conftest import StudioEnv, WorkerProcess
from tests.integration.conftest import mark_ready_from, run_config, upload_demo, wait_run

pytestmark = pytest.mark.slow
CPU_LIMIT_S = 3


@pytest.mark.parametrize("studio_env", ["sqlite"], indirect=True)
def test_run_over_its_cpu_limit_fails_clearly_and_the_worker_serves_on(
    api, studio_env: StudioEnv, demo_files
) -> None:
    worker = WorkerProcess(
        studio_env, "w1", extra_env={"DS_SANDBOX_TRAIN_CPU_S": str(CPU_LIMIT_S)}
    ).start()
    try:
        model, dataset = mark_ready_from(api, *upload_demo(api, demo_files))
        pool = worker.pool_pids()
        run_id = api.post("/runs", json=run_config(model, dataset, training={"epochs": 40})).json()[
            "id"
        ]
        run = wait_run(api, run_id)
        assert run["status"] == "failed", run
        assert run["error"] == (
            f"the job exceeded the CPU time limit of {CPU_LIMIT_S} s; raise "
            "DS_SANDBOX_INSPECT_CPU_S (inspections) or DS_SANDBOX_TRAIN_CPU_S (runs)"
        ), run["error"]
        # the same pool process serves the next job
        again, _ = upload_demo(api, demo_files)
        ready, _ = mark_ready_from(api, again, dataset)
        assert ready["inspection"]["num_classes"] == 10
        assert worker.pool_pids() == pool
        print(f"run over {CPU_LIMIT_S} CPU-s: {run['error']!r}; the next inspection was ready")
    finally:
        worker.stop()
