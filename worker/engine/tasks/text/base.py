"""What every text task shares: uploads read as texts (`data.read_text_dataset`), tokenised with
the teacher's tokenizer once the teacher is known (`fit_to_teacher`), split by row, batched as
token ids padded with `models.PAD`, and models run behind `models.TokenModel`.

A subclass names its `kind` (the upload it reads: classification, lm, instruction; `kinds` when
it takes several), its model `output` ("logits", "mean_pool"), its targets (`targets`), and its
validation and evaluation.

Both models read the teacher's tokenisation: a `source: model` student whose tokenizer maps
tokens to other ids is refused, except on a task whose losses compare text-level outputs
(sentence embeddings, `output` "mean_pool"), where it reads each batch re-tokenised with its
own tokenizer (`models.Retokenizer`) and is exported with it.

Task parameters (catalog `tasks`, run config `task_params`): `max_length`, the longest row in
tokens (refused when longer than the teacher's positions; rows cut to it are counted in
`TokenData.truncated`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from worker.engine.datasets import DatasetError, split_indices
from worker.engine.tasks.base import Batch, IncompatibleDataError, Task
from worker.engine.tasks.text.data import (
    TextData,
    TextKind,
    TextLimits,
    describe_text,
    read_text_dataset,
    tokenize,
)
from worker.engine.tasks.text.models import PAD, Output, Retokenizer, TokenModel, plain

if TYPE_CHECKING:
    from core.config import DatasetRef, StudentSpec
    from worker.engine.loading import LoadedModel


@dataclass
class TokenData:
    """A tokenised text dataset: `ids` [N, L] (padding `PAD`), `labels` ([N] classes, or
    [N, L] token targets with -100 where no loss counts), the texts it came from (samples on
    the pages) and how many rows the max length cut."""

    text: TextData
    ids: Tensor
    labels: Tensor
    truncated: int = 0
    tokenizer: Any = None  # the teacher's `tokenizers.Tokenizer`
    teacher: Tensor | None = None  # the teacher's outputs on every row, where a task records them

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def subset(self, idx: np.ndarray | Tensor) -> TokenData:
        rows = [int(i) for i in idx]
        text = replace(
            self.text,
            texts=[self.text.texts[i] for i in rows],
            labels=None if self.text.labels is None else [self.text.labels[i] for i in rows],
            completions=None
            if self.text.completions is None
            else [self.text.completions[i] for i in rows],
        )
        index = torch.as_tensor(rows, dtype=torch.long)
        teacher = None if self.teacher is None else self.teacher[index]
        return replace(
            self, text=text, ids=self.ids[index], labels=self.labels[index], teacher=teacher
        )


def limits_of(limits: dict[str, Any]) -> TextLimits:
    """The reader's bounds from the worker's upload limits (file bytes, rows) where given."""
    fields = {k: limits[k] for k in ("file_bytes", "rows", "line_bytes") if k in limits}
    return TextLimits(**fields)


def same_tokenizer(teacher: Any, other: Any) -> bool:
    """Whether `other` (a tokenizers.Tokenizer, or None) maps every token to the teacher's id."""
    if other is None:
        return False
    return bool(
        teacher.get_vocab(with_added_tokens=True) == other.get_vocab(with_added_tokens=True)
    )


def check_same_tokenizer(teacher: Any, other: Any) -> None:
    """Refuses a model whose tokenizer (`tokenizers.Tokenizer`) is missing or maps tokens to
    other ids than the teacher's: the data is tokenised once, with the teacher's tokenizer, and
    both models read the same ids (text-level outputs, such as sentence embeddings, would allow
    two tokenizers, but every text task here feeds one batch of ids to both models)."""
    if other is None:
        raise IncompatibleDataError(
            "the student checkpoint has no tokenizer.json; zip it with its tokenizer (it must "
            "be the teacher's: both models read the same token ids)"
        )
    mine, theirs = (
        teacher.get_vocab(with_added_tokens=True),
        other.get_vocab(with_added_tokens=True),
    )
    if mine == theirs:
        return
    differ = sorted(set(mine.items()) ^ set(theirs.items()))[:3]
    raise IncompatibleDataError(
        f"the student's tokenizer differs from the teacher's ({len(theirs)} vs {len(mine)} "
        f"tokens; e.g. {', '.join(f'{t!r}: {i}' for t, i in differ)}): the two models would "
        "read the same ids as different text, and this task's losses compare them token by "
        "token. Distil between models that share a tokenizer (e.g. a hf_layers or hf_config "
        "student built from the teacher); only the sentence_embedding task, whose losses "
        "compare text-level outputs, takes a student with its own tokenizer"
    )


