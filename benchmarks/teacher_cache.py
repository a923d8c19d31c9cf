"""Epoch time with the teacher-output cache against without it (issue 14 item 3).

    nice -n 5 .venv/bin/python -m benchmarks.teacher_cache           # CPU: measure and print
    .venv/bin/python -m benchmarks.teacher_cache --quick               # smoke (tiny models)

One setting for every run: a CIFAR-style teacher (`--teacher`, default resnet110, random weights,
eval mode) and student (`--student`, default resnet8), random 3x32x32 inputs with 100 classes,
`--samples` training samples in batches of 64, ce (0.1) + kd (0.9, T=4), SGD with a cosine
schedule, and random augmentation (flip + pad-crop 4: each epoch's batches differ, the case the
cache must stay right under). Three runs of `--epochs` epochs each, with `worker.engine.trainer
.train`:

- `uncached`: `training.teacher_cache` off: the teacher runs on every batch;
- `recording`: the cache on (top-k 10), empty: the teacher runs on every batch and its outputs
  are stored (the first run of a team);
- `replaying`: the same config with the recorded cache (a later run of the team): no teacher
  forward.

The runs go round `--repeats` times interleaved and each run's median time per epoch
(validation included, a small held-out split) is reported, of wall time and of the process's
CPU time (one thread: holds on a shared, busy machine). The teacher's cost is measured apart:
the median time of its forward on a batch against the student's training step (forward,
backward, SGD step) on the same batch.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.config import RunConfig
from core.teacher_cache import per_epoch
from worker.engine.students import build_student
from worker.engine.tasks.classification.data import TensorData
from worker.engine.teacher_cache import TeacherCache
from worker.engine.trainer import Callbacks, train

CLASSES = 100
SHAPE = (3, 32, 32)
BATCH = 64
RUNS = ("uncached", "recording", "replaying")


class _EpochClock(Callbacks):
    """Wall and CPU seconds of each epoch (from the first step's start to the epoch's end)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def on_start(self, total_steps: int, start_step: int) -> None:
        self.marks = [(time.perf_counter(), time.process_time())]

    def on_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))

    def epochs(self) -> list[tuple[float, float]]:
        return [
            (b[0] - a[0], b[1] - a[1]) for a, b in zip(self.marks, self.marks[1:], strict=False)
        ]


def _data(n: int, seed: int) -> TensorData:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *SHAPE, generator=gen)
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    return TensorData(x, y, [str(i) for i in range(CLASSES)])


def _config(student: str, epochs: int, cache: str) -> RunConfig:
    return RunConfig.model_validate(
        {
            "teacher": {"path": "unused.pt2"},
            "dataset": {"path": "unused.npz"},
            "student": {"architecture": student},
            "losses": [
                {"name": "ce", "weight": 0.1},
                {"name": "kd", "weight": 0.9, "params": {"temperature": 4.0}},
            ],
            "training": {
                "epochs": epochs,
                "batch_size": BATCH,
                "device": "cpu",
                "checkpoint_every": 10_000,
                "export_onnx": False,
                "teacher_cache": cache,
                "teacher_cache_top_k": 10,
            },
            "augment": {"flip": True, "pad_crop": 4},
        }
    )


def _teacher(name: str) -> nn.Module:
    """A zoo model with random weights whose BatchNorm statistics are those of random inputs
    (a deep random network's logits otherwise reach 1e8), in eval mode."""
    torch.manual_seed(99)
    model = build_student(name, SHAPE, CLASSES)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a plain average over the calibration batches
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(BATCH, *SHAPE))
    return model.eval()


def _median_seconds(fn: Any, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def relative_cost(teacher_name: str, student_name: str) -> tuple[float, float]:
    """(the teacher's forward, the student's training step) on one batch, CPU seconds."""
    teacher, x = _teacher(teacher_name), torch.randn(BATCH, *SHAPE)
    student = build_student(student_name, SHAPE, CLASSES)
    y = torch.randint(0, CLASSES, (BATCH,))
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)

    def forward() -> None:
        with torch.inference_mode():
            teacher(x)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(student(x), y).backward()
        opt.step()

    return _median_seconds(forward), _median_seconds(step)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    train_data, val_data = _data(args.samples, 1), _data(BATCH, 2)
    results: dict[str, list[tuple[float, float]]] = {run: [] for run in RUNS}
    size = 0
    with tempfile.TemporaryDirectory() as tmp:
        stored = Path(tmp) / "teacher_cache.npz"
        for _ in range(args.repeats):
            for run in RUNS:
                config = _config(args.student, args.epochs, "off" if run == "uncached" else "on")
                cache = None
                if run != "uncached":
                    source = stored if run == "replaying" else None
                    cache = TeacherCache.open(
                        source, "bench", 10, len(train_data), per_epoch(config)
                    )
                clock = _EpochClock()
                train(config, _teacher(args.teacher), train_data, val_data, callbacks=clock,
                      teacher_cache=cache)  # fmt: skip
                results[run].extend(clock.epochs())
                if run == "recording":
                    assert cache is not None and cache.stats.replayed == 0
                    size = cache.save(stored)
                if run == "replaying":
                    assert cache is not None and cache.stats.recorded == 0  # no teacher forward
    t_cost, s_cost = relative_cost(args.teacher, args.student)
    return {"epochs": results, "cache_bytes": size, "teacher_s": t_cost, "student_s": s_cost}


def report(args: argparse.Namespace, found: dict[str, Any]) -> str:
    def med(run: str, i: int) -> float:
        return statistics.median(e[i] for e in found["epochs"][run])

    lines = [
        f"Command: `{' '.join(['python -m benchmarks.teacher_cache', *args.argv])}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s).",
        f"Setting: {args.teacher} -> {args.student}, inputs 3x32x32, 100 classes, "
        f"{args.samples} samples, batch {BATCH}, {args.epochs} epochs a run, flip + pad-crop 4, "
        f"ce + kd, top-k 10; {args.repeats} interleaved repeats (median epoch).",
        f"Teacher forward {found['teacher_s'] * 1000:.0f} ms, student step "
        f"{found['student_s'] * 1000:.0f} ms a batch (CPU time): the teacher costs "
        f"{found['teacher_s'] / found['student_s']:.1f}x the student.",
        "",
        "| run | epoch (wall s) | epoch (CPU s) | vs uncached (CPU) |",
        "| --- | ---: | ---: | ---: |",
    ]
    base = med("uncached", 1)
    for run in RUNS:
        lines.append(
            f"| {run} | {med(run, 0):.2f} | {med(run, 1):.2f} | {med(run, 1) / base:.2f} |"
        )
    per_epoch_bytes = found["cache_bytes"] / args.epochs
    lines += [
        "",
        f"Cache: {found['cache_bytes']:,} bytes for {args.epochs} epochs "
        f"({per_epoch_bytes / args.samples:.0f} bytes a sample an epoch).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet110")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny: resnet20 -> resnet8, 128")
    import sys

    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    args.argv = raw
    if args.quick:
        args.teacher, args.samples, args.repeats = "resnet20", 128, 1
    torch.set_num_threads(args.threads)
    print(report(args, measure(args)))


if __name__ == "__main__":
    main()
