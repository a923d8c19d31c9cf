"""Metrics that scale: `max_points` downsamples a series in the database (M4: the first, last,
smallest and largest point of each bucket of steps), `since_step` reads only newer points, and
migration 0005 (the compact metrics table) keeps every point both ways."""

from __future__ import annotations

import json
import math

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
