"""TinyBERT's hidden-state loss: MSE between paired blocks' token states through a learned
projection, over the real tokens only."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from worker.engine.losses.attention import token_mask
from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs
from worker.engine.losses.feature_l2 import projector


class HiddenMSE(DistillLoss):
    """L = sum_i sum_{n, l real} ||W_i h_s^i[n, l] - h_t^i[n, l]||^2 / (tokens * H_t).

    Jiao et al. TinyBERT: Distilling BERT for Natural Language Understanding. Findings of EMNLP
    2020 (eq. 8, L_hidn = MSE(H^S W_h, H^T)). h^i are the hidden states [N, L, H] of the i-th
    layer pair (a block's output), W_i a linear map H_s -> H_t trained with the student
    (identity-initialised when the widths match, so a student equal to its teacher starts at
    zero). Padding (token id -1 in `StepOutputs.inputs`) does not count; features of another
    shape (maps, vectors) are compared whole, through the same kind of projector.
    """

    def __init__(self, ctx: LossContext) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError(
                "hidden_mse needs at least one layer pair (a student block and a teacher block)"
            )
        self.projections = nn.ModuleList(projector(s, t) for s, t in ctx.pairs)

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        for proj, f_s, f_t in zip(
            self.projections, out.student_feats, out.teacher_feats, strict=True
        ):
            diff = (proj(f_s).float() - f_t.float()).pow(2)
            if diff.dim() != 3:
                total = total + diff.mean()
                continue
            real = token_mask(out.inputs, diff.shape[0], diff.shape[1], diff.device)
            weights = real.unsqueeze(-1).to(diff.dtype)
            count = (weights.sum() * diff.shape[-1]).clamp_min(1.0)
            total = total + (diff * weights).sum() / count
        return total
