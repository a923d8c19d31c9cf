"""Conditional GET on the reads pollers repeat (`backend/conditional.py`): `GET /runs`,
`GET /runs/{id}` and `GET /runs/{id}/metrics` answer with an `ETag`, and with 304 and no body to
an `If-None-Match` that names it; a change (a metric point the worker writes, a new run, the
run's progress) gives 200 with a new tag. The Python client sends the tag of the body it holds
and hands that body back on a 304. On SQLite and PostgreSQL."""

from __future__ import annotations

from types import SimpleNamespace

from .api_helpers import ready_dataset, ready_model, run_config, sql_sent
from .test_metrics_scale import WORKER, _reporting_run


def _reporter(run_id: int):
    from worker.reporting import DbReporter

    reporter = DbReporter(run_id, "unused", WORKER)
    reporter.flush_every = float("inf")  # only the flushes asked for write
    reporter.on_start(100, 0)
    return reporter


def _step(reporter, step: int) -> None:
    """One training step's points, flushed as the worker does."""
    reporter.on_step(
        SimpleNamespace(
            step=step,
            epoch=0,
            total_steps=100,
            metrics={"loss": 1.0 / step, "lr": 0.05},
            throughput=1.0,
            eta_seconds=1.0,
        )
    )
    reporter.flush()


def _unchanged(api, path: str, etag: str, params: dict | None = None) -> None:
    again = api.get(path, params=params, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["ETag"] == etag


def test_metrics_304_while_unchanged_200_with_a_new_tag_after_a_point(api, studio_env) -> None:
    run_id = _reporting_run(api)
    reporter = _reporter(run_id)
    for step in (1, 2, 3):
        _step(reporter, step)
    path = f"/runs/{run_id}/metrics"
    for params in ({}, {"names": "loss"}, {"max_points": 100}, {"since_step": 1}):
        first = api.get(path, params=params)
        assert first.status_code == 200 and first.headers["Cache-Control"] == "private, no-cache"
        etag = first.headers["ETag"]
        assert etag.startswith('"') and etag.endswith('"')
        _unchanged(api, path, etag, params)
        # a list of tags, a weak one, or `*` match; another tag does not
        for sent in (f'"x", {etag}', f"W/{etag}", "*"):
            assert api.get(path, params=params, headers={"If-None-Match": sent}).status_code == 304
        other = api.get(path, params=params, headers={"If-None-Match": '"other"'})
        assert other.status_code == 200 and other.content == first.content

    held = api.get(path, params={"names": "loss"})
    _step(reporter, 4)  # the worker writes a point: the read changes
    changed = api.get(
        path, params={"names": "loss"}, headers={"If-None-Match": held.headers["ETag"]}
    )
    assert changed.status_code == 200 and changed.headers["ETag"] != held.headers["ETag"]
    assert changed.json()["series"]["loss"]["steps"] == [1, 2, 3, 4]
    _unchanged(api, path, changed.headers["ETag"], {"names": "loss"})


def test_run_and_runs_304_while_unchanged_200_after_a_change(api, studio_env) -> None:
    run_id = _reporting_run(api)
    run = api.get(f"/runs/{run_id}")
    assert run.status_code == 200
    _unchanged(api, f"/runs/{run_id}", run.headers["ETag"])
    _step(_reporter(run_id), 1)  # progress, step and heartbeat move
    moved = api.get(f"/runs/{run_id}", headers={"If-None-Match": run.headers["ETag"]})
    assert moved.status_code == 200 and moved.json()["step"] == 1
    assert moved.headers["ETag"] != run.headers["ETag"]

    page = api.get("/runs", params={"limit": 5})
    _unchanged(api, "/runs", page.headers["ETag"], {"limit": 5})
    api.post("/runs", json=run_config(ready_model(api), ready_dataset(api)))
    newer = api.get("/runs", params={"limit": 5}, headers={"If-None-Match": page.headers["ETag"]})
    assert newer.status_code == 200 and newer.headers["ETag"] != page.headers["ETag"]

    missing = api.get("/runs/999999", headers={"If-None-Match": "*"})
    assert missing.status_code == 404  # the run is looked up (and authorised) before the tag


def test_client_sends_the_tag_and_keeps_the_body_on_304(sdk, api) -> None:
    run_id = _reporting_run(api)
    reporter = _reporter(run_id)
    _step(reporter, 1)
    statuses: list[int] = []
    sdk._http.event_hooks["response"].append(lambda r: statuses.append(r.status_code))

    first, second = sdk.metrics(run_id, names=["loss"]), sdk.metrics(run_id, names=["loss"])
    assert statuses == [200, 304] and second == first
    assert second.series["loss"].steps == [1]
    assert sdk.run(run_id) == sdk.run(run_id) and statuses[2:] == [200, 304]
    _step(reporter, 2)
    assert sdk.metrics(run_id, names=["loss"]).series["loss"].steps == [1, 2]
    assert sdk.run(run_id).step == 2 and statuses[4:] == [200, 200]
    listed = sdk.runs(limit=3)
    assert sdk.runs(limit=3) == listed and statuses[6:] == [200, 304]


def test_reads_send_no_begin_or_rollback_on_postgres(api, studio_env) -> None:
    """A run, its metrics and the list of runs are read in autocommit on PostgreSQL
    (`backend.deps.read_as`: no BEGIN, no ROLLBACK round trips) and the list sets nothing
    before its SELECT; a cancel too, its UPDATE and audit entry being one statement (then the
    run as it is now)."""
    from core.db import get_engine

    if get_engine().dialect.name != "postgresql":
        return  # SQLite begins no transaction for a read
    run_id = _reporting_run(api)
    _step(_reporter(run_id), 1)

    def sent(call) -> list[tuple[str, bool]]:
        with sql_sent() as seen:
            call()
        return [(statement.split()[0], autocommit) for statement, _, autocommit in seen]

    for path in (f"/runs/{run_id}", f"/runs/{run_id}/metrics", "/runs"):
        reads = sent(lambda path=path: api.get(path).raise_for_status())
        assert reads and all(autocommit for _, autocommit in reads), (path, reads)
        assert {verb for verb, _ in reads} == {"SELECT"}, (path, reads)
    written = sent(lambda: api.post(f"/runs/{run_id}/cancel").raise_for_status())
    # the principal; a running run's cancel: the cancel of a waiting run changes nothing, then
    # the run, its flag and audit entry, the run as it is now
    assert [verb for verb, _ in written] == ["SELECT", "WITH", "SELECT", "WITH", "SELECT"], written
    assert all(autocommit for _, autocommit in written), written
