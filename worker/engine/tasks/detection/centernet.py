"""A one-stage anchor-free detector on the zoo's CIFAR ResNet backbone, its targets, loss and
decoding to boxes (CenterNet with box distances: Zhou, Wang, Krähenbühl. Objects as Points. 2019;
the l/t/r/b regression at the centre as in TTFNet, Liu et al. AAAI 2020). The detection task's
first student; not a catalog entry until the detection `Task` exists.

The dense-head layout (what the studio documents for detectors): one tensor [N, C + 4 * B, h, w]
at stride `STRIDE` (h = ceil(H / 2)); channels 0..C-1 are class-centre logits, then 4 groups of B
bin logits, one group per side (left, top, right, bottom; side s at C + s * B .. C + s * B + B - 1):
each side's distance from the location's centre ((j + 0.5) * stride, (i + 0.5) * stride) to the
box's side is a distribution, softmax over the B bins, whose bin k stands for k * u pixels with
u = `distance_unit(h, w, B)` = (max(h, w) * stride / 2 + stride) / (B - 1); the distance is its
expectation (General Focal Loss's integral box head: Li et al. NeurIPS 2020), and the
distribution is what localization distillation matches (LD, Zheng et al. CVPR 2022).

- `CenterNet`: the backbone's three stages (strides 1, 2, 4), the last upsampled to stride 2 and
  fused with the second, then a 3x3 conv-BN-ReLU and 1x1 convs to the logits and the distance
  bins (`bins`, default `BINS`);
- `encode`: targets per image: a Gaussian heatmap per class (peak 1 at each box's centre cell,
  sigma = the box's side / 6), the distances at each centre cell and the mask of those cells;
- `centernet_loss`: the penalty-reduced focal loss on the heatmap (alpha 2, beta 4) over the
  number of boxes, plus `size_weight` times the L1 of the expected distances (in stride units)
  and `dfl_weight` times the distribution focal loss (GFL) of the bins, both at the centre cells;
- `split_output`, `expected_distances`, `distance_logits`: the layout's parts, the distances it
  stands for, and bin logits that stand for given distances (tests, teachers built by hand);
- `decode`: sigmoid, 3x3 max-pool peaks, the top `k` scores per image above `threshold`, their
  boxes clipped to the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.students.backbone import ResNetBackbone
from worker.engine.students.common import conv_bn_relu
from worker.engine.tasks.detection.evaluate import Prediction

STRIDE = 2
BINS = 16  # distance bins per box side


class CenterNet(nn.Module):
    """[N, C, H, W] images -> [N, classes + 4 * bins, ceil(H / 2), ceil(W / 2)] (see the module
    doc)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int = 8,
        width: float = 1.0,
        bins: int = BINS,
    ) -> None:
        super().__init__()
        if bins < 2:
            raise ValueError(f"a CenterNet needs at least 2 distance bins per side, got {bins}")
        self.num_classes = int(num_classes)
        self.bins = int(bins)
        self.backbone = ResNetBackbone(depth, width, input_shape)
        _, c2, c3 = self.backbone.channels
        self.fuse = conv_bn_relu(c2 + c3, c2, 3)
        self.heatmap = nn.Conv2d(c2, self.num_classes, 1)
        self.distances = nn.Conv2d(c2, 4 * self.bins, 1)
        assert self.heatmap.bias is not None
        nn.init.constant_(self.heatmap.bias, -math.log((1 - 0.01) / 0.01))  # prior 0.01

    def forward(self, x: Tensor) -> Tensor:
        _, f2, f3 = self.backbone(x)
        up = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        h = self.fuse(torch.cat([f2, up], 1))
        return torch.cat([self.heatmap(h), self.distances(h)], 1)


def distance_unit(h: int, w: int, bins: int) -> float:
    """Pixels per distance bin on an [h, w] output map: the largest distance a centre cell can
    have to its box's side (half the image plus a stride) spread over bins 0..B-1."""
    return (max(h, w) * STRIDE / 2 + STRIDE) / (bins - 1)


