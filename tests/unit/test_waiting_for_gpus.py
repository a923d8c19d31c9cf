"""A run on N GPUs: the API's queue for it (`gpu-N`) and what each door says while it waits
(the SDK's `Run.waiting`, the CLI's lines, the Runs and Run pages' status)."""

from __future__ import annotations

from typing import Any

import pytest

from backend.runs.service import queue_for, queued_summary
from cli.remote import _progress_line, _run_rows
from client import Run
from core.config import RunConfig
from ui.components import run_status, runs_frame

GPU_NOTE = "waiting for 2 free GPUs (1 of 4 free on worker gpu@box:12)"


def _config(**training: Any) -> RunConfig:
    return RunConfig.model_validate(
        {
            "teacher": {"model_id": 1},
            "dataset": {"dataset_id": 1},
            "student": {"architecture": "mlp"},
            "losses": [{"name": "kd"}],
            "training": {"batch_size": 64, **training},
        }
    )


def test_a_run_goes_to_the_queue_of_its_gpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.settings import get_settings

    assert queue_for(_config(device="cuda")) == "gpu"
    assert queue_for(_config(device="cuda", gpus=4)) == "gpu-4"
    assert queue_for(_config(device="cpu", gpus=2)) == "cpu"  # 2 gloo processes, as before
    assert queue_for(_config(gpus=2)) == "cpu"  # auto on the embedded default queue
    monkeypatch.setenv("DS_DEFAULT_QUEUE", "gpu")  # docker-compose.yml
    get_settings.cache_clear()
    try:
        assert queue_for(_config(gpus=2)) == "gpu-2"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    four = _config(device="cuda", gpus=4)
    assert queued_summary(four, "gpu-4") == {
        "waiting": "waiting for a worker with 4 GPUs (queue gpu-4)"
    }
    assert queued_summary(_config(device="cuda"), "gpu") == {}
    assert queued_summary(_config(device="cpu", gpus=2), "cpu") == {}


def _run(status: str, summary: dict[str, Any]) -> Run:
    return Run(id=7, name="big", status=status, queue="gpu-2", summary=summary)


def test_every_door_says_what_a_queued_run_waits_for() -> None:
    waiting = _run("queued", {"waiting": GPU_NOTE})
    assert waiting.waiting == GPU_NOTE
    assert _progress_line(waiting) == f"run 7 queued on gpu-2: {GPU_NOTE}"
    assert _run_rows([waiting])[0][2] == f"queued ({GPU_NOTE})"
    assert run_status(waiting).endswith(f"queued · {GPU_NOTE}")
    assert runs_frame([waiting])["status"][0] == run_status(waiting)

    ended = _run("cancelled", {"waiting": GPU_NOTE})  # a stale note is not shown
    assert ended.waiting is None
    assert _run_rows([ended])[0][2] == "cancelled"
    assert "waiting" not in run_status(ended)
    assert _run("queued", {}).waiting is None
    assert _progress_line(_run("queued", {})).startswith("run 7 queued: 0%")
