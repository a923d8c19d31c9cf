"""Shared fixtures: real databases (SQLite, PostgreSQL), a real broker (Redis), a real worker.

Environment knobs (defaults match the CI machine and docker-compose):
- DS_TEST_POSTGRES_URL  postgresql+psycopg://postgres@127.0.0.1:5432/test
- DS_TEST_REDIS_URL     redis://127.0.0.1:6379
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.file_seconds import FILE_SECONDS, slowest_first

if TYPE_CHECKING:
    from client import Client

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get(
    "DS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("DS_TEST_REDIS_URL", "redis://127.0.0.1:6379")
# `make test` runs two test processes on two cores, each training tiny models in itself or in
# the workers and sandboxes it starts: one torch thread each (children inherit it), where one
# per core only makes the threads wait for each other
os.environ.setdefault("OMP_NUM_THREADS", "1")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class StudioEnv:
    """Settings of one test studio: the env vars every process of it (API, worker) shares."""

    env: dict[str, str]
    data_dir: Path

    def apply(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
        from core.db import reset_caches
        from core.storage import get_store

        reset_caches()
        get_store.cache_clear()


def _postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test module, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"ds_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


_REDIS_DB: int | None = None


def _lease_holder_gone(holder: str) -> bool:
    """Whether the test process holding a Redis database lease (`host:pid`) is gone: only a
    process of this machine can be checked; an old-style lease (a bare pid) counts as here."""
    host, _, pid = holder.rpartition(":")
    if (host and host != socket.gethostname()) or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _redis_db_url() -> str:
    """A Redis database of this test process's own (leased, so parallel runs never share one),
    flushed before each use."""
    global _REDIS_DB
    import atexit

    import redis

    if _REDIS_DB is None:
        lock = redis.Redis.from_url(f"{REDIS_URL}/0")
        me = f"{socket.gethostname()}:{os.getpid()}"
        for db in range(1, 16):
            key = f"ds-test-db-lease:{db}"
            holder = lock.get(key)
            if holder is not None and _lease_holder_gone(holder.decode()):
                # a killed test process never released it: take it over (only if unchanged)
                with lock.pipeline() as pipe:
                    try:
                        pipe.watch(key)
                        pipe.multi()
                        pipe.delete(key)
                        pipe.execute()
                    except redis.WatchError:
                        continue
            if lock.set(key, me, nx=True, ex=3 * 3600):
                _REDIS_DB = db
                atexit.register(lock.delete, key)
                break
        else:
            raise RuntimeError("all Redis test databases 1-15 are leased; wait or clear the leases")
    url = f"{REDIS_URL}/{_REDIS_DB}"
    redis.Redis.from_url(url).flushdb()
    return url


def make_studio_env(tmp: Path, database: str) -> StudioEnv:
    if database == "sqlite":
        db_url = f"sqlite:///{tmp / 'studio.db'}"
    else:
        db_url = database
    env = {
        "DS_ENV": "test",
        "DS_DATA_DIR": str(tmp),
        "DS_DATABASE_URL": db_url,
        "DS_BROKER_URL": _redis_db_url(),
        "DS_ARTIFACTS_URL": (tmp / "artifacts").as_uri(),
        "DS_SECRET_KEY": "test-secret-key-that-is-long-enough-0123456789",
        "DS_ADMIN_USERNAME": "admin",
        "DS_ADMIN_PASSWORD": "admin-password-123",
    }
    return StudioEnv(env, tmp)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `one_database` (a worker training a scheme: nothing of it depends on the
    database) run on SQLite only; their PostgreSQL variant is deselected. The files run slowest
    first (tests/file_seconds.py: `make test` keeps this order for pytest-xdist)."""
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        on_postgres = params is not None and params.params.get("studio_env") == "postgres"
        (drop if on_postgres and item.get_closest_marker("one_database") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    seconds = json.loads(FILE_SECONDS.read_text()) if FILE_SECONDS.exists() else {}
    items[:] = [keep[i] for i in slowest_first([item.nodeid for item in keep], seconds)]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def studio_env(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StudioEnv]:
    """A studio configuration on SQLite and on PostgreSQL, schema created by Alembic."""
    if request.param == "sqlite":
        env = make_studio_env(tmp_path, "sqlite")
        env.apply(monkeypatch)
        migrate()
        yield env
    else:
        gen = _postgres_database()
        url = next(gen)
        env = make_studio_env(tmp_path, url)
        env.apply(monkeypatch)
        migrate()
        yield env
        from core.db import reset_caches

        reset_caches()
        next(gen, None)


@pytest.fixture
def sqlite_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StudioEnv:
    env = make_studio_env(tmp_path, "sqlite")
    env.apply(monkeypatch)
    migrate()
    return env


def migrate() -> None:
    from backend.migrate import upgrade

    upgrade()


@pytest.fixture
def admin_token(studio_env: StudioEnv) -> str:
    """A token of the first admin (created the way `distill-studio up` does)."""
    from backend.bootstrap import ensure_admin
    from core.db import session_scope

    with session_scope() as session:
        return ensure_admin(session).token


@pytest.fixture
def sdk(studio_env: StudioEnv, admin_token: str) -> Iterator[Client]:
    """The Python client (`client.Client`) of the app in-process (Starlette's TestClient),
    signed in as the first admin; `sdk._http` is its transport, for signing in as others."""
    from fastapi.testclient import TestClient

    from backend.app import create_app
    from client import Client

    with TestClient(create_app()) as http:
        yield Client("http://testserver", admin_token, http=http)


class WorkerProcess:
    """A real `celery worker` process, consuming both queues, with the studio's env."""

    def __init__(
        self,
        env: StudioEnv,
        name: str = "w1",
        queues: str = "gpu,cpu",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.env, self.name, self.queues = env, name, queues
        self.extra_env = extra_env or {}
        self.log = env.data_dir / f"worker-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.tasks",
            "worker",
            "-Q",
            self.queues,
            "-c",
            "1",
            "-P",
            "prefork",
            "-n",
            f"{self.name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "INFO",
        ]
        env = {**os.environ, **self.env.env, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if "ready." in self.log.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        raise RuntimeError(f"worker did not start:\n{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self, sig: int = 15) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def pool_pids(self) -> list[int]:
        """The pool processes (children of the worker's main process)."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in children.read_text().split()] if children.exists() else []


@pytest.fixture
def worker(studio_env: StudioEnv) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(studio_env).start()
    yield proc
    proc.stop()


def digits_npz(path: Path) -> Path:
    """scikit-learn's bundled digits as the studio's .npz format (x: N x 1 x 8 x 8 in [0, 1])."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(path, x=(digits.images[:, None] / 16.0).astype(np.float32), y=digits.target)
    return path
