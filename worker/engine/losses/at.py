"""Attention transfer: L2 between normalised spatial attention maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, Shape, StepOutputs


def attention_map(f: Tensor, p: float) -> Tensor:
    """a(f) = normalize(mean_c |f_c|^p), flattened: [B, C, *space] -> [B, prod(space)].

    A vector feature [B, D] has no spatial axis; its map is normalize(|f|^p) over the D units.
    """
    a = f.float().abs().pow(p)
    if f.dim() > 2:
        a = a.mean(1)
    return F.normalize(a.reshape(f.shape[0], -1), dim=1)


def _match_spatial(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the larger of two maps ([B,C,L] or [B,C,H,W]) to the smaller size."""
    if f_s.dim() <= 2 or f_s.shape[2:] == f_t.shape[2:]:
        return f_s, f_t
    size = tuple(min(a, b) for a, b in zip(f_s.shape[2:], f_t.shape[2:], strict=True))
    if f_s.dim() == 3:
        return F.adaptive_avg_pool1d(f_s, size), F.adaptive_avg_pool1d(f_t, size)
    h, w = size  # [B, C, H, W]: `_check_shapes` allows no more axes
    return F.adaptive_avg_pool2d(f_s, (h, w)), F.adaptive_avg_pool2d(f_t, (h, w))


def _check_shapes(s: Shape, t: Shape) -> None:
    if len(s) != len(t) or len(s) > 3:
        raise ValueError(
            f"at: cannot compare student feature {list(s)} with teacher feature {list(t)}; "
            "pair layers that both output [C, H, W] (or both [C, L]) maps"
        )
    if len(s) == 1 and s != t:
        raise ValueError(
            f"at: vector features of different widths ({s[0]} vs {t[0]}) have no shared "
            "attention map; pair convolutional layers or use 'fitnets' for these layers"
        )


class AttentionTransfer(DistillLoss):
    """L = sum_i mean_{b,j} (a(f_s^i)_bj - a(f_t^i)_bj)^2, a = normalize(mean_c |f|^p).

    Zagoruyko & Komodakis. Paying More Attention to Attention. ICLR 2017 (RepDistiller
    `Attention`). Channel counts may differ (the map averages over channels); spatial sizes that
    differ are average-pooled to the smaller one.

    Weight: the maps are unit vectors and the loss is a mean over their H*W entries, so it is
    small and shrinks as maps grow. RepDistiller uses beta = 1000 on CIFAR (32x32 inputs, maps of
    32x32 down to 8x8): set this loss's weight to ~1000 there, and scale it by about
    (H*W of your largest map) / 1024 otherwise, e.g. 60-100 for 8x8 inputs (measured on the
    digits demo: 1000 there over-regularises a small student, 100 matches the teacher).
    """

    def __init__(self, ctx: LossContext, p: float = 2.0) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError("at needs at least one layer pair (teacher/student modules)")
        for s, t in ctx.pairs:
            _check_shapes(s, t)
        self.p = float(p)

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        for f_s, f_t in zip(out.student_feats, out.teacher_feats, strict=True):
            f_s, f_t = _match_spatial(f_s, f_t)
            diff = attention_map(f_s, self.p) - attention_map(f_t, self.p)
            total = total + diff.pow(2).mean()
        return total
