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
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

PAD = -1  # the padding id in a text task's inputs
Output = Literal["logits", "mean_pool"]


class TokenModel(nn.Module):
    """`hf` (a transformers `PreTrainedModel`) taking token ids padded with `PAD`."""

    hf: Any  # the transformers model (kept outside the module registry)

    def __init__(self, hf: nn.Module, output: Output = "logits") -> None:
        super().__init__()
        for name, child in hf.named_children():
            self.add_module(name, child)
        self.__dict__["hf"] = hf  # not a submodule: its children are ours already
        self.output = output
        self.train(hf.training)

    def train(self, mode: bool = True) -> TokenModel:
        super().train(mode)
        self.hf.training = mode
        return self

    def forward(self, ids: Tensor) -> Tensor:
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


def unwrap(module: nn.Module) -> nn.Module:
    """The transformers model behind a `TokenModel` (the module itself otherwise)."""
    return module.hf if isinstance(module, TokenModel) else module  # type: ignore[no-any-return]
