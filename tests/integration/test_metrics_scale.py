"""Metrics that scale: `max_points` downsamples a series in the database (M4: the first, last,
smallest and largest point of each bucket of steps), `since_step` reads only newer points, and
migration 0005 (the compact metrics table) keeps every point both ways; the rollups the worker
keeps (and migration 0006 fills) give the exact M4 of every point for their buckets."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

from sqlalchemy import insert, text

from backend.migrate import downgrade, upgrade
from core.db import get_engine, session_scope
from core.db.tables import Metric

from .api_helpers import ready_dataset, ready_model, run_config
from .test_cli_remote import cli, server  # noqa: F401 - the CLI against a real API server

STEPS = 20_000
SPIKE, DIP = (12_345, 100.0), (777, -5.0)


def _loss(step: int) -> float:
    if step == SPIKE[0]:
        return SPIKE[1]
    if step == DIP[0]:
        return DIP[1]
    return 2.0 * math.exp(-step / 5_000) + 0.1 * math.sin(step * 1.7)


def _seed_run(api) -> int:
    run_id = api.post("/runs", json=run_config(ready_model(api), ready_dataset(api))).json()["id"]
    rows = [
        {"run_id": run_id, "name": name, "step": s, "epoch": s // 1000, "value": value(s)}
        for name, value, steps in (
            ("loss", _loss, range(1, STEPS + 1)),
            ("lr", lambda s: 0.05, range(1, STEPS + 1)),  # constant: every point ties
            ("val/top1", lambda s: s / STEPS, range(1000, STEPS + 1, 1000)),  # sparse
            ("short", lambda s: -s, range(1, 51)),
        )
        for s in steps
    ]
    with session_scope() as session:
        session.execute(insert(Metric), rows)
    return run_id


def _expected_m4(max_points: int) -> set[int]:
    """The steps M4 keeps of `loss` (steps 1..STEPS), worked out here point by point."""
    width = (STEPS - 1) // (max_points // 4) + 1
    buckets: dict[int, list[int]] = {}
    for step in range(1, STEPS + 1):
        buckets.setdefault((step - 1) // width, []).append(step)
    kept: set[int] = set()
    for steps in buckets.values():
        values = [_loss(s) for s in steps]
        kept |= {steps[0], steps[-1]}
        kept |= {steps[values.index(min(values))], steps[values.index(max(values))]}
    return kept


def test_max_points_downsamples_keeping_extremes(api, studio_env) -> None:
    run_id = _seed_run(api)
    r = api.get(f"/runs/{run_id}/metrics", params={"max_points": 400})
    assert r.status_code == 200, r.text
    series = r.json()["series"]
    assert list(series) == ["loss", "lr", "short", "val/top1"]

    loss = series["loss"]
    assert loss["total"] == STEPS and loss["downsampled"] is True
    assert len(loss["steps"]) <= 400 and loss["steps"] == sorted(set(loss["steps"]))
    assert set(loss["steps"]) == _expected_m4(400)
    points = dict(zip(loss["steps"], loss["values"], strict=True))
    assert points[1] == _loss(1) and points[STEPS] == _loss(STEPS)  # both ends
    assert points[SPIKE[0]] == SPIKE[1] and points[DIP[0]] == DIP[1]  # the extremes survive
    assert all(points[s] == _loss(s) for s in points)  # real points, not averages
    assert loss["epochs"] == [s // 1000 for s in loss["steps"]]

    lr = series["lr"]  # ties collapse: first and last of each bucket, no more
    assert lr["total"] == STEPS and lr["downsampled"] is True
    assert 2 <= len(lr["steps"]) <= 200 and set(lr["values"]) == {0.05}
    assert lr["steps"][0] == 1 and lr["steps"][-1] == STEPS

    for name, total in (("val/top1", 20), ("short", 50)):  # fewer points than asked: all
        assert series[name]["total"] == total and series[name]["downsampled"] is False
        assert len(series[name]["steps"]) == total

    asked = {"names": "lr,short", "max_points": 400}  # only the series asked for
    some = api.get(f"/runs/{run_id}/metrics", params=asked).json()["series"]
    assert some == {"lr": lr, "short": series["short"]}

    everything = api.get(f"/runs/{run_id}/metrics", params={"names": "loss"}).json()["series"]
    assert everything["loss"]["steps"] == list(range(1, STEPS + 1))  # no max_points: every point
    assert everything["loss"]["total"] == STEPS and everything["loss"]["downsampled"] is False


def test_since_step_reads_only_newer_points(api, studio_env) -> None:
    run_id = _seed_run(api)
    r = api.get(
        f"/runs/{run_id}/metrics",
        params={"since_step": STEPS - 10, "max_points": 400, "names": "loss,val/top1,short"},
    )
    series = r.json()["series"]
    assert set(series) == {"loss", "val/top1"}  # `short` has nothing after the step
    assert series["loss"]["steps"] == list(range(STEPS - 9, STEPS + 1))
    assert series["loss"]["total"] == 10 and series["loss"]["downsampled"] is False
    assert series["val/top1"]["steps"] == [STEPS]

    later = api.get(
        f"/runs/{run_id}/metrics", params={"since_step": 5_000, "max_points": 100}
    ).json()["series"]
    assert later["loss"]["total"] == STEPS - 5_000 and later["loss"]["downsampled"] is True
    assert later["loss"]["steps"][0] == 5_001 and later["loss"]["steps"][-1] == STEPS
    assert len(later["loss"]["steps"]) <= 100 and SPIKE[0] in later["loss"]["steps"]
    assert DIP[0] not in later["loss"]["steps"]


def test_max_points_bounds(api, studio_env) -> None:
    run_id = _seed_run(api)
    for bad in (3, 10_001, 0):
        r = api.get(f"/runs/{run_id}/metrics", params={"max_points": bad})
        assert r.status_code == 422 and "max_points" in r.text, r.text
    assert api.get("/runs/4242/metrics", params={"max_points": 100}).status_code == 404


def test_migration_0005_keeps_every_point(api, studio_env) -> None:
    run_id = api.post("/runs", json=run_config(ready_model(api), ready_dataset(api))).json()["id"]
    with session_scope() as session:
        session.execute(
            insert(Metric),
            [
                {"run_id": run_id, "name": n, "step": s, "epoch": s // 3, "value": s / 7}
                for n in ("loss", "val/top1")
                for s in range(1, 11)
            ],
        )
    read = text("SELECT name, step, epoch, value FROM metrics ORDER BY name, step")
    with get_engine().connect() as conn:
        before = conn.execute(read).all()
    assert len(before) == 20

    downgrade("0004")
    with get_engine().begin() as conn:
        assert conn.execute(read).all() == before
        ids = conn.execute(text("SELECT id FROM metrics WHERE created_at IS NOT NULL")).all()
        assert len({row.id for row in ids}) == 20  # the old shape: an id and a time each
        conn.execute(  # a writer of the old shape adds one
            text(
                "INSERT INTO metrics (run_id, name, step, epoch, value, created_at) "
                "VALUES (:run, 'loss', 11, 3, 0.5, CURRENT_TIMESTAMP)"
            ),
            {"run": run_id},
        )
    upgrade("head")
    series = api.get(f"/runs/{run_id}/metrics").json()["series"]
    assert series["loss"]["steps"] == list(range(1, 12)) and series["loss"]["values"][-1] == 0.5
    assert series["val/top1"]["values"] == [s / 7 for s in range(1, 11)]


def test_default_log_every_bounds_the_points_of_a_run() -> None:
    from core.catalog.training import LOG_POINTS
    from core.config import TrainSettings

    auto = TrainSettings()
    assert auto.log_every == 0
    for total in (1, 69, LOG_POINTS, LOG_POINTS + 1, 200_000, 1_000_000):
        interval = auto.log_interval(total)
        reports = -(-total // interval)  # every interval-th step, and the last one
        assert reports <= LOG_POINTS and (interval == 1) == (total <= LOG_POINTS)
    assert TrainSettings(log_every=7).log_interval(200_000) == 7


def test_client_asks_for_max_points_and_since_step(sdk, api) -> None:
    run_id = _seed_run(api)
    metrics = sdk.metrics(run_id, ["loss", "short"], max_points=100)
    loss, short = metrics.series["loss"], metrics.series["short"]
    assert loss.total == STEPS and loss.downsampled and len(loss.steps) <= 100
    assert SPIKE[0] in loss.steps and DIP[0] in loss.steps
    assert short.total == 50 and not short.downsampled and short.steps == list(range(1, 51))
    newer = sdk.metrics(run_id, ["loss"], since_step=STEPS - 3, max_points=100).series["loss"]
    assert newer.steps == [STEPS - 2, STEPS - 1, STEPS] and newer.total == 3


def test_cli_runs_metrics(cli, sqlite_env) -> None:  # noqa: F811 - the imported fixture
    from backend.bootstrap import ensure_admin

    from .api_helpers import new_client, signed_in

    with session_scope() as session:
        token = ensure_admin(session).token
    with new_client() as http:
        run_id = _seed_run(signed_in(http, token))
    shown = cli("runs", "metrics", str(run_id), "--name", "loss", "--max-points", "40").stdout
    header, _, row = shown.splitlines()
    assert header.split()[:4] == ["series", "points", "total", "downsampled"]
    assert row.split()[:4] == ["loss", str(len(_expected_m4(40))), str(STEPS), "yes"]
    as_json = json.loads(
        cli("runs", "metrics", str(run_id), "--since-step", str(STEPS - 1), "--json").stdout
    )
    assert as_json["series"]["loss"]["steps"] == [STEPS] and as_json["series"]["lr"]["total"] == 1
    refused = cli("runs", "metrics", str(run_id), "--max-points", "2", code=2)
    assert "max-points" in refused.stderr


# -- rollups: the worker keeps each series' M4 per bucket of 16, 64, ... 16384 steps ----------------

FLUSHES = (1, 2, 63, 64, 65, 1_000, 1_023, 1_025, 4_097, 9_999, 12_345, 16_383, 16_385, 19_990)
WORKER = "rollup-test-worker"
ROLLUP_COLUMNS = ["name", "width", "bucket", "n"] + [
    f"{end}_{part}"
    for end in ("first", "last", "min", "max")
    for part in ("step", "epoch", "value")
]


def _reporting_run(api) -> int:
    from sqlalchemy import update

    from core.db.tables import Run

    run_id = api.post("/runs", json=run_config(ready_model(api), ready_dataset(api))).json()["id"]
    with session_scope() as session:  # claimed by a worker: its flushes may write
        session.execute(update(Run).where(Run.id == run_id).values(status="running", worker=WORKER))
    return run_id


def _report(reporter, steps: range, value, flushes=FLUSHES) -> None:
    """Steps through the worker's reporter, flushed at uneven steps (and at the end)."""
    from types import SimpleNamespace

    for step in steps:
        metrics = {"loss": value(step), "lr": 0.05}
        if step % 1000 == 0:
            metrics["val/top1"] = step / STEPS  # sparse
        reporter.on_step(
            SimpleNamespace(
                step=step,
                epoch=step // 1000,
                total_steps=STEPS,
                metrics=metrics,
                throughput=1.0,
                eta_seconds=1.0,
            )
        )
        if step in flushes:
            reporter.flush()
    reporter.flush()


