"""Divergences between the teacher's and the student's distribution at every position.

The logits' last dimension is the distribution's support (classes, or a language model's
vocabulary): [N, C] for classification, [N, T, V] per token for language models. A position
does not count when its label is negative: the text tasks mark padding and prompt tokens with
-100 (`cross_entropy`'s ignore index, as Hugging Face and TRL do; the segmentation task does the
same for pixels). Labels of another shape (classification's [N], soft mixup targets) leave every
position counted.

Every loss here is

    L = T^2 * (1 / |P|) * sum_{i in P} D(p_T,i, p_S,i),    p_i = softmax(z_i / T)

over the counted positions P, computed from log-softmax in float32 (bf16 logits included), with
mixtures in log space (logsumexp), so no probability is ever 0 inside a log. The T^2 factor is
kd's (Hinton et al.): it keeps the gradient scale of the KL family independent of T; it is 1 at
the temperature the LM papers use (T = 1, the default of the losses below) and is kept for every
divergence for one convention. `kd` (kd.py) is the forward KL of this family.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


def log_probs(logits: Tensor, temperature: float) -> Tensor:
    """log softmax(z / T) over the last dimension, in float32."""
    return F.log_softmax(logits.float() / temperature, dim=-1)


def kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) at every position (the last dim summed)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def log_mixture(log_p: Tensor, log_q: Tensor, a: float) -> Tensor:
    """log(a p + (1 - a) q) by logsumexp; exactly log p at a = 1 and log q at a = 0."""
    if a >= 1.0:
        return log_p
    if a <= 0.0:
        return log_q
    return torch.logaddexp(log_p + math.log(a), log_q + math.log1p(-a))


def counted(labels: Tensor | None, shape: torch.Size) -> Tensor | None:
    """The positions that count (label >= 0) when the labels are integer and of the positions'
    `shape`; None (all count) otherwise."""
    if labels is None or labels.shape != shape or labels.is_floating_point():
        return None
    return labels >= 0


def masked_mean(values: Tensor, keep: Tensor | None) -> Tensor:
    """The mean of `values` over the positions `keep` marks (all when None); 0 when none counts
    (still differentiable)."""
    if keep is None:
        return values.mean()
    return torch.where(keep, values, 0.0).sum() / keep.sum().clamp(min=1)


class TokenDivergence(DistillLoss):
    """L = T^2 * masked mean over positions of `divergence(log p_T, log p_S)` (module docstring).

    A subclass gives only the per-position divergence; temperature, masking and reduction are
    here, shared by every loss of the family.
    """

    def __init__(self, ctx: LossContext, temperature: float = 1.0) -> None:
        super().__init__(ctx)
        if temperature <= 0:
            raise ValueError(f"{self.name}: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def divergence(self, log_p_t: Tensor, log_p_s: Tensor) -> Tensor:  # pragma: no cover
        """The divergence at every position, [...] for log-probabilities [..., V]."""
        raise NotImplementedError

    def forward(self, out: StepOutputs) -> Tensor:
        s, t = out.student_logits, out.teacher_logits.detach()
        if s.shape != t.shape:
            raise ValueError(
                f"loss '{self.name}' needs student and teacher logits of the same shape "
                f"[..., classes], got student {list(s.shape)} and teacher {list(t.shape)}"
            )
        tau = self.temperature
        per_position = self.divergence(log_probs(t, tau), log_probs(s, tau))
        return masked_mean(per_position, counted(out.labels, per_position.shape)) * tau * tau


class ReverseKL(TokenDivergence):
    """D = KL(p_S || p_T): mode-seeking; the student is penalised for mass where the teacher has
    little, not for missing some of the teacher's modes.

    Gu, Dong, Wei, Huang. MiniLLM: Knowledge Distillation of Large Language Models. ICLR 2024
    (which optimises the sequence-level reverse KL by policy gradient; this is its token-level
    form, the loss of TRL's GKD at beta = 1 and DistillKit's reverse KL).
    """

    def divergence(self, log_p_t: Tensor, log_p_s: Tensor) -> Tensor:
        return kl(log_p_s, log_p_t)


class GeneralizedJSD(TokenDivergence):
    """D = beta * KL(p_T || M) + (1 - beta) * KL(p_S || M), M = beta p_T + (1 - beta) p_S;
    beta = 0 is KL(p_T || p_S) and beta = 1 is KL(p_S || p_T).

    Agarwal, Vieillard, Zhou, Stanczyk, Ramos, Geist, Bachem. On-Policy Distillation of Language
    Models: Learning from Self-Generated Mistakes (GKD). ICLR 2024, Eq. 1. The end points follow
    TRL's `generalized_jsd_loss`: the mixture formula tends to 0 there, so beta = 0 and 1 are
    defined as the forward and reverse KL (the loss jumps at the ends; beta = 0.5 is the
    symmetric JSD, bounded by log 2 per position before the T^2 factor).
    """

    def __init__(self, ctx: LossContext, beta: float = 0.5, temperature: float = 1.0) -> None:
        super().__init__(ctx, temperature)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"{self.name}: beta must be in [0, 1], got {beta}")
        self.beta = float(beta)

    def divergence(self, log_p_t: Tensor, log_p_s: Tensor) -> Tensor:
        b = self.beta
        if b == 0.0:
            return kl(log_p_t, log_p_s)
        if b == 1.0:
            return kl(log_p_s, log_p_t)
        log_m = log_mixture(log_p_t, log_p_s, b)
        return b * kl(log_p_t, log_m) + (1.0 - b) * kl(log_p_s, log_m)


class SkewKL(TokenDivergence):
    """Forward: D = KL(p_T || alpha p_T + (1 - alpha) p_S); reverse: KL(p_S || alpha p_S +
    (1 - alpha) p_T). alpha = 0 gives the plain KLs.

    Ko, Kim, Chen, Yun. DistiLLM: Towards Streamlined Distillation for Large Language Models.
    ICML 2024 (skew KL and skew reverse KL, alpha 0.1). Mixing a little of the target into the
    other side keeps the divergence finite and its gradient bounded where the student puts
    almost no mass on a token the teacher likes.
    """

    def __init__(
        self,
        ctx: LossContext,
        alpha: float = 0.1,
        direction: str = "forward",
        temperature: float = 1.0,
    ) -> None:
        super().__init__(ctx, temperature)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"{self.name}: alpha must be in [0, 1), got {alpha}")
        if direction not in ("forward", "reverse"):
            raise ValueError(
                f"{self.name}: direction must be 'forward' or 'reverse', got {direction!r}"
            )
        self.alpha, self.direction = float(alpha), direction

    def divergence(self, log_p_t: Tensor, log_p_s: Tensor) -> Tensor:
        if self.direction == "reverse":
            log_p_t, log_p_s = log_p_s, log_p_t
        return kl(log_p_t, log_mixture(log_p_t, log_p_s, self.alpha))


class TVD(TokenDivergence):
    """D = (1/2) * sum_v |p_T,v - p_S,v|, the total variation distance (in [0, 1] per position
    before the T^2 factor): symmetric and bounded. DistillKit offers it next to the KLs and
    the JSD."""

    def divergence(self, log_p_t: Tensor, log_p_s: Tensor) -> Tensor:
        return 0.5 * (log_p_t.exp() - log_p_s.exp()).abs().sum(-1)
