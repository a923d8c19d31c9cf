"""The classification demo: a small, real teacher on scikit-learn's bundled 8x8 digits, for the
quick start, the docs and the tests (`pipeline.make_demo` -> `ClassificationTask.demo`).

The teacher (DEMO_TEACHER, trained with cross-entropy for DEMO_TRAINING) sees only the training
part of the split a run makes by default (`data.default_split`: seed 0, val_fraction 0.2), so a
run with the defaults evaluates on samples the teacher never saw.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from torch import nn

from core.config import RunConfig
from worker.engine.export import export_pt2
from worker.engine.tasks.classification.data import default_split, digits_data
from worker.engine.trainer import train

log = logging.getLogger(__name__)

# the demo teacher: measured on 2 CPU cores
DEMO_TEACHER = {"architecture": "resnet8", "kwargs": {"width": 2.0}}
DEMO_TRAINING = {"epochs": 10, "batch_size": 64, "lr": 0.05, "device": "cpu"}


def make_demo(out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """Train the demo teacher on digits; write out_dir/digits_teacher.pt2 and
    out_dir/digits.npz. Returns (teacher path, data path)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = digits_data()
    train_data, val_data = default_split(data)
    config = RunConfig.model_validate(
        {
            "name": "digits-teacher",
            "teacher": {"path": "none (cross-entropy only)"},
            "dataset": {"path": "digits"},
            "student": DEMO_TEACHER,
            "losses": [{"name": "ce"}],
            "training": DEMO_TRAINING,
            "seed": seed,
        }
    )
    started = time.perf_counter()
    # cross-entropy reads no teacher outputs, so the trainer never calls this placeholder
    result = train(config, nn.Identity(), train_data, val_data)
    log.info(
        "demo teacher %s: held-out top-1 %.4f after %.1f s",
        DEMO_TEACHER,
        result.history[-1]["val/top1"],
        time.perf_counter() - started,
    )
    teacher_path, data_path = out_dir / "digits_teacher.pt2", out_dir / "digits.npz"
    export_pt2(result.student.cpu().eval(), data.input_shape, teacher_path)
    np.savez(data_path, x=data.x.numpy(), y=data.y.numpy())
    return teacher_path, data_path
