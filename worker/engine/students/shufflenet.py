"""ShuffleNet V1 (Zhang et al., CVPR 2018) and V2 (Ma et al., ECCV 2018), RepDistiller's layouts.

Both: a 1x1 stem to 24 channels (`conv1`, `bn1`, `relu`), three stages `layer1`..`layer3` that
each halve the resolution in their first block, global average pooling and a linear `fc`.

V1 bottleneck (groups g = 3): 1x1 group conv to out/4 -> BN -> ReLU -> channel shuffle -> 3x3
depthwise (stride s) -> BN -> ReLU -> 1x1 group conv -> BN; added to the input (stride 1) or
concatenated with a 3x3 average pool of it (stride 2); then ReLU. Stage widths 240, 480, 960 and
4, 8, 4 blocks. (The first block's 1x1 conv is not grouped: its input has only 24 channels.)

V2: a down-sampling block (two branches, each ending in a stride-2 depthwise path, concatenated
and shuffled) followed by n basic blocks that split the channels in half, transform one half
(1x1 -> BN -> ReLU -> 3x3 depthwise -> BN -> 1x1 -> BN -> ReLU), concatenate and shuffle. Stage
widths 116, 232, 464 at width 1 (48/96/192, 176/352/704, 244/488/976 at 0.5/1.5/2), 3, 7, 3
basic blocks, and a final 1x1 conv to 1024 channels (2048 at width 2) named `conv2`.

Channel shuffle (V1, Section 3.1): view (N, g, C/g, H, W), swap the two channel axes, flatten.
`width` scales the stage widths (kept divisible as the blocks need) and `depth` the block counts.
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
    scaled,
)

STEM = 24


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _stem(channels: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    return nn.Conv2d(channels, STEM, 1, bias=False), nn.BatchNorm2d(STEM), nn.ReLU()


# ---------------------------------------------------------------------------------------------
# V1


class ShuffleV1Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        branch = cout - cin if stride == 2 else cout  # stride 2 concatenates the pooled input
        mid = branch // 4
        g = 1 if cin == STEM else groups
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU()
        self.shuffle = ChannelShuffle(g)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(mid, branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else None
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.shuffle(self.relu1(self.bn1(self.conv1(x))))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            return self.relu3(torch.cat([out, self.shortcut(x)], 1))
        return self.relu3(out + x)


def v1_widths(width: float, groups: int = 3) -> tuple[int, int, int]:
    """Stage widths 240/480/960 x width, multiples of 4*groups, each above the previous."""
    unit = 4 * groups
    widths, previous = [], STEM
    for base in (240, 480, 960):
        previous = max(scaled(base, width, unit), previous + unit)
        widths.append(previous)
    return widths[0], widths[1], widths[2]


class ShuffleNetV1(nn.Module):
    layer1: nn.Sequential  # set in __init__ by setattr
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: float = 1.0,
        depth: float = 1.0,
        groups: int = 3,
    ) -> None:
        super().__init__()
        c, _, _ = image_shape("shufflenetv1", input_shape)
        self.conv1, self.bn1, self.relu = _stem(c)
        cin = STEM
        for i, (cout, n) in enumerate(zip(v1_widths(width, groups), (4, 8, 4), strict=True)):
            blocks = [
                ShuffleV1Block(cin if b == 0 else cout, cout, 2 if b == 0 else 1, groups)
                for b in range(repeats(n, depth))
            ]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, int(num_classes))
        init_weights(self)
        describe(
            self,
            "shufflenetv1",
            {"width": float(width), "depth": float(depth)},
            input_shape,
            num_classes,
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------------------------------------
# V2

V2_TABLE = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}


def v2_widths(width: float) -> tuple[int, int, int, int]:
    """The paper's widths for 0.5/1/1.5/2; others scale width 1's, rounded to multiples of 4."""
    if float(width) in V2_TABLE:
        return V2_TABLE[float(width)]
    c1, c2, c3 = (scaled(base, width, 4) for base in (116, 232, 464))
    return c1, c2, c3, 2048 if width > 1.5 else 1024


class ShuffleV2Down(nn.Module):
    """Both branches halve the resolution; their outputs (out/2 channels each) are concatenated."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.relu5 = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        left = self.relu2(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(self.relu3(self.bn3(self.conv3(x)))))
        right = self.relu5(self.bn5(self.conv5(right)))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleV2Block(nn.Module):
    """Split the channels in half; transform the second half; concatenate; shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.split_at = half  # not `half`: that name is nn.Module.half()
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.relu3 = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        keep, work = x[:, : self.split_at], x[:, self.split_at :]
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(work)))))
        out = self.relu3(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([keep, out], 1))


class ShuffleNetV2(nn.Module):
    layer1: nn.Sequential  # set in __init__ by setattr
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, width: float = 1.0, depth: float = 1.0
    ) -> None:
        super().__init__()
        c, _, _ = image_shape("shufflenetv2", input_shape)
        *stages, last = v2_widths(width)
        self.conv1, self.bn1, self.relu = _stem(c)
        cin = STEM
        for i, (cout, n) in enumerate(zip(stages, (3, 7, 3), strict=True)):
            blocks: list[nn.Module] = [ShuffleV2Down(cin, cout)]
            blocks += [ShuffleV2Block(cout) for _ in range(repeats(n, depth))]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self.conv2 = conv_bn_relu(cin, last, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, int(num_classes))
        init_weights(self)
        describe(
            self,
            "shufflenetv2",
            {"width": float(width), "depth": float(depth)},
            input_shape,
            num_classes,
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.conv2(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def shufflenetv1(
    input_shape: Sequence[int], num_classes: int, width: float = 1.0, depth: float = 1.0
) -> ShuffleNetV1:
    """`shufflenetv1`: RepDistiller's ShuffleV1 (g = 3), width and depth multipliers."""
    return ShuffleNetV1(input_shape, num_classes, float(width), float(depth))


def shufflenetv2(
    input_shape: Sequence[int], num_classes: int, width: float = 1.0, depth: float = 1.0
) -> ShuffleNetV2:
    """`shufflenetv2`: RepDistiller's ShuffleV2 (net size 1), width and depth multipliers."""
    return ShuffleNetV2(input_shape, num_classes, float(width), float(depth))
