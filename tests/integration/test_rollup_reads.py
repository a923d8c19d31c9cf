"""Downsampled reads of long series from the rollups of 16, 32, 64, ... steps (migrations 0008
and 0009): a chart of a 10,000-point series (`max_points=1000`: buckets of 40 steps) merges
rollup rows of 32 steps (one or two a bucket) instead of taking M4 over the points; the read
keeps each bucket's first, last, lowest and highest point, and equals M4 taken here over the
raw points for the same buckets."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from sqlalchemy import text

from backend.migrate import downgrade, upgrade
from backend.runs.service import rollup_buckets
from core.db import get_engine
from core.db.tables import ROLLUP_WIDTHS

from .api_helpers import sql_sent
from .test_metrics_scale import (
    WORKER,
    _bucket,
    _m4_of,
    _reporting_run,
    _rollups_of,
    _stored,
)

LONG = 10_000
WIDTHS_0006 = (64, 256, 1024, 4096, 16384)


def _wavy(step: int) -> float:
    """A noisy decay with a lone spike and dip, and runs of equal values (ties)."""
    if step == 4_321:
        return 50.0
    if step == 8_765:
        return -50.0
    if 6_000 <= step < 6_100:
        return 0.5
    return math.exp(-step / 3_000) + 0.2 * math.sin(step * 2.3)


def _write_long_series(api, value: Callable[[int], float] = _wavy) -> int:
    """A run whose `loss` has `LONG` points (`value` of each step), written by the worker's
    reporter (rollups too)."""
    from types import SimpleNamespace

    from worker.reporting import DbReporter

    run_id = _reporting_run(api)
    reporter = DbReporter(run_id, "unused", WORKER)
    reporter.flush_every = float("inf")
    reporter.on_start(LONG, 0)
    for step in range(1, LONG + 1):
        reporter.on_step(
            SimpleNamespace(
                step=step,
                epoch=step // 1000,
                total_steps=LONG,
                metrics={"loss": value(step)},
                throughput=1.0,
                eta_seconds=1.0,
            )
        )
        if step % 777 == 0:  # uneven flushes: buckets of 16 filled across them
            reporter.flush()
    reporter.flush()
    return run_id


def _statements_of(api, path: str, params: dict) -> tuple[dict, list[str]]:
    """The answer to GET `path` and the SQL statements the API ran for it."""
    with sql_sent() as sent:
        response = api.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json(), [statement for statement, _, _ in sent]


def test_a_long_series_chart_comes_from_32_step_rollups_and_equals_m4_of_the_points(
    api, studio_env
) -> None:
    run_id = _write_long_series(api)
    points, stored = _stored(run_id)
    assert stored == _rollups_of(run_id, points)  # the worker's rollups, of every width
    assert {row[1] for row in stored} == set(ROLLUP_WIDTHS) >= {16, 32, 64, 128}
    loss_points = points["loss"]
    plan = rollup_buckets(1, LONG, 1000)
    assert plan is not None and plan[0] == 32  # buckets of 40 steps: the 32-step rollups

    body, statements = _statements_of(
        api, f"/runs/{run_id}/metrics", {"names": "loss", "max_points": 1000}
    )
    assert any("metric_rollups" in s for s in statements)
    # the series' span is looked up in the points' key; no point's value is read
    assert not any("m.value" in s or "metrics.value" in s for s in statements), statements
    loss = body["series"]["loss"]
    assert loss["downsampled"] is True and loss["total"] == LONG
    assert len(loss["steps"]) <= 1000

    # the same buckets over the raw points (read whole, every point)
    raw = api.get(f"/runs/{run_id}/metrics", params={"names": "loss"}).json()["series"]["loss"]
    raw_points = dict(zip(raw["steps"], raw["values"], strict=True))
    assert raw_points == loss_points
    width, start, span = plan

    def bucket(step: int) -> int:
        return _bucket(step, start, span, 250, width)

    assert set(loss["steps"]) == _m4_of(raw_points, bucket)
    kept = dict(zip(loss["steps"], loss["values"], strict=True))
    assert kept == {s: raw_points[s] for s in loss["steps"]}
    assert loss["epochs"] == [s // 1000 for s in loss["steps"]]
    by_bucket: dict[int, list[float]] = {}
    for step, value in raw_points.items():
        by_bucket.setdefault(bucket(step), []).append(value)
    for b, values in by_bucket.items():  # each bucket's extremes are in the chart
        drawn = [v for s, v in kept.items() if bucket(s) == b]
        assert min(drawn) == min(values) and max(drawn) == max(values)
    assert kept[4_321] == 50.0 and kept[8_765] == -50.0


def test_migration_0008_fills_the_16_step_rollups_and_drops_them(api, studio_env) -> None:
    run_id = _write_long_series(api)
    points, stored = _stored(run_id)
    read = text("SELECT count(*) FROM metric_rollups WHERE width = 16")
    downgrade("0007")
    with get_engine().connect() as conn:
        assert conn.execute(read).scalar() == 0
    after_down = _stored(run_id)
    assert after_down[0] == points
    assert after_down[1] == [row for row in stored if row[1] in WIDTHS_0006]  # 0009's gone
    upgrade("head")
    assert _stored(run_id) == (points, stored)  # filled in SQL = what the worker wrote


def test_migration_0009_fills_the_widths_between_and_drops_them(api, studio_env) -> None:
    """0009 widens each of 32, 128, ... 8192 from the rollups of half its width, in SQL: the
    same rows as the worker's, and a chart read from them."""
    run_id = _write_long_series(api)
    points, stored = _stored(run_id)
    params = {"names": "loss", "max_points": 1000}
    chart = api.get(f"/runs/{run_id}/metrics", params=params).json()
    downgrade("0008")
    after_down = _stored(run_id)
    assert after_down[0] == points
    assert after_down[1] == [row for row in stored if row[1] in (16, *WIDTHS_0006)]
    without = api.get(f"/runs/{run_id}/metrics", params=params).json()["series"]["loss"]
    assert without["downsampled"] and len(without["steps"]) <= 1000  # no 32s: from the points
    upgrade("head")
    assert _stored(run_id) == (points, stored)
    body, statements = _statements_of(api, f"/runs/{run_id}/metrics", params)
    assert any("metric_rollups" in s for s in statements)
    assert not any("m.value" in s or "metrics.value" in s for s in statements), statements
    assert body == chart


