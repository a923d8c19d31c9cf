"""Training a task's demo teacher (`Task.demo`): the model a task's `demo.py` trains on its own
synthetic data with its own loss, seeing only the training part of the split a run makes by
default (seed 0, val_fraction 0.2), so that a default run evaluates on images it never saw."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from torch import nn

from core.config import DatasetRef, RunConfig
from worker.engine.export import export_pt2
from worker.engine.tasks.base import Task

log = logging.getLogger(__name__)


def train_demo_teacher(
    task: Task,
    data: Any,
    run: dict[str, Any],
    metrics: tuple[str, ...],
    teacher_path: Path,
) -> None:
    """Train the model `run` describes (a run config's name, task, student, losses, training
    and seed; the teacher and dataset paths are set here) on `data`, log its held-out `metrics`
    (validation names, e.g. "val/miou") and export it to `teacher_path` (.pt2)."""
    from worker.engine.trainer import train  # the trainer imports the tasks

    run_seed = RunConfig.model_fields["seed"].default
    val_fraction = DatasetRef.model_fields["val_fraction"].default
    train_data, val_data = task.split(data, val_fraction, run_seed)
    config = RunConfig.model_validate(
        {
            "teacher": {"path": "none (its own loss only)"},
            "dataset": {"path": f"{run['task']}_demo"},
            **run,
        }
    )
    started = time.perf_counter()
    result = train(config, nn.Identity(), train_data, val_data, task=task)
    log.info(
        "%s demo teacher %s: held-out %s after %.1f s",
        run["task"],
        run["student"],
        ", ".join(f"{name} {result.history[-1][name]:.4f}" for name in metrics),
        time.perf_counter() - started,
    )
    export_pt2(result.student.cpu().eval(), data.input_shape, teacher_path, task)
