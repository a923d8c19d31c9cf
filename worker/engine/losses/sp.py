"""Similarity-preserving distillation: match the batch similarity (Gram) matrices."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


def batch_similarity(f: Tensor) -> Tensor:
    """G = row-normalize(F F^T) with F = f flattened to [B, D]."""
    x = f.float().flatten(1)
    return F.normalize(x @ x.t(), p=2, dim=1)


class SimilarityPreserving(DistillLoss):
    """L = sum_i ||G_s^i - G_t^i||_F^2 / B^2,  G = row-normalize(F F^T) over the batch.

    Tung & Mori. Similarity-Preserving Knowledge Distillation. ICCV 2019 (RepDistiller
    `Similarity`). Only B x B matrices are compared, so channel counts and sizes may differ.
    RepDistiller pairs the last convolutional map (before pooling) with weight 3000 on CIFAR;
    the value does not depend on the map size, so that weight carries over to 8x8 inputs.
    """

    def __init__(self, ctx: LossContext) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError("sp needs at least one layer pair (teacher/student modules)")

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        for f_s, f_t in zip(out.student_feats, out.teacher_feats, strict=True):
            diff = batch_similarity(f_s) - batch_similarity(f_t.detach())
            total = total + diff.pow(2).sum() / (len(f_s) ** 2)
        return total
