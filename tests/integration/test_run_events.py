"""Live run events (`GET /runs/{id}/events`, server-sent events) from the real API served by
uvicorn, through the real broker (Redis pub/sub), written by the worker's own reporting code
(`worker.reporting.DbReporter`, `announce`), on SQLite. The client, the CLI's `runs wait` and
their fallback to polling too.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from client import ApiError, Client
from client.events import RunEvent, parse_sse
from tests.conftest import StudioEnv
from tests.integration.servers import api_in_thread

LATENCY_LIMIT_S = 1.0  # issue 15: an update reaches a client within 1 s of the worker writing it
WORKER = "test-worker:1"


@dataclass
class Live:
    env: StudioEnv
    url: str
    token: str
    team_id: int


@pytest.fixture
def live(sqlite_env: StudioEnv) -> Iterator[Live]:
    from backend.bootstrap import ensure_admin
    from core.db import session_scope

    with session_scope() as session:
        admin = ensure_admin(session)
    with api_in_thread() as url:
        yield Live(sqlite_env, url, admin.token, admin.team_id)


def _run(team_id: int, **fields: Any) -> int:
    """A run row as the API creates it (queued), with `fields` as a worker would have set them."""
    from core.db import session_scope
    from core.db.tables import Run

    with session_scope() as session:
        run = Run(team_id=team_id, name="live", **{"config": {}, **fields})
        session.add(run)
        session.flush()
        return run.id


def _set(run_id: int, **fields: Any) -> None:
    from sqlalchemy import update

    from core.db import session_scope
    from core.db.tables import Run

    with session_scope() as session:
        session.execute(update(Run).where(Run.id == run_id).values(**fields))


class Listener:
    """Reads a run's event stream in a thread; each event with the moment it arrived."""

    def __init__(self, live: Live, run_id: int, **params: Any) -> None:
        self.events: queue.Queue[tuple[float, RunEvent] | None] = queue.Queue()
        self.response: httpx.Response | None = None
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(live, run_id, params), daemon=True)
        self.thread.start()

    def _read(self, live: Live, run_id: int, params: dict[str, Any]) -> None:
        url = f"{params.pop('base', live.url)}/api/v1/runs/{run_id}/events"
        headers = {"Authorization": f"Bearer {live.token}"}
        try:
            with httpx.stream("GET", url, headers=headers, params=params, timeout=60) as r:
                self.response = r
                for event in parse_sse(r.iter_lines()):
                    self.events.put((time.monotonic(), event))
        except httpx.HTTPError:  # closed by close()
            pass
        finally:
            self.ended.set()
            self.events.put(None)

    def next(self, kind: str | None = None, timeout: float = 30) -> tuple[float, RunEvent]:
        """The next event (of `kind`), skipping others; fails when the stream ends first."""
        deadline = time.monotonic() + timeout
        while True:
            item = self.events.get(timeout=max(deadline - time.monotonic(), 0.01))
            assert item is not None, "the stream ended"
            if kind is None or item[1].kind == kind:
                return item

    def close(self) -> None:
        """Hang up: shut the socket down, which wakes the reading thread."""
        if self.response is not None and not self.ended.is_set():
            sock = self.response.extensions["network_stream"].get_extra_info("socket")
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(10)

    def rest(self, timeout: float = 30) -> list[RunEvent]:
        """Every event until the stream ends."""
        assert self.ended.wait(timeout), "the stream did not end"
        out = []
        while (item := self.events.get(timeout=1)) is not None:
            out.append(item[1])
        return out


@pytest.fixture
def listen(live: Live) -> Iterator[Any]:
    """`listen(run_id, **params)`: a Listener on the run's stream, closed after the test (an
    open stream would hold the server's shutdown)."""
    listeners: list[Listener] = []

    def start(run_id: int, **params: Any) -> Listener:
        listeners.append(Listener(live, run_id, **params))
        return listeners[-1]

    yield start
    for listener in listeners:
        listener.close()


