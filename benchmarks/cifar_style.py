"""A CIFAR-style row (issue 14): resnet32x4 -> resnet8x4 with and without augmentation, on an
upload made from scikit-learn's digits, against the CIFAR-100 reference table in METHODS.md.

    nice -n 10 .venv/bin/python -m benchmarks.cifar_style        # measure, print, update the docs
    .venv/bin/python -m benchmarks.cifar_style --no-write --samples 300 --teacher-epochs 1 --epochs 1

No CIFAR ships here, so `cifar_style` makes colour images of CIFAR's shape from the digits: each
8x8 digit is scaled up (to half the canvas), mirrored with probability 1/2 (so a horizontal flip
is an invariance of the data, as for photographs), placed at a random position on a canvas of a
random dark colour with pixel noise, and drawn in a random bright colour. The images
are written as the studio's upload format (`.npz` with x [N, 3, S, S] float32 and y) and read back
with the loader an upload goes through (`load_dataset`), then split as a run splits (stratified,
seed 0).

The teacher is the zoo's resnet32x4 trained with cross-entropy and the CIFAR augmentation
(pad-crop + flip) through the engine's `train()`; the students are the zoo's resnet8x4, each
trained from the same seed: alone (ce), with KD (ce 0.1 + kd 0.9, T 4, as RepDistiller), and
both again with the `augment` section (pad-crop by S/8 pixels, CIFAR's 4 of 32, and flip).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.paper_table import _top1, publish
from core.config import RunConfig
from worker.engine.tasks.classification.data import TensorData, load_dataset, split
from worker.engine.trainer import train

SECTION = "## CIFAR-style: resnet32x4 -> resnet8x4 with augmentation (issue 14)"
COMMAND = "nice -n 10 .venv/bin/python -m benchmarks.cifar_style"

TEACHER = {"architecture": "resnet32x4"}
STUDENT = {"architecture": "resnet8x4"}
_CE = [{"name": "ce"}]
_KD = [
    {"name": "ce", "weight": 0.1},
    {"name": "kd", "weight": 0.9, "params": {"temperature": 4}},
]
# row -> (losses, augmented)
ROWS: dict[str, tuple[list[dict[str, Any]], bool]] = {
    "student (ce)": (_CE, False),
    "student (ce) + pad-crop + flip": (_CE, True),
    "kd": (_KD, False),
    "kd + pad-crop + flip": (_KD, True),
}
# METHODS.md "Reference results": CIFAR-100, 240 epochs, resnet32x4 -> resnet8x4, all augmented
NOISE = 0.05  # standard deviation of the pixel noise
BATCH = 32
REFERENCE = {"teacher": 79.42, "student (ce)": 72.50, "kd": 73.33}


def cifar_style(samples: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`samples` colour images x [samples, 3, size, size] float32 in [0, 1] and labels y [samples]
    int64, made from distinct digits (at most 1797), about as many of each of the 10 classes."""
    from sklearn.datasets import load_digits

    if size < 16 or size % 8:
        raise ValueError(f"size must be a multiple of 8 and at least 16, got {size}")
    digits = load_digits()
    if not 10 <= samples <= len(digits.target):
        raise ValueError(f"samples must be between 10 and {len(digits.target)}, got {samples}")
    rng = np.random.default_rng(seed)
    # round-robin over the classes, each in a random order: a stratified draw without repeats
    per_class = [rng.permutation(np.flatnonzero(digits.target == c)) for c in range(10)]
    order = [
        int(idx[k]) for k in range(max(map(len, per_class))) for idx in per_class if k < len(idx)
    ]
    chosen = np.array(order[:samples])
    scale = size // 16  # the 8x8 digit fills half the canvas's side
    glyph = 8 * scale
    x = np.empty((samples, 3, size, size), dtype=np.float32)
    for i, k in enumerate(chosen):
        alpha = np.kron(digits.images[k] / 16.0, np.ones((scale, scale)))
        if rng.random() < 0.5:
            alpha = alpha[:, ::-1]
        # a dark background and a bright digit, each of a random colour
        background = rng.uniform(0.0, 0.4, 3)
        foreground = rng.uniform(0.6, 1.0, 3)
        canvas = background[:, None, None] + rng.normal(0.0, NOISE, (3, size, size))
        top, left = rng.integers(0, size - glyph + 1, 2)
        window = canvas[:, top : top + glyph, left : left + glyph]
        window += alpha[None] * (foreground - background)[:, None, None]
        x[i] = np.clip(canvas, 0.0, 1.0)
    return x, digits.target[chosen].astype(np.int64)


