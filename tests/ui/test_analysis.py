"""The pure functions behind the pages: config diffs, the Pareto front, split sizes, run events."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from client import Run
from ui.analysis import (
    MISSING,
    config_diff,
    differs_from_first,
    flatten,
    pareto_front,
    run_events,
    split_sizes,
)

BASE = {
    "name": "a",
    "teacher": {"model_id": 1},
    "student": {"architecture": "resnet8", "kwargs": {"width": 0.5}},
    "layer_pairs": [{"teacher": "layer3", "student": "layer3", "tap": "output"}],
    "losses": [
        {"name": "ce", "weight": 1.0, "params": {}},
        {"name": "kd", "weight": 1.0, "params": {"temperature": 4.0}},
    ],
    "training": {"epochs": 5, "lr": 0.05, "step_milestones": [0.5, 0.75]},
}


def _variant(**changes):
    import copy

    config = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = config
        *parents, leaf = path.split("__")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[leaf] = value
    return config


def test_flatten_names_losses_and_indexes_pairs() -> None:
    flat = flatten(BASE)
    assert flat["student.kwargs.width"] == 0.5
    assert flat["losses.kd.params.temperature"] == 4.0
    assert flat["losses.kd.weight"] == 1.0
    assert flat["losses.ce.params"] == "{}"
    assert flat["layer_pairs.0.teacher"] == "layer3"
    assert flat["training.step_milestones"] == "0.5, 0.75"


def test_config_diff_keeps_only_differing_keys() -> None:
    other = _variant(name="b", training__epochs=10, losses__1__params={"temperature": 8.0})
    keys, rows = config_diff([BASE, other])
    assert keys == ["losses.kd.params.temperature", "training.epochs"]  # not the name
    assert rows == [
        {"losses.kd.params.temperature": 4.0, "training.epochs": 5},
        {"losses.kd.params.temperature": 8.0, "training.epochs": 10},
    ]


def test_config_diff_added_loss_and_float_noise() -> None:
    third = _variant(training__lr=0.05 + 1e-12)
    third["losses"].append({"name": "at", "weight": 100.0, "params": {"p": 2.0}})
    keys, rows = config_diff([BASE, BASE, third])
    assert "training.lr" not in keys  # equal up to float noise
    assert set(keys) == {"losses.at.weight", "losses.at.params.p"}
    assert rows[0]["losses.at.weight"] == MISSING and rows[2]["losses.at.weight"] == 100.0
    assert config_diff([BASE, BASE]) == ([], [{}, {}])


def test_differs_from_first() -> None:
    assert differs_from_first([1, 1, 2, "x"]) == [False, False, True, True]
    assert differs_from_first([0.1, 0.1 + 1e-15]) == [False, False]


def test_pareto_front_small_cases() -> None:
    #           cost, accuracy
    points = [
        (10.0, 0.90),
        (5.0, 0.85),
        (6.0, 0.80),
        (20.0, 0.92),
        (10.0, 0.90),
        (3.0, None),
        (1.0, 0.50),
        (25.0, 0.92),
    ]
    assert pareto_front(points) == [True, True, False, True, True, False, True, False]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, float("nan"))]) == [False]
    assert pareto_front([(2.0, 0.5), (2.0, 0.6)]) == [False, True]  # same cost, more accurate


def _dominated(i: int, points: list[tuple[float, float]]) -> bool:
    ci, ai = points[i]
    return any(
        c <= ci and a >= ai and (c < ci or a > ai) for j, (c, a) in enumerate(points) if j != i
    )


@pytest.mark.parametrize("seed", range(20))
def test_pareto_front_matches_the_definition(seed: int) -> None:
    rng = random.Random(seed)
    points = [(float(rng.randint(1, 8)), rng.randint(0, 8) / 8) for _ in range(rng.randint(1, 25))]
    expected = [not _dominated(i, points) for i in range(len(points))]
    assert pareto_front(points) == expected


def test_split_sizes_mirror_the_engine() -> None:
    import torch

    from worker.engine.tasks.classification.data import TensorData, split

    counts = {"a": 7, "b": 1, "c": 2, "d": 33}
    labels = torch.tensor([i for i, n in enumerate(counts.values()) for _ in range(n)])
    data = TensorData(torch.zeros(len(labels), 2), labels, list(counts))
    for fraction in (0.2, 0.5, 0.05):
        train, val = split(data, fraction, seed=0)
        assert split_sizes(counts, fraction) == (len(train), len(val))
    assert split_sizes([10, 10], 0.2) == (16, 4)


def test_run_events_tell_the_story() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    run = Run(
        id=3,
        name="r",
        status="failed",
        queue="gpu",
        attempts=2,
        worker="gpu-1:4242",
        created_at=t0,
        started_at=t0 + timedelta(seconds=5),
        finished_at=t0 + timedelta(minutes=3),
        error="CUDA out of memory; lower the batch size",
    )
    events = run_events(run, {0: 0.5, 1: 0.75})
    assert [e["event"] for e in events] == [
        "queued",
        "running",
        "epoch 1 validated",
        "epoch 2 validated",
        "failed",
    ]
    assert "gpu-1:4242" in events[1]["detail"] and "attempt 2" in events[1]["detail"]
    assert "75.00%" in events[3]["detail"]
    assert events[-1]["detail"] == "CUDA out of memory; lower the batch size"

    live = Run(
        id=4,
        name="l",
        status="running",
        attempts=1,
        cancel_requested=True,
        created_at=t0,
        started_at=t0,
        heartbeat_at=t0 + timedelta(seconds=30),
        step=7,
        total_steps=20,
    )
    names = [e["event"] for e in run_events(live)]
    assert names == ["queued", "running", "cancel requested", "last heartbeat"]
