"""The child process for untrusted models (worker/sandbox.py): each limit, when hit, ends the job
with an error naming the limit and its setting, and the caller goes on serving the next job."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from worker import sandbox

GENEROUS = sandbox.Limits(memory_mb=16384, cpu_s=600, file_mb=4096, open_files=1024)


def _export(module: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    from worker.engine.export import export_pt2

    export_pt2(module.eval(), shape, path)
    return path


def _inspect(path: Path, limits: sandbox.Limits, timeout_s: float | None = None) -> dict:
    return sandbox.run(
        "inspect",
        {"path": str(path), "format": "pt2", "architecture": None, "kwargs": {}},
        workdir=path.parent,
        limits=limits,
        timeout_s=timeout_s,
    )


class Heavy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(400):
            x = torch.tanh(self.conv(x))
        return x.mean((2, 3))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
        (1, 8, 8),
        tmp_path_factory.mktemp("small") / "small.pt2",
    )


def test_a_job_runs_in_another_process_without_secrets(small: Path, monkeypatch) -> None:
    monkeypatch.setenv("DS_SECRET_KEY", "do-not-leak")
    result = _inspect(small, GENEROUS)
    assert result["card"]["num_classes"] == 10
    assert "DS_SECRET_KEY" not in sandbox._child_env()
    assert "MALLOC_ARENA_MAX" in sandbox._child_env()


def test_memory_limit(tmp_path: Path, small: Path) -> None:
    big = _export(nn.Upsample(scale_factor=4000), (1, 8, 8), tmp_path / "big.pt2")
    with pytest.raises(sandbox.SandboxError) as caught:
        _inspect(big, sandbox.Limits(1500, 600, 4096, 1024))
    assert caught.value.kind == "limit"
    assert str(caught.value) == (
        "the job exceeded the memory limit of 1500 MiB; raise DS_SANDBOX_MEMORY_MB if the model "
        "really needs more"
    )
    assert _inspect(small, GENEROUS)["card"]["num_classes"] == 10  # the next job is served


def test_file_size_limit(tmp_path: Path) -> None:
    """The clean rebuild of a 2 MiB archive is a file the child writes."""
    wide = _export(nn.Sequential(nn.Flatten(), nn.Linear(64, 8192)), (1, 8, 8), tmp_path / "w.pt2")
    assert os.path.getsize(wide) > 2 * 1024 * 1024
    with pytest.raises(
        sandbox.SandboxError,
        match=r"larger than the limit of 1 MiB; raise "
        "DS_SANDBOX_FILE_MB",
    ):
        _inspect(wide, sandbox.Limits(16384, 600, 1, 1024))


def test_cpu_limit_and_wall_clock_limit(tmp_path: Path, small: Path) -> None:
    # 400 convolutions at 192 x 192: about 270 GFLOP a forward, many CPU-seconds on any core
    # (at 64 x 64, a fast machine inspected it within the 2 s limit)
    heavy = _export(Heavy(), (32, 192, 192), tmp_path / "heavy.pt2")
    with pytest.raises(
        sandbox.SandboxError,
        match=r"exceeded the CPU time limit of 2 s; raise "
        "DS_SANDBOX_INSPECT_CPU_S",
    ):
        _inspect(heavy, sandbox.Limits(16384, 2, 4096, 1024))
    with pytest.raises(sandbox.SandboxError, match=r"^took longer than the 1s limit$"):
        _inspect(heavy, GENEROUS, timeout_s=1)
    assert _inspect(small, GENEROUS)["card"]["num_classes"] == 10


def test_open_files_limit_message() -> None:
    error = sandbox.describe(OSError(24, "Too many open files"), sandbox.Limits(1, 1, 1, 64))
    assert error == {
        "kind": "limit",
        "message": "the job opened more than 64 files at once; raise DS_SANDBOX_OPEN_FILES",
    }


def test_limits_come_from_settings(monkeypatch) -> None:
    from core.settings import get_settings

    monkeypatch.setenv("DS_SANDBOX_MEMORY_MB", "2048")
    monkeypatch.setenv("DS_SANDBOX_TRAIN_CPU_S", "99")
    get_settings.cache_clear()
    try:
        assert sandbox.Limits.for_job("train") == sandbox.Limits(2048, 99, 4096, 1024)
        assert sandbox.Limits.for_job("inspect").cpu_s == 600
    finally:
        get_settings.cache_clear()