def write_upload(path: Path, samples: int, size: int, seed: int = 0) -> Path:
    """Write the images as a user would upload them (`.npz`, x and y)."""
    x, y = cifar_style(samples, size, seed)
    np.savez(path, x=x, y=y)
    return path


TEACHER_LR = 0.01  # resnet32x4 diverges at 0.05 without warm-up (loss 5.5 in epoch 1)


def _training(epochs: int, lr: float = 0.05) -> dict[str, Any]:
    return {
        "epochs": epochs,
        "batch_size": BATCH,
        "lr": lr,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "device": "cpu",
        "log_every": 50,
        "checkpoint_every": 100_000,
    }


def _augment(size: int) -> dict[str, Any]:
    return {"pad_crop": size // 8, "flip": True}


def _config(
    name: str,
    model: dict[str, Any],
    losses: list[dict[str, Any]],
    epochs: int,
    augment: bool,
    size: int,
    lr: float = 0.05,
) -> RunConfig:
    doc: dict[str, Any] = {
        "name": f"cifar-style-{name}",
        "teacher": {"path": "none (cross-entropy only)" if name == "teacher" else "resnet32x4"},
        "dataset": {"path": "cifar_style.npz"},
        "student": model,
        "losses": losses,
        "training": _training(epochs, lr),
        "seed": 0,
    }
    if augment:
        doc["augment"] = _augment(size)
    return RunConfig.model_validate(doc)


def load_upload(samples: int, size: int) -> tuple[TensorData, TensorData]:
    """Make the upload, read it back as the studio does, split it as a run does (25% held out)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = load_dataset(write_upload(Path(tmp) / "cifar_style.npz", samples, size), lazy=False)
    return split(data, 0.25, 0)


def run(
    samples: int,
    size: int,
    teacher_epochs: int,
    epochs: int,
    rows: list[str],
    teacher_lr: float = TEACHER_LR,
) -> dict[str, Any]:
    started = time.perf_counter()
    train_data, val = load_upload(samples, size)
    print(f"data: {len(train_data)} train, {len(val)} held out, {size}x{size}", flush=True)
    t0 = time.perf_counter()
    config = _config("teacher", TEACHER, _CE, teacher_epochs, True, size, teacher_lr)
    # cross-entropy reads no teacher outputs, so the trainer never calls this placeholder
    teacher = train(config, nn.Identity(), train_data, val).student.eval()
    teacher_seconds = time.perf_counter() - t0
    teacher_top1 = _top1(teacher, val)
    print(f"teacher resnet32x4: {teacher_top1:.4f} ({teacher_seconds:.0f} s)", flush=True)
    results: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for row in rows:
        losses, augmented = ROWS[row]
        t0 = time.perf_counter()
        student = train(
            _config(row, STUDENT, losses, epochs, augmented, size), teacher, train_data, val
        ).student
        seconds[row] = time.perf_counter() - t0
        results[row] = _top1(student, val)
        print(f"{row:32s} {results[row]:.4f} ({seconds[row]:.0f} s)", flush=True)
    return {
        "samples": samples,
        "size": size,
        "train_size": len(train_data),
        "val_size": len(val),
        "teacher_epochs": teacher_epochs,
        "teacher_lr": teacher_lr,
        "epochs": epochs,
        "teacher_top1": teacher_top1,
        "teacher_seconds": teacher_seconds,
        "results": results,
        "row_seconds": seconds,
        "seconds": time.perf_counter() - started,
        "load": os.getloadavg(),
    }


def table(measured: dict[str, Any]) -> str:
    res = measured["results"]
    base = res.get("student (ce)")
    lines = [
        "| row | top-1 % here | Δ vs student (ce) | wall s | CIFAR-100 reference (240 epochs) |",
        "| --- | --- | --- | --- | --- |",
        f"| teacher resnet32x4 (ce + pad-crop + flip) | {100 * measured['teacher_top1']:.2f} | | "
        f"{measured['teacher_seconds']:.0f} | {REFERENCE['teacher']:.2f} |",
    ]
    for row, value in res.items():
        delta = "" if base is None else f"{100 * (value - base):+.2f}"
        ref = REFERENCE.get(row.replace(" + pad-crop + flip", ""))
        # the reference's student and KD rows are trained with CIFAR's pad-crop + flip
        reference = f"{ref:.2f}" if ref is not None and "pad-crop" in row else ""
        lines.append(
            f"| {row} | {100 * value:.2f} | {delta} | {measured['row_seconds'][row]:.0f} | {reference} |"
        )
    return "\n".join(lines)


def section(measured: dict[str, Any], reading: str) -> str:
    size = measured["size"]
    load = " / ".join(f"{v:.1f}" for v in measured["load"])
    return f"""{SECTION}

Command: `{COMMAND}` (CPU, `torch.set_num_threads(1)`; {measured["seconds"] / 60:.1f} min wall
clock on a 2-core machine shared with other jobs, load average {load} (1/5/15 min) at the end).
Code: `benchmarks/cifar_style.py`.

Data: {measured["samples"]} distinct scikit-learn digits made CIFAR-like ({size}x{size} colour
canvases of a random dark colour with pixel noise, the digit scaled to half the side, in a
random bright colour, at a random position, mirrored with probability 1/2), written as an `.npz` upload
(x [N, 3, {size}, {size}] float32, y) and read back with the studio's loader; split as a run
splits it (stratified, seed 0, 25% held out): {measured["train_size"]} training and
{measured["val_size"]} held-out images, 10 classes. Teacher: the zoo's resnet32x4 (7.4M
parameters), cross-entropy with pad-crop + flip, {measured["teacher_epochs"]} epochs. Students:
the zoo's resnet8x4 (1.2M parameters), {measured["epochs"]} epochs each, one seed (0) shared by
all rows; kd = ce 0.1 + kd 0.9, T 4 (RepDistiller); augmentation = the `augment` section
`{{pad_crop: {size // 8}, flip: true}}` (CIFAR's 4-pixel pad-crop of 32 scaled to the size, and
flip). All runs: SGD lr 0.05 (the teacher {measured["teacher_lr"]:g}), momentum 0.9, weight decay 5e-4, batch {BATCH}, cosine schedule (the
reference decays by steps over 240 epochs). Reference: METHODS.md "Reference results",
CIFAR-100, 240 epochs, where student and KD are trained with pad-crop + flip.

