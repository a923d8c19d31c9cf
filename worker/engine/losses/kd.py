"""Hinton knowledge distillation on the logits: the forward KL of `divergence.py`."""

from __future__ import annotations

from torch import Tensor

from worker.engine.losses.base import LossContext
from worker.engine.losses.divergence import TokenDivergence, kl


class KD(TokenDivergence):
    """L = T^2 * mean over positions of KL(softmax(t / T) || softmax(s / T)).

    Hinton, Vinyals, Dean. Distilling the Knowledge in a Neural Network. 2015. The T^2 factor
    keeps the gradient scale independent of T (RepDistiller `DistillKL`, mdistiller `kd_loss`).
    On [N, C] logits the mean over positions is the batch mean; on a language model's [N, T, V]
    logits it is the token-level forward KL (TRL's GKD at beta = 0, DistillKit's forward KL),
    averaged over the tokens whose label is not -100 (`divergence.counted`).
    """

    def __init__(self, ctx: LossContext, temperature: float = 4.0) -> None:
        super().__init__(ctx, temperature)

    def divergence(self, log_p_t: Tensor, log_p_s: Tensor) -> Tensor:
        return kl(log_p_t, log_p_s)
