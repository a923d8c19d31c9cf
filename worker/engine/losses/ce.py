"""Cross-entropy on the hard labels: the student's own task loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


class CrossEntropy(DistillLoss):
    """L = -sum_c q_c log softmax(s)_c with q = (1 - eps) * onehot(y) + eps / C.

    `label_smoothing` is eps (Szegedy et al. 2016, "Rethinking the Inception Architecture").
    """

    needs_teacher = False

    def __init__(self, ctx: LossContext, label_smoothing: float = 0.0) -> None:
        super().__init__(ctx)
        self.label_smoothing = float(label_smoothing)

    def forward(self, out: StepOutputs) -> Tensor:
        return F.cross_entropy(
            out.student_logits.float(), out.labels, label_smoothing=self.label_smoothing
        )
