"""Factor transfer: a paraphraser pre-trained on the teacher, a translator on the student."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs
from worker.engine.losses.blocks import (
    ConvAutoEncoder,
    match_spatial,
    pretrain_autoencoders,
    require_maps,
)

log = logging.getLogger(__name__)


def translator(c_in: int, c_out: int) -> nn.Sequential:
    """Three 3x3 conv + BN + LeakyReLU(0.1) layers (RepDistiller `Translator`)."""
    layers: list[nn.Module] = []
    for a, b in ((c_in, c_in), (c_in, c_out), (c_out, c_out)):
        layers += [nn.Conv2d(a, b, 3, 1, 1), nn.BatchNorm2d(b), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


def factor(f: Tensor) -> Tensor:
    """The factor flattened per sample and L2-normalised: F / ||F||_2."""
    return F.normalize(f.float().flatten(1), dim=1)


class FactorTransfer(DistillLoss):
    """L = sum_i mean_b || F_T/||F_T||_2 - F_S/||F_S||_2 ||_1 / N,  F_T = P_i(f_t), F_S = T_i(f_s).

    Kim, Park & Kwak. Paraphrasing Complex Network: Network Compression via Factor Transfer.
    NeurIPS 2018 (p = 1, as in the paper). The paraphraser P_i is the encoder of a convolutional
    auto-encoder with `rate` k * C_t factor channels; the engine pre-trains it on the teacher's
    features (reconstruction MSE, Adam, `paraphraser_epochs` passes over the training data)
    before distillation and then freezes it (`prepare`). The translator T_i (three conv-BN
    layers, student channels -> k * C_t) is trained with the student. Factors of different
    spatial sizes are pooled to the smaller; the L1 distance is a mean over the N entries.
    """

    needs_prepare = True

    def __init__(self, ctx: LossContext, rate: float = 0.5, paraphraser_epochs: int = 5) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError("ft needs at least one layer pair (teacher/student modules)")
        require_maps("ft", ctx.pairs)
        self.paraphraser_epochs = int(paraphraser_epochs)
        paraphrasers = [ConvAutoEncoder(t[0], rate) for _, t in ctx.pairs]
        self.paraphrasers = nn.ModuleList(paraphrasers)
        self.paraphrasers.requires_grad_(False)  # trained only in `prepare`
        self.translators = nn.ModuleList(
            translator(s[0], p.factor_channels)
            for (s, _), p in zip(ctx.pairs, paraphrasers, strict=True)
        )

    def prepare(
        self, teacher_features: Callable[[], Iterable[list[Tensor]]], device: torch.device
    ) -> None:
        losses = pretrain_autoencoders(
            list(self.paraphrasers), teacher_features, self.paraphraser_epochs
        )
        log.info("ft: paraphraser reconstruction loss per epoch %s", losses)

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        # nn.ModuleList is not generic: it holds the ConvAutoEncoders built in __init__
        paraphrasers = cast("Iterable[ConvAutoEncoder]", self.paraphrasers)
        parts = zip(
            paraphrasers, self.translators, out.student_feats, out.teacher_feats, strict=True
        )
        for para, trans, f_s, f_t in parts:
            with torch.no_grad():
                f_teacher = para.encoder(f_t.float())
            f_student, f_teacher = match_spatial(trans(f_s), f_teacher)
            total = total + (factor(f_teacher) - factor(f_student)).abs().mean()
        return total
