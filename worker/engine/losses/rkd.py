"""Relational knowledge distillation: distance-wise and angle-wise relations within the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """||e_i - e_j|| for rows of e [B, D], 0 on the diagonal (no sqrt(0) in the gradient)."""
    sq = e.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps)
    return d2.sqrt() * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def _mean_normalised(d: Tensor) -> Tensor:
    return d / d[d > 0].mean().clamp(min=1e-12)


def angles(e: Tensor) -> Tensor:
    """cos of the angle e_i e_j e_k for all triplets: <unit(e_i - e_j), unit(e_k - e_j)>, flattened."""
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # [j, i, D]
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


class RKD(DistillLoss):
    """L = sum_i w_dist * huber(psi_D(s), psi_D(t)) + w_angle * huber(psi_A(s), psi_A(t)).

    Park, Kim, Lu, Cho. Relational Knowledge Distillation. CVPR 2019 (RepDistiller `RKDLoss`).
    Features are flattened to [B, D]. psi_D: pairwise distances divided by their mean over the
    batch (so the distance term ignores the feature scale); psi_A: cosines of the angles of all
    triplets; huber is smooth L1 (mean). Teacher and student widths may differ. RepDistiller pairs
    the penultimate embedding (after pooling) with w_dist 25, w_angle 50 and loss weight 1. The
    angle term costs O(B^2 D) memory: pair pooled features, not large maps.
    """

    def __init__(self, ctx: LossContext, w_dist: float = 25.0, w_angle: float = 50.0) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError("rkd needs at least one layer pair (teacher/student modules)")
        self.w_dist, self.w_angle = float(w_dist), float(w_angle)

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        for f_s, f_t in zip(out.student_feats, out.teacher_feats, strict=True):
            s, t = f_s.float().flatten(1), f_t.float().flatten(1).detach()
            d_s, d_t = (
                _mean_normalised(pairwise_distances(s)),
                _mean_normalised(pairwise_distances(t)),
            )
            total = total + self.w_dist * F.smooth_l1_loss(d_s, d_t)
            total = total + self.w_angle * F.smooth_l1_loss(angles(s), angles(t))
        return total
