"""Inter-channel correlation: match the row-normalised channel Gram matrices."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs
from worker.engine.losses.blocks import as_map, conv1x1, map_shape


def channel_gram(f: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C, C]: G = F F^T over positions, each row L2-normalised."""
    flat = f.float().flatten(2)
    return F.normalize(flat @ flat.transpose(1, 2), dim=2)


class ICKD(DistillLoss):
    """L = sum_i 1 / (C_t B) * sum_{b,j,k} (G(e_i(f_s))_bjk - G(f_t)_bjk)^2.

    Liu et al. Exploring Inter-Channel Correlation for Diversity-Preserved Knowledge
    Distillation. ICCV 2021 (reference `ICKDLoss`). e_i is a 1x1 convolution embedding the
    student's channels into the teacher's C_t (identity-initialised when the counts match,
    trained with the student). The C x C Gram matrix does not depend on the spatial size, so
    teacher and student maps need only match in channels after the embedding. Vectors count as
    1x1 maps, sequences [L, D] as D channels over L positions.
    """

    def __init__(self, ctx: LossContext) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError("ickd needs at least one layer pair (teacher/student modules)")
        self.embeds = nn.ModuleList(conv1x1(map_shape(s)[0], map_shape(t)[0]) for s, t in ctx.pairs)

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        for embed, f_s, f_t in zip(self.embeds, out.student_feats, out.teacher_feats, strict=True):
            g_s, g_t = channel_gram(embed(as_map(f_s))), channel_gram(as_map(f_t))
            b, c = g_t.shape[:2]
            total = total + (g_s - g_t).pow(2).sum() / (c * b)
        return total
