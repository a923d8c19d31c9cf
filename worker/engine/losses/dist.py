"""DIST: inter-class and intra-class Pearson-correlation relations between the predictions."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of a with the same row of b: [N, K] x [N, K] -> [N]."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DIST(DistillLoss):
    """L = T^2 * (beta * (1 - mean_b rho(Y_s[b,:], Y_t[b,:])) + gamma * (1 - mean_c rho(Y_s[:,c], Y_t[:,c]))).

    Huang, You, Wang, Qian, Xu. Knowledge Distillation from A Stronger Teacher. NeurIPS 2022
    (official DIST code, mdistiller). Y = softmax(z / T) [B, C]; rho is the Pearson correlation.
    The first term (inter-class) matches each sample's ranking of the classes, the second
    (intra-class) each class's ranking of the samples in the batch; only relations are matched,
    not exact probabilities, which tolerates a large teacher-student gap. The paper uses
    beta = gamma = 1 (T 1 on ImageNet, T 4 on CIFAR-100 with beta = gamma = 2).
    """

    def __init__(
        self, ctx: LossContext, beta: float = 1.0, gamma: float = 1.0, temperature: float = 4.0
    ) -> None:
        super().__init__(ctx)
        if temperature <= 0:
            raise ValueError(f"dist: temperature must be > 0, got {temperature}")
        self.beta, self.gamma, self.temperature = float(beta), float(gamma), float(temperature)

    def forward(self, out: StepOutputs) -> Tensor:
        t = self.temperature
        y_s = F.softmax(out.student_logits.float() / t, dim=1)
        y_t = F.softmax(out.teacher_logits.detach().float() / t, dim=1)
        inter = 1 - pearson_rows(y_s, y_t).mean()
        intra = 1 - pearson_rows(y_s.t(), y_t.t()).mean()
        return t * t * (self.beta * inter + self.gamma * intra)
