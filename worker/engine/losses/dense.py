"""Distillation losses on dense (per-pixel) logits [N, C, H, W]: pixel-wise KD and channel-wise
distillation (CWD). Both take the two models' logits at the same spatial size; the segmentation
task passes ignored pixels as label -100 (`torch.nn.functional.cross_entropy`'s ignore index).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


def _dense_pair(name: str, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    if s.dim() != 4 or s.shape != t.shape:
        raise ValueError(
            f"loss '{name}' needs per-pixel logits [N, classes, H, W] of the same shape from "
            f"both models, got student {list(s.shape)} and teacher {list(t.shape)}; use it with "
            "the segmentation task and a student built for the teacher's classes and input size"
        )
    return s.float(), t.float()


class PixelKD(DistillLoss):
    """L = T^2 / |P| * sum_{(n,h,w) in P} KL(softmax(t_nhw / T) || softmax(s_nhw / T)).

    Hinton's KD at every pixel over the class dimension, averaged over the pixels P that are not
    ignored (label >= 0; all pixels when the labels are not per-pixel). Liu et al. "Structured
    Knowledge Distillation for Semantic Segmentation", CVPR 2019 (pixel-wise distillation, there
    with T = 1).
    """

    def __init__(self, ctx: LossContext, temperature: float = 1.0) -> None:
        super().__init__(ctx)
        if temperature <= 0:
            raise ValueError(f"{self.name}: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, out: StepOutputs) -> Tensor:
        s, t = _dense_pair(self.name, out.student_logits, out.teacher_logits)
        tau = self.temperature
        log_p_s = F.log_softmax(s / tau, dim=1)
        log_p_t = F.log_softmax(t / tau, dim=1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)  # [N, H, W]
        labels = out.labels
        if labels is not None and labels.shape == kl.shape:
            keep = labels >= 0
            return (kl * keep).sum() / keep.sum().clamp(min=1) * tau * tau
        return kl.mean() * tau * tau


class CWD(DistillLoss):
    """L = T^2 / (N * C) * sum_{n,c} sum_i phi(t_nc)_i * log(phi(t_nc)_i / phi(s_nc)_i),
    phi(y_nc)_i = exp(y_nc,i / T) / sum_j exp(y_nc,j / T) over the H*W locations i.

    Each channel's activation map becomes a distribution over locations (softmax over space),
    and the student's is pulled to the teacher's by KL: KD with the roles of class and location
    swapped. Every pixel counts (the paper masks nothing). Shu, Liu, Gao, Yan, Shen.
    "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021; MMRazor's
    `ChannelWiseDivergence` (tau 1, loss weight 3 for PSPNet on Cityscapes).
    """

    def __init__(self, ctx: LossContext, temperature: float = 1.0) -> None:
        super().__init__(ctx)
        if temperature <= 0:
            raise ValueError(f"{self.name}: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, out: StepOutputs) -> Tensor:
        s, t = _dense_pair(self.name, out.student_logits, out.teacher_logits)
        n, c = s.shape[:2]
        tau = self.temperature
        log_p_s = F.log_softmax(s.reshape(n * c, -1) / tau, dim=1)
        log_p_t = F.log_softmax(t.reshape(n * c, -1) / tau, dim=1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
        return kl / (n * c) * tau * tau
