"""FSP matrices: the "flow" between consecutive layers, matched between teacher and student."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from worker.engine.connectors import build_connector
from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs
from worker.engine.losses.blocks import match_spatial, require_maps


def fsp_matrix(f1: Tensor, f2: Tensor) -> Tensor:
    """G[b, i, j] = sum_{h,w} f1[b, i, h, w] * f2[b, j, h, w] / (h * w), i.e. F1^T F2 / (h w).

    The larger map is adaptive-average-pooled to the smaller spatial size first.
    """
    f1, f2 = match_spatial(f1.float(), f2.float())
    return f1.flatten(2) @ f2.flatten(2).transpose(1, 2) / (f1.shape[2] * f1.shape[3])


class FSP(DistillLoss):
    """L = sum_{i=1}^{n-1} mean_{b,j,k} (G(r_i(f_s^i), r_{i+1}(f_s^{i+1})) - G(f_t^i, f_t^{i+1}))^2.

    Yim, Joo, Bae & Kim. A Gift from Knowledge Distillation: Fast Optimization, Network
    Minimization and Transfer Learning. CVPR 2017 (RepDistiller `FSP`). The FSP matrix of two
    layers is the Gram matrix between their channels over the positions; the loss compares the
    flows between every two consecutive pairs, in the configured order, so it needs at least two
    pairs. RepDistiller demands equal channel counts on both sides; here a student feature with a
    different shape goes through a connector r_i (1x1 conv + BN, pooling) first, identity
    otherwise.
    """

    def __init__(self, ctx: LossContext) -> None:
        super().__init__(ctx)
        if len(ctx.pairs) < 2:
            raise ValueError(
                f"fsp needs at least 2 layer pairs (the flow between consecutive layers), got "
                f"{len(ctx.pairs)}; add a pair, e.g. the ends of two consecutive stages"
            )
        require_maps("fsp", ctx.pairs)
        self.connectors = nn.ModuleList(build_connector(s, t) for s, t in ctx.pairs)

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        s = [reg(f) for reg, f in zip(self.connectors, out.student_feats, strict=True)]
        t = out.teacher_feats
        total = torch.zeros((), device=out.student_logits.device)
        for i in range(len(s) - 1):
            diff = fsp_matrix(s[i], s[i + 1]) - fsp_matrix(t[i], t[i + 1])
            total = total + diff.pow(2).mean()
        return total
