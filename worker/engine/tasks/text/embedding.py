"""Sentence embeddings (catalog `sentence_embedding`): the student learns to give each text the
teacher's embedding, as Reimers & Gurevych distil a sentence encoder ("Making Monolingual
Sentence Embeddings Multilingual using Knowledge Distillation", EMNLP 2020: the student
regresses the teacher's sentence vectors with MSE).

- teacher: a Hugging Face encoder without a head (`BertModel`, `RobertaModel`, ... such as
  sentence-transformers' MiniLM), pooled by the mean of its last hidden state over the real
  tokens (`TokenModel` output "mean_pool", sentence-transformers' pooling); a checkpoint with a
  head (a classifier, a language model) is refused;
- data: texts only, no labels: `.txt` (one text per non-empty line), `.jsonl` or `.csv` with a
  text column (`dataset.text_column`); empty texts are refused naming the line;
- targets: none (an empty [N, 0] tensor); the teacher's embedding of every row is recorded at fit
  time (`TokenData.teacher`), the reference of validation and evaluation;
- validation: `val/cosine` (mean cosine of the student's and the teacher's embedding of each
  text), `val/loss` (their mean squared difference per dimension);
- evaluation: `cosine` (mean), `neighbour_top1` (for each held-out text, its nearest other
  held-out text by the student's embeddings is the teacher's nearest) and `neighbour_top5` (the
  teacher's nearest is among the student's 5 nearest), and `samples` (texts with each model's
  nearest neighbour); `evaluate.evaluate` adds size, FLOPs and latency of both models.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.datasets import DatasetError
from worker.engine.tasks.base import Autocast, IncompatibleDataError
from worker.engine.tasks.text.base import TextTask, TokenData, limits_of, token_outputs
from worker.engine.tasks.text.data import TextData, read_text_dataset
from worker.engine.tasks.text.models import unwrap

if TYPE_CHECKING:
    from core.config import DatasetRef
    from worker.engine.loading import LoadedModel

SAMPLES = 8
NEIGHBOURS = 5
_SAMPLE_CHARS = 200
_PEEK_BYTES = 1 << 16


def first_record(path: Path, format: str | None) -> dict[str, Any] | None:
    """The first record of a .jsonl or .csv (None when unreadable or another format), read
    from at most the file's first 64 KiB."""
    import csv
    import io

    if format not in ("jsonl", "csv"):
        return None
    try:
        with Path(path).open("rb") as f:
            head = f.read(_PEEK_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None
    lines = [line for line in head.splitlines() if line.strip()]
    if format == "jsonl":
        try:
            record = json.loads(lines[0]) if lines else None
        except ValueError:
            return None
        return record if isinstance(record, dict) else None
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[:2]))))
    return dict(rows[0]) if rows else None


def nearest(embeddings: Tensor, k: int) -> Tensor:
    """Each row's `k` nearest other rows by cosine similarity [N, k] (itself excluded)."""
    unit = F.normalize(embeddings.float(), dim=-1)
    sim = unit @ unit.T
    sim.fill_diagonal_(-float("inf"))
    return sim.topk(min(k, max(len(unit) - 1, 1)), dim=1).indices


def neighbour_agreement(student: Tensor, teacher: Tensor, k: int = NEIGHBOURS) -> dict[str, float]:
    """neighbour_top1: the share of rows whose nearest other row is the same by both models'
    embeddings; neighbour_top5: whose teacher nearest row is among the student's `k` nearest."""
    if len(teacher) < 2:
        return {"neighbour_top1": 0.0, "neighbour_top5": 0.0}
    t_first = nearest(teacher, 1)[:, 0]
    s_near = nearest(student, k)
    return {
        "neighbour_top1": float((s_near[:, 0] == t_first).float().mean()),
        "neighbour_top5": float((s_near == t_first[:, None]).any(1).float().mean()),
    }


def mean_cosine(student: Tensor, teacher: Tensor) -> float:
    if len(teacher) == 0:
        return 0.0
    return float(F.cosine_similarity(student.float(), teacher.float(), dim=-1).mean())


