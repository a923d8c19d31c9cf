"""Each job's torch threads: its share of the worker's cores (worker/sandbox.py)."""

from __future__ import annotations

import pytest
import torch

from worker.sandbox import THREADS_ENV, job_torch_threads, use_torch_threads


@pytest.mark.parametrize(
    ("setting", "jobs_at_once", "cores", "omp", "threads"),
    [
        (3, 2, 8, None, 3),  # the setting wins
        (3, 2, 8, "1", 3),
        (0, 2, 8, "1", 0),  # OMP_NUM_THREADS set: torch reads it
        (0, 1, 8, None, 7),  # one job: every core but one, for the API and the database
        (0, 2, 9, None, 4),  # two jobs at once: half of those each
        (0, 3, 8, None, 2),
        (0, 1, 2, None, 1),  # the embedded studio on two cores
        (0, 2, 2, None, 1),  # more jobs than cores: one each, never none
        (0, 1, 1, None, 1),
        (0, "auto", 8, None, 1),  # Celery's "auto": one job per core
        (0, 0, 2, None, 1),
    ],
)
def test_a_job_gets_its_share_of_the_cores(
    setting: int, jobs_at_once: int | str, cores: int, omp: str | None, threads: int
) -> None:
    assert job_torch_threads(setting, jobs_at_once, cores, omp) == threads


def test_a_job_child_sets_the_threads_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # torch's own, in a child: one per physical core
        monkeypatch.setenv(THREADS_ENV, "2")
        assert use_torch_threads() == 2 == torch.get_num_threads()
        torch.set_num_threads(3)
        monkeypatch.setenv(THREADS_ENV, "8")  # more than torch's own: no more than those
        assert use_torch_threads() == 3
        monkeypatch.setenv(THREADS_ENV, "0")  # torch's own: left as it is
        assert use_torch_threads() == 3
        monkeypatch.delenv(THREADS_ENV)
        assert use_torch_threads() == 3
    finally:
        torch.set_num_threads(before)
