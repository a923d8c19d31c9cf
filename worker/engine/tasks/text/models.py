"""Transformers models as the engine runs them: token ids in, one tensor out.

The trainer, the losses, the taps and the exports take a model as `module(x) -> Tensor`. A text
task's batch is token ids [N, L] padded with `PAD` (-1), so the attention mask travels inside the
one input tensor: `TokenModel` builds the mask (`ids >= 0`), feeds the padding positions id 0 and
returns the tensor the task names:

- "logits": the model's logits: [N, classes] for sequence classification, [N, L, vocab] for a
  causal language model;
- "mean_pool": the last hidden state averaged over the real tokens, [N, hidden] (a sentence
  embedding, as sentence-transformers pools MiniLM).

The wrapped model's children are the `TokenModel`'s own children under the same names, so module
paths (layer pairs, the inspection's layer table) and state-dict keys are the transformers
model's: a student's weights save as the checkpoint transformers loads.

A student with a tokenizer of its own (a registered checkpoint; only where the loss compares
text-level outputs, sentence embeddings) reads the batch through a `Retokenizer`: each row of
the teacher's ids is decoded back to text and encoded with the student's tokenizer, inside its
forward, so the trainer still feeds one batch to both models. Its exports take the student's
own ids (`plain`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

PAD = -1  # the padding id in a text task's inputs
Output = Literal["logits", "mean_pool"]


@dataclass
class Retokenizer:
    """The teacher's token ids [N, L] (padded with PAD) as the student's: each row decoded
    with the teacher's tokenizer `source` (special tokens dropped) and encoded with the
    student's `target` (its own special tokens added), at most `max_length` tokens, padded
    with PAD, on the ids' device. `target` is kept as it came (the export writes it)."""

    source: Any  # tokenizers.Tokenizer
    target: Any  # tokenizers.Tokenizer
    max_length: int
    _encoder: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from tokenizers import Tokenizer

        self._encoder = Tokenizer.from_str(self.target.to_str())
        self._encoder.no_padding()
        self._encoder.enable_truncation(self.max_length, strategy="longest_first")

    def __call__(self, ids: Tensor) -> Tensor:
        rows = [[t for t in row if t >= 0] for row in ids.tolist()]
        texts = self.source.decode_batch(rows, skip_special_tokens=True)
        encoded = [e.ids for e in self._encoder.encode_batch(texts)]
        out = torch.full((len(rows), max([1, *map(len, encoded)])), PAD, dtype=torch.long)
        for i, row in enumerate(encoded):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out.to(ids.device)


class TokenModel(nn.Module):
    """`hf` (a transformers `PreTrainedModel`) taking token ids padded with `PAD` (the
    teacher's ids through `retokenize` when the model has a tokenizer of its own)."""

    hf: Any  # the transformers model (kept outside the module registry)

    def __init__(
        self, hf: nn.Module, output: Output = "logits", retokenize: Retokenizer | None = None
    ) -> None:
        super().__init__()
        for name, child in hf.named_children():
            self.add_module(name, child)
        self.__dict__["hf"] = hf  # not a submodule: its children are ours already
        self.output = output
        self.retokenize = retokenize
        self.train(hf.training)

    def train(self, mode: bool = True) -> TokenModel:
        super().train(mode)
        self.hf.training = mode
        return self

    def forward(self, ids: Tensor) -> Tensor:
        if self.retokenize is not None:
            ids = self.retokenize(ids)
        mask = ids >= 0
        ids = torch.where(mask, ids, torch.zeros_like(ids))
        if self.output == "mean_pool":
            hidden = self.hf(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.hf(input_ids=ids, attention_mask=mask.long()).logits

    @property
    def config(self) -> Any:
        """The transformers config (`PretrainedConfig`)."""
        return self.hf.config


def plain(module: nn.Module) -> nn.Module:
    """A `TokenModel` that reads the teacher's ids through a `Retokenizer` as one that reads
    its own ids (the same weights), for the exports; any other module as it is."""
    if isinstance(module, TokenModel) and module.retokenize is not None:
        return TokenModel(module.hf, module.output).train(module.training)
    return module


def unwrap(module: nn.Module) -> nn.Module:
    """The transformers model behind a `TokenModel` (the module itself otherwise)."""
    return module.hf if isinstance(module, TokenModel) else module  # type: ignore[no-any-return]