{table(measured)}

{reading}
"""


# the reading of the run in docs/benchmarks.md (--samples 800 --size 16 --teacher-epochs 20
# --epochs 8, teacher lr 0.01); rewrite it after a new run
READING = """Reading (honest: at this budget the row does not show the reference's gain from KD). The canvas
is 16x16, not CIFAR's 32x32: on this shared 2-core machine a resnet32x4 step of 64 32x32 images
took 19-25 s at load 13-17, so a 32x32 teacher would not fit the time; `--size 32` is the default
for a machine that has it. The teacher learns at lr 0.01 (90.0% held out after 20 epochs); at the
reference's 0.05 without warm-up it diverged in epoch 1 (loss 5.5) and stayed at chance (8.5%),
which is why `--teacher-lr` exists. The students: KD (66.5) is 3 points under the student alone
(69.5) without augmentation and 2.5 points over it with pad-crop + flip (68.0 vs 65.5);
augmentation costs the student alone 4 points and KD 1.5 less. All of these differences are
inside the noise of one seed on 200 held-out images (about 7 points: 2 standard errors of a
proportion near 0.67), after 8 epochs of 600 images; the reference's ordering (teacher 79.42 >
KD 73.33 > student 72.50, 240 epochs of 50,000 images) needs a schedule long enough for
augmentation and the teacher's soft targets to pay off, which is a GPU run (benchmarks/gpu.sh's
machine), not this one. What the row does show: the pipeline a user would run (a colour-image
.npz upload, the zoo's resnet32x4 and resnet8x4, the augment section, KD at T 4) trains end to
end at this size."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1200, help="images made (train + held out)")
    parser.add_argument("--size", type=int, default=32, help="canvas side in pixels")
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of each student")
    parser.add_argument(
        "--teacher-lr",
        type=float,
        default=TEACHER_LR,
        help="the teacher's SGD lr (0.05 blows resnet32x4 up in its first epoch without warm-up)",
    )
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows")
    parser.add_argument("--no-write", action="store_true", help="print only, keep the docs")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    torch.set_num_threads(1)
    measured = run(args.samples, args.size, args.teacher_epochs, args.epochs, rows, args.teacher_lr)
    publish(section(measured, READING), SECTION, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