def _stored(run_id: int) -> tuple[dict[str, dict[int, float]], list[tuple]]:
    """(the run's points by series, its rollup rows) as stored."""
    points: dict[str, dict[int, float]] = {}
    with get_engine().connect() as conn:
        for name, step, value in conn.execute(
            text("SELECT name, step, value FROM metrics WHERE run_id = :r"), {"r": run_id}
        ):
            points.setdefault(name, {})[step] = value
        stored = conn.execute(
            text(
                f"SELECT {', '.join(ROLLUP_COLUMNS)} FROM metric_rollups WHERE run_id = :r "
                "ORDER BY name, width, bucket"
            ),
            {"r": run_id},
        ).all()
    return points, [tuple(row) for row in stored]


def _rollups_of(run_id: int, points: dict[str, dict[int, float]]) -> list[tuple]:
    """The rollup rows of every point, summed up here in one go."""
    from worker.reporting import rollups

    every = [
        {"name": name, "step": step, "epoch": step // 1000, "value": value}
        for name, series in points.items()
        for step, value in series.items()
    ]
    return sorted(tuple(r[k] for k in ROLLUP_COLUMNS) for r in rollups(run_id, every))


def _bucket(step: int, start: int, span: int, count: int, align: int = 1) -> int:
    """Which of `count` even buckets of the `span` steps from `start` holds `step` (their
    bounds moved to the multiple of `align` at or below)."""
    return (step // align * align - start) * count // span


def _m4_of(points: dict[int, float], bucket: Callable[[int], int]) -> set[int]:
    """The steps M4 keeps of `points` for the buckets `bucket` puts them in, point by point."""
    buckets: dict[int, list[int]] = {}
    for step in sorted(points):
        buckets.setdefault(bucket(step), []).append(step)
    kept: set[int] = set()
    for steps in buckets.values():
        values = [points[s] for s in steps]
        kept |= {steps[0], steps[-1]}
        kept |= {steps[values.index(min(values))], steps[values.index(max(values))]}
    return kept


def _check_rollup_read(api, run_id: int, points: dict[int, float], max_points: int) -> dict:
    """The downsampled `loss` is M4 of all its points for the rollup read's buckets."""
    from backend.runs.service import rollup_buckets

    lo, hi = min(points), max(points)
    plan = rollup_buckets(lo, hi, max_points)
    assert plan is not None
    width, start, span = plan
    count = max_points // 4
    assert start % width == 0 and start <= lo and span == hi + 1 - start

    def rolled(step: int) -> int:
        return _bucket(step, start, span, count, width)

    assert {rolled(s) for s in points} == set(range(count))  # every bucket: none lost
    expected = _m4_of(points, rolled)
    even = (hi - lo) // count + 1  # the bucket width of a read of the points
    today = _m4_of(points, lambda step: (step - lo) // even)
    assert expected != today  # so the test tells a rollup read from a read of the points
    loss = api.get(
        f"/runs/{run_id}/metrics", params={"names": "loss", "max_points": max_points}
    ).json()["series"]["loss"]
    assert loss["downsampled"] is True and loss["total"] == len(points)
    assert set(loss["steps"]) == expected and len(loss["steps"]) <= max_points
    assert loss["steps"] == sorted(loss["steps"])
    assert loss["values"] == [points[s] for s in loss["steps"]]
    assert loss["epochs"] == [s // 1000 for s in loss["steps"]]
    return loss


def test_rollups_written_in_uneven_flushes_give_exact_m4(api, studio_env) -> None:
    from worker.reporting import DbReporter

    run_id = _reporting_run(api)
    reporter = DbReporter(run_id, "unused", WORKER)
    reporter.flush_every = float("inf")  # only the flushes asked for write
    reporter.on_start(STEPS, 0)
    _report(reporter, range(1, STEPS + 1), _loss)

    points, stored = _stored(run_id)
    assert len(points["loss"]) == STEPS and len(points["val/top1"]) == 20
    assert stored == _rollups_of(run_id, points)  # merged flush by flush = summed in one go
    for max_points in (400, 1000, 40):
        loss = _check_rollup_read(api, run_id, points["loss"], max_points)
        kept = dict(zip(loss["steps"], loss["values"], strict=True))
        assert kept[SPIKE[0]] == SPIKE[1] and kept[DIP[0]] == DIP[1]  # the extremes survive
        assert 1 in kept and STEPS in kept

    series = api.get(f"/runs/{run_id}/metrics", params={"max_points": 400}).json()["series"]
    assert set(series["lr"]["values"]) == {0.05} and series["lr"]["steps"][0] == 1
    assert series["lr"]["steps"][-1] == STEPS and len(series["lr"]["steps"]) <= 200  # ties
    assert series["val/top1"]["steps"] == list(range(1000, STEPS + 1, 1000))  # sparse: all
    assert series["val/top1"]["downsampled"] is False


def test_rollups_after_a_resume_that_drops_later_points(api, studio_env) -> None:
    from worker.reporting import DbReporter

    run_id = _reporting_run(api)
    first = DbReporter(run_id, "unused", WORKER)
    first.flush_every = float("inf")
    _report(first, range(1, STEPS + 1), _loss)

    resumed_at, new_spike = 12_000, (15_000, 50.0)

    def again(step: int) -> float:  # the steps after the checkpoint, trained again
        return new_spike[1] if step == new_spike[0] else 1.0 - step / 100_000

    second = DbReporter(run_id, "unused", WORKER)
    second.flush_every = float("inf")
    second.on_start(STEPS, resumed_at)  # drops the points after the checkpoint
    points, stored = _stored(run_id)
    assert max(points["loss"]) == resumed_at and stored == _rollups_of(run_id, points)

    _report(second, range(resumed_at + 1, 16_001), again, flushes=(12_001, 12_100, 14_000))
    points, stored = _stored(run_id)
    assert len(points["loss"]) == 16_000 and points["loss"][SPIKE[0]] == again(SPIKE[0])
    assert stored == _rollups_of(run_id, points)
    loss = _check_rollup_read(api, run_id, points["loss"], 400)
    assert new_spike[0] in loss["steps"] and DIP[0] in loss["steps"]
    assert SPIKE[1] not in loss["values"]  # the dropped spike is gone from the rollups too


def test_points_without_rollups_are_read_as_points(api, studio_env) -> None:
    """A series written without rollups (an older worker), or appended to without them, is
    downsampled from its points: the buckets of the read without rollups."""
    from worker.reporting import rebuild_rollups

    run_id = _seed_run(api)  # points only
    loss = api.get(f"/runs/{run_id}/metrics", params={"names": "loss", "max_points": 400})
    assert set(loss.json()["series"]["loss"]["steps"]) == _expected_m4(400)

    with session_scope() as session:
        rebuild_rollups(session, run_id, -1)
    points, stored = _stored(run_id)
    assert stored == _rollups_of(run_id, points)
    _check_rollup_read(api, run_id, points["loss"], 400)

    with session_scope() as session:  # an older worker adds a point the rollups miss
        session.execute(
            insert(Metric),
            [{"run_id": run_id, "name": "loss", "step": STEPS + 1, "epoch": 20, "value": 0.0}],
        )
    points["loss"][STEPS + 1] = 0.0
    loss = api.get(f"/runs/{run_id}/metrics", params={"names": "loss", "max_points": 400})
    body = loss.json()["series"]["loss"]
    assert body["total"] == STEPS + 1 and STEPS + 1 in body["steps"]
    assert set(body["steps"]) == _m4_of(
        points["loss"], lambda step: (step - 1) // (STEPS // 100 + 1)
    )


def test_a_series_too_short_for_the_rollups_is_m4_of_its_chunks(api, studio_env) -> None:
    """A series of 1,000-4,000 steps read at `max_points=1000`, as a live run's is: its buckets
    are narrower than the narrowest rollup, so it is downsampled from its chunks of JSON, to what
    the database's M4 of its points gives; a value that is not finite leaves it to the latter."""
    from backend.runs import service
    from core.db.tables import Run
    from worker.reporting import DbReporter

    steps = 3_001
    run_id = _reporting_run(api)
    reporter = DbReporter(run_id, "unused", WORKER)
    reporter.flush_every = float("inf")  # only the flushes asked for write
    reporter.on_start(steps, 0)
    _report(reporter, range(1, steps + 1), _loss, flushes=(1, 700, 1_500, 2_999))
    points, _ = _stored(run_id)
    assert service.rollup_buckets(1, steps, 1000) is None  # too short for the rollups
    even = (steps - 1) // 250 + 1

    def read(name: str) -> dict:
        body = api.get(f"/runs/{run_id}/metrics", params={"names": name, "max_points": 1000})
        return body.json()["series"][name]

    for name in ("loss", "lr"):  # lr: every value ties, the first step of equals is kept
        got = read(name)
        assert got["downsampled"] is True and got["total"] == steps
        assert set(got["steps"]) == _m4_of(points[name], lambda step: (step - 1) // even)
        assert got["steps"] == sorted(got["steps"]) and len(got["steps"]) <= 1000
        assert got["values"] == [points[name][step] for step in got["steps"]]
        assert got["epochs"] == [step // 1000 for step in got["steps"]]
        with session_scope() as session:
            run = session.get(Run, run_id)
            from_chunks = service._m4_chunks(session, run, name, 1000)
            in_database = service._m4(session, run, name, 1, steps, 1000)
        assert from_chunks is not None and from_chunks == in_database
        assert {k: got[k] for k in from_chunks} == from_chunks

    with session_scope() as session:  # an infinity: the chunks say null, the database orders it
        session.execute(
            text(
                "UPDATE metrics SET value = :inf WHERE run_id = :r AND name = 'loss' AND step = 5"
            ),
            {"inf": math.inf, "r": run_id},
        )
        session.execute(
            text(
                "UPDATE metric_chunks SET values_json = replace(values_json, :was, 'null') "
                "WHERE run_id = :r AND name = 'loss' AND chunk = 0"
            ),
            {"was": json.dumps(points["loss"][5]), "r": run_id},
        )
    with session_scope() as session:
        run = session.get(Run, run_id)
        assert service._m4_chunks(session, run, "loss", 1000) is None
    got = read("loss")
    assert 5 in got["steps"] and got["values"][got["steps"].index(5)] is None


def test_migration_0006_backfills_rollups_and_keeps_points(api, studio_env) -> None:
    from sqlalchemy import inspect

    run_id = _seed_run(api)
    read = text("SELECT run_id, name, step, epoch, value FROM metrics ORDER BY run_id, name, step")
    with get_engine().connect() as conn:
        before = conn.execute(read).all()

    downgrade("0005")
    assert "metric_rollups" not in inspect(get_engine()).get_table_names()
    with get_engine().connect() as conn:
        assert conn.execute(read).all() == before
    upgrade("head")
    with get_engine().connect() as conn:
        assert conn.execute(read).all() == before
    points, stored = _stored(run_id)
    assert stored and stored == _rollups_of(run_id, points)  # filled in SQL = summed here
    _check_rollup_read(api, run_id, points["loss"], 400)


def test_points_read_back_as_the_very_floats_written(api, studio_env) -> None:
    """The database writes the JSON of the points (`_points`): every value reads back as the
    same double and stays a float (a whole number too), non-finite ones are null, steps are in
    order whatever the order of writing, with one series, several, all, and `since_step`."""
    run_id = api.post("/runs", json=run_config(ready_model(api), ready_dataset(api))).json()["id"]
    tricky = [0.1, 1 / 3, 2.0, -0.0, 0.0, -7.0, 1e20, 1e-5, 5e-324, 1.7976931348623157e308]
    tricky += [1e15, 123456789012345.0, 1e16, 1.0000000000000002, 123456789.12345679, -2.5e-300]
    tricky += [math.inf, -math.inf] + [math.sin(s) * 10.0 ** (s % 40 - 20) for s in range(200)]
    postgres = get_engine().dialect.name == "postgresql"
    if postgres:
        tricky.append(math.nan)  # SQLite stores no NaN
    steps = list(range(3, 3 * len(tricky) + 3, 3))
    rows = [
        {"run_id": run_id, "name": name, "step": s, "epoch": s // 7, "value": v * sign}
        for name, sign in (("b", -1.0), ("a", 1.0))
        for s, v in reversed(list(zip(steps, tricky, strict=True)))  # written out of order
    ]
    with session_scope() as session:
        session.execute(insert(Metric), rows)

    def expected(sign: float, since: int) -> dict:
        kept = [(s, v * sign) for s, v in zip(steps, tricky, strict=True) if s > since]
        return {
            "steps": [s for s, _ in kept],
            "values": [v if math.isfinite(v) else None for _, v in kept],
            "epochs": [s // 7 for s, _ in kept],
            "total": len(kept),
            "downsampled": False,
        }

    for params, since in (
        ({"names": "a"}, -1),
        ({"names": "a,b"}, -1),
        ({}, -1),
        ({"names": "b", "since_step": 300}, 300),
        ({"since_step": 300}, 300),
    ):
        r = api.get(f"/runs/{run_id}/metrics", params=params)
        assert r.status_code == 200, r.text
        series = r.json()["series"]
        names = ["a", "b"] if "," in params.get("names", ",") else [params["names"]]
        assert list(series) == names
        for name in names:
            got, want = series[name], expected(1.0 if name == "a" else -1.0, since)
            assert got == want
            assert all(type(v) is float for v in got["values"] if v is not None)
            if postgres:  # SQLite keeps -0.0 as 0 (a whole number is stored as an integer)
                signs = [math.copysign(1, v) for v in got["values"] if v == 0]
                assert signs == [math.copysign(1, v) for v in want["values"] if v == 0]
    assert api.get(f"/runs/{run_id}/metrics", params={"names": "c"}).json() == {"series": {}}
