"""Segmentation students on the zoo's CIFAR ResNet backbone: per-pixel class logits
[N, classes, H, W] at the input's size.

- `seg_fcn`: the backbone (stem, three stages at strides 1, 2, 4), then an FCN head on the last
  stage (3x3 conv-BN-ReLU, 1x1 conv to the classes) and a bilinear upsampling to the input size
  (Long, Shelhamer, Darrell. Fully Convolutional Networks for Semantic Segmentation. CVPR 2015);
- `seg_unet`: the same backbone with a light U-Net-style decoder: each step upsamples the deeper
  map bilinearly to the next stage's size, concatenates that stage's output (the skip) and
  fuses them with a 3x3 conv-BN-ReLU, then 1x1 conv to the classes at full resolution
  (Ronneberger, Fischer, Brox. U-Net. MICCAI 2015).

The backbone (`backbone.ResNetBackbone`, shared with the detection student) keeps the ResNet's
module names (`conv1`, `bn1`, `layer1`..`layer3`), so layer pairs with a ResNet teacher read
alike; head modules are `head.*` / `decoder.*`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.students.backbone import ResNetBackbone, check_depth
from worker.engine.students.common import conv_bn_relu, describe, image_shape
from worker.engine.students.resnet import _init_weights


class SegFCN(nn.Module):
    """Backbone + FCN head + bilinear upsampling; see the module docstring."""

    def __init__(self, depth: int, width: float, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        self.backbone = ResNetBackbone(depth, width, input_shape)
        c3 = self.backbone.channels[-1]
        self.head = nn.Sequential(conv_bn_relu(c3, c3, 3), nn.Conv2d(c3, num_classes, 1))
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.backbone(x)[-1])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class _Up(nn.Module):
    """Upsample `deep` to `skip`'s size, concatenate, 3x3 conv-BN-ReLU."""

    def __init__(self, c_deep: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.fuse = conv_bn_relu(c_deep + c_skip, c_out, 3)

    def forward(self, deep: Tensor, skip: Tensor) -> Tensor:
        up = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([up, skip], dim=1))


class SegUNet(nn.Module):
    """Backbone + U-Net-style decoder over its three stages; see the module docstring."""

    def __init__(self, depth: int, width: float, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        self.backbone = ResNetBackbone(depth, width, input_shape)
        c1, c2, c3 = self.backbone.channels
        self.up2 = _Up(c3, c2, c2)
        self.up1 = _Up(c2, c1, c1)
        self.classifier = nn.Conv2d(c1, num_classes, 1)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        f1, f2, f3 = self.backbone(x)
        logits = self.classifier(self.up1(self.up2(f3, f2), f1))
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def _build(
    cls: type[nn.Module],
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    depth: int,
    width: float,
) -> nn.Module:
    shape = image_shape(arch, input_shape)
    check_depth(arch, depth)
    model = cls(int(depth), float(width), shape, int(num_classes))
    kwargs: dict[str, Any] = {"depth": int(depth), "width": float(width)}
    describe(model, arch, kwargs, shape, num_classes)
    return model


def seg_fcn(
    input_shape: Sequence[int], num_classes: int, depth: int = 8, width: float = 1.0
) -> nn.Module:
    """`seg_fcn`: a ResNet-`depth` backbone (channels 16/32/64 times `width`) with an FCN head."""
    return _build(SegFCN, "seg_fcn", input_shape, num_classes, depth, width)


def seg_unet(
    input_shape: Sequence[int], num_classes: int, depth: int = 8, width: float = 1.0
) -> nn.Module:
    """`seg_unet`: a ResNet-`depth` backbone with a light U-Net-style decoder."""
    return _build(SegUNet, "seg_unet", input_shape, num_classes, depth, width)
