"""Knowledge adaptation: the student adapts to a teacher feature compressed by an auto-encoder."""

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


def adapter(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv-BN-ReLU then 1x1 conv: the student's feature adapter C_f."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, 1, 1, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU(),
        nn.Conv2d(c_in, c_out, 1, bias=False),
    )


def affinity(f: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, HW, HW]: cosine similarity between every two positions."""
    n = F.normalize(f.float().flatten(2), dim=1)
    return n.transpose(1, 2) @ n


class KnowledgeAdaptation(DistillLoss):
    """L = sum_i mean_b ||E(f_t)/||E(f_t)|| - C(f_s)/||C(f_s)|| ||_2^2
               + lambda * mean (A(C(f_s)) - A(E(f_t)))^2.

    He, Shen, Tian, Gong, Sun & Yan. Knowledge Adaptation for Efficient Semantic Segmentation.
    CVPR 2019. The teacher's feature is compressed by the encoder E of a convolutional
    auto-encoder (`rate` k * C_t channels), which the engine pre-trains on the teacher's features
    (reconstruction MSE, `autoencoder_epochs` passes) and then freezes (`prepare`). The adapter C
    (3x3 conv-BN-ReLU, 1x1 conv; trained with the student) maps the student's feature into that
    compact space; both are flattened per sample and L2-normalised. The optional affinity term
    (weight lambda = `affinity_weight`) matches the pairwise cosine similarities between
    positions, the paper's affinity distillation for long-range context. Spatial sizes are pooled
    to the smaller.
    """

    needs_prepare = True

    def __init__(
        self,
        ctx: LossContext,
        rate: float = 0.5,
        autoencoder_epochs: int = 5,
        affinity_weight: float = 0.0,
    ) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError("ka needs at least one layer pair (teacher/student modules)")
        require_maps("ka", ctx.pairs)
        self.autoencoder_epochs = int(autoencoder_epochs)
        self.affinity_weight = float(affinity_weight)
        autoencoders = [ConvAutoEncoder(t[0], rate) for _, t in ctx.pairs]
        self.autoencoders = nn.ModuleList(autoencoders)
        self.autoencoders.requires_grad_(False)  # trained only in `prepare`
        self.adapters = nn.ModuleList(
            adapter(s[0], ae.factor_channels)
            for (s, _), ae in zip(ctx.pairs, autoencoders, strict=True)
        )

    def prepare(
        self, teacher_features: Callable[[], Iterable[list[Tensor]]], device: torch.device
    ) -> None:
        losses = pretrain_autoencoders(
            list(self.autoencoders), teacher_features, self.autoencoder_epochs
        )
        log.info("ka: auto-encoder reconstruction loss per epoch %s", losses)

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        # nn.ModuleList is not generic: it holds the ConvAutoEncoders built in __init__
        autoencoders = cast("Iterable[ConvAutoEncoder]", self.autoencoders)
        parts = zip(autoencoders, self.adapters, out.student_feats, out.teacher_feats, strict=True)
        for ae, adapt, f_s, f_t in parts:
            with torch.no_grad():
                z_t = ae.encoder(f_t.float())
            z_s, z_t = match_spatial(adapt(f_s).float(), z_t.float())
            diff = F.normalize(z_s.flatten(1), dim=1) - F.normalize(z_t.flatten(1), dim=1)
            total = total + diff.pow(2).sum(1).mean()
            if self.affinity_weight > 0:
                gap = affinity(z_s) - affinity(z_t)
                total = total + self.affinity_weight * gap.pow(2).mean()
        return total
