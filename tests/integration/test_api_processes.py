"""The API runs as several processes (uvicorn workers, DS_API_WORKERS) behind one port, and what
they must share is shared through the broker, not process memory.

A real server (`distill-studio api`, 2 worker processes, tests/integration/servers.py); which
process answered a request is read from the operating system (the process holding the
connection, psutil), so the API exposes nothing of it.
"""

from __future__ import annotations

import http.client
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest

from tests.integration.servers import ApiServer

ATTEMPTS = 12  # the per-account sign-in limit of this test


@pytest.fixture
def server(sqlite_env) -> Iterator[ApiServer]:
    from backend.bootstrap import ensure_admin
    from core.db import session_scope

    with session_scope() as session:
        ensure_admin(session)
    api = ApiServer(
        sqlite_env,
        extra_env={
            "DS_API_WORKERS": "2",
            "DS_LOGIN_LIMIT_ACCOUNT_ADDRESS": f"{ATTEMPTS}/10 minutes",
            "DS_LOGIN_LIMIT_ADDRESS": "1000/10 minutes",
        },
    ).start()
    try:
        yield api
    finally:
        api.stop()


def _call(
    server: ApiServer, method: str, path: str, body: dict[str, str] | None = None
) -> tuple[int, int | None]:
    """One request on a new connection: its status and the pid of the API process that held
    the connection (looked up before the connection closes)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        conn.request(method, path, body=urlencode(body) if body else None, headers=headers)
        response = conn.getresponse()
        response.read()
        assert conn.sock is not None
        return response.status, server.serving_pid(conn.sock.getsockname()[1])
    finally:
        conn.close()


def _parallel(server: ApiServer, calls: int, *args) -> list[tuple[int, int | None]]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: _call(server, *args), range(calls)))


def test_requests_are_answered_by_several_processes(server: ApiServer) -> None:
    import psutil

    assert server.proc is not None
    workers = psutil.Process(server.proc.pid).children()
    answers: list[tuple[int, int | None]] = []
    while len({pid for _, pid in answers}) < 2:  # waits for content; pytest-timeout bounds it
        answers += _parallel(server, 16, "GET", "/api/v1/health")
    assert {status for status, _ in answers} == {200}
    serving = {pid for _, pid in answers}
    assert None not in serving and server.proc.pid not in serving
    assert serving <= {w.pid for w in workers}  # uvicorn's worker processes, not the supervisor


def test_sign_in_throttle_holds_across_processes(server: ApiServer) -> None:
    """Wrong passwords for one account from one address, sent in parallel over new connections
    that the two processes share between them: exactly ATTEMPTS are judged, the rest refused."""
    answers = _parallel(
        server, 3 * ATTEMPTS, "POST", "/api/v1/auth/token", {"username": "admin", "password": "x"}
    )
    codes = Counter(status for status, _ in answers)
    assert codes == {401: ATTEMPTS, 429: 2 * ATTEMPTS}, codes
    by_process = Counter(pid for _, pid in answers)
    assert None not in by_process and len(by_process) == 2, by_process  # both processes counted


def _listening(pid: int, port: int) -> bool:
    import psutil

    conns = psutil.Process(pid).net_connections(kind="tcp")
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns)


def _workers_listening(server: ApiServer) -> list[int]:
    """The supervisor's worker processes that listen on the API's port."""
    import psutil

    assert server.proc is not None
    children = psutil.Process(server.proc.pid).children()
    return [c.pid for c in children if _listening(c.pid, server.port)]


def test_each_process_listens_on_a_socket_of_its_own_and_a_dead_one_is_replaced(
    server: ApiServer,
) -> None:
    """The kernel spreads new connections across the processes' own sockets (SO_REUSEPORT,
    backend/serving.py): every worker listens, the supervisor does not (its socket only holds
    the address). A worker that dies is replaced by one that listens too, and requests go on."""
    assert server.proc is not None
    while len(_workers_listening(server)) < 2:  # the second may still be starting
        time.sleep(0.1)
    assert not _listening(server.proc.pid, server.port)
    assert "2 processes, a socket each" in server.output()
    killed = _workers_listening(server)[0]
    os.kill(killed, signal.SIGKILL)
    while True:  # waits for content; pytest-timeout bounds it
        listening = _workers_listening(server)
        if len(listening) == 2 and killed not in listening:
            break
        time.sleep(0.1)
    assert server.proc.poll() is None  # the supervisor carried on
    assert {status for status, _ in _parallel(server, 16, "GET", "/api/v1/health")} == {200}


def test_a_second_studio_on_the_same_port_is_refused(server: ApiServer, sqlite_env) -> None:
    """Its own SO_REUSEPORT sockets would share the port with the first studio; it stops at
    once with uvicorn's start-up failure code and says why."""
    second = ApiServer(sqlite_env, extra_env={"DS_API_WORKERS": "2"}, name="api-second")
    second.port = server.port
    with pytest.raises(RuntimeError, match="cannot serve the API on .*Address already in use"):
        second.start()
    assert second.proc is not None and second.proc.returncode == 3
