"""Students found for a budget: build each candidate and measure what it costs.

`core.budget` lists the candidates (a grid of depth and width factors of a zoo or derived
student) and turns measured costs into the table for a target; this module is the measuring:
every candidate is built (`build_student`) and measured as the evaluation measures a student
(`worker.engine.evaluate`): parameters, FLOPs per sample (`count_flops`, torch's FLOP counter,
a multiply-add counts 2) and CPU latency at batch 1 (`latency_ms`: eval mode, inference mode,
one intra-op thread, warm-up first, then the candidates timed alternately call by call and the
median of `runs` calls kept, so a busy machine slows them all alike).

    costs = measure([("resnet", {"depth": 8, "width": 0.5}), ...], (1, 8, 8), 10)
    table = core.budget.select(costs, "params", 20_000)   # or search(...) for both
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core import budget as plan
from worker.engine.evaluate import count_flops, latency_ms
from worker.engine.students import build_student

LATENCY_RUNS = 7
LATENCY_THREADS = 1


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def measure(
    candidates: Sequence[tuple[str, dict[str, Any]]],
    input_shape: Sequence[int],
    num_classes: int,
    *,
    runs: int = LATENCY_RUNS,
    threads: int = LATENCY_THREADS,
) -> list[dict[str, Any]]:
    """The cost of each candidate, in order: architecture, kwargs, params, flops, latency_ms
    (median of `runs` calls at batch 1 on CPU with `threads` threads); a candidate that cannot
    be built for these inputs gets `error` (why) instead."""
    shape = [int(d) for d in input_shape]
    rows: list[dict[str, Any]] = []
    modules = {}
    for i, (arch, kwargs) in enumerate(candidates):
        row: dict[str, Any] = {"architecture": arch, "kwargs": dict(kwargs)}
        try:
            module = build_student(arch, shape, int(num_classes), **kwargs).eval()
            row["params"] = sum(p.numel() for p in module.parameters())
            row["flops"] = count_flops(module, shape)
        except Exception as exc:  # a width the input cannot take, ...: say so, go on
            row["error"] = _short(exc)
        else:
            modules[str(i)] = module
        rows.append(row)
    if modules:
        times = latency_ms(
            modules, shape, 1, runs=runs, warmup=2, warmup_s=0.01, budget_s=10.0, threads=threads
        )
        for key, ms in times.items():
            rows[int(key)]["latency_ms"] = round(ms, 4)
    return rows


def search(
    candidates: Sequence[tuple[str, dict[str, Any]]],
    target: dict[str, Any],
    input_shape: Sequence[int],
    num_classes: int,
    **options: Any,
) -> dict[str, Any]:
    """Measure every candidate and return the table for `target` (`core.budget.select`): those
    that meet it, the largest first, with tried/rejected counts and a message."""
    metric, bound = plan.parse_target(target)
    return plan.select(measure(candidates, input_shape, num_classes, **options), metric, bound)
