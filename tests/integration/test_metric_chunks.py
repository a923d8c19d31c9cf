"""A series' chunks of JSON (`metric_chunks`, migration 0007): the worker's flushes append to
them, a resume rebuilds them, migration 0007 fills them from the points and leaves the points as
they were both ways; a whole read served from them is the very points written (exact floats),
`since_step` and `max_points` read as before, and points the chunks miss are read as points."""

from __future__ import annotations

import json
import math

from sqlalchemy import insert, inspect, text, update

from backend.migrate import downgrade, upgrade
from core.db import get_engine, session_scope
from core.db.tables import CHUNK_POINTS, Metric, MetricChunk

from .api_helpers import ready_dataset, ready_model, run_config
from .test_metrics_scale import WORKER, _report, _reporting_run

STEPS = 2_600  # three chunks of `loss`: 1024 + 1024 + 552
FLUSHES = (1, 2, 1_000, 1_023, 1_024, 1_025, 2_047, 2_049, 2_500)  # chunk ends, inside, across
TRICKY = [0.1, 1 / 3, 2.0, 0.0, -7.0, 1e20, 1e-5, 5e-324, 1.7976931348623157e308, 1e15]
TRICKY += [123456789012345.0, 1e16, 1.0000000000000002, -2.5e-300, math.inf, -math.inf]


def _value(step: int) -> float:
    """Awkward floats among ordinary ones: each must read back as the same double."""
    return TRICKY[step % 97] if step % 97 < len(TRICKY) else math.sin(step) * 10.0 ** (step % 9)


