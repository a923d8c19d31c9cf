"""The zoo's shared dense backbone: the CIFAR ResNet's stem and three stages without its pooling
and classifier, for the students that predict per location (segmentation, detection).

`ResNetBackbone(depth, width, input_shape)` returns the three stages' maps (strides 1, 2, 4 of
the input) and lists their channels in `channels`. Its modules keep the ResNet's names
(`conv1`, `bn1`, `layer1`..`layer3`), so layer pairs with a ResNet teacher read alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from worker.engine.students.resnet import ResNet, scaled_channels


class ResNetBackbone(nn.Module):
    """The ResNet's stem and stages, without its pooling and classifier."""

    def __init__(self, depth: int, width: float, input_shape: Sequence[int]) -> None:
        super().__init__()
        net = ResNet(depth, scaled_channels((16, 16, 32, 64), width), input_shape, 1)
        self.conv1, self.bn1, self.relu = net.conv1, net.bn1, net.relu
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.channels = scaled_channels((16, 16, 32, 64), width)[1:]

    def forward(self, x: Tensor) -> list[Tensor]:
        f1 = self.layer1(self.relu(self.bn1(self.conv1(x))))
        f2 = self.layer2(f1)
        return [f1, f2, self.layer3(f2)]


def check_depth(arch: str, depth: int) -> None:
    """The backbone's depth must be 6n+2 (8, 14, 20, ...), as the ResNet's."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"{arch}: depth must be 6n+2 (8, 14, 20, ...), got {depth}")
