"""Whether a run's worker process is alive (`worker.tasks._pid_alive`): a pool process killed
but not yet reaped by its parent is a zombie, dead for the run, so a redelivered run is taken
over at once instead of being dropped as a duplicate of a live claim. And a pool process is
never forked while the recovery sweep (a thread of the same process) is inside the database."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from worker import tasks
from worker.tasks import _pid_alive, sweep_once


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


def test_a_fork_waits_for_the_recovery_sweep_in_progress() -> None:
    """The worker's main process forks its pool processes and sweeps for lost runs in a thread:
    a fork while the sweep holds SQLite's lock left the new pool process stuck at its first
    connection (a run re-queued after its pool process was killed never started). A fork now
    waits for the sweep, and the child starts with the guard free."""
    events: list[str] = []
    inside, go_on = threading.Event(), threading.Event()

    def sweep() -> None:
        inside.set()
        go_on.wait(60)
        events.append("sweep ended")

    thread = threading.Thread(target=sweep_once, args=(sweep,))
    thread.start()
    assert inside.wait(60)
    # let the sweep end a little later; without the guard the fork below returns before that
    releaser = threading.Timer(0.3, go_on.set)
    releaser.start()
    pid = os.fork()
    if pid == 0:  # the child: the guard must be free here, or its first sweep would hang
        os._exit(1 if tasks._NO_FORK_NOW.locked() else 0)
    events.append("forked")
    _, status = os.waitpid(pid, 0)
    thread.join()
    releaser.join()
    assert events == ["sweep ended", "forked"]
    assert os.waitstatus_to_exitcode(status) == 0
