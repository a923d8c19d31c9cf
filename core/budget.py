"""Students found for a budget, the torch-free half: the target, the grid of candidates, the table.

A target is one cost bound: `params`, `flops` (per sample, a multiply-add counts 2) or
`latency_ms` (CPU, batch 1). The search space is a grid of depth and width factors:
- of a zoo architecture whose catalog entry has a `depth` and/or a width (`width`, `hidden`)
  parameter: its parameters (defaults, or the `kwargs` given) times `DEPTH_FACTORS` and
  `WIDTH_FACTORS`, snapped to what the family allows (resnet depth 6n+2, wrn 6n+4, integer
  depths and hidden sizes) and kept within the parameter ranges;
- of a student derived from a zoo teacher: `catalog.derived_architecture` at every pair of
  `DERIVED_FACTORS` (each in (0, 1]).
A worker builds every candidate and measures its cost (`worker.engine.budget`); `select` turns
the measured costs into the table for one target: the candidates that meet it, largest first
(the closest to the budget), with their share of the budget, and how many were rejected.
Nothing here looks at accuracy: the table is costs only.
"""

from __future__ import annotations

from typing import Any

from core.catalog import STUDENTS, derived_architecture, student_problems

METRICS = ("params", "flops", "latency_ms")
METRIC_NAMES = {"params": "parameters", "flops": "FLOPs", "latency_ms": "CPU latency (ms)"}
DEPTH_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)
WIDTH_FACTORS = (0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0)
DERIVED_FACTORS = (0.25, 0.375, 0.5, 0.75, 1.0)
_DEPTH_RULES = {
    "resnet": (2, 8),
    "wrn": (4, 10),
    "seg_fcn": (2, 8),
    "seg_unet": (2, 8),
}  # 6n + offset
_WIDTH_PARAMS = ("width", "hidden")

Candidate = tuple[str, dict[str, Any]]


def parse_target(target: dict[str, Any]) -> tuple[str, float]:
    """(metric, bound) of a target with exactly one positive bound; ValueError saying why not."""
    given = {k: v for k, v in (target or {}).items() if v is not None}
    unknown = sorted(set(given) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown target {', '.join(unknown)}; give one of {', '.join(METRICS)}")
    if len(given) != 1:
        what = "none" if not given else ", ".join(sorted(given))
        raise ValueError(
            f"give exactly one target (params, flops or latency_ms), got {what}; "
            'e.g. {"params": 50000}'
        )
    (metric, value), *_ = given.items()
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"target {metric} must be a positive number, got {value!r}")
    return metric, float(value)


def _snap_depth(arch: str, value: float, lo: float, hi: float) -> int:
    offset, minimum = _DEPTH_RULES.get(arch, (0, 1))
    if arch in _DEPTH_RULES:
        n = max(0, round((value - offset) / 6))
        depth = max(minimum, 6 * n + offset)
        while depth > hi:
            depth -= 6
        return depth
    return int(min(hi, max(lo, round(value))))


