"""A small paper table of our own: the reference methods on scikit-learn's 8x8 digits.

    .venv/bin/python -m benchmarks.paper_table            # measure, print, update docs/benchmarks.md
    .venv/bin/python -m benchmarks.paper_table --no-write --seeds 1 --methods ce,kd   # a quick look

The teacher is the demo teacher (`pipeline.make_demo`: resnet8 width 2, cross-entropy, 10 epochs
on the training part of the default split), trained once. The student is a much smaller
resnet8 (width 0.25) trained on a small stratified subset of that training part, so that alone
it stays clearly below the teacher; every method is then a student trained with the engine's
`train()` on the same subset, the same seed and the same schedule, and evaluated with
`evaluate.predict` on the held-out part of the default split (which the teacher never saw).
Top-1 is reported as mean +- std over seeds; each seed draws its own subset and initialisation
and all methods share them (a paired comparison).

Loss weights follow RepDistiller / mdistiller (CIFAR-100), scaled only where the value of a loss
depends on the feature-map size (AT: see `losses/at.py`).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from core.config import RunConfig
from worker.engine.evaluate import predict
from worker.engine.loading import load_model
from worker.engine.pipeline import make_demo
from worker.engine.tasks.classification import topk_accuracy
from worker.engine.tasks.classification.data import TensorData, digits_data, split
from worker.engine.tasks.classification.demo import DEMO_TEACHER
from worker.engine.trainer import train

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Paper table on digits"
COMMAND = ".venv/bin/python -m benchmarks.paper_table"

STUDENT = {"architecture": "resnet8", "kwargs": {"width": 0.25}}
FRACTION = 0.15  # of the training part of the default split: ~216 samples, ~22 per class
EPOCHS = 40
TRAINING = {
    "epochs": EPOCHS,
    "batch_size": 32,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "device": "cpu",
    "log_every": 50,
    "checkpoint_every": 100_000,
}

_STAGES = [{"teacher": f"layer{i}", "student": f"layer{i}"} for i in (1, 2, 3)]
_POOL = [{"teacher": "avgpool", "student": "avgpool"}]

# method -> (losses, layer pairs); weights as RepDistiller (-r ce, -a kd, -b other) / mdistiller
Rows = dict[str, tuple[list[dict[str, Any]], list[dict[str, str]]]]
METHODS: Rows = {
    "student (ce)": ([{"name": "ce"}], []),
    "kd": (
        [
            {"name": "ce", "weight": 0.1},
            {"name": "kd", "weight": 0.9, "params": {"temperature": 4}},
        ],
        [],
    ),
    # RepDistiller: hint on the middle stage, beta 100
    "fitnets": ([{"name": "ce"}, {"name": "fitnets", "weight": 100}], [_STAGES[1]]),
    # RepDistiller beta 1000 on 32x32 maps; the map-size rule of losses/at.py gives ~100 at 8x8
    "at": ([{"name": "ce"}, {"name": "at", "weight": 100}], _STAGES),
    # added after the row above: the same without the 2x2 map of layer3 (see the reading)
    "at (layers 1-2)": ([{"name": "ce"}, {"name": "at", "weight": 100}], _STAGES[:2]),
    # RepDistiller beta 3000 on the last map; SP's value does not depend on the map size
    "sp": ([{"name": "ce"}, {"name": "sp", "weight": 3000}], [_STAGES[2]]),
    # RepDistiller beta 0.8 on the pooled embedding
    "crd": ([{"name": "ce"}, {"name": "crd", "weight": 0.8}], _POOL),
    # mdistiller CIFAR: alpha 1, beta 8, T 4, warm-up 20 of 240 epochs (scaled to the run)
    "dkd": (
        [
            {"name": "ce"},
            {
                "name": "dkd",
                "params": {
                    "alpha": 1.0,
                    "beta": 8.0,
                    "temperature": 4.0,
                    "warmup": max(1, round(EPOCHS * 20 / 240)),
                },
            },
        ],
        [],
    ),
    # DIST CIFAR setting: beta = gamma = 2, T 4
    "dist": (
        [
            {"name": "ce"},
            {"name": "dist", "params": {"beta": 2.0, "gamma": 2.0, "temperature": 4.0}},
        ],
        [],
    ),
    # logit-standardization README: --logit-stand --base-temp 2 --kd-weight 9, ce 0.1
    "kd+logit_std": (
        [
            {"name": "ce", "weight": 0.1},
            {"name": "logit_std", "weight": 9, "params": {"temperature": 2.0}},
        ],
        [],
    ),
}


def _config(method: str, seed: int, rows: Rows = METHODS) -> RunConfig:
    losses, pairs = rows[method]
    return RunConfig.model_validate(
        {
            "name": f"paper-table-{method}",
            "teacher": {"path": "demo teacher"},
            "dataset": {"path": "digits"},
            "student": STUDENT,
            "layer_pairs": pairs,
            "losses": losses,
            "training": TRAINING,
            "seed": seed,
        }
    )


def _top1(model: torch.nn.Module, data: TensorData) -> float:
    return topk_accuracy(predict(model, data.x), data.y, 1)


def run(seeds: list[int], methods: list[str], rows: Rows = METHODS) -> dict[str, Any]:
    """Train the teacher once, then every method (a name in `rows`) on every seed; returns all
    measurements."""
    started = time.perf_counter()
    data = digits_data()
    train_full, val = split(data, 0.2, 0)  # the demo's split: the teacher never saw `val`
    with tempfile.TemporaryDirectory() as tmp:
        teacher_path, _ = make_demo(Path(tmp))
        teacher = load_model(teacher_path, "pt2").module
    teacher_top1 = _top1(teacher, val)
    print(
        f"teacher {DEMO_TEACHER}: {teacher_top1:.4f} ({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    results: dict[str, list[float]] = {m: [] for m in methods}
    subset_sizes = []
    for seed in seeds:
        _, small = split(train_full, FRACTION, seed)  # stratified: FRACTION of every class
        subset_sizes.append(len(small))
        for method in methods:
            t0 = time.perf_counter()
            student = train(_config(method, seed, rows), teacher, small, val).student
            results[method].append(_top1(student, val))
            print(
                f"seed {seed} {method:14s} {results[method][-1]:.4f} "
                f"({time.perf_counter() - t0:.0f} s, n={len(small)})",
                flush=True,
            )
    return {
        "teacher_top1": teacher_top1,
        "results": results,
        "seeds": seeds,
        "subset_sizes": subset_sizes,
        "val_size": len(val),
        "train_size": len(train_full),
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time(),
    }


def _fmt(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def table(measured: dict[str, Any]) -> str:
    """The results as a markdown table (one row per method, delta to the student alone)."""
    res = measured["results"]
    base = statistics.fmean(res["student (ce)"]) if "student (ce)" in res else None
    lines = [
        "| method | top-1 % (mean ± std) | Δ vs student | per-seed |",
        "| --- | --- | --- | --- |",
        f"| teacher (resnet8 w2) | {100 * measured['teacher_top1']:.2f} | | |",
    ]
    for method, values in res.items():
        delta = "" if base is None else f"{100 * (statistics.fmean(values) - base):+.2f}"
        seeds = " / ".join(f"{100 * v:.1f}" for v in values)
        lines.append(f"| {method} | {_fmt(values)} | {delta} | {seeds} |")
    return "\n".join(lines)


def section(measured: dict[str, Any], reading: str) -> str:
    n = sorted(set(measured["subset_sizes"]))
    sizes = " to ".join(map(str, n))
    return f"""{SECTION}

