"""Whether a run's worker process is alive (`worker.tasks._pid_alive`): a pool process killed
but not yet reaped by its parent is a zombie, dead for the run, so a redelivered run is taken
over at once instead of being dropped as a duplicate of a live claim."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker.tasks import _pid_alive


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_zombie_is_not_alive_and_a_running_process_is() -> None:
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert _pid_alive(running.pid)
        while _state(exited.pid) != "Z":  # exited, not reaped: Popen reaps only when asked
            time.sleep(0.01)
        assert not _pid_alive(exited.pid)
        assert _pid_alive(os.getpid())
    finally:
        running.kill()
        running.wait()
        exited.wait()
