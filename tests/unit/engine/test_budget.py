"""Students found for a budget: the grid respects each family's depth rule and parameter
ranges; every candidate in the table meets the target, the largest that fits comes first; a
target nothing meets gives an empty table whose message names the smallest candidate's cost."""

from __future__ import annotations

import pytest

from core import budget
from core.catalog import STUDENTS, student_problems
from worker.engine.budget import measure, search
from worker.engine.evaluate import count_flops
from worker.engine.students import build_student

SHAPE, CLASSES = (1, 8, 8), 10
TINY = [("resnet", {"depth": d, "width": w}) for d in (8, 14) for w in (0.125, 0.25, 0.5)]


@pytest.mark.parametrize("arch", ["resnet", "wrn", "vgg", "mlp", "mobilenetv2", "shufflenetv2"])
def test_grid_follows_the_family_rules(arch: str) -> None:
    grid = budget.zoo_candidates(arch)
    assert len(grid) >= 6 and len({repr(c) for c in grid}) == len(grid)  # no duplicates
    assert all(name == arch and not student_problems(name, kw) for name, kw in grid)
    if arch in ("resnet", "wrn"):
        offset = 2 if arch == "resnet" else 4
        assert {(kw["depth"] - offset) % 6 for _, kw in grid} == {0}
    depths = {kw.get("depth") for _, kw in grid}
    widths = {kw.get("width", kw.get("hidden")) for _, kw in grid}
    assert len(depths) > 1 and len(widths) > 1  # both axes searched


def test_grid_of_a_derived_student_and_refusals() -> None:
    derived = budget.derived_candidates("resnet32", {})
    assert ("resnet14", {"width": 0.5}) in derived  # depth 32 x 0.5 = 16 -> 6n+2: 14
    assert ("resnet", {"depth": 26, "width": 0.75}) in derived  # 32 x 0.75 = 24 -> 26
    assert ("resnet32", {"width": 1.0}) in derived and len(derived) == 20  # 4 depths, 5 widths
    assert all(name in STUDENTS for name, _ in derived)
    with pytest.raises(ValueError, match="nothing to search"):
        budget.zoo_candidates("resnet32x4")
    with pytest.raises(ValueError, match="unknown student architecture 'resnet9'"):
        budget.zoo_candidates("resnet9")
    with pytest.raises(ValueError, match="architecture is in the zoo"):
        budget.derived_candidates(None, None)
    for bad in ({}, {"params": 0}, {"params": 1, "latency_ms": 2}, {"params": True}):
        with pytest.raises(ValueError):
            budget.parse_target(bad)


def test_costs_are_the_evaluations() -> None:
    (row,) = measure([TINY[0]], SHAPE, CLASSES, runs=3)
    module = build_student(*TINY[0][:1], SHAPE, CLASSES, **TINY[0][1])
    assert row["params"] == sum(p.numel() for p in module.parameters())
    assert row["flops"] == count_flops(module, SHAPE) > 0
    assert row["latency_ms"] > 0


def test_every_candidate_meets_the_target_and_the_largest_comes_first() -> None:
    costs = measure(TINY, SHAPE, CLASSES, runs=3)
    by_params = sorted(c["params"] for c in costs)
    bound = (by_params[3] + by_params[4]) / 2  # four fit, two do not
    table = budget.select(costs, "params", bound)
    rows = table["candidates"]
    assert len(rows) == 4 and table["tried"] == 6 and table["rejected"] == 2
    assert all(r["params"] <= bound for r in rows)
    assert rows[0]["params"] == by_params[3]  # the largest that fits
    assert [r["params"] for r in rows] == sorted((r["params"] for r in rows), reverse=True)
    assert rows[0]["percent_of_budget"] == round(100 * by_params[3] / bound, 1)
    flops = budget.select(costs, "flops", 10**12)  # everything fits
    assert flops["rejected"] == 0 and len(flops["candidates"]) == 6
    latency = budget.select(costs, "latency_ms", 10**6)
    assert all(r["latency_ms"] <= 10**6 for r in latency["candidates"])


def test_a_target_nothing_meets_gives_an_empty_table_naming_the_smallest() -> None:
    table = search(TINY[:2], {"params": 100}, SHAPE, CLASSES, runs=3)
    smallest = min(measure(TINY[:1], SHAPE, CLASSES, runs=3)[0]["params"], 10**9)
    assert table["candidates"] == [] and table["tried"] == 2 and table["rejected"] == 2
    assert table["message"].startswith(
        f"no candidate meets 100 parameters; the smallest is resnet {{'depth': 8, 'width': "
        f"0.125}} with {smallest:,} parameters"
    )


def test_a_candidate_that_cannot_be_built_is_reported_not_fatal() -> None:
    rows = measure([("resnet", {"depth": 8, "width": 0.125}), ("resnet", {"depth": 9})], SHAPE, 3)
    assert "error" not in rows[0] and "6n+2" in rows[1]["error"]
    table = budget.select(rows, "params", 10**9)
    assert table["tried"] == 2 and len(table["candidates"]) == 1 and len(table["failed"]) == 1
