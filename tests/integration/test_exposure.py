"""Secrets and exposure of the default studio.

- Slow clients cannot hold the API's sockets: a request whose headers stop half-way is answered
  408 and closed after DS_HTTP_HEADER_TIMEOUT_S; one whose body stalls is closed after
  DS_HTTP_BODY_TIMEOUT_S; a head that never ends is refused at 64 KiB (431); the server keeps
  serving others (a real `distill-studio api`).
- The embedded secret key is random, made once per data dir, kept in a 0600 file, and used
  again on the next start.
- The SQLite database file is 0600 (a copy of it, with the key, is the whole studio).

`up` itself (its listeners on 127.0.0.1, the key it uses) is tested in
tests/e2e/test_embedded_exposure.py. Figures in docs/reliability.md ("A stalled worker, slow
clients and the embedded defaults").
"""

from __future__ import annotations

import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.servers import ApiServer

DEADLINE_S = 1  # the server's header and body deadlines in this test


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's own timeout,
    far above the server's deadline, only stops a server that never closes it)."""
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def _connect(server: ApiServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=60)


@pytest.fixture
def server(sqlite_env) -> Iterator[ApiServer]:
    api = ApiServer(
        sqlite_env,
        extra_env={
            "DS_HTTP_HEADER_TIMEOUT_S": str(DEADLINE_S),
            "DS_HTTP_BODY_TIMEOUT_S": str(DEADLINE_S),
        },
    ).start()
    yield api
    api.stop()


def test_half_a_header_is_answered_408_and_closed(server: ApiServer) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slo")
        start = time.monotonic()
        answer = _read_until_closed(sock)
        waited = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"did not arrive in time" in answer
    print(f"half a header: closed after {waited:.2f}s (deadline {DEADLINE_S}s)")

    with _connect(server) as sock:  # a connection that never says anything at all
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer

    # whole requests on one kept-alive connection are not affected, and the server still serves
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(3):
            assert client.get("/api/v1/health").status_code == 200
    assert "did not arrive within 1s" in server.output()


def test_an_endless_head_is_answered_431(server: ApiServer) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ")
        try:
            for _ in range(20):  # 80 KiB of one header that never ends
                sock.sendall(b"a" * 4096)
        except OSError:  # closed while sending: the answer is already there
            pass
        try:
            answer = _read_until_closed(sock)
        except ConnectionResetError:  # closed with our bytes unread: the 431 may be dropped
            answer = b"HTTP/1.1 431 (reset)"
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    deadline = time.time() + 30
    while "headers were larger than 64 KiB" not in server.output():
        assert time.time() < deadline, server.output()[-2000:]
        time.sleep(0.1)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/api/v1/health").status_code == 200


def test_a_stalled_body_is_closed(server: ApiServer) -> None:
    with _connect(server) as sock:
        sock.sendall(
            b"POST /api/v1/auth/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 100\r\n\r\nusername=ad"
        )
        answer = _read_until_closed(sock)
    assert b"200 OK" not in answer  # closed without an answer to the cut request
    assert "request body did not arrive within 1s" in server.output()

    # a whole body sent in pieces, each well within the deadline, is served
    body = b"username=nobody&password=wrong-password"
    with _connect(server) as sock:
        sock.sendall(
            b"POST /api/v1/auth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        for i in range(0, len(body), 10):
            sock.sendall(body[i : i + 10])
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]


def test_embedded_secret_key_is_random_private_and_kept(tmp_path: Path) -> None:
    from cli.main import SECRET_KEY_FILE, embedded_secret_key
    from core.settings import DEFAULT_SECRET_KEY

    (tmp_path / "a").mkdir()
    first = embedded_secret_key(tmp_path / "a")
    path = tmp_path / "a" / SECRET_KEY_FILE
    assert len(first) >= 32 and first != DEFAULT_SECRET_KEY
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert embedded_secret_key(tmp_path / "a") == first  # the next start uses it again
    (tmp_path / "b").mkdir()
    assert embedded_secret_key(tmp_path / "b") != first  # every studio has its own
    path.chmod(0o644)  # loosened by hand: made private again on the next start
    assert embedded_secret_key(tmp_path / "a") == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_sqlite_database_file_is_private(sqlite_env) -> None:
    from sqlalchemy import text

    from core.db import get_engine

    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))
    for name in ("studio.db", "studio.db-wal", "studio.db-shm"):
        path = sqlite_env.data_dir / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, (name, oct(path.stat().st_mode))
    assert (sqlite_env.data_dir / "studio.db").exists()
