"""CIFAR-style ResNets (He et al. 2016) as used by RepDistiller (Tian et al. 2020).

A 3x3 stem, three stages of basic blocks (strides 1, 2, 2), global average pooling and a linear
head. Depth d = 6n + 2 gives n blocks per stage. `resnet{d}` has channels (16, 16, 32, 64) times a
width multiplier (stem, stage 1, 2, 3); `resnet8x4` / `resnet32x4` use (32, 64, 128, 256).

Module names (`conv1`, `bn1`, `relu`, `layer1`..`layer3`, `avgpool`, `fc`) follow RepDistiller and
torchvision so layer pairs read the same across teachers and students. ReLUs are separate,
non-inplace modules so that forward hooks see unmodified tensors and `torch.export` keeps one
module per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    The shortcut is the identity, or a 1x1 convolution + BN when the stride or width changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class ResNet(nn.Module):
    """CIFAR ResNet: stem, three stages of `(depth - 2) // 6` basic blocks, pool, linear head."""

    def __init__(
        self,
        depth: int,
        channels: Sequence[int],
        input_shape: Sequence[int],
        num_classes: int,
        arch: str = "resnet",
        arch_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"ResNet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
        if len(input_shape) != 3:
            raise ValueError(
                f"{arch} needs image inputs shaped (channels, height, width), got "
                f"{list(input_shape)}; use 'mlp' for tabular or flat inputs"
            )
        blocks = (depth - 2) // 6
        stem, c1, c2, c3 = channels
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.arch = arch
        self.arch_kwargs = dict(arch_kwargs or {})

        self.conv1 = nn.Conv2d(self.input_shape[0], stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.layer1 = _stage(stem, c1, blocks, stride=1)
        self.layer2 = _stage(c1, c2, blocks, stride=2)
        self.layer3 = _stage(c2, c3, blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, self.num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_channels, out_channels, stride)]
    layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convolutions, BN weight 1 / bias 0, as in RepDistiller."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def scaled_channels(base: Sequence[int], width: float) -> tuple[int, ...]:
    """Channels times the width multiplier, rounded, at least 1."""
    return tuple(max(1, round(c * width)) for c in base)


def resnet(depth: int, input_shape: Sequence[int], num_classes: int, width: float = 1.0) -> ResNet:
    """`resnet{depth}`: channels (16, 16, 32, 64) times `width`."""
    return ResNet(
        depth,
        scaled_channels((16, 16, 32, 64), width),
        input_shape,
        num_classes,
        arch=f"resnet{depth}",
        arch_kwargs={"width": float(width)},
    )


def resnet_x4(depth: int, input_shape: Sequence[int], num_classes: int) -> ResNet:
    """`resnet{depth}x4`: RepDistiller's four-times-wider variant, channels (32, 64, 128, 256)."""
    return ResNet(
        depth,
        (32, 64, 128, 256),
        input_shape,
        num_classes,
        arch=f"resnet{depth}x4",
        arch_kwargs={},
    )


def resnet_generic(
    input_shape: Sequence[int], num_classes: int, depth: int = 20, width: float = 1.0
) -> ResNet:
    """`resnet`: any depth 6n+2 (derived students land between the named ones), times `width`."""
    return ResNet(
        int(depth),
        scaled_channels((16, 16, 32, 64), width),
        input_shape,
        num_classes,
        arch="resnet",
        arch_kwargs={"depth": int(depth), "width": float(width)},
    )