def split_output(output: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """The layout's class logits [N, C, h, w] and distance bin logits [N, 4, B, h, w]."""
    n, channels, h, w = output.shape
    bins, rest = divmod(channels - num_classes, 4)
    if rest or bins < 2:
        raise ValueError(
            f"a detector output [N, classes + 4 * bins, h, w] for {num_classes} classes needs "
            f"{num_classes} + a multiple of 4 (at least 8) channels, got {channels}"
        )
    return output[:, :num_classes], output[:, num_classes:].reshape(n, 4, bins, h, w)


def expected_distances(bin_logits: Tensor) -> Tensor:
    """Distances in pixels [N, 4, h, w]: the expectation of each side's bin distribution."""
    bins, (h, w) = bin_logits.shape[2], bin_logits.shape[-2:]
    values = torch.arange(bins, device=bin_logits.device, dtype=torch.float32)
    p = torch.softmax(bin_logits.float(), dim=2)
    return (p * values[:, None, None]).sum(2) * distance_unit(h, w, bins)


def _two_hot(dist: Tensor, bins: int, unit: float) -> tuple[Tensor, Tensor, Tensor]:
    """Distances (pixels) in bin units, clamped into [0, B - 1), and their lower bin with the
    weights of the lower and upper bins (GFL's target distribution)."""
    y = (dist / unit).clamp(0, bins - 1 - 1e-4)
    lower = y.floor()
    return lower.long(), (lower + 1 - y), (y - lower)


def distance_logits(dist: Tensor, bins: int = BINS, eps: float = 1e-6) -> Tensor:
    """Bin logits [N, 4 * B, h, w] whose expected distances are `dist` [N, 4, h, w] (pixels): the
    log of the two-hot distribution on the two bins around each distance."""
    n, _, h, w = dist.shape
    lower, w_lo, w_hi = _two_hot(dist.float(), bins, distance_unit(h, w, bins))
    p = torch.zeros(n, 4, bins, h, w, device=dist.device)
    p.scatter_add_(2, lower[:, :, None], w_lo[:, :, None])
    p.scatter_add_(2, (lower + 1)[:, :, None], w_hi[:, :, None])
    return torch.log(p.clamp_min(eps)).reshape(n, 4 * bins, h, w)


def distribution_focal_loss(bin_logits: Tensor, dist: Tensor, unit: float) -> Tensor:
    """DFL per side [P, 4]: -((y_r - y) log p(y_l) + (y - y_l) log p(y_r)) for bin logits
    [P, 4, B] and distances [P, 4] in pixels, y = distance / `unit` in bins, y_l = floor(y),
    y_r = y_l + 1 (Li et al. General Focal Loss, NeurIPS 2020)."""
    lower, w_lo, w_hi = _two_hot(dist.float(), bin_logits.shape[2], unit)
    log_p = F.log_softmax(bin_logits.float(), dim=2)
    lo = log_p.gather(2, lower[..., None])[..., 0]
    hi = log_p.gather(2, (lower + 1)[..., None])[..., 0]
    return -(w_lo * lo + w_hi * hi)


def _centres(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * STRIDE
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * STRIDE
    return ys[:, None].expand(h, w), xs[None, :].expand(h, w)


def encode(
    boxes: Sequence[Tensor], labels: Sequence[Tensor], num_classes: int, size: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Targets for images of `size` (H, W): heatmaps [N, C, h, w], distances [N, 4, h, w] (pixels)
    and the centre mask [N, h, w] (bool)."""
    h, w = math.ceil(size[0] / STRIDE), math.ceil(size[1] / STRIDE)
    n = len(boxes)
    heat = torch.zeros(n, num_classes, h, w)
    dist = torch.zeros(n, 4, h, w)
    mask = torch.zeros(n, h, w, dtype=torch.bool)
    cy, cx = _centres(h, w, torch.device("cpu"))
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        # larger boxes first, so a small box's centre keeps its own distances where they meet
        areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        for k in torch.argsort(areas, descending=True).tolist():
            x0, y0, x1, y1 = (float(v) for v in b[k])
            j = min(int((x0 + x1) / 2 / STRIDE), w - 1)
            r = min(int((y0 + y1) / 2 / STRIDE), h - 1)
            sx = max((x1 - x0) / STRIDE / 6, 0.5)
            sy = max((y1 - y0) / STRIDE / 6, 0.5)
            grid_y = torch.arange(h, dtype=torch.float32)[:, None] - r
            grid_x = torch.arange(w, dtype=torch.float32)[None, :] - j
            g = torch.exp(-(grid_x**2) / (2 * sx**2) - grid_y**2 / (2 * sy**2))
            c = int(lab[k])
            heat[i, c] = torch.maximum(heat[i, c], g)
            heat[i, c, r, j] = 1.0
            dist[i, :, r, j] = torch.tensor(
                [cx[r, j] - x0, cy[r, j] - y0, x1 - cx[r, j], y1 - cy[r, j]]
            )
            mask[i, r, j] = True
    return heat, dist, mask


def centernet_loss(
    output: Tensor,
    heat: Tensor,
    dist: Tensor,
    mask: Tensor,
    size_weight: float = 0.1,
    dfl_weight: float = 0.25,
) -> Tensor:
    """Focal loss on the centre heatmaps plus `size_weight` x L1 of the expected distances (in
    stride units) and `dfl_weight` x the distribution focal loss of the bins (GFL's weight 0.25),
    at the centre cells; each over the number of boxes (at least 1)."""
    c = heat.shape[1]
    logits, bin_logits = split_output(output, c)
    pred = expected_distances(bin_logits)
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1).float()
    neg = 1.0 - pos
    pos_loss = -(torch.log(p) * (1 - p) ** 2 * pos).sum()
    neg_loss = -(torch.log(1 - p) * p**2 * (1 - heat) ** 4 * neg).sum()
    boxes = max(int(mask.sum()), 1)
    m = mask[:, None].expand_as(pred)
    size_loss = F.l1_loss(pred[m] / STRIDE, dist[m] / STRIDE, reduction="sum") / boxes
    at = bin_logits.permute(0, 3, 4, 1, 2)[mask]  # [P, 4, B] at the centre cells
    unit = distance_unit(output.shape[-2], output.shape[-1], bin_logits.shape[2])
    dfl = distribution_focal_loss(at, dist.permute(0, 2, 3, 1)[mask], unit).sum() / boxes
    return (pos_loss + neg_loss) / boxes + size_weight * size_loss + dfl_weight * dfl


@torch.no_grad()
def decode(
    output: Tensor, num_classes: int, size: tuple[int, int], k: int = 100, threshold: float = 0.05
) -> list[Prediction]:
    """Per image: the top `k` heatmap peaks (3x3 local maxima) scoring above `threshold`, as
    xyxy boxes clipped to `size` (H, W), with their scores and class indices."""
    logits, bin_logits = split_output(output.float(), num_classes)
    pred = expected_distances(bin_logits)
    n, _, h, w = logits.shape
    p = torch.sigmoid(logits)
    p = p * (F.max_pool2d(p, 3, stride=1, padding=1) == p).float()
    cy, cx = _centres(h, w, output.device)
    out = []
    for i in range(n):
        scores, flat = p[i].reshape(-1).topk(min(k, p[i].numel()))
        keep = scores > threshold
        scores, flat = scores[keep], flat[keep]
        cls, cell = flat // (h * w), flat % (h * w)
        r, j = cell // w, cell % w
        d = pred[i][:, r, j]
        x = cx[r, j]
        y = cy[r, j]
        boxes = torch.stack([x - d[0], y - d[1], x + d[2], y + d[3]], 1)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, size[1])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, size[0])
        out.append(Prediction(boxes.cpu().numpy(), scores.cpu().numpy(), cls.cpu().numpy()))
    return out
