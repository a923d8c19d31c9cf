"""Plain feature matching through a projector and batch normalisation (L2, L1 or cosine)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.connectors import build_connector
from worker.engine.losses.base import DistillLoss, LossContext, Shape, StepOutputs

DISTANCES = ("l2", "l1", "cosine")


def batch_standardize(f: Tensor, eps: float = 1e-5) -> Tensor:
    """BatchNorm without affine and with batch statistics: per channel over batch and space.

    Channels are dim 1 of maps [B, C, H, W] and vectors [B, D], the last dim of sequences.
    """
    f = f.float()
    dims = [d for d in range(f.dim()) if d != (f.dim() - 1 if f.dim() == 3 else 1)]
    mean = f.mean(dims, keepdim=True)
    var = f.var(dims, unbiased=False, keepdim=True)
    return (f - mean) / torch.sqrt(var + eps)


def projector(s: Shape, t: Shape) -> nn.Module:
    """A learnable linear projector: the connector when shapes differ, else an identity-initialised
    1x1 conv (maps) or linear (vectors, sequences)."""
    if tuple(s) != tuple(t):
        return build_connector(s, t)
    if len(s) == 3:
        layer: nn.Conv2d | nn.Linear = nn.Conv2d(s[0], s[0], 1, bias=False)
    else:
        layer = nn.Linear(s[-1], s[-1], bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(s[0] if len(s) == 3 else s[-1]).view_as(layer.weight))
    return layer


class FeatureL2(DistillLoss):
    """L = sum_i d(BN(p_i(f_s^i)), BN(f_t^i)) over the layer pairs i.

    p_i is a learnable linear projector (the connector of `build_connector` when the shapes
    differ: 1x1 conv + BN, pooling; an identity-initialised 1x1 conv / linear when they match), BN
    standardises each channel with the batch statistics (no affine) on both sides. d is the mean
    squared error (`l2`), the mean absolute error (`l1`) or 1 - cosine similarity of each sample's
    flattened feature, averaged over the batch (`cosine`).

    Miles, Elezi & Deng. Understanding the Role of the Projector in Knowledge Distillation.
    AAAI 2024: a linear projector plus batch normalisation of the representations recovers most
    of the gains of elaborate feature losses; without the normalisation the student spends its
    capacity matching the teacher's feature scale.
    """

    def __init__(self, ctx: LossContext, distance: str = "l2", normalize: bool = True) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError("feature_l2 needs at least one layer pair (teacher/student modules)")
        if distance not in DISTANCES:
            raise ValueError(
                f"feature_l2: distance must be one of {list(DISTANCES)}, got {distance!r}"
            )
        self.distance, self.normalize = distance, bool(normalize)
        self.projectors = nn.ModuleList(projector(s, t) for s, t in ctx.pairs)

    def _distance(self, a: Tensor, b: Tensor) -> Tensor:
        if self.distance == "l1":
            return F.l1_loss(a, b)
        if self.distance == "cosine":
            return (1 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)).mean()
        return F.mse_loss(a, b)

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        for proj, f_s, f_t in zip(
            self.projectors, out.student_feats, out.teacher_feats, strict=True
        ):
            p_s, f_t = proj(f_s).float(), f_t.float()
            if self.normalize:
                p_s, f_t = batch_standardize(p_s), batch_standardize(f_t)
            total = total + self._distance(p_s, f_t)
        return total
