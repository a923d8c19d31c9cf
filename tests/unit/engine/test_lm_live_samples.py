"""Live samples (`Task.live_samples`, `Callbacks.on_samples`): after each epoch's validation a
causal-LM run reports the sample prompts with the teacher's continuation and the student's
continuation after that epoch, which the worker writes to the run for the pages, REST and the
CLI; a task without them (classification) reports nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.engine.schemes import build_scheme
from worker.engine.trainer import Callbacks, train

from .lm_support import gpt2_student, lm_config, lm_run

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(Callbacks):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, Any]] = []

    def on_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.calls.append(("epoch", epoch, metrics))

    def on_samples(self, epoch: int, samples: list[dict[str, Any]]) -> None:
        self.calls.append(("samples", epoch, samples))


def test_each_epoch_reports_the_teachers_and_the_students_continuations(tmp_path: Path) -> None:
    task, teacher, train_data, val_data = lm_run(tmp_path)
    config = lm_config("offline", losses=[{"name": "kd"}])
    seen = Recorder()
    result = train(
        config, teacher.module, train_data, val_data, student=gpt2_student(), task=task,
        scheme=build_scheme(config.scheme), callbacks=seen,
    )  # fmt: skip
    assert [(kind, epoch) for kind, epoch, _ in seen.calls] == [
        ("epoch", 0), ("samples", 0), ("epoch", 1), ("samples", 1),
    ]  # fmt: skip
    first, second = seen.calls[1][2], seen.calls[3][2]
    prompts = task.sample_prompts(val_data)
    assert len(first) == len(prompts) and [s["index"] for s in first] == list(range(len(first)))
    for sample in (*first, *second):
        assert set(sample) == {"index", "prompt", "reference", "teacher", "student"}
        assert sample["prompt"] and isinstance(sample["student"], str)
    assert [s["teacher"] for s in first] == [s["teacher"] for s in second]  # generated once
    assert [s["teacher"] for s in first] == task._continuations(teacher.module, val_data)
    assert [s["student"] for s in second] == task._continuations(result.student.eval(), val_data)
    assert [s["student"] for s in second] == task.epoch_samples(result.student)[-1]


def test_a_task_without_live_samples_reports_none(tmp_path: Path) -> None:
    from worker.engine.tasks import build_task

    assert build_task("classification").live_samples(gpt2_student(), []) == []
