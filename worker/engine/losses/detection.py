"""Distillation losses for the detection task: feature imitation near the ground-truth boxes,
localization distillation on the box-side distributions, and KD on the class-centre heatmaps.

They read the detection task's targets (`StepOutputs.labels`): [N, M, 5] per image its boxes'
x0, y0, x1, y1 (pixels) and class index, padded with rows of -1 (class < 0: no box). LD and the
heatmap KD read both models' outputs in the studio's dense-head layout [N, C + 4 * B, h, w]
(`worker.engine.tasks.detection.centernet`: class-centre logits, then B distance-bin logits per
box side); the imitation reads tapped feature pairs, so any teacher serves it.

- `imitation_mask`: Wang et al.'s imitation region for an anchor-free detector: the anchor at a
  location is the ground-truth box moved to that location's centre; a location is kept for a box
  when that anchor's IoU with the box exceeds psi times the largest such IoU over the map;
- `centre_mask`: each box's centre cell on the output map (the CenterNet targets' positives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


def _boxes(name: str, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Boxes [N, M, 4] (float32 pixels) and which rows are boxes [N, M] (bool)."""
    if targets.dim() != 3 or targets.shape[-1] != 5:
        raise ValueError(
            f"loss '{name}' needs the detection task's targets [N, boxes, 5] (x0, y0, x1, y1, "
            f"class; -1 rows pad), got {list(targets.shape)}; use it with the detection task"
        )
    return targets[..., :4].float(), targets[..., 4] >= 0


def imitation_mask(
    targets: Tensor, image_size: tuple[int, int], h: int, w: int, psi: float = 0.5
) -> Tensor:
    """[N, h, w] bool: the locations of an [h, w] feature map (over an image of `image_size`
    (H, W)) near a ground-truth box, by Wang et al.'s rule (module doc); psi in [0, 1)."""
    boxes, valid = _boxes("fg_imitation", targets)
    sy, sx = image_size[0] / h, image_size[1] / w
    ys = (torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5) * sy
    xs = (torch.arange(w, device=boxes.device, dtype=torch.float32) + 0.5) * sx
    bw = (boxes[..., 2] - boxes[..., 0]).clamp_min(0)[..., None, None]  # [N, M, 1, 1]
    bh = (boxes[..., 3] - boxes[..., 1]).clamp_min(0)[..., None, None]
    dx = (xs[None, None, None, :] - (boxes[..., 0] + boxes[..., 2])[..., None, None] / 2).abs()
    dy = (ys[None, None, :, None] - (boxes[..., 1] + boxes[..., 3])[..., None, None] / 2).abs()
    overlap = (bw - dx).clamp_min(0) * (bh - dy).clamp_min(0)  # [N, M, h, w]
    iou = overlap / (2 * bw * bh - overlap).clamp_min(1e-9)
    best = iou.amax(dim=(-2, -1), keepdim=True)
    keep = (iou > psi * best) & (iou > 0) & valid[..., None, None]
    return keep.any(dim=1)


def centre_mask(targets: Tensor, h: int, w: int, stride: int) -> Tensor:
    """[N, h, w] bool: each box's centre cell on an output map of `stride` (as `encode` puts a
    box's targets: cell (int(cy / stride), int(cx / stride)), clipped to the map)."""
    boxes, valid = _boxes("ld", targets)
    j = ((boxes[..., 0] + boxes[..., 2]) / 2 / stride).floor().long().clamp(0, w - 1)
    i = ((boxes[..., 1] + boxes[..., 3]) / 2 / stride).floor().long().clamp(0, h - 1)
    n = boxes.shape[0]
    mask = torch.zeros(n, h * w, dtype=torch.bool, device=boxes.device)
    rows = torch.arange(n, device=boxes.device)[:, None].expand_as(i)
    mask[rows[valid], (i * w + j)[valid]] = True
    return mask.reshape(n, h, w)


class FineGrainedImitation(DistillLoss):
    """L = 1 / (2 N_p) * sum_{i,j} I_ij * sum_c (f_adap(s)_ijc - t_ijc)^2, N_p = sum_ij I_ij,
    averaged over the layer pairs.

    The student feature goes through a 3x3 convolution to the teacher's channels (resized to the
    teacher's map first when the sizes differ); I is the imitation mask near the ground-truth
    boxes (`imitation_mask`, threshold factor psi = 0.5 in the paper), so the background, where
    the two detectors' features matter least, does not count. Wang, Yuan, Zhang, Feng.
    "Distilling Object Detectors with Fine-grained Feature Imitation", CVPR 2019.
    """

    def __init__(self, ctx: LossContext, psi: float = 0.5) -> None:
        super().__init__(ctx)
        if not 0 <= psi < 1:
            raise ValueError(f"{self.name}: psi must be in [0, 1), got {psi}")
        self.psi = float(psi)
        if not ctx.pairs:
            raise ValueError(
                f"loss '{self.name}' needs at least one layer pair (student, teacher feature maps)"
            )
        for s, t in ctx.pairs:
            if len(s) != 3 or len(t) != 3:
                raise ValueError(
                    f"loss '{self.name}' needs feature maps [C, H, W] from both models, got "
                    f"student {list(s)} and teacher {list(t)}; pick layers with a 4D output"
                )
        self.adapters = nn.ModuleList(nn.Conv2d(s[0], t[0], 3, padding=1) for s, t in ctx.pairs)

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        if out.inputs is None:
            raise ValueError(f"loss '{self.name}' needs the input batch (its image size)")
        size = (int(out.inputs.shape[-2]), int(out.inputs.shape[-1]))
        total = out.student_logits.new_zeros((), dtype=torch.float32)
        for s, t, adapt in zip(out.student_feats, out.teacher_feats, self.adapters, strict=True):
            t = t.detach().float()  # nothing flows into the teacher
            if s.shape[-2:] != t.shape[-2:]:
                s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
            a = adapt(s).float()
            mask = imitation_mask(out.labels, size, t.shape[-2], t.shape[-1], self.psi)
            sq = ((a - t) ** 2 * mask[:, None]).sum()
            total = total + sq / (2 * mask.sum().clamp(min=1))
        return total / max(len(self.adapters), 1)


