"""Live samples (`Task.live_samples`, `Callbacks.on_samples`): after each epoch's validation a
causal-LM run reports the sample prompts with the teacher's continuation and the student's
continuation after that epoch, which the worker writes to the run for the pages, REST and the
CLI; a task without them (classification) reports nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.engine.schemes import build_scheme
from worker.engine.trainer import Callbacks, Cancelled, train

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

    assert build_task("classification").live_samples(gpt2_student(), [], 0) == []


class StopAfterFirstEpoch(Recorder):
    def should_stop(self) -> bool:
        return any(kind == "samples" for kind, _, _ in self.calls)


def test_a_resumed_run_numbers_its_epochs_from_where_it_resumed(tmp_path: Path) -> None:
    """Stopped after epoch 0 and resumed from its checkpoint in a fresh task (as a new worker
    process would): the resumed run reports epoch 1's samples as epoch 1, and its evaluation's
    per-epoch continuations say epoch 1, not 0."""
    config = lm_config("offline", losses=[{"name": "kd"}])
    checkpoint = tmp_path / "checkpoint.pt"
    task, teacher, train_data, val_data = lm_run(tmp_path)
    first = StopAfterFirstEpoch()
    with pytest.raises(Cancelled):
        train(
            config, teacher.module, train_data, val_data, student=gpt2_student(), task=task,
            scheme=build_scheme(config.scheme), callbacks=first, checkpoint_path=checkpoint,
        )  # fmt: skip
    assert [(kind, epoch) for kind, epoch, _ in first.calls] == [("epoch", 0), ("samples", 0)]

    task, teacher, train_data, val_data = lm_run(tmp_path)  # a new process
    again = Recorder()
    result = train(
        config, teacher.module, train_data, val_data, student=gpt2_student(), task=task,
        scheme=build_scheme(config.scheme), callbacks=again, checkpoint_path=checkpoint,
    )  # fmt: skip
    assert [(kind, epoch) for kind, epoch, _ in again.calls] == [("epoch", 1), ("samples", 1)]
    samples = task.evaluate(teacher.module.eval(), result.student.eval(), val_data)["samples"]
    assert [e["epoch"] for e in samples[0]["epochs"]] == [1]
