"""Studios for tests that need more than the in-process API: a real API server process
(`distill-studio api`, i.e. uvicorn with DS_API_WORKERS worker processes) on a free loopback port, the API served in a thread (for the
page tests), a module-wide studio with one worker, and a TCP proxy that can cut a server away.
Used by test_hostile_*.py, test_secrets.py, test_reliability.py, pages/ and
benchmarks/load_api.py; no tests here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from tests.conftest import ROOT, StudioEnv, WorkerProcess, free_port, make_studio_env, migrate

if TYPE_CHECKING:
    from fastapi.testclient import TestClient


class ApiServer:
    """`python -m cli.main api` with the studio's env, its output in a log file."""

    def __init__(
        self, env: StudioEnv, extra_env: dict[str, str] | None = None, name: str = "api"
    ) -> None:
        self.env, self.extra_env = env, extra_env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = env.data_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> ApiServer:
        env = {**os.environ, **self.env.env, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "api",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
            env=env,
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code in (200, 503):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"API did not start:\n{self.output()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if Path(self.log).exists() else ""

    def serving_pid(self, client_port: int) -> int | None:
        """The pid of the API process (uvicorn runs DS_API_WORKERS of them under the server
        process) holding the open connection that comes from local port `client_port`."""
        import psutil

        assert self.proc is not None
        for proc in [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children()]:
            try:
                conns = proc.net_connections(kind="tcp")
            except psutil.Error:
                continue
            if any(c.raddr and c.raddr.port == client_port for c in conns):
                return proc.pid
        return None


@dataclass
class Studio:
    """A studio on SQLite with the API in-process (`api`, signed in as the first admin) and one
    real worker process."""

    env: StudioEnv
    api: TestClient
    worker: WorkerProcess
    token: str


@contextmanager
def studio_with_worker(tmp: Path, worker_env: dict[str, str] | None = None) -> Iterator[Studio]:
    """For module-scoped fixtures (one worker for many tests): settings applied for the block."""
    import pytest
    from fastapi.testclient import TestClient

    from backend import queue
    from backend.app import create_app
    from backend.bootstrap import ensure_admin
    from core.db import reset_caches, session_scope
    from core.jobs import INSPECT_STUDENT

    env = make_studio_env(tmp, "sqlite")
    with pytest.MonkeyPatch.context() as mp:
        env.apply(mp)
        migrate()
        with session_scope() as session:
            token = ensure_admin(session).token
        worker = WorkerProcess(env, "w1", extra_env=worker_env).start()
        try:
            # the first task of a fresh pool process imports torch (seconds on a busy machine),
            # which would count against a short inspection limit: warm it up
            queue.call(INSPECT_STUDENT, ["mlp", {}, [4], 2], timeout=120)
            with TestClient(create_app(), base_url="http://testserver/api/v1") as api:
                api.headers["Authorization"] = f"Bearer {token}"
                yield Studio(env, api, worker, token)
        finally:
            worker.stop()
            reset_caches()


@contextmanager
def api_in_thread(timeout: float = 30) -> Iterator[str]:
    """`create_app()` (for the current settings) served by uvicorn in a thread of this process,
    on a free loopback port, for the block; yields its URL. Lets a test write to the database
    what a worker would, while the pages read it over HTTP."""
    import uvicorn

    from backend.app import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + timeout
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the API did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class TcpProxy:
    """A loopback TCP forwarder to `target_port` that a test can cut and restore, to take a
    server (PostgreSQL) away from the studio's processes and give it back, like a network fault.

    `cut()` closes every open connection and refuses new ones (the port is closed); `restore()`
    listens again on the same port.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by cut() or stop()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)

    def cut(self) -> None:
        if self._listener is not None:  # shutdown wakes the accept() blocked on it; close alone not
            _close(self._listener)
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            _close(sock)

    def restore(self) -> None:
        self.start()

    stop = cut


def _close(sock: socket.socket) -> None:
    """Shut a socket down both ways (waking any thread blocked on it), then close it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
