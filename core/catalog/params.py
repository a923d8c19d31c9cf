"""What every catalog entry is made of: typed parameters, the entry base, and the lazy import.

An entry names its implementation as a `"package.module:Attribute"` string; `load` imports it
only when the engine builds a run, so the catalog itself imports nothing heavy (no torch).
"""

from __future__ import annotations

import difflib
import importlib
import math
import reprlib
from dataclasses import dataclass
from typing import Any, Literal

ParamType = Literal["float", "int", "bool", "str", "choice"]


def _short_repr(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters, for error messages about any JSON value."""
    text = reprlib.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class Param:
    """One parameter of a loss, student or scheme: type, default, help text and range."""

    name: str
    type: ParamType
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None

    def range_text(self) -> str:
        """The parameter's range as `[min, max]` (an open end shown as -inf / inf)."""
        lo = "-inf" if self.min is None else self.min
        hi = "inf" if self.max is None else self.max
        return f"[{lo}, {hi}]"

    def check(self, value: Any) -> str | None:
        """Return an error message if `value` does not fit this parameter, else None.

        Numbers must be finite (no NaN or infinity: JSON bodies may carry them) and in range.
        """
        if self.type == "bool":
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
        if self.type in ("float", "int"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"must be a number, got {_short_repr(value)}"
            if not math.isfinite(value):
                return f"must be a finite number in {self.range_text()}, got {value}"
            if self.type == "int" and int(value) != value:
                return f"must be a whole number, got {value!r}"
            if (self.min is not None and value < self.min) or (
                self.max is not None and value > self.max
            ):
                return f"must be in {self.range_text()}, got {value}"
            return None
        if self.type == "choice":
            assert self.choices is not None
            if isinstance(value, str) and value in self.choices:
                return None
            return f"must be one of {list(self.choices)}, got {_short_repr(value)}"
        return None if isinstance(value, str) else f"must be text, got {_short_repr(value)}"


def param(
    name: str,
    type_: ParamType,
    default: Any,
    help_: str,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Param:
    """A `Param`, positionally: name, type, default, help, then min, max (and choices)."""
    return Param(name, type_, default, help_, lo, hi, tuple(choices) if choices else None)


def load(ref: str) -> Any:
    """The object a `"package.module:Attribute"` reference names, imported now.

    Raises ValueError saying what is wrong with the reference, or which part is missing.
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"implementation {ref!r} must read 'package.module:Attribute'")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(
            f"implementation {ref!r}: module '{module_name}' has no '{attr}'"
        ) from None


@dataclass(frozen=True)
class Entry:
    """One catalog entry: what the UI shows, what the config accepts, where the engine looks.

    `implementation` is the `"module:Attribute"` the engine builds the entry from (a class for a
    loss, a builder function for a student); `paper` the reference it comes from.
    """

    name: str
    title: str
    help: str
    params: tuple[Param, ...] = ()
    paper: str = ""
    kind: str = ""
    implementation: str = ""

    def defaults(self) -> dict[str, Any]:
        """The parameters' defaults, as the engine's constructor declares them."""
        return {p.name: p.default for p in self.params}

    def check_params(self, params: dict[str, Any]) -> list[str]:
        """Errors for unknown or out-of-range parameters, each naming the parameter."""
        known = {p.name: p for p in self.params}
        errors = []
        for key, value in params.items():
            if key not in known:
                errors.append(
                    f"unknown parameter '{key}' for '{self.name}'; it takes: {sorted(known) or 'none'}"
                )
            elif (msg := known[key].check(value)) is not None:
                errors.append(f"parameter '{key}' of '{self.name}' {msg}")
        return errors

    def load(self) -> Any:
        """The implementation, imported now (the engine calls this; the catalog never does)."""
        if not self.implementation:
            raise ValueError(f"catalog entry '{self.name}' names no implementation")
        return load(self.implementation)

    def extra_json(self) -> dict[str, Any]:
        """The typed fields a subclass adds, as served under `extra` by `GET /catalog`."""
        return {}

    def as_json(self) -> dict[str, Any]:
        """The entry as `GET /api/v1/catalog` serves it (the implementation stays internal)."""
        return {
            "name": self.name,
            "title": self.title,
            "help": self.help,
            "params": [
                {
                    "name": p.name,
                    "type": p.type,
                    "default": p.default,
                    "help": p.help,
                    "min": p.min,
                    "max": p.max,
                    "choices": p.choices,
                }
                for p in self.params
            ],
            "paper": self.paper,
            "kind": self.kind,
            "needs_pairs": bool(getattr(self, "needs_pairs", False)),
            "extra": self.extra_json(),
        }


def nearest(name: str, options: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    """The options closest to `name`, for error messages ("did you mean ...")."""
    close = difflib.get_close_matches(name, list(options), n=n, cutoff=0.4)
    return close or list(options)[:n]
