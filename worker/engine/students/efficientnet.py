"""EfficientNet-B0 (Tan & Le, ICML 2019): `efficientnet_b0`.

torchvision's layout and module names: `features.0` the stem (3x3 stride-2 conv, BN, SiLU),
`features.1`..`features.7` the seven MBConv stages (`features.S.B.block.K`: 1x1 expansion,
depthwise conv, squeeze-excitation `fc1`/`fc2`, 1x1 projection), `features.8` the 1x1 conv to
1280 channels, `avgpool`, `classifier` (`.0` dropout, `.1` linear); a torchvision state dict maps
onto it (stochastic depth, which has no weights, is left out).

Any input size: from 112 pixels up (`stem="auto"`) the strides are ImageNet's (overall 32); below
that the stem and the first stride-2 stage keep the resolution (overall 8). `width` scales the
channels (multiples of 8), `depth` the blocks per stage (at least one): B1..B7 are width/depth
pairs (1.0/1.1, 1.1/1.2, ...; at their larger input sizes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from worker.engine.students.common import (
    describe,
    image_shape,
    init_weights,
    make_divisible,
    repeats,
    small_stem,
)
from worker.engine.students.mobilenetv3 import SqueezeExcitation, conv_norm_act, small_strides

# expansion, kernel, stride, input, output, blocks
STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, kernel: int, stride: int) -> None:
        super().__init__()
        expanded = make_divisible(cin * expansion)
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(conv_norm_act(cin, expanded, 1, act=nn.SiLU))
        layers.append(conv_norm_act(expanded, expanded, kernel, stride, expanded, act=nn.SiLU))
        layers.append(SqueezeExcitation(expanded, max(1, cin // 4), nn.SiLU, nn.Sigmoid))
        layers.append(conv_norm_act(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.use_res_connect else out


class EfficientNet(nn.Module):
    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: float = 1.0,
        depth: float = 1.0,
        stem: str = "auto",
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        c, h, w = image_shape("efficientnet_b0", input_shape)
        strides = small_strides([2, *(s[2] for s in STAGES)], small_stem(h, w, stem))
        cin = make_divisible(32 * width)
        layers: list[nn.Module] = [conv_norm_act(c, cin, 3, strides[0], act=nn.SiLU)]
        for (t, k, _, _, cout, n), stride in zip(STAGES, strides[1:], strict=True):
            cout = make_divisible(cout * width)  # noqa: PLW2901
            blocks = []
            for i in range(repeats(n, depth)):
                blocks.append(MBConv(cin, cout, t, k, stride if i == 0 else 1))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        last = make_divisible(1280 * width) if width > 1.0 else 1280
        layers.append(conv_norm_act(cin, last, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        fc = nn.Linear(last, int(num_classes))
        self.classifier = nn.Sequential(nn.Dropout(dropout), fc)
        init_weights(self)
        bound = 1.0 / last**0.5
        nn.init.uniform_(fc.weight, -bound, bound)
        nn.init.zeros_(fc.bias)
        kwargs = {"width": float(width), "depth": float(depth), "stem": stem}
        describe(self, "efficientnet_b0", kwargs, input_shape, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def efficientnet_b0(
    input_shape: Sequence[int],
    num_classes: int,
    width: float = 1.0,
    depth: float = 1.0,
    stem: str = "auto",
) -> EfficientNet:
    """`efficientnet_b0`: width and depth multipliers (the compound scaling's two axes)."""
    return EfficientNet(input_shape, num_classes, float(width), float(depth), stem)
