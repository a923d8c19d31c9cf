"""VGG with batch norm (Simonyan & Zisserman, ICLR 2015) in RepDistiller's CIFAR layout.

Five blocks of 3x3 conv -> BN -> ReLU with 64, 128, 256, 512, 512 channels (times a width
multiplier), 2x2 max pooling between blocks, global average pooling and one linear layer:

    block0 -> pool0 -> block1 -> pool1 -> block2 [-> pool2] -> block3 -> pool3 -> block4
           -> pool4 (adaptive average to 1x1) -> classifier

Depth counts the convolutions plus 3 (the original's three fully connected layers): VGG-8 has
one convolution per block, VGG-11 (1, 1, 2, 2, 2), VGG-13 two per block. As in RepDistiller,
`pool2` is used only for inputs of 64 pixels or more (CIFAR's 32x32 keeps blocks 2 and 3 at
8x8). Small inputs work too: a pool whose input is already 1 pixel high or wide is left out
(that attribute is None), so digits (8x8) run 8 -> 4 -> 2 -> 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from worker.engine.students.common import describe, image_shape, init_weights, scaled

BASE = (64, 128, 256, 512, 512)


def convs_per_block(depth: int) -> tuple[int, ...]:
    """Convolutions per block for a VGG of `depth` (= convolutions + 3), depth >= 8.

    Extends the named VGGs: from VGG-8 one convolution at a time goes to blocks 2, 3, 4, then 0,
    1 (VGG-13), then 2, 3, 4 again and again (VGG-16, VGG-19, ...).
    """
    if depth < 8:
        raise ValueError(f"VGG depth must be at least 8 (5 convolutions + 3), got {depth}")
    counts = [1] * 5
    order = [2, 3, 4, 0, 1]
    for i in range(depth - 8):
        counts[order[i] if i < len(order) else 2 + (i - len(order)) % 3] += 1
    return tuple(counts)


def _block(cin: int, cout: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(cin if i == 0 else cout, cout, 3, 1, 1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        ]
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int,
        width: float,
        arch: str,
        arch_kwargs: dict,
    ) -> None:
        super().__init__()
        c, h, w = image_shape(arch, input_shape)
        counts = convs_per_block(depth)
        channels = [scaled(ch, width) for ch in BASE]
        for i, (cout, convs) in enumerate(zip(channels, counts, strict=True)):
            setattr(self, f"block{i}", _block(c if i == 0 else channels[i - 1], cout, convs))
        size = min(h, w)
        for i in range(4):
            use = size >= 2 and (i != 2 or size >= 64)
            setattr(self, f"pool{i}", nn.MaxPool2d(2, 2) if use else None)
            size = size // 2 if use else size
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels[-1], int(num_classes))
        init_weights(self)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)
        describe(self, arch, arch_kwargs, input_shape, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(5):
            x = getattr(self, f"block{i}")(x)
            pool = getattr(self, f"pool{i}")
            if pool is not None:
                x = pool(x)
        return self.classifier(torch.flatten(x, 1))


def vgg(input_shape: Sequence[int], num_classes: int, depth: int = 11, width: float = 1.0) -> VGG:
    """`vgg`: any depth >= 8 (see `convs_per_block`), channels times `width`."""
    return VGG(
        input_shape,
        num_classes,
        int(depth),
        float(width),
        "vgg",
        {"depth": int(depth), "width": float(width)},
    )


def vgg_named(depth: int, input_shape: Sequence[int], num_classes: int, width: float = 1.0) -> VGG:
    """`vgg8`, `vgg11`, `vgg13`: RepDistiller's VGGs with batch norm."""
    return VGG(
        input_shape, num_classes, depth, float(width), f"vgg{depth}", {"width": float(width)}
    )
