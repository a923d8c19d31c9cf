"""At start-up the API readies, in the background, what its first publish would otherwise build
(`core.jobs.warm_up`, run by the app's lifespan): the first run of each API process is then
no slower than the next. A broker that does not answer never holds the start."""

from __future__ import annotations

import json
import time

import pytest
import redis

from tests.conftest import StudioEnv
from tests.integration.api_helpers import CLOSED_BROKER, set_env
from tests.integration.servers import ApiServer


def test_the_api_readies_the_first_publish_at_start_up(sqlite_env: StudioEnv) -> None:
    """A real API server, asked nothing: each of its processes has opened a broker connection
    and declared the run queues (which writes their bindings) before any run is created."""
    broker = redis.Redis.from_url(sqlite_env.env["DS_BROKER_URL"])
    bindings = ["_kombu.binding.cpu", "_kombu.binding.gpu"]  # what declaring a queue writes
    broker.delete(*bindings)
    server = ApiServer(sqlite_env).start()
    try:
        deadline = time.monotonic() + 60
        while broker.exists(*bindings) < len(bindings):
            assert time.monotonic() < deadline, f"no queue declared:\n{server.output()[-2000:]}"
            time.sleep(0.05)
    finally:
        server.stop()
    assert broker.llen("cpu") == 0  # readied, nothing published


def test_a_publish_builds_no_result_backend(sqlite_env: StudioEnv) -> None:
    """Celery builds one per thread for the `AsyncResult` it returns (scanning every installed
    package's entry points); the studio never reads these tasks' results."""
    from core import jobs

    jobs.reset_producers()  # a fresh app: `queue.call` (which waits for results) builds one
    task_id = jobs.send_task("worker.tasks.nothing", [1], "cpu")
    message = json.loads(redis.Redis.from_url(sqlite_env.env["DS_BROKER_URL"]).lpop("cpu"))
    assert message["headers"]["id"] == task_id and message["headers"]["ignore_result"] is True
    assert jobs.producer_app()._backend is None


def test_publishes_share_one_redis_client(
    sqlite_env: StudioEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu builds a `redis.Redis` for each command it sends (about 110 us of CPU); the
    publishing app's channel keeps one (`core.jobs.PublishingTransport`), and every task still
    arrives."""
    from core import jobs

    jobs.reset_producers()
    first = jobs.send_task("worker.tasks.nothing", [0], "cpu")
    built: list[object] = []
    real_init = redis.Redis.__init__

    def counted(self: redis.Redis, *args: object, **kwargs: object) -> None:
        built.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "__init__", counted)
    sent = [jobs.send_task("worker.tasks.nothing", [i], "cpu") for i in range(1, 4)]
    monkeypatch.undo()
    assert built == []
    broker = redis.Redis.from_url(sqlite_env.env["DS_BROKER_URL"])
    got = [json.loads(broker.rpop("cpu"))["headers"]["id"] for _ in range(4)]  # oldest first
    assert got == [first, *sent] and broker.llen("cpu") == 0


@pytest.mark.parametrize(
    ("url", "ours"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("rediss://127.0.0.1:6380/0", False),  # kombu's own: it sets up TLS by the scheme
        ("sentinel://127.0.0.1:26379", False),
    ],
)
def test_only_plain_redis_brokers_get_the_publishing_transport(url: str, ours: bool) -> None:
    from core import jobs

    transport = jobs._app_for(url).connection_for_write().transport
    assert isinstance(transport, jobs.PublishingTransport) is ours


def test_a_broker_that_does_not_answer_does_not_hold_the_start(
    sqlite_env: StudioEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from backend.app import create_app

    set_env(monkeypatch, DS_BROKER_URL=CLOSED_BROKER)
    with TestClient(create_app()) as http:  # started while the warm-up still tries
        health = http.get("/api/v1/health")
    assert health.status_code == 200 and health.json()["broker"] is False


def test_the_first_publish_benchmark_measures_its_three_cases(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks import first_publish

    assert first_publish.main(["--repeat", "1"]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] in ("cold", "readied", "new thread"):
            rows[cells[0]] = cells[1:]
    # warm-up, first publish, next ones, first from a new thread (ms; "-": not that case)
    assert [[c == "-" for c in rows[case]] for case in rows] == [
        [True, False, False, True],
        [False, False, False, True],
        [True, False, False, False],
    ], rows
    assert all(float(c) > 0 for cells in rows.values() for c in cells if c != "-")
