"""The detection student as it is exported: the detector followed by its decoding, so the
exported `.pt2` and ONNX return boxes, scores and classes rather than the dense head.

`DetectionExport(detector, num_classes, input_shape, k)` runs the detector (an output in the
dense-head layout, `centernet`'s module doc) and decodes it as `centernet.decode` does, with no
score threshold and a fixed `k`, so the graph is static (only the batch is dynamic):

    boxes   [N, k, 4] float32  x0, y0, x1, y1 in pixels, clipped to the image
    scores  [N, k]    float32  the class-centre score (sigmoid) of each of the top-k peaks
    classes [N, k]    int64    their class indices (0-based, the dataset's class order)

sorted by score; the peaks are the 3x3 local maxima of each class's heatmap. A consumer keeps the
rows scoring above its threshold (the studio's evaluation uses 0.05); when the heatmaps have
fewer than k peaks the last rows score 0. The safetensors export stays the detector's weights
(a zoo model, rebuilt by `loading.load_model`). `export_module` is the detection task's
`Task.export_module`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.tasks.detection.centernet import STRIDE, expected_distances, split_output

TOP_K = 100  # detections per image, as COCO counts at most 100


class DetectionExport(nn.Module):
    """detector + decoding: images [N, C, H, W] -> (boxes, scores, classes) (module doc)."""

    output_names = ("boxes", "scores", "classes")  # the ONNX outputs (`export.export_onnx`)

    def __init__(
        self, detector: nn.Module, num_classes: int, input_shape: Sequence[int], k: int = TOP_K
    ) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"the exported detector needs k >= 1 detections per image, got {k}")
        self.detector = detector
        self.num_classes = int(num_classes)
        self.height, self.width = int(input_shape[-2]), int(input_shape[-1])
        cells = math.ceil(self.height / STRIDE) * math.ceil(self.width / STRIDE)
        self.k = min(int(k), self.num_classes * cells)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, bins = split_output(self.detector(x).float(), self.num_classes)
        dist = expected_distances(bins)  # [N, 4, h, w] pixels
        h, w = logits.shape[-2:]
        p = torch.sigmoid(logits)
        peaks = p * (F.max_pool2d(p, 3, stride=1, padding=1) == p).to(p.dtype)
        scores, flat = peaks.flatten(1).topk(self.k, dim=1)  # [N, k]
        classes = torch.div(flat, h * w, rounding_mode="floor")
        cell = flat - classes * (h * w)
        d = dist.flatten(2).gather(2, cell[:, None, :].expand(-1, 4, -1))  # [N, 4, k]
        row = torch.div(cell, w, rounding_mode="floor")
        cy = (row.to(torch.float32) + 0.5) * STRIDE
        cx = ((cell - row * w).to(torch.float32) + 0.5) * STRIDE
        boxes = torch.stack(
            [
                (cx - d[:, 0]).clamp(0, self.width),
                (cy - d[:, 1]).clamp(0, self.height),
                (cx + d[:, 2]).clamp(0, self.width),
                (cy + d[:, 3]).clamp(0, self.height),
            ],
            dim=-1,
        )
        return boxes, scores, classes


def export_module(student: nn.Module, input_shape: Sequence[int], k: int = TOP_K) -> nn.Module:
    """The module the detection task exports for `student`: it with its decoding. The student
    says its class count (`num_classes`, which zoo students carry)."""
    num_classes = getattr(student, "num_classes", None)
    if not isinstance(num_classes, int):
        raise ValueError(
            f"cannot export {type(student).__name__} with its box decoding: it does not say its "
            "class count (num_classes); detection students come from the zoo (det_centernet)"
        )
    # in the student's mode, so that an export (which restores the mode after) leaves it as it was
    return DetectionExport(student, num_classes, input_shape, k).train(student.training)
