"""Prime-Aware Adaptive Distillation: feature matching weighted by a learned per-sample variance."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from worker.engine.connectors import build_connector
from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


class _VarianceHead(nn.Module):
    """Student feature -> log sigma^2 per sample [B]: average over space (maps [C, H, W]) or
    positions (sequences [L, D]), then Linear(channels, 1).

    Zero-initialised, so every sample starts with sigma^2 = 1 (the loss starts as MSE / 2).
    """

    def __init__(self, student_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.sequence = len(student_shape) == 2
        self.linear = nn.Linear(student_shape[-1] if self.sequence else student_shape[0], 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, f: Tensor) -> Tensor:
        f = f.float()
        if self.sequence:
            f = f.mean(1)
        elif f.dim() > 2:
            f = f.flatten(2).mean(2)
        return self.linear(f)[:, 0]


class PAD(DistillLoss):
    """L = sum_i mean_b [ d_ib / (2 sigma_ib^2) + log sigma_ib ],  d_ib = mean((r_i(f_s) - f_t)^2).

    Zhang, Chen, Wang et al. Prime-Aware Adaptive Distillation. ECCV 2020. The connector r_i
    (`build_connector`) maps the student feature onto the teacher's, and a variance head v_i on
    the student feature predicts log sigma^2 for each sample: the negative log-likelihood of the
    teacher feature under N(r_i(f_s), sigma^2). Hard samples (large d) get a large sigma^2 and are
    down-weighted; easy "prime" samples dominate. sigma^2 = exp(v) + eps keeps the loss bounded
    below: it can be negative (log sigma < 0); with f_s' = f_t it tends to log(eps) / 2 per pair.
    The heads are zero-initialised (sigma^2 = 1 + eps at the start: half of FitNets' MSE).
    """

    def __init__(self, ctx: LossContext, eps: float = 1e-4) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError("pad needs at least one layer pair (teacher/student modules)")
        self.eps = float(eps)
        self.connectors = nn.ModuleList(build_connector(s, t) for s, t in ctx.pairs)
        self.variance_heads = nn.ModuleList(_VarianceHead(tuple(s)) for s, _ in ctx.pairs)

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        for reg, head, f_s, f_t in zip(
            self.connectors, self.variance_heads, out.student_feats, out.teacher_feats, strict=True
        ):
            d = (reg(f_s).float() - f_t.detach().float()).pow(2).flatten(1).mean(1)
            var = head(f_s).exp() + self.eps
            total = total + (d / (2 * var) + 0.5 * var.log()).mean()
        return total
