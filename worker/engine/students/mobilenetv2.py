"""MobileNetV2 (Sandler et al., CVPR 2018) in RepDistiller's CIFAR layout.

A 3x3 stem (`conv1`, 32 x width channels), seven stages of inverted residual blocks
(`blocks.0`..`blocks.6`; expansion t, channels c, repeats n, first stride s)

    (1, 16, 1, 1) (6, 24, 2, 1) (6, 32, 3, 2) (6, 64, 4, 2) (6, 96, 3, 1) (6, 160, 3, 2) (6, 320, 1, 1)

a 1x1 convolution to 1280 channels (`conv2`), global average pooling and a linear `classifier`.
An inverted residual block is 1x1 expand -> BN -> ReLU -> 3x3 depthwise (stride s) -> BN -> ReLU
-> 1x1 project -> BN, plus the input when the stride is 1 and the widths agree.

`width` multiplies every channel count (the last one only when above 1, as in the paper);
RepDistiller's CIFAR student is width 0.5 (its `mobile_half`), the catalog default. `depth`
multiplies the repeats (at least one block per stage). The stem has stride 2 as in RepDistiller
for inputs of 32 pixels or more, and stride 1 below that, so 8x8 digits are not reduced to 4x4
before the first block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from worker.engine.students.common import (
    conv_bn_relu,
    describe,
    image_shape,
    init_weights,
    repeats,
)

SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor`, never below 90% of `value` (the paper's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(
        self, input_shape: Sequence[int], num_classes: int, width: float = 0.5, depth: float = 1.0
    ) -> None:
        super().__init__()
        c, h, w = image_shape("mobilenetv2", input_shape)
        channels = max(1, int(32 * width))
        self.conv1 = conv_bn_relu(c, channels, 3, stride=2 if min(h, w) >= 32 else 1)
        blocks = []
        for t, ch, n, s in SETTINGS:
            out = max(1, int(ch * width))
            stage = []
            for i in range(repeats(n, depth)):
                stage.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.ModuleList(blocks)
        last = _divisible(1280 * width) if width > 1.0 else 1280
        self.conv2 = conv_bn_relu(channels, last, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, int(num_classes))
        init_weights(self)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)
        describe(
            self,
            "mobilenetv2",
            {"width": float(width), "depth": float(depth)},
            input_shape,
            num_classes,
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        x = self.conv2(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def mobilenetv2(
    input_shape: Sequence[int], num_classes: int, width: float = 0.5, depth: float = 1.0
) -> MobileNetV2:
    """`mobilenetv2`: width and depth multipliers (RepDistiller's CIFAR student: width 0.5)."""
    return MobileNetV2(input_shape, num_classes, float(width), float(depth))
