"""Structured pairwise similarity distillation (Liu et al. 2019): match the cosine similarities
between the spatial nodes of a feature map, so the student keeps the teacher's structure of
which locations look alike rather than its features themselves."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


def node_similarity(f: Tensor, grid: tuple[int, int]) -> Tensor:
    """A [N, M, M] with a_ij = f_i . f_j / (|f_i| |f_j|) over the M = grid nodes of `f`
    [N, C, H, W]; adaptive max pooling makes the nodes (each the max over its patch, the
    paper's beta x beta patches, when the patches tile the map)."""
    nodes = F.adaptive_max_pool2d(f.float(), grid).flatten(2)  # [N, C, M]
    nodes = F.normalize(nodes, dim=1, eps=1e-8)
    return nodes.transpose(1, 2) @ nodes


class Pairwise(DistillLoss):
    """L = sum over layer pairs of 1/(N * M^2) * sum_n sum_{i,j} (a^s_ij - a^t_ij)^2,
    a_ij the cosine similarity of nodes i and j (`node_similarity`).

    The node grid comes from the teacher map [C, H, W]: patches of max(1, int(scale * H)) x
    max(1, int(scale * W)) locations, ceil(H / patch) x ceil(W / patch) nodes, max-pooled; the
    student map is pooled to the same grid, so its channels and size may differ. Liu, Chen,
    Liu, Qu, Ma, Wang. "Structured Knowledge Distillation for Semantic Segmentation", CVPR 2019
    (pair-wise distillation); the authors' code pools with scale 0.5 and weights it 0.5.
    """

    def __init__(self, ctx: LossContext, scale: float = 0.5) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError(f"{self.name} needs at least one layer pair (teacher/student modules)")
        if not 0 < scale <= 1:
            raise ValueError(f"{self.name}: scale must be in (0, 1], got {scale}")
        for s_shape, t_shape in ctx.pairs:
            if len(s_shape) != 3 or len(t_shape) != 3:
                raise ValueError(
                    f"{self.name} compares feature maps [C, H, W]; got student {list(s_shape)} "
                    f"and teacher {list(t_shape)}: pick convolutional layers"
                )
        self.scale = float(scale)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The node grid of a teacher map of `height` x `width`."""
        ph, pw = max(1, int(self.scale * height)), max(1, int(self.scale * width))
        return math.ceil(height / ph), math.ceil(width / pw)

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        for f_s, f_t in zip(out.student_feats, out.teacher_feats, strict=True):
            grid = self.grid(*f_t.shape[-2:])
            diff = node_similarity(f_s, grid) - node_similarity(f_t.detach(), grid)
            total = total + diff.pow(2).mean()
        return total
