"""Detection students on the zoo's shared ResNet backbone (`backbone.ResNetBackbone`).

- `det_centernet`: a one-stage anchor-free CenterNet-style detector
  (`worker.engine.tasks.detection.centernet.CenterNet`): one dense-head output
  [N, classes + 4, ceil(H / 2), ceil(W / 2)], class-centre logits then the l/t/r/b box
  distances in pixels; its own loss is the catalog's `centernet` (focal heatmap + L1 box
  distances). Zhou, Wang, Krähenbühl. Objects as Points. 2019.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from worker.engine.students.backbone import check_depth
from worker.engine.students.common import describe, image_shape


def det_centernet(
    input_shape: Sequence[int], num_classes: int, depth: int = 8, width: float = 1.0
) -> nn.Module:
    """`det_centernet`: a ResNet-`depth` backbone (channels 16/32/64 times `width`) with a
    CenterNet head at stride 2 for `num_classes` classes."""
    from worker.engine.tasks.detection.centernet import CenterNet

    shape = image_shape("det_centernet", input_shape)
    check_depth("det_centernet", depth)
    model = CenterNet(shape, int(num_classes), int(depth), float(width))
    kwargs: dict[str, Any] = {"depth": int(depth), "width": float(width)}
    describe(model, "det_centernet", kwargs, shape, num_classes)
    return model
