"""A language model's epoch with the teacher top-k logit cache against the live teacher, and
on-policy (GKD) against off-policy distillation (issue 12 item 6).

    nice -n 5 .venv/bin/python -m benchmarks.lm_teacher_cache            # CPU: measure and print
    .venv/bin/python -m benchmarks.lm_teacher_cache --quick               # smoke

Setting: the causal-LM demo (`lm_demo`: a 4-block GPT-2 of width 64, vocabulary 512, trained on
standard-library docstrings; `tests/lm_helpers.lm_demo_files`, built once) distilled into a
1-block student initialised from its blocks (`hf_layers`), `--rows` lines of its corpus at
max_length 64, batches of 32, AdamW, one thread.

Cache (`--epochs` epochs a run, `--repeats` interleaved rounds, median time per epoch of wall
and CPU time, validation included): `live` (training.teacher_cache off: the teacher runs on
every batch), `recording` (the cache on, top-k `--top-k`, empty: the teacher runs and its rows
are stored: a team's first run) and `replaying` (the same config with the recorded cache: no
teacher forward: a later run). Their first epoch is timed alone (`recording` replays its own
rows after it). The cache's size is given per counted token.

On-policy (`--policy-epochs`): the student's validation perplexity after gkd_jsd (beta 0.5)
with scheme on_policy at lambda 0 (off-policy), 0.5 and 1, temperature 0.9, 32 new tokens.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from core.config import DatasetRef, RunConfig
from tests.lm_helpers import lm_demo_files
from worker.engine.loading import load_model
from worker.engine.schemes import build_scheme
from worker.engine.tasks import build_task
from worker.engine.teacher_cache import TeacherCache
from worker.engine.trainer import Callbacks, train

MAX_LENGTH, BATCH = 64, 32
RUNS = ("live", "recording", "replaying")


class _EpochClock(Callbacks):
    """Wall and CPU seconds of each epoch, and the last validation metrics."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []
        self.metrics: dict[str, float] = {}

    def on_start(self, total_steps: int, start_step: int) -> None:
        self.marks = [(time.perf_counter(), time.process_time())]

    def on_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))
        self.metrics = metrics

    def epochs(self) -> list[tuple[float, float]]:
        return [
            (b[0] - a[0], b[1] - a[1]) for a, b in zip(self.marks, self.marks[1:], strict=False)
        ]


def _config(
    epochs: int, cache: str, top_k: int, scheme: str = "offline", params: Any = None
) -> RunConfig:
    return RunConfig.model_validate(
        {
            "task": "causal_lm",
            "task_params": {"max_length": MAX_LENGTH},
            "teacher": {"path": "unused.zip", "format": "hf"},
            "dataset": {"path": "unused.txt", "val_fraction": 0.1},
            "student": {"architecture": "hf_layers", "kwargs": {"layers": 1}},
            "losses": [{"name": "gkd_jsd", "params": {"beta": 0.5}}],
            "scheme": {"name": scheme, "params": params or {}},
            "training": {
                "epochs": epochs, "batch_size": BATCH, "optimizer": "adamw", "lr": 0.001,
                "device": "cpu", "checkpoint_every": 10_000, "export_onnx": False,
                "teacher_cache": cache, "teacher_cache_top_k": top_k,
            },
        }
    )  # fmt: skip


def _setting(rows: int, tmp: Path) -> tuple[Any, Any, Any, Any]:
    """(task, teacher, train, val) on the demo's first `rows` lines."""
    demo = lm_demo_files()
    task = build_task("causal_lm", max_length=MAX_LENGTH)
    loaded = load_model(demo.teacher, "hf")
    loaded = replace(loaded, module=task.adapt_model(loaded.module, loaded))
    text = demo.write_text(tmp / "corpus.txt", rows)
    data = task.fit_to_teacher(loaded, task.load(text, DatasetRef(path=str(text))))
    train_data, val_data = task.split(data, 0.1, seed=0)
    return task, loaded, train_data, val_data