@pytest.mark.postgres
@pytest.mark.parametrize("studio_env", ["postgres"], indirect=True)
def test_floats_read_exact_on_a_postgres_server_set_to_round_them(api, studio_env) -> None:
    """PostgreSQL writes the floats of the points as text (its JSON of a series, its chart of
    rollups, and each float the driver reads). A server set to fewer digits
    (`extra_float_digits` below 1: the default before version 12) would round them; the
    studio's connections set their own, so every value reads back as written."""
    run_id = _write_long_series(api)
    engine = get_engine()
    with engine.connect() as conn:
        database = conn.exec_driver_sql("SELECT current_database()").scalar()
        conn.exec_driver_sql(f'ALTER DATABASE "{database}" SET extra_float_digits = 0')
        conn.commit()
    engine.dispose()  # new connections start with the server's 0
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW extra_float_digits").scalar() == "3"
        conn.exec_driver_sql("SET extra_float_digits = 0")
        rounded = conn.exec_driver_sql("SELECT 0.1::float8 / 3").scalar()
        conn.rollback()
    assert rounded != 0.1 / 3  # what a connection with the server's setting reads

    chart = api.get(f"/runs/{run_id}/metrics", params={"names": "loss", "max_points": 1000})
    whole = api.get(f"/runs/{run_id}/metrics", params={"names": "loss"})
    since = api.get(f"/runs/{run_id}/metrics", params={"names": "loss", "since_step": 9_000})
    for response in (chart, whole, since):
        loss = response.json()["series"]["loss"]
        assert loss["values"] == [_wavy(step) for step in loss["steps"]]
    assert len(chart.json()["series"]["loss"]["steps"]) <= 1000


