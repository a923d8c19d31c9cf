"""Probabilistic knowledge transfer: match cosine-similarity conditional distributions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs

_EPS = 1e-7


def conditional_probabilities(f: Tensor) -> Tensor:
    """p_{j|i} = k(x_i, x_j) / sum_j k(x_i, x_j) with the cosine kernel k = (cos + 1) / 2."""
    x = F.normalize(f.float().flatten(1), p=2, dim=1, eps=_EPS)
    k = (x @ x.t() + 1.0) / 2.0
    return k / k.sum(1, keepdim=True)


class PKT(DistillLoss):
    """L = sum_i mean_{a,b} p^t_{b|a} log((p^t_{b|a} + eps) / (p^s_{b|a} + eps)).

    Passalis & Tefas. Learning Deep Representations with Probabilistic Knowledge Transfer.
    ECCV 2018 (RepDistiller `PKT`). Features are flattened; the KL between the teacher's and
    student's conditional distributions is averaged over all B^2 entries, as RepDistiller does
    (hence its large weight, 30000 on CIFAR with the penultimate embedding).
    """

    def __init__(self, ctx: LossContext) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError("pkt needs at least one layer pair (teacher/student modules)")

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        for f_s, f_t in zip(out.student_feats, out.teacher_feats, strict=True):
            p_s, p_t = conditional_probabilities(f_s), conditional_probabilities(f_t.detach())
            total = total + (p_t * torch.log((p_t + _EPS) / (p_s + _EPS))).mean()
        return total
