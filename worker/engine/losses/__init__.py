"""Loss implementations, found by their catalog name (`core.catalog.LOSSES`).

Each catalog entry names its class as `"worker.engine.losses.<module>:<Class>"`; `loss_class`
imports it when a run uses the loss. There is no list of classes here: adding a loss is one
module in this package and one entry in `core/catalog/losses.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

from core import catalog
from core.config import LossSpec
from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


def loss_class(name: str) -> type[DistillLoss]:
    """The engine class of the catalog loss `name`, imported from its entry's implementation.

    Raises ValueError for a name the catalog lacks (listing the nearest) or an implementation
    that is not a `DistillLoss`.
    """
    entry = catalog.LOSSES.get(name)
    if entry is None:
        raise ValueError(
            f"unknown loss '{name}'; nearest: {', '.join(catalog.nearest(name, list(catalog.LOSSES)))}"
        )
    cls = entry.load()
    if not (isinstance(cls, type) and issubclass(cls, DistillLoss)):
        raise ValueError(
            f"loss '{name}': implementation {entry.implementation!r} is not a DistillLoss subclass"
        )
    return cls


class _Implementations(Mapping[str, type[DistillLoss]]):
    """Read-only view: catalog loss name -> engine class, each imported when looked up."""

    def __getitem__(self, name: str) -> type[DistillLoss]:
        if name not in catalog.LOSSES:
            raise KeyError(name)
        return loss_class(name)

    def __iter__(self) -> Iterator[str]:
        return iter(catalog.LOSSES)

    def __len__(self) -> int:
        return len(catalog.LOSSES)


LOSSES: Mapping[str, type[DistillLoss]] = _Implementations()


def build_loss(spec: LossSpec, ctx: LossContext) -> DistillLoss:
    """The loss module for one `LossSpec`, with the catalog defaults filled in; it carries its
    catalog name (`loss.name`) for its error messages."""
    cls = loss_class(spec.name)
    return cls(dataclasses.replace(ctx, name=spec.name), **spec.resolved_params())


__all__ = [
    "LOSSES",
    "DistillLoss",
    "LossContext",
    "StepOutputs",
    "build_loss",
    "loss_class",
]
