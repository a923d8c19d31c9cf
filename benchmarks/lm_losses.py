"""Causal-LM distillation per token-level loss (issue 12's evidence): the demo GPT-2 teacher
distilled into a fresh 2-block student with each LM loss, against the same student trained on the
text alone (ce), same seed, data and steps.

    nice -n 10 .venv/bin/python -m benchmarks.lm_losses              # measure, update the docs
    .venv/bin/python -m benchmarks.lm_losses --no-write --seeds 1    # a quick look

The teacher and corpus are `tests.lm_helpers.lm_demo_files()` (`lm_demo`: a 4-block GPT-2 of width
64, byte-level BPE of 512 tokens, trained on standard-library docstrings; the corpus is the
docstring lines it never saw). `ROWS` lines spread over the corpus, tokenised at `MAX_LENGTH`, are
split in halves (a data-starved student, the regime where soft targets help most);
the student is `hf_config` with 2 blocks (the teacher's other sizes halved: width 32, 2 heads, MLP
128), fresh weights seeded by the run's seed, trained with AdamW and a cosine schedule. Each
distillation row is that one loss at T = 1 (the LM papers' setting), nothing else; the ce row is
the student alone. Reported: the validation perplexity (exp of the mean token NLL on the held-out
rows) and next-token agreement with the teacher, mean and spread over seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from core.config import DatasetRef, RunConfig
from worker.engine.loading import LoadedModel, load_model
from worker.engine.pipeline import build_run_student
from worker.engine.tasks import build_task
from worker.engine.tasks.text.base import TokenData
from worker.engine.tasks.text.lm import CausalLMTask
from worker.engine.trainer import train

SECTION = "## Causal LM: the token-level losses"
COMMAND = "nice -n 10 .venv/bin/python -m benchmarks.lm_losses"
LOSSES: dict[str, dict[str, Any]] = {
    "ce (student alone)": {"name": "ce"},
    "kd (forward KL)": {"name": "kd", "params": {"temperature": 1.0}},
    "reverse_kl (MiniLLM)": {"name": "reverse_kl"},
    "gkd_jsd (beta 0.5)": {"name": "gkd_jsd", "params": {"beta": 0.5}},
    "skew_kl (alpha 0.1)": {"name": "skew_kl", "params": {"alpha": 0.1}},
    "tvd": {"name": "tvd"},
}
ROWS, MAX_LENGTH, VAL_FRACTION = 200, 48, 0.5
STUDENT = {"architecture": "hf_config", "kwargs": {"layers": 2}}
# the second table: a student initialised from the teacher (every other block, DistilBERT's way),
# the setting MiniLLM's reverse KL is used in (a student that already models the text)
INIT_STUDENT = {"architecture": "hf_layers", "kwargs": {"layers": 2}}
EPOCHS, BATCH, LR = 20, 16, 3e-3


@dataclass
class Setup:
    """The task fitted to the teacher, and the data split."""

    task: CausalLMTask
    teacher: LoadedModel
    train: TokenData
    val: TokenData


def setup(
    teacher_zip: Path, lines: list[str], max_length: int = MAX_LENGTH, seed: int = 0
) -> Setup:
    """Load the teacher, tokenise `lines` with its tokenizer and split them (VAL_FRACTION)."""
    task = build_task("causal_lm", max_length=max_length)
    assert isinstance(task, CausalLMTask)
    loaded = load_model(teacher_zip, "hf")
    teacher = replace(loaded, module=task.adapt_model(loaded.module, loaded))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        data = task.fit_to_teacher(teacher, task.load(path, DatasetRef(path=str(path))))
    train_data, val_data = task.split(data, VAL_FRACTION, seed)
    return Setup(task, teacher, train_data, val_data)


def run_config(
    loss: dict[str, Any], seed: int, epochs: int = EPOCHS, student: dict[str, Any] | None = None
) -> RunConfig:
    """The run: the 2-block student (`STUDENT` unless given), the one `loss`, AdamW + cosine."""
    return RunConfig.model_validate(
        {
            "task": "causal_lm",
            "task_params": {"max_length": MAX_LENGTH},
            "teacher": {"path": "-", "format": "hf"},
            "dataset": {"path": "-", "val_fraction": VAL_FRACTION},
            "student": student or STUDENT,
            "losses": [loss],
            "training": {
                "epochs": epochs,
                "batch_size": BATCH,
                "optimizer": "adamw",
                "lr": LR,
                "schedule": "cosine",
                "device": "cpu",
                "export_onnx": False,
            },
            "seed": seed,
        }
    )


def distil(
    s: Setup,
    loss: dict[str, Any],
    seed: int,
    epochs: int = EPOCHS,
    student: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Train the student with `loss`; its last validation (perplexity, agreement) and time."""
    config = run_config(loss, seed, epochs, student)
    student = build_run_student(config, s.teacher, s.train, task=s.task)
    start = time.perf_counter()
    result = train(config, s.teacher.module, s.train, s.val, student=student, task=s.task)
    last = result.history[-1]
    return {
        "perplexity": last["val/perplexity"],
        "agreement": last["val/agreement"],
        "seconds": time.perf_counter() - start,
        "steps": float(result.steps),
    }


def teacher_perplexity(s: Setup) -> float:
    """The teacher's perplexity on the held-out rows."""
    return float(s.task.evaluate(s.teacher.module, s.teacher.module, s.val)["teacher_perplexity"])


def _cell(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {spread:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def table(results: dict[str, list[dict[str, float]]], teacher_ppl: float) -> str:
    """Markdown: one row per loss (perplexity, agreement, wins over ce per seed, time)."""
    base = [r["perplexity"] for r in results[next(iter(LOSSES))]]
    lines = [
        "| loss | val perplexity | next-token agreement | below ce (seeds) | s / run |",
        "| --- | --- | --- | --- | --- |",
        f"| teacher (4 blocks, width 64) | {teacher_ppl:.2f} | 1 | | |",
    ]
    for label, runs in results.items():
        ppl = [r["perplexity"] for r in runs]
        wins = sum(p < b for p, b in zip(ppl, base, strict=True))
        below = "" if label == next(iter(LOSSES)) else f"{wins} / {len(ppl)}"
        seconds = statistics.fmean(r["seconds"] for r in runs)
        agree = _cell([r["agreement"] for r in runs], 3)
        lines.append(f"| {label} | {_cell(ppl, 2)} | {agree} | {below} | {seconds:.0f} |")
    return "\n".join(lines)


def measure(seeds: list[int], epochs: int = EPOCHS) -> tuple[dict[str, Any], str]:
    """Both tables: the fresh student's, then the teacher-initialised student's."""
    from tests.lm_helpers import lm_demo_files

    demo = lm_demo_files()
    s = setup(demo.teacher, demo.spread(ROWS))
    teacher_ppl = teacher_perplexity(s)
    tables = []
    for student in (STUDENT, INIT_STUDENT):
        results = {
            label: [distil(s, loss, seed, epochs, student) for seed in seeds]
            for label, loss in LOSSES.items()
        }
        tables.append(table(results, teacher_ppl))
    text = (
        f"Fresh student (`hf_config`, 2 blocks, half the width):\n\n{tables[0]}\n\n"
        "Student initialised from the teacher (`hf_layers`, 2 of its 4 blocks, full width; "
        f"the same steps):\n\n{tables[1]}"
    )
    info = {
        "train": len(s.train),
        "val": len(s.val),
        "steps": results[next(iter(LOSSES))][0]["steps"],
    }
    return info, text


READING = """Reading. The teacher was trained on other docstring lines than the ones distilled on, so
every row is measured on text neither model saw. A fresh student alone ends 30 perplexity points
above the teacher; forward KL, generalised JSD (beta 0.5), skew KL and TVD each close about two
thirds of that gap (perplexity 152-155 against 172, below ce on every seed) and lift next-token
agreement with the teacher from 0.27 to about 0.68; their differences are within their spreads,
so at this budget they are tied. Reverse KL is the exception for a fresh student: it ends above
the student alone (202, 0 of the seeds below). Mode-seeking reverse KL gives a student with a
near-uniform distribution little gradient towards the teacher's modes (the student's own
probabilities weight it); MiniLLM applies it to a student that already models the text. The
second table is that setting: the student starts from two of the teacher's blocks (`hf_layers`),
and there every loss, reverse KL included, ends below the student alone on every seed (142.8-143.4
against 157.1, within about one point of the teacher) with agreement 0.78-0.79 against 0.33.
Two seeds and one small teacher-student pair: the tables show the losses work on token logits and
their grouping, not the papers' numbers."""


def main(argv: list[str] | None = None) -> int:
    from benchmarks import paper_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2, help="number of seeds (0, 1, ...)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--no-write", action="store_true", help="print only, keep the docs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    info, text = measure(list(range(args.seeds)), args.epochs)
    minutes = (time.perf_counter() - start) / 60
    body = f"""{SECTION}

Command: `{COMMAND}` (CPU, one thread, {minutes:.1f} min on a 2-core machine shared with other
jobs). Code: `benchmarks/lm_losses.py`. Teacher: the demo GPT-2 (`lm_demo`); data: {ROWS}
docstring lines it never saw, spread over the corpus, {MAX_LENGTH} tokens at most, {info["train"]} rows to train
on and {info["val"]} held out; students: `hf_config` with 2 blocks and half the teacher's width,
fresh, and `hf_layers` (2 of the teacher's blocks, copied), {int(info["steps"])} AdamW steps ({args.epochs} epochs of batch {BATCH}, lr {LR}, cosine);
seeds {", ".join(map(str, range(args.seeds)))}. Each distillation row uses its loss alone at
T = 1; ce is the same student on the text alone.

{text}

{READING}
"""
    paper_table.publish(body, SECTION, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
