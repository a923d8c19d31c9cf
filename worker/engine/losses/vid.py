"""Variational information distillation: a Gaussian with learned mean and variance per pair."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs
from worker.engine.losses.blocks import as_map, map_shape, match_spatial


def regressor(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    """mu(s): 1x1 conv - ReLU - 1x1 conv - ReLU - 1x1 conv, no bias (RepDistiller `VIDLoss`)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_mid, 1, bias=False),
        nn.ReLU(),
        nn.Conv2d(c_mid, c_mid, 1, bias=False),
        nn.ReLU(),
        nn.Conv2d(c_mid, c_out, 1, bias=False),
    )


class VID(DistillLoss):
    """L = sum_i mean_{b,c,h,w} 0.5 * (log sigma_c^2 + (t - mu(s))^2 / sigma_c^2).

    Ahn, Hu, Damianou, Lawrence & Dai. Variational Information Distillation for Knowledge
    Transfer. CVPR 2019 (RepDistiller `VIDLoss`). Minimising the negative log-likelihood of the
    teacher feature t under a Gaussian q(t | s) = N(mu(s), diag(sigma^2)) maximises a variational
    lower bound on the mutual information I(t; s). mu is a 1x1-conv regressor on the student
    feature (middle width = teacher channels), sigma_c^2 = softplus(alpha_c) + eps is a learned
    per-channel variance initialised to `init_var`. The constant 0.5 log(2 pi) is left out, as in
    the reference, so the loss can be negative. Spatial sizes are pooled to the smaller; vectors
    are 1x1 maps.
    """

    eps = 1e-5

    def __init__(self, ctx: LossContext, init_var: float = 5.0) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError("vid needs at least one layer pair (teacher/student modules)")
        if init_var <= 2 * self.eps:
            raise ValueError(f"vid: init_var must be > {2 * self.eps}, got {init_var}")
        channels = [(map_shape(s)[0], map_shape(t)[0]) for s, t in ctx.pairs]
        self.regressors = nn.ModuleList(regressor(c_s, c_t, c_t) for c_s, c_t in channels)
        alpha = math.log(math.expm1(init_var - self.eps))  # softplus(alpha) + eps = init_var
        self.log_scales = nn.ParameterList(
            nn.Parameter(torch.full((c_t,), alpha)) for _, c_t in channels
        )

    def variance(self, i: int) -> Tensor:
        return F.softplus(self.log_scales[i]) + self.eps

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        for i, (f_s, f_t) in enumerate(zip(out.student_feats, out.teacher_feats, strict=True)):
            f_s, f_t = match_spatial(as_map(f_s), as_map(f_t).float())
            mu = self.regressors[i](f_s).float()
            var = self.variance(i).view(1, -1, 1, 1)
            total = total + (0.5 * (torch.log(var) + (f_t - mu).pow(2) / var)).mean()
        return total
