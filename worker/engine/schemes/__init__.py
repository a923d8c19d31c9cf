"""Training schemes (`base.Scheme`); each is built from its catalog entry's "module:Class"."""

from __future__ import annotations

from typing import Any

from core.catalog.schemes import SCHEMES
from worker.engine.schemes.base import Scheme, StepView

__all__ = ["Scheme", "StepView", "build_scheme"]


def build_scheme(name: str, **params: Any) -> Scheme:
    """The scheme the catalog declares under `name` (its class imported now), with its
    defaults overridden by `params`."""
    entry = SCHEMES.get(name)
    if entry is None:
        raise ValueError(f"unknown scheme '{name}'; the catalog has: {', '.join(SCHEMES)}")
    scheme = entry.load()(**{**entry.defaults(), **params})
    if not isinstance(scheme, Scheme):
        raise TypeError(f"{entry.implementation} is not a worker.engine.schemes.base.Scheme")
    return scheme