class TextTask(Task):
    """A task on token ids; see the module docstring."""

    kinds: ClassVar[tuple[TextKind, ...]] = ("classification",)
    output: ClassVar[Output] = "logits"
    tokenizer: Any = None  # the teacher's, once `fit_to_teacher` has seen it

    def kind_of(self, path: Path) -> TextKind:
        """The kind of upload `path` is read as: the task's one kind, or (LM tasks) instruction
        data when a .jsonl's first record has `prompt` and `completion`."""
        return self.kinds[0]

    def load(self, path: Path, ref: DatasetRef, **limits: Any) -> TextData:
        return read_text_dataset(
            Path(path),
            self.kind_of(Path(path)),
            text_column=ref.text_column,
            label_column=ref.label_column,
            limits=limits_of(limits),
        )

    def describe(self, path: Path, ref: DatasetRef, **limits: Any) -> dict[str, Any]:
        """Kind, rows, sample rows and class counts (no tokenizer yet: the token length
        histogram comes with a teacher, `describe_text(data, tokenizer)`)."""
        return describe_text(self.load(path, ref, **limits))

    def adapt_model(self, module: nn.Module, loaded: LoadedModel | None = None) -> nn.Module:
        """A transformers model behind `TokenModel`; any other model is refused, and so is a
        model (the `source: model` student, adapted after `fit_to_teacher`) whose tokenizer
        is not the teacher's."""
        if loaded is not None and loaded.format != "hf":
            raise IncompatibleDataError(
                f"a {type(self).__name__} run needs Hugging Face checkpoints (a .zip of "
                f"config.json, model.safetensors and tokenizer.json); this model is "
                f"{loaded.format}"
            )
        if loaded is not None and self.tokenizer is not None:
            if self.output == "mean_pool" and not same_tokenizer(self.tokenizer, loaded.tokenizer):
                return self._retokenized(module, loaded)
            check_same_tokenizer(self.tokenizer, loaded.tokenizer)
        if isinstance(module, TokenModel):
            return module
        return TokenModel(module, self.output)

    def _retokenized(self, module: nn.Module, loaded: LoadedModel) -> TokenModel:
        """A student with a tokenizer of its own, on a task whose losses compare text-level
        outputs (sentence embeddings): it reads each batch re-tokenised with its tokenizer, at
        most the task's max length (or its positions)."""
        if loaded.tokenizer is None:
            check_same_tokenizer(self.tokenizer, None)  # refuses, saying why
        positions = int(loaded.input_shape[0]) if loaded.input_shape else self.max_length()
        bridge = Retokenizer(self.tokenizer, loaded.tokenizer, min(self.max_length(), positions))
        hf = module.hf if isinstance(module, TokenModel) else module
        return TokenModel(hf, self.output, bridge)

    def export_module(self, student: nn.Module, input_shape: Sequence[int]) -> nn.Module:
        """The student reading its own token ids (`models.plain`: without the re-tokenising a
        student with its own tokenizer does in training)."""
        return plain(student)

    def native_inputs(
        self, model: nn.Module, example: Tensor | None
    ) -> tuple[nn.Module, Tensor | None]:
        """A student with a tokenizer of its own reads its own token ids of the same texts
        (`models.plain`, the ids re-tokenised once, before timing): deployed, it never maps the
        teacher's ids to its own."""
        bridge = getattr(model, "retokenize", None)
        if bridge is None or example is None:
            return model, example
        return plain(model), bridge(example)

    def build_student(
        self, architecture: str, kwargs: dict[str, Any], teacher: LoadedModel, data: Any
    ) -> nn.Module | None:
        """The text students (`students.TEXT_STUDENTS`: hf_layers, hf_config, hf_pruned) from
        the teacher (hf_pruned calibrated on `data`'s token ids); any other architecture is
        refused (a text task takes token ids)."""
        from worker.engine.tasks.text.students import TEXT_STUDENTS, build_text_student

        if architecture not in TEXT_STUDENTS:
            raise IncompatibleDataError(
                f"the student '{architecture}' takes images or tables; a {type(self).__name__} "
                f"student is one of {', '.join(TEXT_STUDENTS)} (built from the teacher) or a "
                "Hugging Face checkpoint (student source 'model')"
            )
        return build_text_student(architecture, kwargs, teacher, self.output, data)

    def student_reads_teacher(self, spec: StudentSpec) -> bool:
        """hf_layers copies the teacher's blocks and hf_pruned measures the teacher; a fresh
        hf_config reads its config only, and a registered model (source 'model') nothing."""
        return spec.source != "model" and spec.architecture != "hf_config"

    def extra_exports(
        self, student: nn.Module, out_dir: Path, teacher: LoadedModel, teacher_path: Path, data: Any
    ) -> dict[str, str]:
        """The student as a Hugging Face checkpoint zip (`export_hf`: student_hf.zip, with the
        teacher's tokenizer files and the dataset's class names)."""
        from worker.engine.tasks.text.export_hf import export_hf

        classes = getattr(getattr(data, "text", None), "classes", None)
        bridge = getattr(student, "retokenize", None)
        if bridge is not None:  # its own tokenizer, not the teacher's
            return export_hf(student, out_dir, bridge.target, None, classes)
        return export_hf(student, out_dir, teacher.tokenizer, Path(teacher_path), classes)

    def max_length(self) -> int:
        return int(self.params.get("max_length", 128))

    def targets(self, text: TextData, labels: Tensor, ids: Tensor) -> Tensor:
        """The task's targets from the tokenised labels (class indices, or token targets)."""
        return labels

    def fit_to_teacher(self, teacher: LoadedModel, data: TextData) -> TokenData:
        """Tokenise with the teacher's tokenizer at the task's max length (checked against the
        teacher's positions); refuses a teacher without a tokenizer and empty data."""
        if teacher.tokenizer is None:
            raise IncompatibleDataError(
                "the teacher checkpoint has no tokenizer.json; a text task tokenises the "
                "dataset with the teacher's tokenizer: zip the checkpoint with its tokenizer"
            )
        if len(data) == 0:
            raise DatasetError("the dataset has no rows")
        self.tokenizer = teacher.tokenizer  # a `source: model` student must share it
        positions = int(teacher.input_shape[0])
        try:
            tok = tokenize(data, teacher.tokenizer, self.max_length(), positions)
        except DatasetError as exc:
            raise IncompatibleDataError(str(exc)) from exc
        ids = tok.input_ids.masked_fill(tok.attention_mask == 0, PAD)
        labels = self.targets(data, tok.labels, ids)
        return TokenData(data, ids, labels, tok.truncated, teacher.tokenizer)

    def split(self, data: TokenData, val_fraction: float, seed: int) -> tuple[TokenData, TokenData]:
        """round(N * val_fraction) rows (at least 1, at most N - 1) drawn by a permutation
        seeded with `seed` go to validation; rows keep their order."""
        train_idx, val_idx = split_indices(len(data), val_fraction, seed)
        return data.subset(train_idx), data.subset(val_idx)

    def input_shape(self, data: TokenData) -> tuple[int, ...]:
        return (int(data.ids.shape[1]),)

    def batch(self, data: TokenData, idx: Tensor, device: torch.device) -> Batch:
        """Token ids of the rows `idx`, cut to their longest row (less padding to run)."""
        ids, labels = data.ids[idx], data.labels[idx]
        width = int((ids != PAD).sum(1).max()) if len(idx) else 1
        ids = ids[:, :width]
        if labels.dim() == 2:
            labels = labels[:, :width]
        return Batch(ids.to(device), labels.to(device))

    def export_dims(self, input_shape: Any) -> dict[int, Any]:
        """The exports take any number of tokens up to the run's max length (the example that
        traces them has at most 16)."""
        return {1: torch.export.Dim("tokens", min=2, max=max(self.max_length(), 16))}

    def example_input(self, input_shape: Any) -> Tensor:
        """Two rows of token ids (no padding) for tracing an export and timing the models:
        ids below 100 and below the teacher tokenizer's vocabulary once `fit_to_teacher` saw it
        (a tiny vocabulary must not index past the embeddings)."""
        length = min(int(input_shape[0]), 16)
        vocab = 100 if self.tokenizer is None else min(100, int(self.tokenizer.get_vocab_size()))
        return (torch.arange(2 * length).reshape(2, length) * 7 + 3) % max(vocab, 1)


@torch.inference_mode()
def token_outputs(
    module: nn.Module,
    ids: Tensor,
    batch_size: int = 64,
    device: torch.device | None = None,
    autocast: Any = None,
) -> Tensor:
    """`module`'s outputs on token ids [N, L] (padding `PAD`), in batches each cut to its
    longest row, float32 on CPU; the module runs in eval mode on `device` (default: where its
    weights are) and comes back in its mode."""
    was_training = module.training
    module.eval()
    if device is None:
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
    out = []
    try:
        for i in range(0, len(ids), batch_size):
            chunk = ids[i : i + batch_size]
            chunk = chunk[:, : max(int((chunk != PAD).sum(1).max()), 1)]
            with autocast() if autocast is not None else contextlib.nullcontext():
                out.append(module(chunk.to(device)).float().cpu())
    finally:
        module.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
