"""Tasks (`base.Task`); each is built from its catalog entry's "module:Class"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.catalog.tasks import DEFAULT, TASKS
from worker.engine.tasks.base import Batch, IncompatibleDataError, Task

__all__ = [
    "Batch",
    "IncompatibleDataError",
    "Task",
    "build_task",
    "dataset_task",
    "default_task",
]


def build_task(name: str, **params: Any) -> Task:
    """The task the catalog declares under `name` (its class imported now), with its defaults
    overridden by `params`; its stage rule is the catalog's."""
    entry = TASKS.get(name)
    if entry is None:
        raise ValueError(f"unknown task '{name}'; the catalog has: {', '.join(TASKS)}")
    task = entry.load()(**{**entry.defaults(), **params})
    if not isinstance(task, Task):
        raise TypeError(f"{entry.implementation} is not a worker.engine.tasks.base.Task")
    task.stage_rule = entry.stage_rule
    return task


def default_task() -> Task:
    """The task a run config gets when it names none (classification)."""
    return build_task(DEFAULT)


def dataset_task(format: str | None, path: Path | None = None) -> Task:
    """The task that reads a dataset upload in `format` (a dataset names no task): with the
    file at hand, the first other task that lists the format and `recognizes` the file's layout
    (segmentation: an .npz with `masks`); else the default task when its catalog entry lists
    the format, else the first task whose entry does, else the default task (whose reader then
    says which formats it takes)."""
    names = [DEFAULT, *(name for name in TASKS if name != DEFAULT)]
    if path is not None:
        for name in names[1:]:
            recognizes = getattr(TASKS[name].load(), "recognizes", None)  # optional
            if format in TASKS[name].formats and recognizes and recognizes(path, format):
                return build_task(name)
    return build_task(next((n for n in names if format in TASKS[n].formats), DEFAULT))