def _listeners(run_id: int) -> int:
    """How many clients listen on the run's channel (the broker says so)."""
    import redis

    from core import events
    from core.settings import get_settings

    broker = redis.Redis.from_url(events.redis_url(get_settings().broker_url))
    name = events.channel(run_id, broker.connection_pool.connection_kwargs.get("db", 0))
    return int(dict(broker.pubsub_numsub(name)).get(name.encode(), 0))


def _subscribed(run_id: int, count: int, timeout: float = 30) -> None:
    """Wait until `count` clients listen on the run's channel."""
    deadline = time.monotonic() + timeout
    while _listeners(run_id) < count:
        assert time.monotonic() < deadline, "nobody subscribed to the run's events"
        time.sleep(0.02)


def _let_go(run_id: int, timeout: float = 30) -> None:
    """Wait until no client listens on the run's channel (the API lets go of a stream some
    moments after its client hung up)."""
    deadline = time.monotonic() + timeout
    while _listeners(run_id):
        assert time.monotonic() < deadline, "the API still listens for a client that left"
        time.sleep(0.02)


# -- the stream -----------------------------------------------------------------------------------


def test_a_flush_of_the_worker_reaches_a_client_within_a_second(live: Live, listen: Any) -> None:
    from worker.reporting import DbReporter

    run_id = _run(live.team_id, status="running", worker=WORKER, total_steps=100)
    listener = listen(run_id)
    _, first = listener.next()
    assert first.kind == "status" and first.data["status"] == "running"
    assert first.data["total_steps"] == 100 and first.data["step"] == 0

    reporter = DbReporter(run_id, "unused", WORKER)
    reporter.flush_every = float("inf")  # only the flush() timed below writes
    latencies = []
    # the first flush is not timed: it also makes the reporter's connections, once per run (a
    # busy machine took 2.4 s for it, then 12-21 ms a flush); a worker's run has flushed before
    for step in (5, 10, 20, 30):
        reporter.on_step(
            SimpleNamespace(
                step=step,
                epoch=0,
                total_steps=100,
                metrics={"loss": 2.0 / step},
                throughput=500.0,
                eta_seconds=9.0,
            )
        )
        written = time.monotonic()
        reporter.flush()  # what the worker does every DS_METRICS_FLUSH_S: write, then publish
        at, metrics = listener.next("metrics")
        assert metrics.data["series"]["loss"]["steps"][-1] == step
        assert metrics.data["series"]["loss"]["values"][-1] == pytest.approx(2.0 / step)
        _, progress = listener.next("progress")
        assert progress.data["step"] == step and progress.data["progress"] == step / 100
        assert progress.id == str(step)
        if step > 5:
            latencies.append(at - written)
    print(f"flush -> client latency: {', '.join(f'{s * 1000:.1f} ms' for s in latencies)}")
    assert max(latencies) < LATENCY_LIMIT_S, latencies

    listener.close()  # the client hangs up: the API lets go of the run's channel
    _let_go(run_id)


def test_late_connect_gets_the_current_state_and_missed_points(live: Live, listen: Any) -> None:
    from core.db import session_scope
    from core.db.tables import Metric

    run_id = _run(live.team_id, status="running", worker=WORKER, step=7, total_steps=10)
    with session_scope() as session:
        session.add_all(
            Metric(run_id=run_id, name="loss", step=s, epoch=0, value=1.0 / s) for s in (3, 5, 7)
        )
    listener = listen(run_id, since_step=3)
    _, state = listener.next()
    assert state.kind == "status" and state.data["step"] == 7 and state.data["progress"] == 0.0
    _, missed = listener.next()
    assert missed.kind == "metrics" and missed.data["series"]["loss"]["steps"] == [5, 7]