def _dense_heads(name: str, out: StepOutputs, num_classes: int) -> tuple[Tensor, Tensor]:
    """Both models' dense-head outputs, float, checked to share the layout."""
    s, t = out.student_logits, out.teacher_logits
    if s.dim() != 4 or s.shape != t.shape or s.shape[1] <= num_classes:
        raise ValueError(
            f"loss '{name}' needs both models' dense-head outputs [N, classes + 4 * bins, h, w] "
            f"of the same shape ({num_classes} classes), got student {list(s.shape)} and "
            f"teacher {list(t.shape)}; use it with the detection task and a teacher in the "
            "studio's detector layout (the det_centernet student's)"
        )
    return s.float(), t.detach().float()


def _check_temperature(name: str, temperature: float) -> float:
    if temperature <= 0:
        raise ValueError(f"{name}: temperature must be > 0, got {temperature}")
    return float(temperature)


class LocalizationDistillation(DistillLoss):
    """L = T^2 / (4 |P|) * sum_{p in P} sum_{e in l,t,r,b} KL(softmax(t_pe / T) || softmax(s_pe / T)),

    with s_pe, t_pe the student's and teacher's B bin logits of box side e at location p, and P
    the positive locations (each ground-truth box's centre cell): Hinton's KD on the distributions
    of the box sides, averaged over the sides of the positives. Zheng, Ye, Wang, Cao, Ren, Zuo,
    Cheng. "Localization Distillation for Dense Object Detection", CVPR 2022 (T = 10 there).
    """

    def __init__(self, ctx: LossContext, temperature: float = 10.0) -> None:
        super().__init__(ctx)
        self.temperature = _check_temperature(self.name, temperature)

    def forward(self, out: StepOutputs) -> Tensor:
        from worker.engine.tasks.detection.centernet import STRIDE, split_output

        s, t = _dense_heads(self.name, out, self.ctx.num_classes)
        _, s_bins = split_output(s, self.ctx.num_classes)  # [N, 4, B, h, w]
        _, t_bins = split_output(t, self.ctx.num_classes)
        pos = centre_mask(out.labels, s.shape[-2], s.shape[-1], STRIDE)
        s_at = s_bins.permute(0, 3, 4, 1, 2)[pos]  # [P, 4, B]
        t_at = t_bins.permute(0, 3, 4, 1, 2)[pos]
        tau = self.temperature
        log_p_s = F.log_softmax(s_at / tau, dim=-1)
        log_p_t = F.log_softmax(t_at / tau, dim=-1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # [P, 4]
        if kl.numel() == 0:  # no box in the batch
            return s_bins.sum() * 0.0
        return kl.mean() * tau * tau


class HeatmapKD(DistillLoss):
    """L = T^2 / (N h w) * sum_{n,c,i,j} KL_bin(sigmoid(t_ncij / T) || sigmoid(s_ncij / T)),
    KL_bin(q || p) = q log(q / p) + (1 - q) log((1 - q) / (1 - p)).

    Prediction-level KD on the class-centre heatmaps: each class score is a binary
    (sigmoid) distribution, so Hinton's KD becomes a binary KL per class and location, summed over
    the classes and averaged over the locations; zero when the heatmaps agree. Hinton, Vinyals,
    Dean. "Distilling the Knowledge in a Neural Network", 2015, applied to a dense detector's
    sigmoid scores.
    """

    def __init__(self, ctx: LossContext, temperature: float = 1.0) -> None:
        super().__init__(ctx)
        self.temperature = _check_temperature(self.name, temperature)

    def forward(self, out: StepOutputs) -> Tensor:
        c = self.ctx.num_classes
        s, t = _dense_heads(self.name, out, c)
        tau = self.temperature
        zs, zt = s[:, :c] / tau, t[:, :c] / tau
        q = torch.sigmoid(zt)
        # q log q - q log p + (1-q) log(1-q) - (1-q) log(1-p), with log p = logsigmoid(z)
        kl = (
            q * (F.logsigmoid(zt) - F.logsigmoid(zs))
            + (1 - q) * (F.logsigmoid(-zt) - F.logsigmoid(-zs))
        ).sum(1)
        return kl.mean() * tau * tau
