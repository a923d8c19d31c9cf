"""Neuron selectivity transfer: MMD between the distributions of normalised channel maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs
from worker.engine.losses.blocks import as_map, match_spatial

KERNELS = ("poly", "rbf")


def channel_samples(f: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C, H*W]: each channel's map, L2-normalised over positions."""
    return F.normalize(f.float().flatten(2), dim=2)


class NST(DistillLoss):
    """L = sum_i MMD^2(S_i, T_i) = mean k(t,t') + mean k(s,s') - 2 mean k(s,t), per sample.

    Huang & Wang. Like What You Like: Knowledge Distill via Neuron Selectivity Transfer. 2017
    (RepDistiller `NSTLoss`, full loss). The samples of a distribution are the C channels of one
    sample's feature map, each flattened over H*W and L2-normalised; the kernel is polynomial,
    k(x, y) = (x.y + c)^d with d = 2, c = 0 as in the paper. Channel counts may differ between
    teacher and student; spatial sizes are pooled to the smaller. Means run over channel pairs
    and the batch. Vectors [D] count as D channels of one position, sequences [L, D] as D
    channels over L positions.
    """

    def __init__(self, ctx: LossContext, degree: int = 2, c: float = 0.0) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError(f"{self.name} needs at least one layer pair (teacher/student modules)")
        self.kernel, self.degree, self.c, self.sigma = "poly", int(degree), float(c), 1.0

    def k(self, a: Tensor, b: Tensor) -> Tensor:
        """Kernel matrix [B, Ca, Cb] between two sets of channel samples [B, Ca, N], [B, Cb, N]."""
        if self.kernel == "rbf":
            sq = a.pow(2).sum(-1)[:, :, None] + b.pow(2).sum(-1)[:, None, :]
            sq = (sq - 2 * a @ b.transpose(1, 2)).clamp_min(0)
            return torch.exp(-sq / (2 * self.sigma**2))
        return (a @ b.transpose(1, 2) + self.c).pow(self.degree)

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        for f_s, f_t in zip(out.student_feats, out.teacher_feats, strict=True):
            f_s, f_t = match_spatial(as_map(f_s), as_map(f_t))
            s, t = channel_samples(f_s), channel_samples(f_t)
            mmd = self.k(t, t).mean().detach() + self.k(s, s).mean() - 2 * self.k(s, t).mean()
            total = total + mmd
        return total


class MMD(NST):
    """NST with a choice of kernel: polynomial (as `nst`) or Gaussian.

    k(x, y) = exp(-||x - y||^2 / (2 sigma^2)) for `rbf`; the biased MMD^2 estimate of Gretton et
    al. 2012 over the same channel samples as `nst` (Huang & Wang 2017 also report the Gaussian
    and linear kernels).
    """

    def __init__(self, ctx: LossContext, kernel: str = "poly", sigma: float = 1.0) -> None:
        super().__init__(ctx)
        if kernel not in KERNELS:
            raise ValueError(f"mmd: kernel must be one of {list(KERNELS)}, got {kernel!r}")
        if sigma <= 0:
            raise ValueError(f"mmd: sigma must be > 0, got {sigma}")
        self.kernel, self.sigma = kernel, float(sigma)