def test_a_terminal_status_ends_the_stream(live: Live, listen: Any) -> None:
    from worker.reporting import announce

    run_id = _run(live.team_id, status="running", worker=WORKER)
    listener = listen(run_id)
    listener.next()
    _set(run_id, status="failed", error="out of memory")
    announce(run_id)  # what the worker does after each transition
    rest = listener.rest()
    assert [(e.kind, e.data["status"], e.data["error"]) for e in rest] == [
        ("status", "failed", "out of memory")
    ]

    done = _run(live.team_id, status="succeeded", progress=1.0)
    already = listen(done)  # a finished run: its state, then the end
    assert [e.data["status"] for e in already.rest()] == ["succeeded"]


def test_cancelling_a_queued_run_in_the_api_reaches_the_stream(live: Live, listen: Any) -> None:
    run_id = _run(live.team_id)
    listener = listen(run_id)
    assert listener.next()[1].data["status"] == "queued"
    Client(live.url, live.token).cancel_run(run_id)
    assert [e.data["status"] for e in listener.rest()] == ["cancelled"]


def test_the_stream_is_authorised_like_the_run(live: Live) -> None:
    from backend.bootstrap import create_user
    from core.db import session_scope

    run_id = _run(live.team_id, status="succeeded")
    url = f"{live.url}/api/v1/runs/{run_id}/events"
    assert httpx.get(url).status_code == 401
    with session_scope() as session:
        create_user(session, "eve", "eve-password-123", "elsewhere", "member")
    eve = Client.login(live.url, "eve", "eve-password-123")
    with pytest.raises(ApiError) as other_team:
        list(eve.run_events(run_id))
    assert other_team.value.status == 404 and f"run {run_id} not found" in other_team.value.detail
    with pytest.raises(ApiError) as missing:
        list(Client(live.url, live.token).run_events(run_id + 1000))
    assert missing.value.status == 404


