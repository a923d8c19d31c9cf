"""The generation demo: a small encoder-decoder denoiser trained in seconds on synthetic digits
(`data.synthetic_digits`: scikit-learn's digits on 16x16 canvases, noisy and blotched as the
inputs, clean as the targets), for the docs and the tests (`GenerationTask.demo`).

The teacher (DEMO_TEACHER, `target_l1` for DEMO_TRAINING) sees only the training part of the
split a run makes by default (seed 0, val_fraction 0.2), so a default run evaluates on images it
never saw.
"""

from __future__ import annotations

from pathlib import Path

from worker.engine.tasks.demo_teacher import train_demo_teacher
from worker.engine.tasks.generation.data import synthetic_digits, write_npz

DEMO_TEACHER = {"architecture": "gen_resnet", "kwargs": {"width": 1.0, "blocks": 3}}
DEMO_TRAINING = {"epochs": 20, "batch_size": 16, "optimizer": "adamw", "lr": 0.003, "device": "cpu"}
DEMO_SAMPLES = 400


def make_demo(out_dir: Path, seed: int = 0, samples: int = DEMO_SAMPLES) -> tuple[Path, Path]:
    """Train the demo teacher; write out_dir/gen_digits_teacher.pt2 and out_dir/gen_digits.npz.
    Returns (teacher path, data path)."""
    from worker.engine.tasks.generation import GenerationTask

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = synthetic_digits(samples, seed=seed)
    teacher_path, data_path = out_dir / "gen_digits_teacher.pt2", out_dir / "gen_digits.npz"
    run = {
        "name": "gen-digits-teacher",
        "task": "generation",
        "student": DEMO_TEACHER,
        "losses": [{"name": "target_l1"}],
        "training": DEMO_TRAINING,
        "seed": seed,
    }
    train_demo_teacher(GenerationTask(), data, run, ("val/psnr", "val/ssim"), teacher_path)
    write_npz(data, data_path)
    return teacher_path, data_path
