"""MobileNetV3 (Howard et al., ICCV 2019): `mobilenetv3_small` and `mobilenetv3_large`.

torchvision's layout and module names: `features.0` the stem (3x3 stride-2 conv, BN, hardswish as
`.0`/`.1`/`.2`), `features.1`..`features.N` one inverted residual block each (`block.K`: 1x1
expansion, depthwise conv, squeeze-excitation `fc1`/`fc2`, 1x1 projection), `features.N+1` the
1x1 conv to 6x channels, `avgpool`, and `classifier` (`.0` linear, `.1` hardswish, `.2` dropout,
`.3` linear), so a torchvision state dict maps onto it.

Any input size: from 112 pixels up (`stem="auto"`) the strides are ImageNet's (overall 32); below
that the stem and the first stride-2 block keep the resolution (overall 8: 32x32 ends at 4x4, 8x8
digits at 1x1). `width` scales the channels (rounded to multiples of 8 as in the paper), `depth`
the number of blocks of each run of blocks with the same output width (at least one; above 1
the run's last block is repeated).
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

# input, kernel, expanded, output, squeeze-excitation, activation ("RE"/"HS"), stride
Setting = tuple[int, int, int, int, bool, str, int]
LARGE: tuple[Setting, ...] = (
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
)
SMALL: tuple[Setting, ...] = (
    (16, 3, 16, 16, True, "RE", 2),
    (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1),
    (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1),
)
VARIANTS = {"mobilenetv3_large": (LARGE, 1280), "mobilenetv3_small": (SMALL, 1024)}


def conv_norm_act(
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: conv (no bias) `.0`, BN `.1`, activation `.2`."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """x * gate(fc2(act(fc1(avgpool(x))))) with 1x1 convolutions, torchvision's names."""

    def __init__(
        self,
        channels: int,
        squeeze: int,
        act: type[nn.Module] = nn.ReLU,
        gate: type[nn.Module] = nn.Hardsigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = act()
        self.scale_activation = gate()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, s: Setting, width: float, stride: int) -> None:
        """`cin` the actual input channels; the rest of setting `s` scaled by `width`."""
        super().__init__()
        kernel, expanded, cout = s[1], make_divisible(s[2] * width), make_divisible(s[3] * width)
        act = nn.Hardswish if s[5] == "HS" else nn.ReLU
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(conv_norm_act(cin, expanded, 1, act=act))
        layers.append(conv_norm_act(expanded, expanded, kernel, stride, expanded, act=act))
        if s[4]:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4)))
        layers.append(conv_norm_act(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.use_res_connect else out


def scaled_runs(settings: Sequence[Setting], depth: float) -> list[Setting]:
    """The blocks a depth multiplier gives: each run of blocks with the same output width gets
    `repeats(run, depth)` blocks, its first ones kept (the first changes width or stride; the
    rest are residual), its last one repeated when the multiplier is above 1."""
    out, i = [], 0
    while i < len(settings):
        j = i
        while j < len(settings) and settings[j][3] == settings[i][3]:
            j += 1
        run = list(settings[i:j])
        n = repeats(len(run), depth)
        out += run[:n] + [run[-1][:6] + (1,)] * (n - len(run))
        i = j
    return out


def small_strides(strides: Sequence[int], small: bool) -> list[int]:
    """The strides of the stem and the blocks; small inputs drop the first two stride-2 steps."""
    out, dropped = list(strides), 0
    for i, s in enumerate(out):
        if small and s == 2 and dropped < 2:
            out[i], dropped = 1, dropped + 1
    return out


class MobileNetV3(nn.Module):
    def __init__(
        self,
        arch: str,
        input_shape: Sequence[int],
        num_classes: int,
        width: float = 1.0,
        depth: float = 1.0,
        stem: str = "auto",
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        c, h, w = image_shape(arch, input_shape)
        settings, last = VARIANTS[arch]
        kept = scaled_runs(settings, depth)
        strides = small_strides([2, *(s[6] for s in kept)], small_stem(h, w, stem))
        first = make_divisible(16 * width)
        layers: list[nn.Module] = [conv_norm_act(c, first, 3, strides[0], act=nn.Hardswish)]
        cin = first
        for s, stride in zip(kept, strides[1:], strict=True):
            layers.append(InvertedResidual(cin, s, width, stride))
            cin = make_divisible(s[3] * width)
        lastconv = 6 * cin
        layers.append(conv_norm_act(cin, lastconv, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        head = make_divisible(last * width) if width > 1.0 else last
        self.classifier = nn.Sequential(
            nn.Linear(lastconv, head),
            nn.Hardswish(),
            nn.Dropout(dropout),
            nn.Linear(head, int(num_classes)),
        )
        init_weights(self)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
        kwargs = {"width": float(width), "depth": float(depth), "stem": stem}
        describe(self, arch, kwargs, input_shape, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def mobilenetv3(
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    width: float = 1.0,
    depth: float = 1.0,
    stem: str = "auto",
) -> MobileNetV3:
    """`mobilenetv3_small` / `mobilenetv3_large`: width and depth multipliers."""
    return MobileNetV3(arch, input_shape, num_classes, float(width), float(depth), stem)