@pytest.mark.postgres
@pytest.mark.parametrize("studio_env", ["postgres"], indirect=True)
def test_a_chart_orders_nan_and_infinities_as_postgres_does(api, studio_env) -> None:
    """PostgreSQL keeps NaN (SQLite stores none) and orders it above every number, infinity
    too: a bucket's highest point is its first NaN, its lowest the first of its lowest
    numbers; the chart is M4 in that order, NaN and infinities sent as null."""
    odd = {2_000: math.nan, 2_001: math.nan, 2_002: math.inf, 5_555: -math.inf, 7_777: math.inf}
    odd |= {7_778: math.nan, 9_000: math.nan}

    def value(step: int) -> float:
        return odd.get(step, _wavy(step))

    run_id = _write_long_series(api, value)
    plan = rollup_buckets(1, LONG, 1000)
    assert plan is not None
    width, start, span = plan

    def bucket(step: int) -> int:
        return _bucket(step, start, span, 250, width)

    def order(step: int) -> tuple[bool, float, int]:  # PostgreSQL's, the first step of equals
        v = value(step)
        return (math.isnan(v), 0.0 if math.isnan(v) else v, step)

    buckets: dict[int, list[int]] = {}
    for step in range(1, LONG + 1):
        buckets.setdefault(bucket(step), []).append(step)
    expected: set[int] = set()
    for steps in buckets.values():
        highest = max(steps, key=lambda s: (*order(s)[:2], -s))
        expected |= {steps[0], steps[-1], min(steps, key=order), highest}
    assert {2_000, 7_778, 9_000, 5_555} <= expected and 2_001 not in expected

    loss = api.get(f"/runs/{run_id}/metrics", params={"names": "loss", "max_points": 1000}).json()[
        "series"
    ]["loss"]
    assert loss["steps"] == sorted(expected)
    finite = [value(s) if math.isfinite(value(s)) else None for s in loss["steps"]]
    assert loss["values"] == finite


@pytest.mark.postgres
@pytest.mark.parametrize("studio_env", ["postgres"], indirect=True)
def test_a_postgres_chart_reads_its_rollups_as_json_and_keeps_every_float_as_written(
    api, studio_env
) -> None:
    """On PostgreSQL the rollup rows come as one JSON array of their numbers (cheaper to read
    than rows); whole numbers stay floats and -0.0 keeps its sign (JSON's "-0" is the integer
    0), and the chart equals the one read as rows."""

    def value(step: int) -> float:
        return {1: -0.0, LONG: 3.0}.get(step, _wavy(step))  # both kept: first and last

    run_id = _write_long_series(api, value)
    params = {"names": "loss", "max_points": 1000}
    body, statements = _statements_of(api, f"/runs/{run_id}/metrics", params)
    assert any("string_agg" in s and "metric_rollups" in s for s in statements), statements
    loss = body["series"]["loss"]
    assert loss["values"] == [value(s) for s in loss["steps"]]
    assert loss["steps"][0] == 1 and math.copysign(1.0, loss["values"][0]) == -1.0
    text_of = api.get(f"/runs/{run_id}/metrics", params=params).text
    values = text_of.split('"values":[')[1].split("]")[0].split(",")
    assert values[0] == "-0.0" and values[-1] == "3.0" and "50.0" in values and "-50.0" in values

    with get_engine().connect() as conn:  # the rows themselves: the same chart
        from backend.runs.service import _ROLLUP_ROWS, _merged

        plan = rollup_buckets(1, LONG, 1000)
        assert plan is not None
        width, start, span = plan
        rows = [
            tuple(row)
            for row in conn.execute(_ROLLUP_ROWS, {"run": run_id, "name": "loss", "width": width})
        ]
    assert {k: v for k, v in loss.items() if k != "total"} == _merged(rows, width, start, span, 250)
