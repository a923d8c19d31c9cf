"""Cross-entropy on the hard labels: the student's own task loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


class CrossEntropy(DistillLoss):
    """L = -sum_c q_c log softmax(s)_c with q = (1 - eps) * onehot(y) + eps / C.

    `label_smoothing` is eps (Szegedy et al. 2016, "Rethinking the Inception Architecture").
    Logits [N, C] with labels [N] (classification), [N, C, H, W] with [N, H, W] (segmentation),
    or a language model's [N, T, V] (the vocabulary last, as transformers outputs it) with
    next-token labels [N, T]; labels -100 do not count.
    """

    needs_teacher = False

    def __init__(self, ctx: LossContext, label_smoothing: float = 0.0) -> None:
        super().__init__(ctx)
        self.label_smoothing = float(label_smoothing)

    def forward(self, out: StepOutputs) -> Tensor:
        logits, labels = out.student_logits.float(), out.labels
        if logits.dim() == 3 and labels.shape == logits.shape[:2]:  # per token: [N * T, V]
            logits, labels = logits.flatten(0, 1), labels.flatten()
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
