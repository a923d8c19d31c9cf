"""A whole causal-LM run that replays its teacher from the cache without loading it, against the
same run with the live teacher (issue 12 item 6: "reused by every later run of that pair
without loading the teacher; the saving in time is measured").

    nice -n 5 .venv/bin/python -m benchmarks.lm_replay_run            # CPU: measure and print
    .venv/bin/python -m benchmarks.lm_replay_run --quick               # smoke

Setting: a GPT-2 teacher of `--layers` blocks of width `--width` (random weights, seeded; the
demo's BPE tokenizer of 512 tokens and 128 positions), `--rows` lines of the demo corpus at
max_length 64, a fresh student of the teacher's config with one block and half the width
(`hf_config`), kd, batches of 32, `--epochs` epochs, one thread. Each run is
`pipeline.run_distillation` end to end (load, train, evaluate, export) in its own process, so
its peak resident memory is its own:

- `live`: training.teacher_cache off: the teacher runs on every batch and is evaluated;
- `recording`: the cache on and empty (a team's first run): the teacher runs once per batch and
  its evaluation is kept in the cache;
- `replaying`: the same config with that cache (a later run): the teacher is built without
  weights on the `meta` device; only the student trains and is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MAX_LENGTH, BATCH = 64, 32
RUNS = ("live", "recording", "replaying")


def _files(folder: Path, layers: int, width: int, rows: int) -> tuple[Path, Path]:
    """The teacher zip and the corpus file (written once per setting)."""
    from tests.hf_helpers import tiny_members, write_zip
    from tests.lm_helpers import lm_demo_files

    demo = lm_demo_files()
    teacher = folder / f"teacher_{layers}x{width}.zip"
    if not teacher.is_file():
        import zipfile

        with zipfile.ZipFile(demo.teacher) as zf:
            tokenizer = zf.read(next(n for n in zf.namelist() if n.endswith("tokenizer.json")))
        config = {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": 512,
            "n_positions": 128,
            "n_embd": width,
            "n_layer": layers,
            "n_head": max(1, width // 64),
            "bos_token_id": 0,
            "eos_token_id": 0,
        }
        write_zip(teacher, {**tiny_members(config), "tokenizer.json": tokenizer})
    corpus = demo.write_text(folder / f"corpus_{rows}.txt", rows)
    return teacher, corpus


def _config(mode: str, teacher: Path, corpus: Path, epochs: int) -> Any:
    from core.config import RunConfig

    return RunConfig.model_validate(
        {
            "task": "causal_lm",
            "task_params": {"max_length": MAX_LENGTH},
            "teacher": {"path": str(teacher), "format": "hf"},
            "dataset": {"path": str(corpus), "val_fraction": 0.1},
            "student": {"architecture": "hf_config", "kwargs": {"layers": 1}},
            "losses": [{"name": "kd", "params": {"temperature": 1.0}}],
            "training": {
                "epochs": epochs,
                "batch_size": BATCH,
                "optimizer": "adamw",
                "lr": 0.001,
                "device": "cpu",
                "export_onnx": False,
                "teacher_cache": "off" if mode == "live" else "on",
                "teacher_cache_top_k": 32,
            },
        }
    )


def one_run(mode: str, folder: Path, layers: int, width: int, rows: int, epochs: int) -> dict:
    """One run in this process: its wall seconds, peak resident memory and what it reported."""
    import torch

    from worker.engine.pipeline import CACHE_FILE, run_distillation

    torch.set_num_threads(1)
    teacher, corpus = _files(folder, layers, width, rows)
    cache = folder / "recording" / CACHE_FILE
    start = time.perf_counter()
    result = run_distillation(
        _config(mode, teacher, corpus, epochs),
        teacher,
        corpus,
        folder / mode,
        teacher_cache=cache if mode == "replaying" else None,
    )
    wall = time.perf_counter() - start
    note = result.get("teacher_cache", {})
    return {
        "mode": mode,
        "wall_s": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "teacher_loaded": note.get("teacher_loaded", "yes"),
        "replayed": note.get("replayed_batches", 0),
        "recorded": note.get("recorded_batches", 0),
        "teacher_params": result["teacher_params"],
        "teacher_perplexity": result["teacher_perplexity"],
        "student_perplexity": result["student_perplexity"],
        "teacher_bytes": teacher.stat().st_size,
        "cache_bytes": note.get("size_bytes"),
    }


def measure(layers: int, width: int, rows: int, epochs: int) -> list[dict]:
    """The three runs, each in a fresh process, in order (replaying reads recording's cache)."""
    with tempfile.TemporaryDirectory(prefix="ds-replay-") as tmp:
        out = []
        for mode in RUNS:
            args = [sys.executable, "-m", "benchmarks.lm_replay_run", "--one", mode, "--dir", tmp]
            args += ["--layers", str(layers), "--width", str(width), "--rows", str(rows)]
            args += ["--epochs", str(epochs)]
            done = subprocess.run(args, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
            out.append(json.loads(done.stdout.strip().splitlines()[-1]))
        return out


def table(results: list[dict]) -> str:
    lines = [
        "| run | teacher loaded | batches replayed / recorded | wall s | peak RSS MiB "
        "| teacher ppl | student ppl |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['teacher_loaded']} | {r['replayed']} / {r['recorded']} "
            f"| {r['wall_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['teacher_perplexity']:.1f} "
            f"| {r['student_perplexity']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--rows", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a tiny setting, for the smoke test")
    parser.add_argument("--one", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.layers, args.width, args.rows, args.epochs = 2, 64, 48, 1
    if args.one:
        print(json.dumps(one_run(args.one, args.dir, args.layers, args.width, args.rows,
                                 args.epochs)))  # fmt: skip
        return
    results = measure(args.layers, args.width, args.rows, args.epochs)
    first = results[0]
    print(
        f"teacher: GPT-2 {args.layers} blocks x {args.width} ({first['teacher_params']:,} "
        f"parameters, {first['teacher_bytes'] / 2**20:.0f} MiB zip); {args.rows} rows, "
        f"{args.epochs} epochs; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, 1 thread"
    )
    print(table(results))
    live, replaying = results[0], results[2]
    print(f"replaying / live wall time: {replaying['wall_s'] / live['wall_s']:.2f}")


if __name__ == "__main__":
    main()