def zoo_candidates(architecture: str, kwargs: dict[str, Any] | None = None) -> list[Candidate]:
    """The grid of one zoo architecture: its depth and width times the factors (deduplicated,
    in grid order). ValueError for an unknown architecture or one with nothing to search."""
    entry = STUDENTS.get(architecture)
    if entry is None:
        families = sorted(n for n, e in STUDENTS.items() if _searchable(e.params))
        raise ValueError(
            f"unknown student architecture {architecture!r}; searchable: {', '.join(families)}"
        )
    params = {p.name: p for p in entry.params}
    depth = params.get("depth")
    width = next((params[n] for n in _WIDTH_PARAMS if n in params), None)
    if depth is None and width is None:
        generic = entry.family if entry.family in STUDENTS else None
        hint = f"; search its family's generic entry '{generic}'" if generic else ""
        raise ValueError(
            f"'{architecture}' has no depth or width parameter, so there is nothing to search{hint}"
        )
    base = {**entry.defaults(), **(kwargs or {})}
    depths: list[Any] = [None]
    if depth is not None:
        lo, hi = depth.min or 0.0, depth.max or float("inf")
        d0 = float(base["depth"])
        if depth.type == "int":
            depths = [_snap_depth(architecture, d0 * f, lo, hi) for f in DEPTH_FACTORS]
        else:
            depths = [min(hi, max(lo, round(d0 * f, 4))) for f in DEPTH_FACTORS]
    widths: list[Any] = [None]
    if width is not None:
        lo, hi = width.min or 0.0, width.max or float("inf")
        w0 = float(base[width.name])
        if width.type == "int":
            widths = [int(min(hi, max(lo, round(w0 * f)))) for f in WIDTH_FACTORS]
        else:
            widths = [min(hi, max(lo, round(w0 * f, 4))) for f in WIDTH_FACTORS]
    out: list[Candidate] = []
    for d in dict.fromkeys(depths):
        for w in dict.fromkeys(widths):
            kw = dict(base)
            if d is not None:
                kw["depth"] = d
            if w is not None and width is not None:
                kw[width.name] = w
            if not student_problems(architecture, kw) and (architecture, kw) not in out:
                out.append((architecture, kw))
    return out


def _searchable(params: tuple[Any, ...]) -> bool:
    return any(p.name in ("depth", *_WIDTH_PARAMS) for p in params)


def derived_candidates(
    teacher_arch: str | None, teacher_kwargs: dict[str, Any] | None
) -> list[Candidate]:
    """Students derived from a zoo teacher at every pair of `DERIVED_FACTORS` (deduplicated);
    ValueError when the teacher has no zoo architecture."""
    out: list[Candidate] = []
    for df in DERIVED_FACTORS:
        for wf in DERIVED_FACTORS:
            cand = derived_architecture(teacher_arch, teacher_kwargs, df, wf)
            if cand not in out:
                out.append(cand)
    return out


def _metric_text(metric: str, value: float) -> str:
    if metric == "latency_ms":
        return f"{value:.3g} ms"
    return f"{value:,.0f} {METRIC_NAMES[metric]}"


def select(costs: list[dict[str, Any]], metric: str, budget: float) -> dict[str, Any]:
    """The table for one target from measured costs (rows with architecture, kwargs, params,
    flops, latency_ms; or architecture, kwargs, error when it could not be built).

    Candidates that meet the budget, sorted by their cost, largest first (the closest to the
    budget), each with `percent_of_budget`; `tried` (all), `rejected` (over the budget),
    `failed` (could not be built), and a `message`: when nothing fits, it names the smallest
    candidate and its cost."""
    built = [c for c in costs if c.get("error") is None]
    fits = [c for c in built if float(c[metric]) <= budget]
    fits.sort(key=lambda c: (-float(c[metric]), -float(c["params"])))
    rows = [{**c, "percent_of_budget": round(100.0 * float(c[metric]) / budget, 1)} for c in fits]
    bound = _metric_text(metric, budget)
    if rows:
        best = rows[0]
        message = (
            f"{len(rows)} of {len(costs)} candidates meet {bound}; the largest is "
            f"{best['architecture']} {best['kwargs']} at {best['percent_of_budget']}% of it"
        )
    elif built:
        small = min(built, key=lambda c: float(c[metric]))
        message = (
            f"no candidate meets {bound}; the smallest is {small['architecture']} "
            f"{small['kwargs']} with {_metric_text(metric, float(small[metric]))} "
            f"({100.0 * float(small[metric]) / budget:.0f}% of the budget): raise the budget "
            "or search a smaller family"
        )
    else:
        message = f"no candidate could be built for these inputs ({len(costs)} tried)"
    return {
        "metric": metric,
        "budget": budget,
        "candidates": rows,
        "tried": len(costs),
        "rejected": len(built) - len(fits),
        "failed": [c for c in costs if c.get("error") is not None],
        "message": message,
    }
