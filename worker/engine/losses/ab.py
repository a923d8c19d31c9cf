"""Activation boundaries: a hinge loss that makes student neurons fire where the teacher's do."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from worker.engine.connectors import build_connector
from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


def ab_hinge(s: Tensor, t: Tensor, margin: float) -> Tensor:
    """sum over elements of (s + m)^2 [s > -m, t <= 0] + (s - m)^2 [s <= m, t > 0]."""
    off = (s + margin).pow(2) * ((s > -margin) & (t <= 0)).float()
    on = (s - margin).pow(2) * ((s <= margin) & (t > 0)).float()
    return (off + on).sum()


class ActivationBoundaries(DistillLoss):
    """L = sum_i w_i / (1000 B) * sum (r_i(f_s)+m)^2 1[r_i(f_s)>-m, f_t<=0]
                                 + (r_i(f_s)-m)^2 1[r_i(f_s)<=m, f_t>0].

    Heo, Lee, Yun & Choi. Knowledge Transfer via Distillation of Activation Boundaries Formed by
    Hidden Neurons. AAAI 2019 (RepDistiller `ABLoss`, the "alternative L2" of the paper). A neuron
    "fires" when its pre-activation is positive: the loss pushes the student's connector output
    r_i(f_s) (1x1 conv + BN when channels differ) beyond the margin m on the teacher's side of
    zero; it is zero once every sign pattern matches with margin m. Pair weights follow the
    reference: w_i = 2^(i - n + 1), so the deepest (last) pair counts 1 and each shallower pair
    half as much; the sum is divided by the batch size and 1000.

    Pairs must be PRE-activation features: tap the input of a ReLU (`tap: input`) or the output
    of the BatchNorm before it. After a ReLU the teacher is never negative and the "off" side of
    the boundary is lost.
    """

    def __init__(self, ctx: LossContext, margin: float = 1.0) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError("ab needs at least one layer pair (pre-activation teacher/student)")
        if margin < 0:
            raise ValueError(f"ab: margin must be >= 0, got {margin}")
        self.margin = float(margin)
        self.connectors = nn.ModuleList(build_connector(s, t) for s, t in ctx.pairs)
        n = len(ctx.pairs)
        self.pair_weights = [2.0 ** (i - n + 1) for i in range(n)]

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        pairs = zip(
            self.connectors, out.student_feats, out.teacher_feats, self.pair_weights, strict=True
        )
        for reg, f_s, f_t, w in pairs:
            hinge = ab_hinge(reg(f_s).float(), f_t.float(), self.margin)
            total = total + w * hinge / (f_s.shape[0] * 1000.0)
        return total
