"""Correlation congruence: match instance-correlation matrices under a Gaussian RBF kernel."""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


def rbf_correlation(f: Tensor, gamma: float, order: int) -> Tensor:
    """Taylor approximation of k(x_i, x_j) = exp(-gamma ||x_i - x_j||^2) for unit rows x.

    With ||x|| = 1, ||x_i - x_j||^2 = 2 - 2 x_i.x_j, so
    k ~= sum_{p=0}^{P} exp(-2 gamma) (2 gamma)^p / p! (x_i . x_j)^p.
    """
    x = F.normalize(f.float().flatten(1), p=2, dim=1)
    dot = x @ x.t()
    terms = (
        math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * dot.pow(p)
        for p in range(order + 1)
    )
    return cast(Tensor, sum(terms))  # sum() types in its start value 0; the terms are tensors


class CorrelationCongruence(DistillLoss):
    """L = sum_i ||Psi(F_s^i) - Psi(F_t^i)||_F^2 / B^2,  Psi = [k(x_a, x_b)]_{a,b} over the batch.

    Peng, Jin, Liu, Li, Wu, Liu, Zhou, Zhang. Correlation Congruence for Knowledge Distillation.
    ICCV 2019. Features are flattened and L2-normalised; k is the Gaussian RBF kernel with
    `gamma`, approximated by its `order`-P Taylor expansion (the paper's choice: gamma 0.4, P 2).
    Only B x B matrices are compared, so student and teacher widths may differ. (RepDistiller's
    `Correlation` is a different, embedding-based variant; this one follows the paper.)
    """

    def __init__(self, ctx: LossContext, gamma: float = 0.4, order: int = 2) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError("cc needs at least one layer pair (teacher/student modules)")
        self.gamma, self.order = float(gamma), int(order)

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        for f_s, f_t in zip(out.student_feats, out.teacher_feats, strict=True):
            diff = rbf_correlation(f_s, self.gamma, self.order)
            diff = diff - rbf_correlation(f_t.detach(), self.gamma, self.order)
            total = total + diff.pow(2).sum() / (len(f_s) ** 2)
        return total
