"""Wide residual networks WRN-d-k (Zagoruyko & Komodakis, BMVC 2016), RepDistiller's CIFAR layout.

A 3x3 stem of 16 channels, three stages of pre-activation basic blocks with 16k, 32k, 64k
channels (strides 1, 2, 2), a final BN-ReLU, global average pooling and a linear head. Depth
d = 6n + 4 gives n blocks per stage; k is the widening factor.

    block(x) = conv2(drop(relu2(bn2(conv1(a))))) + shortcut,   a = relu1(bn1(x))

where the shortcut is x itself when the widths and resolution agree, else a 1x1 convolution of a.
Module names: `conv1`, `layer1`..`layer3` (RepDistiller's block1..3), `bn1`, `relu`, `avgpool`,
`fc`; the stages end at `layer1`, `layer2` and, for the last one, the activated `relu`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from worker.engine.students.common import describe, image_shape, init_weights, scaled

NAMED = {"wrn_16_1": (16, 1), "wrn_16_2": (16, 2), "wrn_40_1": (40, 1), "wrn_40_2": (40, 2)}


class WideBlock(nn.Module):
    """Pre-activation basic block; see the module docstring."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.drop = nn.Dropout(dropout) if dropout > 0 else None
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if cin != cout or stride != 1 else None
        )

    def forward(self, x: Tensor) -> Tensor:
        a = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(a)))
        if self.drop is not None:
            out = self.drop(out)
        out = self.conv2(out)
        return out + (x if self.shortcut is None else self.shortcut(a))


class WideResNet(nn.Module):
    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int,
        width: float,
        dropout: float = 0.0,
        arch: str = "wrn",
        arch_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        c, _, _ = image_shape(arch, input_shape)
        n = (depth - 4) // 6
        stem, c1, c2, c3 = 16, scaled(16, width), scaled(32, width), scaled(64, width)
        self.conv1 = nn.Conv2d(c, stem, 3, 1, 1, bias=False)
        self.layer1 = _stage(stem, c1, n, 1, dropout)
        self.layer2 = _stage(c1, c2, n, 2, dropout)
        self.layer3 = _stage(c2, c3, n, 2, dropout)
        self.bn1 = nn.BatchNorm2d(c3)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, int(num_classes))
        init_weights(self)
        nn.init.zeros_(self.fc.bias)
        describe(self, arch, arch_kwargs or {}, input_shape, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _stage(cin: int, cout: int, blocks: int, stride: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        *[
            WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, dropout)
            for i in range(blocks)
        ]
    )


def wrn(
    input_shape: Sequence[int],
    num_classes: int,
    depth: int = 16,
    width: float = 2.0,
    dropout: float = 0.0,
) -> WideResNet:
    """`wrn`: any depth 6n+4 and widening factor (channels 16k, 32k, 64k, rounded)."""
    kwargs = {"depth": int(depth), "width": float(width), "dropout": float(dropout)}
    return WideResNet(
        input_shape,
        num_classes,
        int(depth),
        float(width),
        float(dropout),
        arch="wrn",
        arch_kwargs=kwargs,
    )


def wrn_named(name: str, input_shape: Sequence[int], num_classes: int) -> WideResNet:
    """`wrn_16_1`, `wrn_16_2`, `wrn_40_1`, `wrn_40_2`: RepDistiller's WRN-d-k."""
    depth, width = NAMED[name]
    return WideResNet(input_shape, num_classes, depth, width, arch=name, arch_kwargs={})
