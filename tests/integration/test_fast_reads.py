"""`backend.fast_reads`: the polled reads of runs and metrics answered before FastAPI's routing.
Every request below is sent to the app with it and to the app without it: the same status, body
and headers; and the plain ones never reach FastAPI, the others always do."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from .api_helpers import BASE, auth, other_team_token, ready_dataset, ready_model, run_config

pytestmark = pytest.mark.postgres  # and SQLite: the statements differ


class Reached:
    """The app behind `FastReads`, noting each request that reached it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.paths = app, []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


@pytest.fixture
def clients(studio_env) -> Iterator[tuple[TestClient, TestClient, Reached]]:
    from backend.app import create_app
    from backend.fast_reads import FastReads

    behind = Reached(create_app(fast_reads=False))
    with (
        TestClient(FastReads(behind), base_url=BASE) as fast,
        TestClient(create_app(fast_reads=False), base_url=BASE) as plain,
    ):
        yield fast, plain, behind


def _run_with_points(api: TestClient) -> int:
    from worker.reporting import DbReporter

    from .test_metrics_scale import WORKER, _report, _reporting_run

    run_id = _reporting_run(api)
    reporter = DbReporter(run_id, "unused", WORKER)
    reporter.flush_every = float("inf")
    reporter.on_start(5_000, 0)
    _report(reporter, range(1, 5_001), lambda step: 1.0 / step)
    return run_id


def _same(fast: TestClient, plain: TestClient, path: str, **kwargs: Any) -> Any:
    a, b = fast.get(path, **kwargs), plain.get(path, **kwargs)
    assert (a.status_code, a.content) == (b.status_code, b.content), path
    for header in ("content-type", "etag", "cache-control", "www-authenticate", "retry-after"):
        assert a.headers.get(header) == b.headers.get(header), (path, header)
    return a


def test_the_fast_reads_answer_as_fastapi_does(api, admin_token, clients) -> None:
    fast, plain, behind = clients
    run_id = _run_with_points(api)
    queued = api.post("/runs", json=run_config(ready_model(api), ready_dataset(api))).json()["id"]
    owner = auth(admin_token)
    other = auth(other_team_token(api))

    answered = {  # served without FastAPI: (path, params, headers)
        "page": ("/runs", {}, owner),
        "page, every parameter": (
            "/runs",
            {"limit": "1", "status": "queued", "q": "RUN", "teacher_model_id": "1"},
            owner,
        ),
        "next page": ("/runs", {"limit": "1", "cursor": None}, owner),  # cursor filled below
        "a run": (f"/runs/{run_id}", {}, owner),
        "a queued run": (f"/runs/{queued}", {}, owner),
        "every point": (f"/runs/{run_id}/metrics", {}, owner),
        "a chart": (f"/runs/{run_id}/metrics", {"names": "loss,lr", "max_points": "400"}, owner),
        "newer points": (f"/runs/{run_id}/metrics", {"since_step": "4990"}, owner),
        "a team named": ("/runs", {}, {**owner, "X-Team-Id": str(_team_of(api))}),
        "repeated: the last": ("/runs", [("limit", "500"), ("limit", "2")], owner),
    }
    first = fast.get("/runs", params={"limit": "1"}, headers=owner).json()
    answered["next page"] = ("/runs", {"limit": "1", "cursor": first["next_cursor"]}, owner)
    to_fastapi = {  # FastAPI answers: its 401, 403, 404 and 422, or a parameter it reads
        "no token": ("/runs", {}, {}),
        "another scheme": ("/runs", {}, {"Authorization": "Basic eDp5"}),
        "unknown token": (f"/runs/{run_id}", {}, auth("not-a-token")),
        "another team's run": (f"/runs/{run_id}", {}, other),
        "its points": (f"/runs/{run_id}/metrics", {}, other),
        "no such run": ("/runs/999999999", {}, owner),
        "limit too high": ("/runs", {"limit": "201"}, owner),
        "limit not a number": ("/runs", {"limit": "ten"}, owner),
        "limit with a sign": ("/runs", {"limit": "+5"}, owner),
        "unknown status": ("/runs", {"status": "sleeping"}, owner),
        "q too long": ("/runs", {"q": "x" * 201}, owner),
        "bad cursor": ("/runs", {"cursor": "not-a-cursor"}, owner),
        "empty value": ("/runs", {"cursor": ""}, owner),
        "unknown parameter": (f"/runs/{run_id}", {"fields": "name"}, owner),
        "max_points too low": (f"/runs/{run_id}/metrics", {"max_points": "3"}, owner),
        "max_points too high": (f"/runs/{run_id}/metrics", {"max_points": "10001"}, owner),
        "team not a number": ("/runs", {}, {**owner, "X-Team-Id": "default"}),
        "a team not one's own": ("/runs", {}, {**other, "X-Team-Id": str(_team_of(api))}),
        "trailing slash": (f"/runs/{run_id}/", {}, owner),
    }
    for label, (path, params, headers) in answered.items():
        before = len(behind.paths)
        response = _same(fast, plain, path, params=params, headers=headers)
        assert response.status_code == 200, (label, response.text)
        assert len(behind.paths) == before, f"{label}: reached FastAPI"
        etag = response.headers["etag"]
        before = len(behind.paths)
        not_modified = _same(
            fast, plain, path, params=params, headers={**headers, "If-None-Match": etag}
        )
        assert not_modified.status_code == 304 and len(behind.paths) == before, label
    for label, (path, params, headers) in to_fastapi.items():
        before = len(behind.paths)
        response = _same(fast, plain, path, params=params, headers=headers)
        assert len(behind.paths) == before + 1, f"{label}: not sent to FastAPI"
        assert response.status_code in (200, 307, 401, 403, 404, 422), (label, response.text)


def _team_of(api: TestClient) -> int:
    return api.get("/teams").json()[0]["id"]


def test_a_lost_database_is_fastapis_503(api, admin_token, clients, monkeypatch) -> None:
    """A read that fails for any reason is read again by FastAPI, whose handlers answer."""
    from sqlalchemy.exc import OperationalError

    from backend.runs import service

    fast, plain, behind = clients
    run_id = _run_with_points(api)

    def lost(*_: Any, **__: Any) -> Any:
        raise OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(service, "run_for_read_json", lost)
    response = _same(fast, plain, f"/runs/{run_id}", headers=auth(admin_token))
    assert response.status_code == 503 and behind.paths == [f"/api/v1/runs/{run_id}"]
