"""Knowledge review: attention-based fusion of multi-level student features, hierarchical context
loss against the teacher's features of the same levels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs
from worker.engine.losses.blocks import as_map, map_shape


class ABF(nn.Module):
    """Attention-based fusion: 1x1 conv-BN to `mid` channels, fused with the (upsampled) residual
    from the deeper level by two sigmoid attention maps, then 3x3 conv-BN to the teacher's
    channels at the teacher's resolution. Returns (output, residual for the next shallower level).
    """

    def __init__(self, c_in: int, c_mid: int, c_out: int, fuse: bool) -> None:
        super().__init__()
        first = nn.Conv2d(c_in, c_mid, 1, bias=False)
        self.conv1 = nn.Sequential(first, nn.BatchNorm2d(c_mid))
        last = nn.Conv2d(c_mid, c_out, 3, 1, 1, bias=False)
        self.conv2 = nn.Sequential(last, nn.BatchNorm2d(c_out))
        self.att = nn.Sequential(nn.Conv2d(2 * c_mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(first.weight, a=1)
        nn.init.kaiming_uniform_(last.weight, a=1)

    def forward(
        self, x: Tensor, residual: Tensor | None, size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att is not None and residual is not None:
            y = F.interpolate(residual, x.shape[2:], mode="nearest")
            z = self.att(torch.cat([x, y], dim=1))
            x = x * z[:, :1] + y * z[:, 1:2]
        if tuple(x.shape[2:]) != size:
            x = F.interpolate(x, size, mode="nearest")
        return self.conv2(x), x


def hcl(f_s: Tensor, f_t: Tensor, levels: tuple[int, ...] = (4, 2, 1)) -> Tensor:
    """Hierarchical context loss: MSE at full size plus MSE of adaptive-avg-pooled l x l maps
    (l in `levels`, those smaller than the map), weighted 1, 1/2, 1/4, ... and normalised."""
    loss, weight, total = F.mse_loss(f_s, f_t), 1.0, 1.0
    for level in levels:
        if level >= f_s.shape[2]:
            continue
        weight /= 2.0
        pooled = F.adaptive_avg_pool2d(f_s, level), F.adaptive_avg_pool2d(f_t, level)
        loss = loss + weight * F.mse_loss(*pooled)
        total += weight
    return loss / total


class ReviewKD(DistillLoss):
    """L = w(e) * sum_l HCL(ABF_l(s_l, r_{l+1}), t_l), levels from deep to shallow.

    Chen, Liu, Zhao & Jia. Distilling Knowledge via Knowledge Review. CVPR 2021 (reference
    `ReviewKD`, `ABF`, `hcl_loss`). The student feature of each level l is fused with the residual
    r_{l+1} of the deeper levels (attention-based fusion; the deepest level has no residual),
    mapped to the teacher's channels and resolution, and compared with the teacher's feature of
    level l by the hierarchical context loss (spatial pyramid pooling levels 4, 2, 1). It uses all
    the loss's pairs as levels, ordered shallow -> deep by the student's spatial size (largest
    first; ties keep the configured order); a pooled vector [D] is a 1x1 deepest level, as in the
    reference. w(e) = min((e + 1) / warmup_epochs, 1) ramps the loss in (the reference uses 20 of
    240 epochs); 0 turns the ramp off.
    """

    def __init__(self, ctx: LossContext, mid_channels: int = 64, warmup_epochs: int = 0) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError("reviewkd needs layer pairs (one per level, e.g. each stage's end)")
        shapes = [(map_shape(s), map_shape(t)) for s, t in ctx.pairs]
        self.order = sorted(range(len(shapes)), key=lambda i: -shapes[i][0][1] * shapes[i][0][2])
        self.sizes = [(shapes[i][1][1], shapes[i][1][2]) for i in self.order]
        deepest = len(self.order) - 1
        self.abfs = nn.ModuleList(
            ABF(shapes[i][0][0], int(mid_channels), shapes[i][1][0], fuse=k < deepest)
            for k, i in enumerate(self.order)
        )
        self.warmup_epochs = int(warmup_epochs)

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        s = [as_map(out.student_feats[i]) for i in self.order]
        t = [as_map(out.teacher_feats[i]).float() for i in self.order]
        total, residual = torch.zeros((), device=out.student_logits.device), None
        for level in reversed(range(len(s))):
            fused, residual = self.abfs[level](s[level], residual, self.sizes[level])
            total = total + hcl(fused.float(), t[level])
        if self.warmup_epochs > 0:
            total = total * min((out.epoch + 1) / self.warmup_epochs, 1.0)
        return total