def test_a_broker_that_is_away_answers_503_and_wait_polls(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core import events
    from core.settings import get_settings
    from tests.conftest import free_port

    run_id = _run(live.team_id, status="running", worker=WORKER, step=4, total_steps=8)
    away = get_settings().model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    monkeypatch.setattr(events, "get_settings", lambda: away)  # the API's events: nothing there
    api = Client(live.url, live.token)
    with pytest.raises(ApiError) as refused:
        list(api.run_events(run_id))
    assert refused.value.status == 503 and "GET /api/v1/runs/" in refused.value.detail

    seen: list[tuple[str, int]] = []

    def progress(run: Any) -> None:
        seen.append((run.status, run.step))
        if run.step == 4:  # the worker goes on, writing to the database only
            _set(run_id, status="succeeded", step=8, progress=1.0)

    final = api.wait(run_id, poll=0.05, on_progress=progress)
    assert final.status == "succeeded" and seen == [("running", 4), ("succeeded", 8)]


# -- the client and the CLI follow the stream, and fall back to polling ---------------------------


def _publish_progress(run_id: int, step: int, total: int) -> None:
    """A progress event the database never sees: only a client on the stream can show it."""
    from core import events

    events.publish(
        events.progress_event(
            run_id, {"step": step, "total_steps": total, "progress": step / total, "epoch": 1}
        )
    )


def _finish(run_id: int) -> None:
    from worker.reporting import announce

    _set(run_id, status="succeeded", step=100, total_steps=100, progress=1.0)
    announce(run_id)


def test_client_wait_follows_the_stream(live: Live) -> None:
    run_id = _run(live.team_id, status="running", worker=WORKER, total_steps=100)

    listening = _listeners(run_id) + 1
    seen: list[int] = []

    def worker() -> None:
        _subscribed(run_id, listening)
        # the stream's first event is the run as the database has it: published before the
        # client has it, step 37 and the end would race that read (a finished run then)
        deadline = time.monotonic() + 30
        while not seen:
            assert time.monotonic() < deadline, "the stream sent no first state"
            time.sleep(0.02)
        _publish_progress(run_id, 37, 100)
        _finish(run_id)

    threading.Thread(target=worker, daemon=True).start()
    final = Client(live.url, live.token).wait(
        run_id, poll=3600, on_progress=lambda r: seen.append(r.step)
    )
    assert final.status == "succeeded" and final.progress == 1.0
    assert 37 in seen and seen[-1] == 100  # step 37 was only ever on the stream


def _cli(live: Live, *args: str) -> Any:
    from cli.main import app

    env = {"DS_API_URL": live.url, "DS_TOKEN": live.token}
    return CliRunner().invoke(app, list(args), env=env)


def _told_when_read(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once `Client.run` has returned: `runs wait` has read the run, at the stream's first
    event. What is published before that read may be all the stream shows (a finished run)."""
    read = threading.Event()
    read_run = Client.run

    def run_and_tell(self: Client, run_id: int) -> Any:
        run = read_run(self, run_id)
        read.set()
        return run

    monkeypatch.setattr(Client, "run", run_and_tell)
    return read


def test_cli_runs_wait_prints_progress_from_the_stream(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _run(live.team_id, status="running", worker=WORKER, total_steps=100)

    listening = _listeners(run_id) + 1
    read = _told_when_read(monkeypatch)

    def worker() -> None:
        _subscribed(run_id, listening)
        assert read.wait(30), "runs wait never read the run"
        _publish_progress(run_id, 37, 100)
        _finish(run_id)

    threading.Thread(target=worker, daemon=True).start()
    result = _cli(live, "runs", "wait", str(run_id), "--poll", "3600")
    assert result.exit_code == 0, result.output
    assert f"run {run_id} running: 37% (epoch 1, step 37/100)" in result.stderr
    assert f"run {run_id} succeeded: 100%" in result.stderr


SAMPLES = [
    {"index": 0, "prompt": "Return a new", "reference": " list", "teacher": " list of",
     "student": " the the"},
    {"index": 1, "prompt": "Open the", "reference": " file", "teacher": " file and",
     "student": " and and"},
]  # fmt: skip


def test_live_samples_reach_rest_and_the_cli_while_the_run_trains(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A language model's continuations after each epoch (`DbReporter.on_samples`, as the
    training process sends them) are in the run's summary over REST, merged epoch by epoch and
    bounded, and `runs wait` and `runs show` print them while the run trains."""
    from worker.reporting import LIVE_SAMPLES, LIVE_TEXT, DbReporter

    run_id = _run(live.team_id, status="running", worker=WORKER, total_steps=100)
    reporter = DbReporter(run_id, "unused", WORKER)
    hostile = [*SAMPLES, "not a sample", {"index": 9, "student": 5}]
    hostile += [{"index": 10 + i, "student": "x" * (LIVE_TEXT * 3)} for i in range(20)]
    reporter.on_samples(0, hostile)
    later = [{**s, "student": s["teacher"]} for s in SAMPLES]  # epoch 1: it learnt
    api = Client(live.url, live.token)
    live_now = api.run(run_id).summary["live_samples"]
    assert live_now["epoch"] == 0 and len(live_now["samples"]) == LIVE_SAMPLES
    assert live_now["samples"][0] == {**SAMPLES[0], "epochs": [{"epoch": 0, "student": " the the"}]}
    assert all(len(s["student"]) <= LIVE_TEXT for s in live_now["samples"])

    listening = _listeners(run_id) + 1
    read = _told_when_read(monkeypatch)

    def worker() -> None:
        _subscribed(run_id, listening)
        assert read.wait(30), "runs wait never read the run"
        reporter.on_samples(1, later)
        _publish_progress(run_id, 50, 100)  # epoch 1 has begun
        _finish(run_id)

    threading.Thread(target=worker, daemon=True).start()
    result = _cli(live, "runs", "wait", str(run_id), "--poll", "3600")
    assert result.exit_code == 0, result.output
    assert "samples after epoch 1:" in result.stderr, result.stderr
    assert "samples after epoch 0:" in result.stderr and "student: the the" in result.stderr
    assert "teacher: list of" in result.stderr and "student: list of" in result.stderr

    summary = api.run(run_id).summary["live_samples"]
    assert summary["epoch"] == 1
    assert [e["epoch"] for e in summary["samples"][0]["epochs"]] == [0, 1]
    assert [e["student"] for e in summary["samples"][1]["epochs"]] == [" and and", " file and"]
    shown = _cli(live, "runs", "show", str(run_id))
    assert shown.exit_code == 0, shown.output
    assert "samples after epoch 1:" in shown.stdout and "prompt:  Open the" in shown.stdout


@contextmanager
def _older_server() -> Iterator[str]:
    """The API as it was before live events (no `/runs/{id}/events`), served by uvicorn."""
    import uvicorn
    from starlette.responses import JSONResponse

    from backend.app import create_app

    app = create_app()

    async def older(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/events"):
            await JSONResponse({"detail": "Not Found"}, status_code=404)(scope, receive, send)
        else:
            await app(scope, receive, send)

    server = uvicorn.Server(uvicorn.Config(older, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_cli_runs_wait_polls_a_server_without_the_stream(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    from client.runs import RunsApi

    run_id = _run(live.team_id, status="running", worker=WORKER, step=50, total_steps=100)
    read = RunsApi.run

    def run_then_finish(self: RunsApi, run_id: int) -> Any:
        """The real read; after the first one the worker finishes the run."""
        got = read(self, run_id)
        if got.status == "running":
            _finish(run_id)
        return got

    monkeypatch.setattr(RunsApi, "run", run_then_finish)
    with _older_server() as url:
        with pytest.raises(ApiError) as older:
            list(Client(url, live.token).run_events(run_id))
        assert older.value.status == 404
        result = _cli(replace(live, url=url), "runs", "wait", str(run_id), "--poll", "0.05")
    assert result.exit_code == 0, result.output
    assert f"run {run_id} running: 0% (epoch 0, step 50/100)" in result.stderr
    assert f"run {run_id} succeeded: 100%" in result.stderr


def test_next_update_waits_for_news_and_says_when_there_is_none(live: Live) -> None:
    """What the run page does between two draws."""
    run_id = _run(live.team_id, status="running", worker=WORKER, step=5, total_steps=10)
    api = Client(live.url, live.token)
    assert api.next_update(run_id, status="running", step=5, timeout=0.3) is None  # quiet
    news = api.next_update(run_id, status="queued", step=0, timeout=30)  # seen before it started
    assert news is not None and (news.kind, news.data["step"]) == ("status", 5)
    _let_go(run_id)  # the two reads above hung up; counting them would wait for one too many

    def worker() -> None:
        _subscribed(run_id, 1)
        _publish_progress(run_id, 6, 10)

    threading.Thread(target=worker, daemon=True).start()
    news = api.next_update(run_id, status="running", step=5, timeout=30)
    assert news is not None and (news.kind, news.data["step"]) == ("progress", 6)


@pytest.mark.slow
def test_a_run_on_a_real_worker_streams_until_it_succeeds(api, worker, demo_files) -> None:
    """The worker's own call sites: running when claimed, progress and metrics after each
    flush, succeeded at the end (and the stream ends there)."""
    from tests.integration.conftest import mark_ready_from, run_config, upload_demo

    model, dataset = mark_ready_from(api, *upload_demo(api, demo_files))
    token = api.headers["Authorization"].split()[1]
    with api_in_thread() as url:
        run = api.post("/runs", json=run_config(model, dataset, training={"epochs": 2}))
        assert run.status_code == 201, run.text
        events = list(Client(url, token).run_events(run.json()["id"]))  # until the run ends
    statuses = [e.data["status"] for e in events if e.kind == "status"]
    print(f"events of a real run: {[e.kind for e in events]}")
    assert statuses[-1] == "succeeded" and events[-1].terminal, statuses
    if statuses[0] != "succeeded":  # connected while it trained: the updates came as it went
        assert "running" in statuses, statuses
        steps = [e.data["step"] for e in events if e.kind == "progress"]
        assert steps and steps == sorted(steps), steps
        assert any("loss" in e.data["series"] for e in events if e.kind == "metrics")


def test_an_open_stream_does_not_hold_the_api_at_shutdown(live: Live, listen: Any) -> None:
    """`distill-studio api` (uvicorn) stops on SIGTERM while a client still follows a run: the
    stream is cut after the graceful-shutdown timeout instead of holding the server forever."""
    import os
    import signal
    import subprocess

    from tests.integration.servers import ApiServer

    run_id = _run(live.team_id, status="running", worker=WORKER)
    server = ApiServer(live.env).start()
    try:
        listener = listen(run_id, base=server.url)
        listener.next()  # the stream is open
        assert server.proc is not None
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            code = server.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 0, f"the API did not stop by itself ({code}):\n{server.output()[-2000:]}"
        listener.rest()  # and the client sees its stream end
    finally:
        server.stop()


def test_a_quiet_stream_reads_the_run_again_and_sends_what_it_missed(
    live: Live, listen: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event lost on the way (the broker was away when the worker published) is made up for
    at the next keepalive, when the stream reads the run from the database."""
    from backend.events import router

    monkeypatch.setattr(router, "HEARTBEAT_S", 0.2)
    run_id = _run(live.team_id, status="running", worker=WORKER, step=1, total_steps=10)
    listener = listen(run_id)
    assert listener.next()[1].data["step"] == 1
    _set(run_id, step=9, progress=0.9)  # written, never published
    _, made_up = listener.next()
    assert (made_up.kind, made_up.data["step"], made_up.data["progress"]) == ("status", 9, 0.9)
    _set(run_id, status="succeeded", step=10, progress=1.0)
    assert [e.data["status"] for e in listener.rest()] == ["succeeded"]


def test_a_worker_claiming_a_run_announces_running(live: Live, listen: Any) -> None:
    """`worker.tasks.claim_run` (what the distill task does first) moves the run to running
    and says so on the stream; a run cancelled before it started ends there, also said."""
    from worker.tasks import claim_run

    run_id = _run(live.team_id)
    listener = listen(run_id)
    assert listener.next()[1].data["status"] == "queued"
    assert claim_run(run_id, WORKER) is not None
    _, running = listener.next()
    assert (running.kind, running.data["status"]) == ("status", "running")

    cancelled = _run(live.team_id, cancel_requested=True)
    early = listen(cancelled)
    assert early.next()[1].data["status"] == "queued"
    assert claim_run(cancelled, WORKER) is None
    assert [e.data["status"] for e in early.rest()] == ["cancelled"]


def test_a_broker_that_is_away_never_stops_the_worker(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publishing fails quietly (logged): the flush still writes the database, which stays the
    truth that streams and polling read."""
    from core import events
    from core.settings import get_settings
    from tests.conftest import free_port
    from worker.reporting import DbReporter, announce

    run_id = _run(live.team_id, status="running", worker=WORKER, total_steps=10)
    away = get_settings().model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    monkeypatch.setattr(events, "get_settings", lambda: away)
    assert events.publish(events.progress_event(run_id, {"step": 1})) is False
    assert events.publish(events.progress_event(run_id, {"step": 1})) is False  # left alone
    reporter = DbReporter(run_id, "unused", WORKER)
    reporter.on_step(
        SimpleNamespace(
            step=4, epoch=0, total_steps=10, metrics={"loss": 0.5}, throughput=1.0, eta_seconds=1.0
        )
    )
    reporter.flush()
    _set(run_id, status="succeeded")
    announce(run_id)
    run = Client(live.url, live.token).run(run_id)
    assert (run.status, run.step) == ("succeeded", 4)
