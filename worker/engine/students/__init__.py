"""Student architectures, found by their catalog names (`core.catalog.STUDENTS`).

Each catalog entry names its builder as `"worker.engine.students.<module>:<function>"`; there is
no registry here: adding a student is one module (or function) and one catalog entry.

`build_student(name, input_shape, num_classes, **kwargs)` checks the name and the parameters
against the catalog and returns a fresh `nn.Module` that carries `input_shape`, `num_classes`,
`arch` and `arch_kwargs` so it can be saved and rebuilt (safetensors + architecture name).
`derive_student` builds a shallower/narrower version of a zoo teacher (depth and width factors).

Families: CIFAR ResNets (`resnet8`..`resnet110`, `resnet8x4`, `resnet32x4`, `resnet`), wide
ResNets (`wrn_16_1`, `wrn_16_2`, `wrn_40_1`, `wrn_40_2`, `wrn`), VGG with BN (`vgg8`, `vgg11`,
`vgg13`, `vgg`), `mobilenetv2`, `shufflenetv1`, `shufflenetv2` and `mlp`. Every network takes any
input size down to 8x8 and any number of input channels.

For real images (ImageNet layouts, torchvision's/timm's module names, a small-input stem below
112 px): `resnet18`/`resnet34`/`resnet50` (`resnet_imagenet`), `mobilenetv3_small`/`_large`
(`mobilenetv3`), `efficientnet_b0` (`efficientnet`) and `deit_tiny` (`vit`, token maps).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

from torch import nn

from core import catalog
from worker.engine.students.mlp import MLP
from worker.engine.students.mobilenetv2 import MobileNetV2
from worker.engine.students.resnet import ResNet
from worker.engine.students.shufflenet import ShuffleNetV1, ShuffleNetV2
from worker.engine.students.vgg import VGG
from worker.engine.students.wrn import WideResNet


def builder(name: str) -> Callable[..., nn.Module]:
    """The builder of the catalog student `name`: its entry's implementation, imported now,
    with the entry's `builder_args` bound; call it as `(input_shape, num_classes, **params)`.

    Raises ValueError for a name the catalog lacks, listing the nearest ones.
    """
    entry = catalog.STUDENTS.get(name)
    if entry is None:
        raise ValueError(
            f"unknown student architecture '{name}'; nearest: "
            f"{', '.join(catalog.nearest(name, list(catalog.STUDENTS)))}"
        )
    fn = entry.load()
    return partial(fn, *entry.builder_args) if entry.builder_args else fn


class _Builders(Mapping[str, Callable[..., nn.Module]]):
    """Read-only view: catalog student name -> builder, each imported when looked up."""

    def __getitem__(self, name: str) -> Callable[..., nn.Module]:
        if name not in catalog.STUDENTS:
            raise KeyError(name)
        return builder(name)

    def __iter__(self) -> Iterator[str]:
        return iter(catalog.STUDENTS)

    def __len__(self) -> int:
        return len(catalog.STUDENTS)


REGISTRY: Mapping[str, Callable[..., nn.Module]] = _Builders()


def build_student(
    name: str, input_shape: Sequence[int], num_classes: int, **kwargs: Any
) -> nn.Module:
    """A new, randomly initialised student `name` for inputs `input_shape` (without batch).

    Raises ValueError for an unknown name (listing the nearest ones) or parameters the catalog
    does not accept.
    """
    build = builder(name)
    errors = catalog.student_problems(name, kwargs)
    if errors:
        raise ValueError("; ".join(errors))
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    return build(tuple(int(s) for s in input_shape), int(num_classes), **kwargs)


def derive_student(
    teacher_arch: str | None,
    teacher_kwargs: dict[str, Any] | None,
    depth_factor: float,
    width_factor: float,
    input_shape: Sequence[int],
    num_classes: int,
) -> nn.Module:
    """A fresh student derived from a zoo teacher by depth and width factors (each in (0, 1]).

    The architecture and its parameters come from `catalog.derived_architecture` (resnet depth
    -> nearest 6n+2, wrn 6n+4, vgg fewer convolutions, mlp fewer/narrower layers, mobilenet and
    shufflenet multipliers). A teacher without a zoo architecture (a .pt2 graph) raises
    ValueError saying to upload it as safetensors with its architecture.
    """
    arch, kwargs = catalog.derived_architecture(
        teacher_arch, teacher_kwargs, depth_factor, width_factor
    )
    return build_student(arch, input_shape, num_classes, **kwargs)


__all__ = [
    "MLP",
    "REGISTRY",
    "VGG",
    "MobileNetV2",
    "ResNet",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "WideResNet",
    "build_student",
    "builder",
    "derive_student",
]
