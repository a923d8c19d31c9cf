"""Causal-LM runs for the on-policy and top-k cache tests: a tiny GPT-2 teacher checkpoint
(random weights, seeded) with a BPE tokenizer trained on standard-library docstrings, the
causal_lm task fitted to it, a tiny GPT-2 student and a run config."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import transformers

from core.config import DatasetRef, RunConfig
from tests.hf_helpers import TINY_GPT2, tiny_members, write_zip
from worker.engine.loading import LoadedModel, load_model
from worker.engine.tasks import build_task
from worker.engine.tasks.text.base import TokenData
from worker.engine.tasks.text.lm import CausalLMTask
from worker.engine.tasks.text.lm_demo import CORPUS_MODULES, docstring_corpus, train_tokenizer
from worker.engine.tasks.text.models import TokenModel

VOCAB, MAX_LENGTH = 300, 24
GPT2 = {**TINY_GPT2, "vocab_size": VOCAB}


@functools.cache
def corpus() -> tuple[str, ...]:
    """Real English lines: the docstring paragraphs of 16 standard-library modules."""
    return tuple(docstring_corpus(CORPUS_MODULES[:16]))


def lm_run(
    tmp_path: Path, rows: int = 24, seed: int = 0
) -> tuple[CausalLMTask, LoadedModel, TokenData, TokenData]:
    """(task, teacher, train, val): `rows` corpus lines tokenised by the teacher's tokenizer
    at MAX_LENGTH, split 75 / 25."""
    lines = list(corpus())
    tokenizer = train_tokenizer(lines, VOCAB)
    members = {**tiny_members(GPT2, seed), "tokenizer.json": tokenizer.to_str().encode()}
    zipped = write_zip(tmp_path / f"teacher{seed}.zip", members)
    task = build_task("causal_lm", max_length=MAX_LENGTH)
    assert isinstance(task, CausalLMTask)
    loaded = load_model(zipped, "hf")
    loaded = replace(loaded, module=task.adapt_model(loaded.module, loaded))
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(lines[:rows]) + "\n", encoding="utf-8")
    data = task.fit_to_teacher(loaded, task.load(text, DatasetRef(path=str(text))))
    train, val = task.split(data, 0.25, seed=0)
    return task, loaded, train, val


def gpt2_student(seed: int = 3) -> TokenModel:
    """A one-block GPT-2 of the teacher's vocabulary and positions (seeded)."""
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in GPT2.items() if k not in ("model_type", "architectures")}
    config = transformers.GPT2Config(**{**kwargs, "n_layer": 1})
    return TokenModel(transformers.GPT2LMHeadModel(config).train())


def lm_config(
    scheme: str = "offline",
    params: dict[str, Any] | None = None,
    losses: list[dict[str, Any]] | None = None,
    **training: Any,
) -> RunConfig:
    return RunConfig.model_validate(
        {
            "task": "causal_lm",
            "task_params": {"max_length": MAX_LENGTH},
            "teacher": {"path": "unused.zip", "format": "hf"},
            "dataset": {"path": "unused.txt", "val_fraction": 0.25},
            "student": {"architecture": "hf_layers", "kwargs": {"layers": 1}},
            "losses": losses or [{"name": "gkd_jsd", "params": {"beta": 0.5}}],
            "scheme": {"name": scheme, "params": params or {}},
            "training": {
                "epochs": 2,
                "batch_size": 6,
                "lr": 0.01,
                "optimizer": "adamw",
                "device": "cpu",
                "checkpoint_every": 100,
                "export_onnx": False,
                "log_every": 1,
                **training,
            },
        }
    )
