"""Hinton knowledge distillation on the logits."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


class KD(DistillLoss):
    """L = T^2 * (1/B) * sum_b KL(softmax(t_b / T) || softmax(s_b / T)).

    Hinton, Vinyals, Dean. Distilling the Knowledge in a Neural Network. 2015. The T^2 factor
    keeps the gradient scale independent of T (RepDistiller `DistillKL`, mdistiller `kd_loss`).
    """

    def __init__(self, ctx: LossContext, temperature: float = 4.0) -> None:
        super().__init__(ctx)
        if temperature <= 0:
            raise ValueError(f"kd: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, out: StepOutputs) -> Tensor:
        t = self.temperature
        log_p_s = F.log_softmax(out.student_logits.float() / t, dim=1)
        log_p_t = F.log_softmax(out.teacher_logits.float() / t, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        return kl * t * t