def _wire(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _points(run_id: int) -> dict[str, list[tuple[int, int, float | None]]]:
    """The run's points by series, in step order, as the API sends them."""
    out: dict[str, list[tuple[int, int, float | None]]] = {}
    with get_engine().connect() as conn:
        for name, step, epoch, value in conn.execute(
            text(
                "SELECT name, step, epoch, value FROM metrics WHERE run_id = :r ORDER BY name, step"
            ),
            {"r": run_id},
        ):
            out.setdefault(name, []).append((step, epoch, _wire(value)))
    return out


def _chunks(run_id: int) -> dict[str, list[tuple[int, int, float | None]]]:
    """The run's chunks decoded, checked for their numbering, counts and bounds."""
    out: dict[str, list[tuple[int, int, float | None]]] = {}
    with get_engine().connect() as conn:
        rows = conn.execute(
            text(
                "SELECT name, chunk, n, first_step, last_step, steps_json, epochs_json, "
                "values_json FROM metric_chunks WHERE run_id = :r ORDER BY name, chunk"
            ),
            {"r": run_id},
        ).all()
    for name, chunk, n, first, last, steps, epochs, values in rows:
        steps, epochs, values = (json.loads(f"[{a}]") for a in (steps, epochs, values))
        assert len(steps) == len(epochs) == len(values) == n <= CHUNK_POINTS
        assert (steps[0], steps[-1]) == (first, last) and chunk == len(
            out.get(name, [])
        ) // CHUNK_POINTS
        out.setdefault(name, []).extend(zip(steps, epochs, values, strict=True))
    return out


def _whole(api, run_id: int, **params) -> dict:
    r = api.get(f"/runs/{run_id}/metrics", params=params)
    assert r.status_code == 200, r.text
    return r.json()["series"]


def _as_points(series: dict) -> list[tuple[int, int, float | None]]:
    return list(zip(series["steps"], series["epochs"], series["values"], strict=True))


def _chunk_run(api) -> int:
    """A run whose points the worker's reporter wrote, flushed at uneven steps."""
    from worker.reporting import DbReporter

    run_id = _reporting_run(api)
    reporter = DbReporter(run_id, "unused", WORKER)
    reporter.flush_every = float("inf")  # only the flushes asked for write
    reporter.on_start(STEPS, 0)
    _report(reporter, range(1, STEPS + 1), _value, flushes=FLUSHES)
    return run_id


def test_flushes_append_to_chunks_that_read_back_as_the_very_points(api, studio_env) -> None:
    run_id = _chunk_run(api)
    points = _points(run_id)
    assert len(points["loss"]) == STEPS and len(points["val/top1"]) == 2
    assert _chunks(run_id) == points  # every point, in order, once; full chunks but the last
    with get_engine().connect() as conn:
        counts = (
            conn.execute(
                text(
                    "SELECT n FROM metric_chunks WHERE run_id = :r AND name = 'loss' ORDER BY chunk"
                ),
                {"r": run_id},
            )
            .scalars()
            .all()
        )
    assert counts == [1024, 1024, STEPS - 2048]

    expected = [(s, s // 1000, _wire(_value(s))) for s in range(1, STEPS + 1)]
    for params in ({"names": "loss"}, {"names": "loss,lr,val/top1"}, {}):
        series = _whole(api, run_id, **params)
        assert list(series) == (
            ["loss"] if params.get("names") == "loss" else ["loss", "lr", "val/top1"]
        )
        assert _as_points(series["loss"]) == expected
        assert series["loss"]["total"] == STEPS and series["loss"]["downsampled"] is False
        assert all(type(v) is float for v in series["loss"]["values"] if v is not None)
        if "lr" in series:
            assert _as_points(series["lr"]) == points["lr"]
    body = api.get(f"/runs/{run_id}/metrics", params={"names": "loss"}).content
    assert b"5e-324" in body and b"1e+16" in body  # pydantic-core's text, as the points path

    with session_scope() as session:  # the read is the chunks': a changed chunk shows
        session.execute(
            update(MetricChunk)
            .where(MetricChunk.run_id == run_id, MetricChunk.name == "val/top1")
            .values(values_json="0.25,0.5")
        )
    assert _whole(api, run_id, names="val/top1")["val/top1"]["values"] == [0.25, 0.5]


def test_since_step_and_max_points_on_chunked_series(api, studio_env) -> None:
    run_id = _chunk_run(api)
    points = _points(run_id)
    for since in (0, 1_023, 1_024, 2_500, STEPS):
        series = _whole(api, run_id, names="loss", since_step=since)
        got = _as_points(series["loss"]) if series else []
        assert got == [p for p in points["loss"] if p[0] > since]

    series = _whole(api, run_id, names="loss,val/top1", max_points=400)
    assert series["val/top1"]["downsampled"] is False  # 2 points: whole, from the chunks
    assert _as_points(series["val/top1"]) == points["val/top1"]
    loss = series["loss"]
    assert loss["downsampled"] is True and loss["total"] == STEPS and len(loss["steps"]) <= 400
    assert set(_as_points(loss)) <= set(points["loss"]) and loss["steps"][0] == 1
    assert loss["steps"][-1] == STEPS
    whole = _whole(api, run_id, names="loss", max_points=STEPS)["loss"]  # fits: every point
    assert whole["downsampled"] is False and _as_points(whole) == points["loss"]


def test_resume_rebuilds_the_chunks_of_dropped_points(api, studio_env) -> None:
    from worker.reporting import DbReporter

    run_id = _chunk_run(api)
    resumed_at = 1_500  # inside the second chunk

    def again(step: int) -> float:
        return -float(step)

    second = DbReporter(run_id, "unused", WORKER)
    second.flush_every = float("inf")
    second.on_start(STEPS, resumed_at)
    points = _points(run_id)
    assert points["loss"][-1][0] == resumed_at and _chunks(run_id) == points
    _report(second, range(resumed_at + 1, 3_200), again, flushes=(1_501, 2_048, 3_000))
    points = _points(run_id)
    assert len(points["loss"]) == 3_199 and _chunks(run_id) == points
    loss = _whole(api, run_id, names="loss")["loss"]
    assert _as_points(loss) == points["loss"] and loss["values"][-1] == -3_199.0


def test_points_the_chunks_miss_are_read_as_points(api, studio_env) -> None:
    run_id = _chunk_run(api)
    with session_scope() as session:  # an older worker (or a hand) adds points, no chunks
        session.execute(
            insert(Metric),
            [
                {"run_id": run_id, "name": "loss", "step": STEPS + 1, "epoch": 9, "value": 0.5},
                {"run_id": run_id, "name": "new", "step": 7, "epoch": 0, "value": 1.5},
            ],
        )
    points = _points(run_id)
    series = _whole(api, run_id)
    assert list(series) == ["loss", "lr", "new", "val/top1"]
    assert all(_as_points(series[name]) == points[name] for name in points)
    assert _as_points(_whole(api, run_id, names="loss")["loss"])[-1] == (STEPS + 1, 9, 0.5)
    assert _whole(api, run_id, names="new")["new"]["values"] == [1.5]


def test_migration_0007_fills_chunks_and_keeps_points(api, studio_env) -> None:
    ids = []
    for length in (2_100, 5):
        run_id = api.post("/runs", json=run_config(ready_model(api), ready_dataset(api))).json()
        ids.append(run_id["id"])
        rows = [
            {"run_id": ids[-1], "name": name, "step": s, "epoch": s // 100, "value": _value(s)}
            for name in ("loss", "acc")
            for s in reversed(range(1, length + 1))  # written out of order
        ]
        with session_scope() as session:
            session.execute(insert(Metric), rows)
    before = {run_id: _points(run_id) for run_id in ids}
    assert all(_chunks(run_id) == {} for run_id in ids)

    downgrade("0006")
    assert "metric_chunks" not in inspect(get_engine()).get_table_names()
    assert {run_id: _points(run_id) for run_id in ids} == before
    upgrade("head")
    for run_id in ids:
        assert _points(run_id) == before[run_id] and _chunks(run_id) == before[run_id]
        series = _whole(api, run_id)
        assert {name: _as_points(s) for name, s in series.items()} == before[run_id]
    downgrade("0006")  # and back again: the points untouched
    assert {run_id: _points(run_id) for run_id in ids} == before
    upgrade("head")
