"""Logit standardization: z-score both logits before the softmax of KD or DKD."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs
from worker.engine.losses.dkd import dkd_terms, warmup_factor


def zscore(z: Tensor, eps: float = 1e-7) -> Tensor:
    """(z - mean(z)) / (std(z) + eps) per sample over the classes (unbiased std, as the paper)."""
    z = z.float()
    return (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + eps)


class LogitStandardization(DistillLoss):
    """L = base(Z(s), Z(t)) with Z(z) = (z - mean z) / std z per sample, base = kd or dkd.

    Sun, Ren, Li, Wang, Cao. Logit Standardization in Knowledge Distillation. CVPR 2024
    (official code: `normalize` before `kd_loss` / `dkd_loss`). Sharing one temperature forces
    the student to match the teacher's logit range; after the z-score only the shape of the
    logits is matched, so a student whose logits are an affine map a*t + b (a > 0) of the
    teacher's has zero loss. `temperature` is the paper's base temperature applied to the
    z-scores (the paper uses 2, with kd weight 9 and ce weight 0.1 on CIFAR-100). This loss
    replaces the kd/dkd term: use it instead of (not with) `kd`. With base 'dkd', alpha, beta
    and warmup act as in `dkd`.
    """

    def __init__(
        self,
        ctx: LossContext,
        temperature: float = 2.0,
        base: str = "kd",
        alpha: float = 1.0,
        beta: float = 8.0,
        warmup: int = 20,
    ) -> None:
        super().__init__(ctx)
        if base not in ("kd", "dkd"):
            raise ValueError(f"logit_std: base must be 'kd' or 'dkd', got {base!r}")
        if temperature <= 0:
            raise ValueError(f"logit_std: temperature must be > 0, got {temperature}")
        self.temperature, self.base = float(temperature), base
        self.alpha, self.beta, self.warmup = float(alpha), float(beta), int(warmup)

    def forward(self, out: StepOutputs) -> Tensor:
        s, t, temp = (
            zscore(out.student_logits),
            zscore(out.teacher_logits.detach()),
            self.temperature,
        )
        if self.base == "dkd":
            tckd, nckd = dkd_terms(s, t, out.labels, temp)
            return warmup_factor(out.epoch, self.warmup) * (self.alpha * tckd + self.beta * nckd)
        log_ps, log_pt = F.log_softmax(s / temp, 1), F.log_softmax(t / temp, 1)
        return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * temp * temp
