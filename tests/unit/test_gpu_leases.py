"""A worker's GPUs, its queues and the leases of its jobs (worker/gpus.py), with fake device
lists: the lock files are real, and so is a second process holding or dropping a lease."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.jobs import MAX_GPUS, QUEUES, gpu_queue, make_celery
from worker import gpus

ROOT = Path(__file__).resolve().parents[2]


def test_ds_worker_gpus_is_a_count_or_a_list() -> None:
    assert gpus.parse("4") == ["0", "1", "2", "3"]
    assert gpus.parse("0,1,3") == ["0", "1", "3"]
    assert gpus.parse(" 3, ") == ["3"]  # one device by index
    assert gpus.parse("GPU-8c1f2a6e-11d3-4b5e") == ["GPU-8c1f2a6e-11d3-4b5e"]
    assert gpus.parse("0") == []
    with pytest.raises(ValueError, match="'0;1' is not a device index"):
        gpus.parse("0;1,2")
    with pytest.raises(ValueError, match="names a device twice"):
        gpus.parse("1,1")


def test_unset_the_devices_torch_sees_named_by_cuda_visible_devices() -> None:
    assert gpus.detect("0,2", {"CUDA_VISIBLE_DEVICES": "5"}, count=1) == ["0", "2"]
    assert gpus.detect("", {}, count=3) == ["0", "1", "2"]
    assert gpus.detect("", {"CUDA_VISIBLE_DEVICES": "4,6,7"}, count=2) == ["4", "6"]
    assert gpus.detect("", {"CUDA_VISIBLE_DEVICES": ""}, count=0) == []
    if not Path("/dev/nvidiactl").exists():  # no driver: counted without starting torch
        assert gpus.torch_device_count() == 0


def test_a_worker_consumes_the_gpu_queues_up_to_its_count() -> None:
    assert gpus.worker_queues(["gpu", "cpu"], 4) == ["gpu", "cpu", "gpu-2", "gpu-3", "gpu-4"]
    assert gpus.worker_queues(["gpu", "cpu"], 1) == ["gpu", "cpu"]
    assert gpus.worker_queues(["gpu", "cpu"], 0) == ["gpu", "cpu"]  # the CPU studio, as before
    assert gpus.worker_queues(["cpu"], 8) == ["cpu"]
    assert gpus.worker_queues(["gpu-4", "cpu"], 2) == ["cpu"]  # too small for gpu-4
    assert gpus.worker_queues(["gpu"], 40)[-1] == f"gpu-{MAX_GPUS}"
    assert gpu_queue(1) == "gpu" and gpu_queue(3) == "gpu-3"
    assert {gpu_queue(n) for n in range(1, MAX_GPUS + 1)} <= set(QUEUES)


def test_the_worker_selects_its_queues_after_q(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `celeryd_after_setup` hook, on a real app whose `-Q gpu,cpu` was applied."""
    from worker.celery_app import _consume_gpu_queues

    monkeypatch.setenv("DS_WORKER_GPUS", "0,1,2")
    from core.settings import get_settings

    get_settings.cache_clear()
    gpus.worker_devices.cache_clear()
    try:
        app = make_celery()
        app.amqp.queues.select(["gpu", "cpu", "gpu-5"])
        _consume_gpu_queues("w@host", SimpleNamespace(app=app))
        consumed = app.amqp.queues.consume_from
        assert sorted(consumed) == ["cpu", "gpu", "gpu-2", "gpu-3"]
        for name, queue in consumed.items():  # each still on its own exchange and key
            assert queue.exchange.name == name and queue.routing_key == name
    finally:
        get_settings.cache_clear()
        gpus.worker_devices.cache_clear()


def test_how_many_gpus_a_run_leases() -> None:
    assert gpus.needed({"device": "auto", "gpus": 2}, 4) == 2
    assert gpus.needed({"device": "cuda"}, 4) == 1
    assert gpus.needed({"device": "cpu", "gpus": 2}, 4) == 0  # sees no GPU
    assert gpus.needed({"device": "auto", "gpus": 2}, 0) == 0  # no GPUs here: as before
    with pytest.raises(gpus.TooFewGpus, match="training.gpus is 4 but this worker has 2 GPU"):
        gpus.needed({"device": "auto", "gpus": 4}, 2)


def test_jobs_get_distinct_devices_and_never_more_than_there_are(tmp_path: Path) -> None:
    pool = gpus.Pool(["0", "1", "2", "3"], tmp_path)
    first = pool.try_lease(2)
    second = pool.try_lease(1)
    assert first is not None and second is not None
    assert first.devices == ["0", "1"] and second.devices == ["2"]
    assert first.env == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert pool.free() == 1
    assert pool.try_lease(2) is None  # one free: all or nothing, nothing held
    assert pool.free() == 1
    first.release()
    with pool.try_lease(3) as third:  # type: ignore[union-attr]
        assert third.devices == ["0", "1", "3"]
        assert pool.free() == 0
    assert pool.free() == 3
    second.release()
    assert gpus.Lease([]).env == {"CUDA_VISIBLE_DEVICES": ""}  # a CPU run sees no GPU


HOLDER = """
import sys, time
from pathlib import Path
from worker import gpus
lease = gpus.Pool(["0", "1", "2", "3"], Path(sys.argv[1])).try_lease(2)
print(",".join(lease.devices), flush=True)
time.sleep(600)
"""


def test_a_lease_held_by_another_process_is_dropped_when_it_dies(tmp_path: Path) -> None:
    """Two pool processes of one worker share the lock files; a killed holder frees its GPUs
    with no clean-up of ours."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "0,1"
        pool = gpus.Pool(["0", "1", "2", "3"], tmp_path)
        with pool.try_lease(2) as mine:  # type: ignore[union-attr]
            assert mine.devices == ["2", "3"]
            assert pool.try_lease(1) is None
        holder.kill()
        holder.wait()
        deadline = time.monotonic() + 30
        while (lease := pool.try_lease(4)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lease is not None and lease.devices == ["0", "1", "2", "3"]
        lease.release()
    finally:
        holder.kill()
        holder.wait()


def test_waiting_message() -> None:
    assert gpus.waiting_message(4, 1, 4, "gpu@box:12") == (
        "waiting for 4 free GPUs (1 of 4 free on worker gpu@box:12)"
    )


def test_the_worker_command_refuses_a_bad_gpu_list() -> None:
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["worker", "--gpus", "0;1"])
    assert result.exit_code == 2
    words = " ".join(result.output.replace("│", " ").split())  # unwrapped from rich's box
    assert "'0;1' is not a device index or GPU UUID" in words