Command: `{COMMAND}` (CPU, `torch.set_num_threads(1)`; this run took
{measured["cpu_seconds"] / 60:.1f} min of CPU time, {measured["seconds"] / 60:.1f} min wall clock
on a 2-core machine shared with other jobs). Code and exact loss weights:
`benchmarks/paper_table.py`. Training on CPU is deterministic: the same command gives
the same numbers.

Setting: scikit-learn's bundled 8x8 digits with the default split of a run (seed 0, 20% held
out: {measured["val_size"]} validation samples the teacher never saw). Teacher: the demo teacher
(`pipeline.make_demo`: resnet8 width 2, cross-entropy, 10 epochs on all
{measured["train_size"]} training samples), trained once. Student: resnet8 width 0.25
(channels 4/4/8/16: 5.1k parameters against the teacher's 308k), trained on a stratified
{FRACTION:.0%} subset of the training samples ({sizes} samples), {EPOCHS} epochs, batch 32,
SGD lr 0.05 momentum 0.9 weight decay 5e-4, cosine schedule. Seeds
{", ".join(map(str, measured["seeds"]))}: each seed draws its own subset and initialisation,
shared by all methods (a paired comparison). Loss weights as RepDistiller / mdistiller on
CIFAR-100: ce 0.1 + kd 0.9 (T 4); ce + fitnets 100 on layer2; ce + at 100 on layers 1-3 (1000
scaled for 8x8 inputs; maps of 8x8, 4x4 and 2x2) and, as a second row, on layers 1-2; ce + sp
3000 on layer3; ce + crd 0.8 on the pooled features; ce + dkd (alpha 1, beta 8, T 4, warm-up
3 epochs); ce + dist (beta = gamma = 2, T 4); ce 0.1 + logit_std on kd, weight 9, T 2.

{table(measured)}

{reading}
"""


def write_section(text: str, path: Path = DOCS, title: str = SECTION) -> None:
    """Replace the section `title` of docs/benchmarks.md (or append it), leaving the rest."""
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: text.rstrip() + "\n\n", doc).rstrip() + "\n"
    else:
        doc = doc.rstrip() + "\n\n" + text.rstrip() + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)


def publish(text: str, title: str, write: bool) -> None:
    """Print a benchmark's section and, when `write`, put it in docs/benchmarks.md."""
    print("\n" + text)
    if write:
        write_section(text, DOCS, title)
        print(f"wrote the section '{title}' of {DOCS.relative_to(ROOT)}")


READING = """Reading. Distillation helps this small, data-starved student a lot: alone it reaches
88.4%, ten points below the teacher (98.1%), and every method but one closes part of that gap.
The logit methods close the most, more than half of it (KD +6.2, DKD +5.9, KD+LS +5.6 points);
their differences are below their standard deviations (0.6-1.0 points), so on this problem KD,
DKD and KD+LS are tied. The feature and relation methods gain 2.3-3.1 points (SP +3.1, FitNets
+3.0, AT on layers 1-2 +2.7, DIST +2.7, CRD +2.3) and all stay below plain KD, whereas on
CIFAR-100 CRD, DKD and KD+LS beat KD. A plausible reason is the regime: with 216 training images
the soft targets' extra information per sample is what the student lacks most, while CRD has few
distinct negatives (its queue is capped at the 216 samples) and the feature losses pull a student
of 4-16 channels towards the features of a teacher of 32-128 channels. AT with RepDistiller's
three pairs hurts (-0.7): its last pair is a 2x2 map, and the term is a mean over the map's
entries, so with 4 entries it weighs the most of the three at the start, while matching a 2x2
attention pattern asks little that helps classification. Without it AT gains +2.7; that row was
added after seeing the first, so it is a post-hoc variant, not a tuned result. Standard
deviations of 1-2.4 points come mostly from the subsets; a difference below about 2 points between
two rows is not a ranking. This is one small teacher-student pair on 8x8 images: it shows the
methods work, and it reproduces part of the CIFAR-100 ordering (DKD and KD+LS well above
FitNets, AT and SP) but not all of it (plain KD rises from the middle to the top, and CRD does not
stand out among the feature methods), and none of the CIFAR-100 numbers. An earlier version of
the code gave rows up to 1.2 points away from these (teacher 98.3%), with the same grouping."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0, 1, ...)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated rows")
    parser.add_argument("--no-write", action="store_true", help="print only, keep the docs")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    torch.set_num_threads(1)
    measured = run(list(range(args.seeds)), methods)
    text = section(measured, READING)
    print("\n" + text)
    if not args.no_write:
        write_section(text)
        print(f"wrote the section '{SECTION}' of {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
