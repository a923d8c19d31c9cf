"""ImageNet ResNets (He et al. 2016): `resnet18`, `resnet34` (basic blocks), `resnet50`
(bottlenecks, stride on the 3x3 as in torchvision's v1.5).

Module names are torchvision's (`conv1`, `bn1`, `relu`, `maxpool`, `layer1`..`layer4`, each block
`conv1`/`bn1`/`conv2`/`bn2`[/`conv3`/`bn3`] and `downsample.0`/`.1`, `avgpool`, `fc`), so a
torchvision state dict maps onto them and layer pairs read the same across teacher and student.
Only the ReLUs differ: one non-inplace module per call (`relu1`, `relu2`[, `relu3`]), which
carries no weights.

Any input size: the ImageNet stem (7x7 stride-2 conv, 3x3 stride-2 max pool) is used from 112
pixels up (`stem="auto"`); below that, `conv1` is a 3x3 stride-1 convolution and `maxpool` is an
identity (the CIFAR variant), so 32x32 inputs give 32/16/8/4 maps in the four stages and 8x8
digits 8/4/2/1. `width` scales every channel count (64/128/256/512 at 1), `depth` the blocks
per stage (at least one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from worker.engine.students.common import (
    describe,
    image_shape,
    init_weights,
    repeats,
    scaled,
    small_stem,
)

LAYOUTS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = _downsample(cin, out, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.relu3(self.bn3(self.conv3(out)) + identity)


class ImageNetResNet(nn.Module):
    def __init__(
        self,
        arch: str,
        input_shape: Sequence[int],
        num_classes: int,
        width: float = 1.0,
        depth: float = 1.0,
        stem: str = "auto",
    ) -> None:
        super().__init__()
        c, h, w = image_shape(arch, input_shape)
        kind, blocks = LAYOUTS[arch]
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if kind == "basic" else Bottleneck
        small = small_stem(h, w, stem)
        cin = scaled(64, width)
        if small:
            self.conv1 = nn.Conv2d(c, cin, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(c, cin, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.maxpool: nn.Module = nn.Identity() if small else nn.MaxPool2d(3, 2, 1)
        stages = []
        for i, n in enumerate(blocks):
            planes = scaled(64 * 2**i, width)
            layers = []
            for j in range(repeats(n, depth)):
                layers.append(block(cin, planes, 2 if i > 0 and j == 0 else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, int(num_classes))
        init_weights(self)
        kwargs = {"width": float(width), "depth": float(depth), "stem": stem}
        describe(self, arch, kwargs, input_shape, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet_imagenet(
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    width: float = 1.0,
    depth: float = 1.0,
    stem: str = "auto",
) -> ImageNetResNet:
    """`resnet18` / `resnet34` / `resnet50`: width and depth multipliers, stem by input size."""
    return ImageNetResNet(arch, input_shape, num_classes, float(width), float(depth), stem)
