"""Sentence-embedding distillation: the student's embedding of a text regresses the teacher's.

The models' outputs are sentence embeddings [N, D] (task `sentence_embedding`: the mean of the
last hidden state over the real tokens), passed as the step's logits.

- `embedding_mse`:    L = (1 / (N D)) * sum_i ||s_i - t_i||^2
- `embedding_cosine`: L = (1 / N) * sum_i (1 - cos(s_i, t_i))

Reimers & Gurevych. Making Monolingual Sentence Embeddings Multilingual using Knowledge
Distillation. EMNLP 2020: the student is trained with the MSE between its embedding and the
teacher's (their Eq. 1, `losses.MSELoss` of sentence-transformers); the cosine form ignores the
embeddings' norms (what cosine retrieval compares). Both need embeddings of the same width: a
narrower student must keep the teacher's hidden width (hf_config `hidden`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


def _pair(name: str, out: StepOutputs) -> tuple[Tensor, Tensor]:
    """Student and teacher embeddings [N, D] in float32 (the teacher's without gradient)."""
    s, t = out.student_logits.float(), out.teacher_logits.detach().float()
    if s.shape != t.shape or s.dim() != 2:
        raise ValueError(
            f"loss '{name}' compares sentence embeddings [N, D] of the same width; got student "
            f"{list(s.shape)} and teacher {list(t.shape)}. Give the student the teacher's "
            f"hidden width (hf_layers, or hf_config with hidden={t.shape[-1]})"
        )
    return s, t


class EmbeddingMSE(DistillLoss):
    """L = mean over rows and dimensions of (s - t)^2 (Reimers & Gurevych 2020, Eq. 1)."""

    def __init__(self, ctx: LossContext) -> None:
        super().__init__(ctx)

    def forward(self, out: StepOutputs) -> Tensor:
        s, t = _pair(self.name, out)
        return F.mse_loss(s, t)


class EmbeddingCosine(DistillLoss):
    """L = mean over rows of 1 - cos(s, t): the direction of the teacher's embedding only."""

    def __init__(self, ctx: LossContext) -> None:
        super().__init__(ctx)

    def forward(self, out: StepOutputs) -> Tensor:
        s, t = _pair(self.name, out)
        return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()
