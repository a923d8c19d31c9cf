"""The detection demo: a small CenterNet teacher trained in seconds on synthetic digits
(`data.synthetic_digits`: scikit-learn's digits on 48x48 canvases, 0-3 per image), written as
the real format (a COCO .zip), for the docs and the tests (`DetectionTask.demo`).

The teacher (DEMO_TEACHER, the `centernet` loss for DEMO_TRAINING) sees only the training part
of the split a run makes by default (seed 0, val_fraction 0.2), so a default run evaluates on
images it never saw.
"""

from __future__ import annotations

from pathlib import Path

from worker.engine.tasks.demo_teacher import train_demo_teacher
from worker.engine.tasks.detection.data import synthetic_digits, write_zip

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
    teacher_path, data_path = out_dir / "det_digits_teacher.pt2", out_dir / "det_digits.zip"
    run = {
        "name": "det-digits-teacher",
        "task": "detection",
        "student": DEMO_TEACHER,
        "losses": [{"name": "centernet"}],
        "training": DEMO_TRAINING,
        "seed": seed,
    }
    train_demo_teacher(DetectionTask(), data, run, ("val/map", "val/map50"), teacher_path)
    write_zip(data, data_path)
    return teacher_path, data_path
