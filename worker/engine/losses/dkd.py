"""Decoupled knowledge distillation: target-class (TCKD) and non-target-class (NCKD) parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


def dkd_terms(s: Tensor, t: Tensor, y: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(TCKD, NCKD), each a batch-mean KL times T^2, for student/teacher logits s, t [B, C].

    TCKD = KL(b_t || b_s) with the binary distributions b = [p_y, 1 - p_y] of softmax(z / T);
    NCKD = KL(p~_t || p~_s) with p~ = softmax over the C - 1 non-target classes only.
    Computed in log space (logsumexp), so no probability is ever 0 inside a log.
    """
    zs, zt = s.float() / temperature, t.detach().float() / temperature
    gt = F.one_hot(y, zs.shape[1]).bool()

    def binary(z: Tensor) -> Tensor:
        lse = z.logsumexp(1)
        log_target = z.gather(1, y[:, None])[:, 0] - lse
        log_other = z.masked_fill(gt, float("-inf")).logsumexp(1) - lse
        return torch.stack([log_target, log_other], 1)

    t2 = temperature * temperature
    tckd = F.kl_div(binary(zs), binary(zt), reduction="batchmean", log_target=True) * t2
    others = (zs.shape[0], zs.shape[1] - 1)
    log_ps = F.log_softmax(zs[~gt].view(others), 1)
    log_pt = F.log_softmax(zt[~gt].view(others), 1)
    nckd = F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * t2
    return tckd, nckd


def warmup_factor(epoch: int, warmup: int) -> float:
    """min((epoch + 1) / warmup, 1): mdistiller's `min(epoch / warmup, 1)` with 1-based epochs."""
    return 1.0 if warmup <= 0 else min((epoch + 1) / warmup, 1.0)


class DKD(DistillLoss):
    """L = min((e + 1) / warmup, 1) * (alpha * TCKD + beta * NCKD) in epoch e (0-based).

    Zhao, Cui, Song, Qiu, Liang. Decoupled Knowledge Distillation. CVPR 2022 (mdistiller
    `dkd_loss`). Classical KD equals TCKD + (1 - p_t,y) * NCKD; DKD frees the NCKD weight from the
    teacher's target confidence. mdistiller's CIFAR-100 setting: alpha 1, beta 8, T 4, warm-up
    20 of 240 epochs, with ce weight 1. For short runs shorten the warm-up (~10% of the epochs).
    """

    def __init__(
        self,
        ctx: LossContext,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup: int = 20,
    ) -> None:
        super().__init__(ctx)
        if temperature <= 0:
            raise ValueError(f"dkd: temperature must be > 0, got {temperature}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.temperature, self.warmup = float(temperature), int(warmup)

    def forward(self, out: StepOutputs) -> Tensor:
        tckd, nckd = dkd_terms(out.student_logits, out.teacher_logits, out.labels, self.temperature)
        return warmup_factor(out.epoch, self.warmup) * (self.alpha * tckd + self.beta * nckd)
