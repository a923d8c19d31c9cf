"""Helpers shared by the convolutional students: input checks, channel rounding, initialisation.

Conventions every student follows (so taps, pairing and export treat them alike): the module
carries `input_shape`, `num_classes`, `arch` (its catalog name) and `arch_kwargs` (the catalog
parameters that rebuild it); every ReLU is its own non-inplace module, called once per forward,
so forward hooks see unmodified tensors and each module path names one tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn


def image_shape(arch: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    """(channels, height, width), or a ValueError that points tabular data at `mlp`."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"{arch} needs image inputs shaped (channels, height, width), got "
            f"{list(input_shape)}; use 'mlp' for tabular or flat inputs"
        )
    return shape  # type: ignore[return-value]


def describe(
    module: nn.Module,
    arch: str,
    kwargs: dict[str, Any],
    input_shape: Sequence[int],
    num_classes: int,
) -> None:
    """Attach what `export.save_safetensors` records to rebuild the model."""
    # torch's stub types nn.Module.__setattr__ for tensors and modules only; any value works
    module.input_shape = tuple(int(s) for s in input_shape)  # type: ignore[assignment]
    module.num_classes = int(num_classes)  # type: ignore[assignment]
    module.arch = arch  # type: ignore[assignment]
    module.arch_kwargs = dict(kwargs)  # type: ignore[assignment]


def scaled(channels: int, width: float, multiple: int = 1) -> int:
    """`channels * width` rounded to a multiple of `multiple`, at least `multiple`."""
    return max(multiple, int(round(channels * width / multiple)) * multiple)


def repeats(n: int, depth: float) -> int:
    """A stage's block count times the depth multiplier, at least 1."""
    return max(1, int(round(n * depth)))


def conv_bn_relu(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """conv (no bias, 'same' padding) -> BN -> ReLU, as children `0`, `1`, `2`."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convolutions with zero bias, BN weight 1 / bias 0 (RepDistiller)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


STEM_CHOICES = ("auto", "imagenet", "small")
SMALL_INPUT = 112  # shorter side below which "auto" picks the small stem


def small_stem(h: int, w: int, stem: str) -> bool:
    """Whether an ImageNet-layout student uses its small-input stem.

    "auto": below `SMALL_INPUT` pixels on the shorter side, the stem and the first down-sampling
    step keep the resolution (overall stride 8 instead of 32: 32x32 ends at 4x4, 8x8 at 1x1),
    so a small image is not reduced to nothing; "imagenet" / "small" force one or the other.
    """
    if stem not in STEM_CHOICES:
        raise ValueError(f"stem must be one of {list(STEM_CHOICES)}, got {stem!r}")
    return stem == "small" or (stem == "auto" and min(h, w) < SMALL_INPUT)


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's rounding of scaled channels: nearest multiple of `divisor`, >= 90% of value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded
