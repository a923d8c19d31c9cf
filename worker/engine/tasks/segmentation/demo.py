"""The segmentation demo: a small U-Net teacher trained in seconds on synthetic digits
(`data.synthetic_digits`: scikit-learn's digits on 32x32 canvases), for the docs and the tests
(`SegmentationTask.demo`).

The teacher (DEMO_TEACHER, cross-entropy for DEMO_TRAINING) sees only the training part of the
split a run makes by default (seed 0, val_fraction 0.2), so a default run evaluates on images it
never saw.
"""

from __future__ import annotations

from pathlib import Path

from worker.engine.tasks.demo_teacher import train_demo_teacher
from worker.engine.tasks.segmentation.data import synthetic_digits, write_npz

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
    teacher_path, data_path = out_dir / "seg_digits_teacher.pt2", out_dir / "seg_digits.npz"
    run = {
        "name": "seg-digits-teacher",
        "task": "segmentation",
        "student": DEMO_TEACHER,
        "losses": [{"name": "ce"}],
        "training": DEMO_TRAINING,
        "seed": seed,
    }
    train_demo_teacher(SegmentationTask(), data, run, ("val/miou",), teacher_path)
    write_npz(data, data_path)
    return teacher_path, data_path
