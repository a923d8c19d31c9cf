"""Losses on image outputs [N, C, H, W] (task generation): the student generator's output
against the teacher's (`recon_l1`) and against the dataset's targets (`target_l1`).

Intermediate feature distillation through learned 1x1 connectors, GAN Compression's third
term, is `fitnets` (a 1x1 conv + BN connector per layer pair, `connectors.build_connector`,
then the mean squared distance) on the generators' 4D features."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


def _image_pair(name: str, s: Tensor, ref: Tensor, what: str) -> tuple[Tensor, Tensor]:
    if s.dim() != 4 or s.shape != ref.shape:
        raise ValueError(
            f"loss '{name}' needs images [N, C, H, W] of the same shape from the student and "
            f"{what}, got student {list(s.shape)} and {what} {list(ref.shape)}; use it with "
            "the generation task and a student built for the teacher's output channels"
        )
    return s.float(), ref.float()


class ReconstructionL1(DistillLoss):
    """L = mean_{n,c,h,w} |G_s(x) - G_t(x)|.

    Li et al. "GAN Compression: Efficient Architectures for Interactive Conditional GANs",
    CVPR 2020: the reconstruction term of the distillation objective (L1 to the teacher's
    output, used with or without paired targets).
    """

    def __init__(self, ctx: LossContext) -> None:
        super().__init__(ctx)

    def forward(self, out: StepOutputs) -> Tensor:
        s, t = _image_pair(self.name, out.student_logits, out.teacher_logits, "teacher")
        return F.l1_loss(s, t)


class TargetL1(DistillLoss):
    """L = mean_{n,c,h,w} |G_s(x) - y|: the student's task loss on the paired targets y.

    Isola et al. "Image-to-Image Translation with Conditional Adversarial Networks" (pix2pix),
    CVPR 2017: the L1 term of its objective.
    """

    needs_teacher = False

    def __init__(self, ctx: LossContext) -> None:
        super().__init__(ctx)

    def forward(self, out: StepOutputs) -> Tensor:
        if out.labels.numel() == 0:
            raise ValueError(
                f"loss '{self.name}' compares the student's output with the dataset's target "
                "images, but this dataset has inputs only; use recon_l1 (the teacher's outputs)"
            )
        s, y = _image_pair(self.name, out.student_logits, out.labels, "target")
        return F.l1_loss(s, y)
