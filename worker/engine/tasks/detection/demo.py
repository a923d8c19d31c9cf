"""The detection demo: a small CenterNet teacher trained in seconds on synthetic digits
(`data.synthetic_digits`: scikit-learn's digits on 48x48 canvases, 0-3 per image), written as
the real format (a COCO .zip), for the docs and the tests (`DetectionTask.demo`).

The teacher (DEMO_TEACHER, the `centernet` loss for DEMO_TRAINING) sees only the training part
of the split a run makes by default (seed 0, val_fraction 0.2), so a default run evaluates on
images it never saw.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from torch import nn

from core.config import DatasetRef, RunConfig
from worker.engine.export import export_pt2
from worker.engine.tasks.detection.data import split, synthetic_digits, write_zip
from worker.engine.trainer import train

log = logging.getLogger(__name__)

DEMO_TEACHER = {"architecture": "det_centernet", "kwargs": {"depth": 8, "width": 1.0}}
DEMO_TRAINING = {"epochs": 12, "batch_size": 16, "optimizer": "adamw", "lr": 0.005, "device": "cpu"}
DEMO_SAMPLES = 400


def make_demo(out_dir: Path, seed: int = 0, samples: int = DEMO_SAMPLES) -> tuple[Path, Path]:
    """Train the demo teacher; write out_dir/det_digits_teacher.pt2 and out_dir/det_digits.zip.
    Returns (teacher path, data path)."""
    from worker.engine.tasks.detection import DetectionTask

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = synthetic_digits(samples, seed=seed)
    run_seed = RunConfig.model_fields["seed"].default
    train_data, val_data = split(data, DatasetRef.model_fields["val_fraction"].default, run_seed)
    config = RunConfig.model_validate(
        {
            "name": "det-digits-teacher",
            "task": "detection",
            "teacher": {"path": "none (centernet loss only)"},
            "dataset": {"path": "det_digits"},
            "student": DEMO_TEACHER,
            "losses": [{"name": "centernet"}],
            "training": DEMO_TRAINING,
            "seed": seed,
        }
    )
    started = time.perf_counter()
    task = DetectionTask()
    result = train(config, nn.Identity(), train_data, val_data, task=task)
    log.info(
        "detection demo teacher %s: held-out mAP %.4f (mAP@.5 %.4f) after %.1f s",
        DEMO_TEACHER,
        result.history[-1]["val/map"],
        result.history[-1]["val/map50"],
        time.perf_counter() - started,
    )
    teacher_path, data_path = out_dir / "det_digits_teacher.pt2", out_dir / "det_digits.zip"
    export_pt2(result.student.cpu().eval(), data.input_shape, teacher_path, task)
    write_zip(data, data_path)
    return teacher_path, data_path