def _run(setting: Any, config: RunConfig, cache: TeacherCache | None = None) -> _EpochClock:
    task, loaded, train_data, val_data = setting
    torch.manual_seed(config.seed)
    student = task.build_student("hf_layers", {"layers": 1}, loaded, train_data)
    clock = _EpochClock()
    scheme = build_scheme(config.scheme, **config.scheme_params)
    train(config, loaded.module, train_data, val_data, student=student, task=task,
          scheme=scheme, callbacks=clock, teacher_cache=cache)  # fmt: skip
    return clock


def measure_cache(args: argparse.Namespace, setting: Any, tmp: Path) -> dict[str, Any]:
    train_data = setting[2]
    results: dict[str, list[tuple[float, float]]] = {run: [] for run in RUNS}
    size = 0
    stored = tmp / "teacher_cache.npz"
    for _ in range(args.repeats):
        for run in RUNS:
            config = _config(1, "off" if run == "live" else "on", args.top_k)
            cache = None
            if run != "live":
                source = stored if run == "replaying" else None
                cache = TeacherCache.open(source, "bench", args.top_k, len(train_data), False)
            results[run].extend(_run(setting, config, cache).epochs())
            if run == "recording":
                assert cache is not None and cache.stats.replayed == 0
                size = cache.save(stored)
            if run == "replaying":
                assert cache is not None and cache.stats.recorded == 0  # no teacher forward
    counted = int((train_data.labels >= 0).sum())
    return {"epochs": results, "cache_bytes": size, "counted": counted}


def measure_policy(args: argparse.Namespace, setting: Any) -> dict[float, float]:
    found = {}
    for lmbda in (0.0, 0.5, 1.0):
        params = {"lmbda": lmbda, "temperature": 0.9, "max_new_tokens": 32}
        config = _config(args.policy_epochs, "off", 0, "on_policy", params)
        found[lmbda] = _run(setting, config).metrics["val/perplexity"]
    return found


def report(args: argparse.Namespace, cache: dict[str, Any], policy: dict[float, float]) -> str:
    def med(run: str, i: int) -> float:
        return statistics.median(e[i] for e in cache["epochs"][run])

    rows = args.rows - round(args.rows * 0.1)
    lines = [
        f"Command: `{' '.join(['python -m benchmarks.lm_teacher_cache', *args.argv])}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s).",
        f"Setting: lm_demo GPT-2 (4 blocks, width 64, vocab 512) -> hf_layers 1 block, "
        f"{rows} training rows ({cache['counted']:,} counted tokens), max_length {MAX_LENGTH}, "
        f"batch {BATCH}, gkd_jsd; top-k {args.top_k}; {args.repeats} interleaved repeats "
        "(median epoch).",
        "",
        "| run | epoch (wall s) | epoch (CPU s) | vs live (CPU) |",
        "| --- | ---: | ---: | ---: |",
    ]
    base = med("live", 1)
    for run in RUNS:
        lines.append(
            f"| {run} | {med(run, 0):.2f} | {med(run, 1):.2f} | {med(run, 1) / base:.2f} |"
        )
    lines += [
        "",
        f"Cache: {cache['cache_bytes']:,} bytes ({cache['cache_bytes'] / cache['counted']:.0f} "
        f"bytes a counted token; float32 logits: {512 * 4:,}).",
    ]
    if policy:
        lines += [
            "",
            f"On-policy, {args.policy_epochs} epochs: student validation perplexity",
            "",
            "| lambda | val perplexity |",
            "| ---: | ---: |",
            *(f"| {lmbda:g} | {ppl:.2f} |" for lmbda, ppl in policy.items()),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--policy-epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="80 rows, 1 repeat, no on-policy")
    import sys

    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    args.argv = raw
    if args.quick:
        args.rows, args.repeats, args.policy_epochs = 80, 1, 0
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        setting = _setting(args.rows, Path(tmp))
        cache = measure_cache(args, setting, Path(tmp))
        policy = measure_policy(args, setting) if args.policy_epochs else {}
    print(report(args, cache, policy))


if __name__ == "__main__":
    main()
