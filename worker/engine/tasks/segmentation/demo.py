"""The segmentation demo: a small U-Net teacher trained in seconds on synthetic digits
(`data.synthetic_digits`: scikit-learn's digits on 32x32 canvases), for the docs and the tests
(`SegmentationTask.demo`).

The teacher (DEMO_TEACHER, cross-entropy for DEMO_TRAINING) sees only the training part of the
split a run makes by default (seed 0, val_fraction 0.2), so a default run evaluates on images it
never saw.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from torch import nn

from core.config import DatasetRef, RunConfig
from worker.engine.export import export_pt2
from worker.engine.tasks.segmentation.data import split, synthetic_digits, write_npz
from worker.engine.trainer import train

log = logging.getLogger(__name__)

DEMO_TEACHER = {"architecture": "seg_unet", "kwargs": {"depth": 8, "width": 0.75}}
DEMO_TRAINING = {"epochs": 10, "batch_size": 16, "optimizer": "adamw", "lr": 0.005, "device": "cpu"}
DEMO_SAMPLES = 300


def make_demo(out_dir: Path, seed: int = 0, samples: int = DEMO_SAMPLES) -> tuple[Path, Path]:
    """Train the demo teacher; write out_dir/seg_digits_teacher.pt2 and out_dir/seg_digits.npz.
    Returns (teacher path, data path)."""
    from worker.engine.tasks.segmentation import SegmentationTask

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = synthetic_digits(samples, seed=seed)
    run_seed = RunConfig.model_fields["seed"].default
    train_data, val_data = split(data, DatasetRef.model_fields["val_fraction"].default, run_seed)
    config = RunConfig.model_validate(
        {
            "name": "seg-digits-teacher",
            "task": "segmentation",
            "teacher": {"path": "none (cross-entropy only)"},
            "dataset": {"path": "seg_digits"},
            "student": DEMO_TEACHER,
            "losses": [{"name": "ce"}],
            "training": DEMO_TRAINING,
            "seed": seed,
        }
    )
    started = time.perf_counter()
    task = SegmentationTask()
    result = train(config, nn.Identity(), train_data, val_data, task=task)
    log.info(
        "segmentation demo teacher %s: held-out mIoU %.4f after %.1f s",
        DEMO_TEACHER,
        result.history[-1]["val/miou"],
        time.perf_counter() - started,
    )
    teacher_path, data_path = out_dir / "seg_digits_teacher.pt2", out_dir / "seg_digits.npz"
    export_pt2(result.student.cpu().eval(), data.input_shape, teacher_path, task)
    write_npz(data, data_path)
    return teacher_path, data_path
