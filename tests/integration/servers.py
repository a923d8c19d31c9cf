"""Studios for tests that need more than the in-process API: a real API server process
(`distill-studio api`, i.e. uvicorn) on a free loopback port, and a module-wide studio with one
worker. Used by test_hostile_*.py, test_secrets.py and benchmarks/load_api.py; no tests here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from tests.conftest import ROOT, StudioEnv, WorkerProcess, make_studio_env, migrate

if TYPE_CHECKING:
    from fastapi.testclient import TestClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    """`python -m backend.cli api` with the studio's env, its output in a log file."""

    def __init__(self, env: StudioEnv, extra_env: dict[str, str] | None = None,
                 name: str = "api") -> None:
        self.env, self.extra_env = env, extra_env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = env.data_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> ApiServer:
        env = {**os.environ, **self.env.env, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "api", "--host", "127.0.0.1",
             "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
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
    from backend.db import reset_caches, session_scope
    from worker.celery_app import INSPECT_STUDENT

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