class SentenceEmbeddingTask(TextTask):
    """Texts to the teacher's sentence embeddings; see the module docstring."""

    kinds = ("lm",)
    output = "mean_pool"

    def load(self, path: Path, ref: DatasetRef, **limits: Any) -> TextData:
        """Texts of a .txt (lines), or of a .jsonl / .csv's text column."""
        path = Path(path)
        bounds, suffix = limits_of(limits), path.suffix.lower()
        if suffix == ".txt" or (suffix == ".jsonl" and ref.text_column == "text"):
            return read_text_dataset(path, "lm", limits=bounds)
        if suffix not in (".jsonl", ".csv"):
            raise DatasetError(
                f"{path.name}: a sentence_embedding dataset is .txt (one text per line), "
                f".jsonl or .csv with a '{ref.text_column}' column, not '{path.suffix}'"
            )
        from worker.engine.tasks.text import data as text_data

        read = text_data._csv_records if suffix == ".csv" else text_data._jsonl_records
        records = read(path, bounds)
        texts = [text_data._field(r, ref.text_column, path.name, n) for n, r in records]
        return TextData("lm", texts)

    @staticmethod
    def recognizes(path: Path, format: str | None) -> bool:
        """A .txt, or a .jsonl whose first record has `text` (texts, without labels)."""
        if format == "txt":
            return True
        record = first_record(Path(path), format)
        return format == "jsonl" and record is not None and "text" in record

    def targets(self, text: TextData, labels: Tensor, ids: Tensor) -> Tensor:
        """None: an empty [N, 0] tensor (the reference is the teacher's embedding)."""
        return torch.zeros((len(ids), 0), dtype=torch.long)

    def fit_to_teacher(self, teacher: LoadedModel, data: TextData) -> TokenData:
        hf = unwrap(teacher.module)
        base = getattr(hf, "base_model", hf)
        if base is not hf:
            raise IncompatibleDataError(
                f"sentence_embedding needs an encoder checkpoint without a head (BertModel, "
                f"RobertaModel, ... such as a sentence-transformers model), pooled by the "
                f"mean of its last hidden state; this teacher is {type(hf).__name__}. A "
                "classifier fits text_classification, a language model causal_lm"
            )
        tokens = super().fit_to_teacher(teacher, data)
        return replace(tokens, teacher=token_outputs(teacher.module, tokens.ids))

    def build_student(
        self, architecture: str, kwargs: dict[str, Any], teacher: LoadedModel, data: Any
    ) -> nn.Module | None:
        """As every text task, but a hf_config student keeps the teacher's hidden width unless
        told otherwise: the embedding losses compare embeddings of the same width."""
        if architecture == "hf_config" and not kwargs.get("hidden"):
            kwargs = {**kwargs, "hidden": self.output_size(data)}
        return super().build_student(architecture, kwargs, teacher, data)

    def output_size(self, data: TokenData) -> int:
        """The embedding width (the teacher's hidden size)."""
        return int(data.teacher.shape[-1]) if data.teacher is not None else 0

    def inspect_output(self, output_shape: list[int] | None) -> dict[str, Any]:
        vector = output_shape is not None and len(output_shape) == 1
        return {"embedding_dim": output_shape[0] if vector and output_shape else None}

    def validate(
        self,
        student: nn.Module,
        data: TokenData,
        batch_size: int,
        device: torch.device,
        autocast: Autocast,
    ) -> dict[str, float]:
        """Mean cosine to the teacher's embeddings, and their mean squared difference."""
        out = token_outputs(student, data.ids, max(batch_size, 64), device, autocast)
        student.train()
        if data.teacher is None or len(data) == 0:
            return {"val/cosine": 0.0, "val/loss": 0.0}
        return {
            "val/cosine": mean_cosine(out, data.teacher),
            "val/loss": float(F.mse_loss(out, data.teacher)),
        }

    def evaluate(
        self, teacher: nn.Module, student: nn.Module, data: TokenData, **options: Any
    ) -> dict[str, Any]:
        """cosine, neighbour_top1, neighbour_top5, samples."""
        t_out = data.teacher if data.teacher is not None else token_outputs(teacher, data.ids)
        s_out = token_outputs(student, data.ids)
        return {
            "cosine": mean_cosine(s_out, t_out),
            **neighbour_agreement(s_out, t_out),
            "samples": samples(data.text.texts, t_out, s_out),
        }


def _cut(text: str) -> str:
    return text if len(text) <= _SAMPLE_CHARS else text[: _SAMPLE_CHARS - 1] + "…"


def samples(texts: list[str], teacher: Tensor, student: Tensor) -> list[dict[str, Any]]:
    """The first held-out texts with the nearest other text by each model's embeddings."""
    if len(texts) < 2:
        return []
    t_near, s_near = nearest(teacher, 1)[:, 0], nearest(student, 1)[:, 0]
    return [
        {
            "text": _cut(texts[i]),
            "teacher_nearest": _cut(texts[int(t_near[i])]),
            "student_nearest": _cut(texts[int(s_near[i])]),
            "cosine": float(F.cosine_similarity(student[i], teacher[i], dim=0)),
        }
        for i in range(min(SAMPLES, len(texts)))
    ]
