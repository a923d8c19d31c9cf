"""Training steps per second of the engine's loop on a tiny model on CPU (one thread).

    .venv/bin/python benchmarks/trainer_steps.py [--epochs 3] [--repeats 3] [setting=value ...]

The teacher is a small conv net (conv-bn-relu, linear head), the student an MLP (hidden 64),
the data sklearn's digits (1,437 training images, 8x8), losses ce + kd + fitnets on one layer
pair, batch 64. Extra `name=value` arguments set training settings (e.g. grad_accumulation=2
compile=true). Prints the median steps per second over the repeats, of wall time and of the
process's CPU time (one thread: the CPU figure holds on a shared, busy machine). To time another checkout's loop, run
this file with that checkout first on PYTHONPATH (its settings must exist there).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from sklearn.datasets import load_digits
from torch import nn

from core.config import RunConfig
from worker.engine.tasks.classification.data import TensorData, split
from worker.engine.trainer import train


class Teacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(self.bn(self.conv(x)).relu(), 2)
        return self.fc(h.flatten(1))


def _value(text: str) -> object:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("settings", nargs="*", help="training settings as name=value")
    args = parser.parse_args()
    extra = {k: _value(v) for k, v in (s.split("=", 1) for s in args.settings)}
    torch.set_num_threads(1)
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    data = split(TensorData(x, torch.tensor(d.target), [str(i) for i in range(10)]), 0.2, 0)
    torch.manual_seed(0)
    teacher = Teacher().eval()
    config = RunConfig.model_validate(
        {
            "teacher": {"path": "unused.pt2"},
            "dataset": {"path": "unused.npz"},
            "layer_pairs": [{"teacher": "fc", "student": "layers.0", "tap": "input"}],
            "student": {"architecture": "mlp", "kwargs": {"hidden": 64, "depth": 1}},
            "losses": [{"name": "ce"}, {"name": "kd"}, {"name": "fitnets", "weight": 0.5}],
            "training": {
                "epochs": args.epochs,
                "batch_size": 64,
                "device": "cpu",
                "checkpoint_every": 10_000,
                **extra,
            },
        }
    )
    wall, cpu = [], []
    for _ in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = train(config, teacher, *data)
        wall.append(result.steps / (time.perf_counter() - start))
        cpu.append(result.steps / (time.process_time() - start_cpu))
    print(
        f"{statistics.median(wall):.1f} steps/s wall, {statistics.median(cpu):.1f} per CPU "
        f"second (median of {args.repeats}; {result.steps} steps each; "
        f"{' '.join(args.settings) or 'defaults'})"
    )


if __name__ == "__main__":
    main()
