"""A worker and its jobs run at a lower CPU priority than what runs beside them
(worker/sandbox.py `lower_priority`), in a child process: a process cannot raise its priority
again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = os.getpriority(os.PRIO_PROCESS, 0)  # what the child starts at (0 unless run under nice)
CHILD = """
import json, os, sys
from pathlib import Path
from worker.sandbox import lower_priority
group = Path(sys.argv[2])
got = lower_priority(int(sys.argv[1]), autogroup=group)
print(json.dumps({
    "returned": got,
    "nice": os.getpriority(os.PRIO_PROCESS, 0),
    "group": group.read_text() if group.exists() else None,
    "real_group": Path("/proc/self/autogroup").read_text() if sys.argv[3] == "real" else None,
}))
"""


def _child(nice: int, group: Path, *, own_session: bool, real: bool = False) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(nice), str(group), "real" if real else "file"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        start_new_session=own_session,
    )
    return json.loads(done.stdout)


def test_a_session_leader_lowers_itself_and_its_session(tmp_path: Path) -> None:
    got = _child(10, tmp_path / "autogroup", own_session=True)
    assert got["returned"] == got["nice"] == max(BASE, 10)
    assert got["group"] == "10"


def test_a_process_in_another_session_leaves_that_session_alone(tmp_path: Path) -> None:
    """`distill-studio worker` in a terminal: the terminal's session keeps its priority."""
    got = _child(10, tmp_path / "autogroup", own_session=False)
    assert got["nice"] == max(BASE, 10) and got["group"] is None


@pytest.mark.parametrize(("asked", "group"), [(0, None), (-5, None), (25, "19")])
def test_zero_leaves_the_priority_and_it_stays_in_range(
    tmp_path: Path, asked: int, group: str | None
) -> None:
    got = _child(asked, tmp_path / "autogroup", own_session=True)
    assert got["nice"] == (BASE if group is None else 19)
    assert got["group"] == group


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroup here")
def test_the_kernel_groups_the_session_at_that_priority(tmp_path: Path) -> None:
    got = _child(10, Path("/proc/self/autogroup"), own_session=True, real=True)
    assert got["real_group"].split()[-2:] == ["nice", "10"]
