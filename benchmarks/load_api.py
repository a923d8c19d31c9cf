"""The API under load: concurrent clients on loopback while a worker trains a run.

    .venv/bin/python -m benchmarks.load_api [--clients 50] [--duration 60] [--database postgres]
        [--seed-runs 10000 --seed-points 1000000] [--api-workers 2] [--no-training]

Builds a throw-away studio: a fresh PostgreSQL database (`DS_TEST_POSTGRES_URL`, the production
database; `--database sqlite` for the embedded default), a Redis database (`DS_TEST_REDIS_URL`),
a local artifact store, the Alembic schema and the first admin. Starts the real API
(`distill-studio api`: uvicorn, one process) and a real Celery worker as subprocesses on
127.0.0.1, uploads a small MLP teacher (.pt2) and a tabular dataset (.npz), waits until the worker
inspected both, launches the *training run* (`--train-epochs`, every step logged) and then, for
`--duration` seconds, runs `--clients` clients, each with its own kept-alive connection, in a
loop (httpx; `--client kept-alive` for a minimal HTTP/1.1 client that takes about a tenth of
httpx's 1.1-1.5 ms of CPU per request from the cores it shares with the server):

- `GET /runs?limit=20` (list runs),
- `GET /runs/{id}/metrics?names=loss&max_points=1000` of the training run (read metrics, as the
  pages do; `--max-points 0` for every point, which every load before 2026-12-06 read: the
  option was not passed on),
- `GET /runs/{id}` of the training run (progress),
- `POST /runs` then `POST /runs/{id}/cancel` at once (create runs), `--creates-per-client`
  times per client (so the queue does not grow without bound), spread over the load: one at a
  random moment of each of as many equal parts of it, so the writes meet the load as it goes on
  (until 2026-12-05 each client made them with its first requests, so every write fell into the
  load's first second).

With `--seed-runs` / `--seed-points` the database first gets that many extra runs (finished,
of the admin's team) and metric points, bulk-inserted through `core.db.tables`: one run with a
`--big-series` points long series (200,000 by default), the rest in 10,000-point series, then on
PostgreSQL `VACUUM ANALYZE` (as autovacuum leaves a running studio's tables; it is off on this
machine's server, and the loads before 2026-12-06 went without); the load
then also reads a seeded run's 10,000 points (`GET /runs/{id}/metrics (10k)`), and after the load
the big series is read sequentially, whole and downsampled (`max_points=1000`), timed and sized.

It records the latency of every request per endpoint (p50, p95, p99, max) and every error (a
status other than 2xx, or a failed request), and the CPU seconds the API processes (the server
and its worker processes, psutil) spent during the load, per request, and where the machine's
CPU went meanwhile (the API, the training worker, PostgreSQL, Redis, the clients of this process,
and the machine in all); then waits for the training run to finish and checks
that its metrics arrived complete: every step from 1 to total_steps exactly once. It prints a
Markdown table (copied into docs/benchmarks.md and docs/reliability.md), writes the figures as
JSON with `--json`, and exits 1 on any error or incomplete metrics. The loop stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FEATURES, CLASSES = 16, 4


# -- the studio ---------------------------------------------------------------------------------


@contextmanager
def studio(tmp: Path, database: str) -> Iterator[Any]:
    """Env of a fresh studio (schema, admin) in `tmp`; applied to this process too."""
    from tests.conftest import _postgres_database, make_studio_env

    databases = _postgres_database() if database == "postgres" else iter(["sqlite"])
    env = make_studio_env(tmp, next(databases))
    env.env["DS_HEARTBEAT_S"] = "2"
    saved = {k: os.environ.get(k) for k in env.env}
    os.environ.update(env.env)
    try:
        from backend.migrate import upgrade
        from core.db import reset_caches

        reset_caches()
        upgrade()
        yield env
    finally:
        from core.db import reset_caches

        reset_caches()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        next(databases, None)  # drops the PostgreSQL database


def admin_token() -> str:
    from backend.bootstrap import ensure_admin
    from core.db import session_scope

    with session_scope() as session:
        return ensure_admin(session).token


def make_inputs(tmp: Path) -> tuple[Path, Path]:
    """A small MLP teacher as .pt2 and a learnable tabular dataset as .npz."""
    import numpy as np
    import torch

    from worker.engine.export import export_pt2
    from worker.engine.students import build_student

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2048, FEATURES)).astype(np.float32)
    y = (x[:, :CLASSES] + 0.3 * rng.normal(size=(2048, CLASSES))).argmax(1)
    data = tmp / "table.npz"
    np.savez(data, x=x, y=y)
    torch.manual_seed(0)
    teacher = build_student("mlp", (FEATURES,), CLASSES, hidden=64, depth=2)
    model = tmp / "teacher.pt2"
    export_pt2(teacher, (FEATURES,), model)
    return model, data


def run_config(model_id: int, dataset_id: int, name: str, epochs: int) -> dict[str, Any]:
    return {
        "name": name,
        "teacher": {"model_id": model_id},
        "dataset": {"dataset_id": dataset_id},
        "student": {"source": "zoo", "architecture": "mlp", "kwargs": {"hidden": 16, "depth": 1}},
        "losses": [{"name": "ce"}, {"name": "kd", "params": {"temperature": 4.0}}],
        "training": {
            "epochs": epochs,
            "batch_size": 32,
            "device": "cpu",
            "log_every": 1,
            "checkpoint_every": 100,
            "export_onnx": False,
        },
    }


def wait_for(client: httpx.Client, path: str, done: set[str], timeout: float) -> dict[str, Any]:
    deadline = time.time() + timeout
    body: dict[str, Any] = {}
    while time.time() < deadline:
        body = client.get(path).json()
        if body.get("status") in done:
            return body
        time.sleep(0.5)
    raise RuntimeError(f"{path} stayed {body.get('status')} for {timeout:.0f}s: {body}")


# -- the seeded database -----------------------------------------------------------------------

SEED_SERIES = 10_000  # points per ordinary seeded series


def upload_inputs(client: httpx.Client, tmp: Path, prefix: str) -> tuple[dict, dict]:
    """Upload `make_inputs`' teacher and dataset as `<prefix>teacher` and `<prefix>table` and
    wait until the worker has inspected both; their bodies."""
    model_file, data_file = make_inputs(tmp)
    with model_file.open("rb") as fh:
        model = client.post(
            "/models", files={"file": ("teacher.pt2", fh)}, data={"name": f"{prefix}teacher"}
        ).json()
    with data_file.open("rb") as fh:
        dataset = client.post(
            "/datasets", files={"file": ("table.npz", fh)}, data={"name": f"{prefix}table"}
        ).json()
    for path in (f"/models/{model['id']}", f"/datasets/{dataset['id']}"):
        body = wait_for(client, path, {"ready", "failed"}, 300)
        if body["status"] != "ready":
            raise RuntimeError(f"{path} failed: {body.get('error')}")
    return model, dataset


def seed(
    model_id: int | None, dataset_id: int | None, runs: int, points: int, big_series: int
) -> tuple[int | None, int | None]:
    """Bulk-insert `runs` finished runs and `points` metric points (one series of `big_series`
    points, the rest in series of SEED_SERIES) through the ORM tables; returns the id of the run
    with the big series and of one with a SEED_SERIES-point series (None when not seeded)."""
    from sqlalchemy import insert, select

    from core.clock import utcnow
    from core.db import session_scope
    from core.db.tables import Membership, Metric, Run

    if runs <= 0:
        return None, None
    started = time.perf_counter()
    now = utcnow()
    with session_scope() as session:
        member = session.scalars(select(Membership).order_by(Membership.id)).first()
        assert member is not None
        team_id, user_id = member.team_id, member.user_id
        config = run_config(model_id or 1, dataset_id or 1, "seeded", 1)
        statuses = ["succeeded"] * 8 + ["failed", "cancelled"]
        rows = [
            {
                "team_id": team_id,
                "name": f"seeded {i}",
                "config": {**config, "name": f"seeded {i}"},
                "status": statuses[i % len(statuses)],
                "queue": "cpu",
                "progress": 1.0,
                "epoch": 1,
                "step": SEED_SERIES,
                "total_steps": SEED_SERIES,
                "summary": {"student_top1": 0.9},
                "attempts": 1,
                "teacher_model_id": model_id,
                "dataset_id": dataset_id,
                "created_by": user_id,
                "created_at": now,
                "started_at": now,
                "finished_at": now,
            }
            for i in range(runs)
        ]
        for i in range(0, len(rows), 2000):
            session.execute(insert(Run), rows[i : i + 2000])
        session.flush()
        ids = list(
            session.scalars(
                select(Run.id).where(Run.name.like("seeded %")).order_by(Run.id).limit(runs)
            )
        )
    series: list[tuple[int, int]] = []  # (run id, points)
    left = points
    if left > 0:
        series.append((ids[0], min(big_series, left)))
        left -= series[-1][1]
    for run_id in ids[1:]:
        if left <= 0:
            break
        series.append((run_id, min(SEED_SERIES, left)))
        left -= series[-1][1]
    columns = {c.name for c in Metric.__table__.columns}
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        with session_scope() as s:
            s.execute(insert(Metric), batch)
        batch.clear()

    for run_id, n in series:
        for step in range(1, n + 1):
            row = {
                "run_id": run_id,
                "name": "loss",
                "step": step,
                "epoch": step // 1000,
                "value": 2.0 / (1 + step / 1000) + 0.01 * (step % 7),
                "created_at": now,
            }
            batch.append({k: v for k, v in row.items() if k in columns})
            if len(batch) >= 50_000:
                flush()
    if batch:
        flush()
    try:  # the series' rollups (migration 0006), built as a worker builds them; older: none
        from worker.reporting import rebuild_rollups
    except ImportError:
        rebuild_rollups = None
    if rebuild_rollups is not None:
        for run_id, _ in series:
            with session_scope() as s:
                rebuild_rollups(s, run_id, -1)
    try:  # the series' chunks of JSON (migration 0007), as the worker writes them; older: none
        from worker.metric_chunks import build_chunks
    except ImportError:
        build_chunks = None
    if build_chunks is not None:
        for run_id, _ in series:
            with session_scope() as s:
                build_chunks(s, run_id)
    settle()
    print(
        f"seeded {runs} runs and {sum(n for _, n in series)} metric points in "
        f"{time.perf_counter() - started:.0f}s",
        file=sys.stderr,
    )
    return ids[0], (series[1][0] if len(series) > 1 else None)


def settle() -> None:
    """On PostgreSQL, `VACUUM ANALYZE` the seeded database: what autovacuum does to a running
    studio's tables a minute or so after a bulk insert (statistics, hint bits, the visibility
    map). Autovacuum is off on this machine's server (`SHOW autovacuum`): the loads before
    2026-12-06 read tables never vacuumed nor analyzed."""
    from core.db import get_engine

    engine = get_engine()
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")


def big_series_reads(client: httpx.Client, run_id: int, times: int = 10) -> dict[str, Any]:
    """Read the big series sequentially, whole and downsampled: median ms and bytes of each."""
    out: dict[str, Any] = {}
    for label, params in (
        ("downsampled (max_points=1000)", {"names": "loss", "max_points": 1000}),
        ("whole", {"names": "loss"}),
    ):
        took, size, points = [], 0, 0
        for _ in range(times if "max" in label else max(2, times // 4)):
            started = time.perf_counter()
            response = client.get(f"/runs/{run_id}/metrics", params=params)
            took.append(time.perf_counter() - started)
            response.raise_for_status()
            size = len(response.content)
            points = len(response.json()["series"]["loss"]["steps"])
        out[label] = {
            "p50_ms": 1000 * statistics.median(took),
            "max_ms": 1000 * max(took),
            "bytes": size,
            "points_served": points,
        }
    return out


# -- the API's CPU ------------------------------------------------------------------------------


def api_processes(pid: int) -> list[Any]:
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of process `pid` and every process under it, by pid; each with
    those of its children that ended and were waited for (a job's sandbox process ends with its
    job: its CPU then counts in its parent's)."""
    import psutil

    out: dict[int, float] = {}
    for proc in api_processes(pid):
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        out[proc.pid] = times.user + times.system + times.children_user + times.children_system
    return out


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds a tree of processes (`cpu_seconds`) spent between the two readings: those of
    a process gone meanwhile are in its parent's reading."""
    return sum(after.values()) - sum(before.values())


def named_cpu_seconds(names: tuple[str, ...]) -> dict[int, float]:
    """CPU seconds of every process of the machine with one of `names` (PostgreSQL's, Redis')."""
    import psutil

    out: dict[int, float] = {}
    for proc in psutil.process_iter(["name", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is not None and (proc.info["name"] or "").startswith(names):
            # with the ended children waited for: PostgreSQL's server waits for its backends
            out[proc.pid] = times.user + times.system + times.children_user + times.children_system
    return out


@dataclass
class CoreSplit:
    """Where the machine's CPU went during the load: seconds of each part, and of all."""

    started: dict[str, Any] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)
    # each API process's seconds (uvicorn's supervisor and its workers), most first: how evenly
    # the processes shared the clients' connections
    by_api_process: list[float] = field(default_factory=list)

    def start(self, api_pid: int, worker_pid: int) -> None:
        import psutil

        self.started = self._now(api_pid, worker_pid) | {"machine": psutil.cpu_times()}

    def stop(self, api_pid: int, worker_pid: int) -> None:
        import psutil

        now = self._now(api_pid, worker_pid)
        for part in ("API", "worker (training)", "PostgreSQL", "Redis"):
            self.spent[part] = cpu_spent(self.started[part], now[part])
        api_before = self.started["API"]
        self.by_api_process = sorted(
            (round(now["API"][p] - api_before.get(p, 0.0), 2) for p in now["API"]), reverse=True
        )
        self.spent["clients (this process)"] = time.process_time() - self.started["clients"]
        before, after = self.started["machine"], psutil.cpu_times()
        busy = ("user", "nice", "system", "irq", "softirq", "steal")  # guest is in user
        self.spent["the machine, all"] = sum(
            getattr(after, f, 0.0) - getattr(before, f, 0.0) for f in busy
        )

    @staticmethod
    def _now(api_pid: int, worker_pid: int) -> dict[str, Any]:
        return {
            "API": cpu_seconds(api_pid),
            "worker (training)": cpu_seconds(worker_pid),
            "PostgreSQL": named_cpu_seconds(("postgres",)),
            "Redis": named_cpu_seconds(("redis-server",)),
            "clients": time.process_time(),
        }


# -- the load -----------------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    created: int = 0

    def record(self, label: str, started: float, response: Any, error: str | None = None) -> None:
        self.latencies[label].append(time.perf_counter() - started)
        if error is not None:
            self.errors[label].append(error)
        elif response is not None and not response.is_success:
            self.errors[label].append(f"{response.status_code} {response.text[:200]}")


@dataclass
class Answer:
    """What the load keeps of a response (the few attributes of httpx's it reads)."""

    status_code: int
    content: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class KeptAlive:
    """One client's HTTP/1.1 connection, kept alive: a load generator lighter than the server.

    httpx takes 1.1-1.5 ms of this process's CPU per request, a fifth of the two cores that the
    server under test shares with it (docs/benchmarks.md); this writes the request and reads
    the status line, the headers and the `Content-Length` body in about a tenth of that.
    `--client kept-alive`."""

    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.fixed = (
            f"Host: {parts.netloc}\r\nAuthorization: Bearer {token}\r\nAccept: */*\r\n"
            "Connection: keep-alive\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
    ) -> Answer:
        if self.writer is None or self.reader is None or self.reader.at_eof():
            await self.close()
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        target = self.prefix + path + (f"?{urlencode(params)}" if params else "")
        body = b"" if json_body is None else json.dumps(json_body).encode()
        head = f"{method} {target} HTTP/1.1\r\n".encode() + self.fixed
        if json_body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
        elif method != "GET":
            head += b"Content-Length: 0\r\n"
        self.writer.write(head + b"\r\n" + body)
        status_line, _, header_block = (await self.reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        headers = {}
        for line in header_block.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if b"content-length" not in headers:  # the load's requests are answered in one piece
            raise ValueError(f"{method} {target}: an answer without a Content-Length")
        content = await self.reader.readexactly(int(headers[b"content-length"]))
        if headers.get(b"connection", b"").lower() == b"close":
            await self.close()
        return Answer(status, content)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def one_client(
    url: str,
    token: str,
    run_id: int,
    create_body: dict[str, Any],
    creates: int,
    deadline: float,
    tally: Tally,
    seed: int,
    seeded_run: int | None = None,
    max_points: int = 0,
    kind: str = "httpx",
) -> None:
    rng = random.Random(seed)
    series = {"names": "loss", **({"max_points": max_points} if max_points else {})}
    async with AsyncExitStack() as stack:
        if kind == "httpx":
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=f"{url}/api/v1",
                    timeout=60,
                    limits=limits,
                    headers={"Authorization": f"Bearer {token}"},
                )
            )

            async def send(method: str, path: str, params: Any, body: Any) -> Any:
                return await client.request(method, path, params=params, json=body)

        else:
            kept = KeptAlive(f"{url}/api/v1", token)
            stack.push_async_callback(kept.close)

            async def send(method: str, path: str, params: Any, body: Any) -> Any:
                return await asyncio.wait_for(kept.request(method, path, params, body), 60)

        async def call(
            label: str, method: str, path: str, params: Any = None, body: Any = None
        ) -> Any:
            started = time.perf_counter()
            try:
                response = await send(method, path, params, body)
            except (TimeoutError, EOFError, OSError, ValueError, httpx.HTTPError) as exc:
                tally.record(label, started, None, f"{type(exc).__name__}: {exc}")
                if kind != "httpx":
                    await kept.close()  # a broken connection is not reused
                return None
            tally.record(label, started, response)
            return response

        start = time.time()
        part = (deadline - start) / max(creates, 1)
        create_at = [start + (k + rng.random()) * part for k in range(creates)]
        while time.time() < deadline:
            roll = rng.random()
            if create_at and time.time() >= create_at[0]:
                create_at.pop(0)
                created = await call("POST /runs", "POST", "/runs", body=create_body)
                if created is not None and created.status_code == 201:
                    tally.created += 1
                    await call(
                        "POST /runs/{id}/cancel", "POST", f"/runs/{created.json()['id']}/cancel"
                    )
            elif roll < 0.45:
                await call("GET /runs", "GET", "/runs", {"limit": 20})
            elif seeded_run is not None and roll < 0.55:
                await call(
                    "GET /runs/{id}/metrics (10k)", "GET", f"/runs/{seeded_run}/metrics", series
                )
            elif roll < 0.8:
                await call("GET /runs/{id}/metrics", "GET", f"/runs/{run_id}/metrics", series)
            else:
                await call("GET /runs/{id}", "GET", f"/runs/{run_id}")


async def load(
    url: str,
    token: str,
    run_id: int,
    create_body: dict[str, Any],
    clients: int,
    duration: float,
    creates: int,
    seeded_run: int | None = None,
    max_points: int = 0,
    kind: str = "httpx",
) -> tuple[Tally, float]:
    tally = Tally()
    started = time.time()
    deadline = started + duration
    await asyncio.gather(
        *(
            one_client(
                url,
                token,
                run_id,
                create_body,
                creates,
                deadline,
                tally,
                seed,
                seeded_run,
                max_points,  # until 2026-12-06 it was not passed on: every point was read
                kind,
            )
            for seed in range(clients)
        )
    )
    return tally, time.time() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summary(tally: Tally, took: float) -> list[dict[str, Any]]:
    rows = []
    for label in sorted(tally.latencies):
        values = tally.latencies[label]
        rows.append(
            {
                "endpoint": label,
                "requests": len(values),
                "per_s": len(values) / took,
                "p50_ms": 1000 * statistics.median(values),
                "p95_ms": 1000 * percentile(values, 95),
                "p99_ms": 1000 * percentile(values, 99),
                "max_ms": 1000 * max(values),
                "errors": len(tally.errors.get(label, [])),
            }
        )
    return rows


def overall(tally: Tally, took: float) -> dict[str, Any]:
    """The same figures over every request of every endpoint together."""
    values = [v for series in tally.latencies.values() for v in series]
    return {
        "endpoint": "every request",
        "requests": len(values),
        "per_s": len(values) / took,
        "p50_ms": 1000 * statistics.median(values) if values else 0.0,
        "p95_ms": 1000 * percentile(values, 95) if values else 0.0,
        "p99_ms": 1000 * percentile(values, 99) if values else 0.0,
        "max_ms": 1000 * max(values, default=0.0),
        "errors": sum(len(e) for e in tally.errors.values()),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| endpoint | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| `{r['endpoint']}` | {r['requests']} | {r['per_s']:.1f} | {r['p50_ms']:.0f} | "
            f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['max_ms']:.0f} | {r['errors']} |"
        )
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds of load.")
    parser.add_argument("--creates-per-client", type=int, default=3)
    parser.add_argument(
        "--train-epochs", type=int, default=40, help="Epochs of the training run (52 steps each)."
    )
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--json", type=Path, help="Write the figures here as JSON.")
    parser.add_argument("--seed-runs", type=int, default=0, help="Extra finished runs to seed.")
    parser.add_argument("--seed-points", type=int, default=0, help="Metric points to seed.")
    parser.add_argument("--big-series", type=int, default=200_000, help="Points of one series.")
    parser.add_argument(
        "--api-workers", type=int, default=None, help="API processes (DS_API_WORKERS)."
    )
    parser.add_argument(
        "--max-points",
        type=int,
        default=1000,
        help="max_points of the metric reads, as the pages ask (0: every point; a server "
        "older than max_points ignores it and sends every point).",
    )
    parser.add_argument(
        "--client",
        choices=["httpx", "kept-alive"],
        default="httpx",
        help="The load's HTTP client: httpx (1.1-1.5 ms of CPU per request, on the cores the "
        "server uses; every figure of docs/benchmarks.md) or a minimal HTTP/1.1 one (about a "
        "tenth of that: more of the cores for the server, more requests in it at once).",
    )
    parser.add_argument(
        "--worker-threads",
        type=int,
        default=0,
        help="torch threads of the training run (DS_WORKER_TORCH_THREADS); 0: the worker's "
        "default, its cores less one (one on two cores); every run before 2026-12-06 had "
        "torch's own, one per core: --worker-threads 2 on two cores.",
    )
    args = parser.parse_args(argv)

    from tests.conftest import WorkerProcess
    from tests.integration.servers import ApiServer

    os.environ.pop("OMP_NUM_THREADS", None)  # tests.conftest sets 1 for the test processes

    with tempfile.TemporaryDirectory(prefix="ds-load-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        env = stack.enter_context(studio(tmp, args.database))
        token = admin_token()
        threads = {"DS_WORKER_TORCH_THREADS": str(args.worker_threads)}
        worker = WorkerProcess(env, "load", extra_env=threads).start()
        stack.callback(worker.stop)
        extra = {} if args.api_workers is None else {"DS_API_WORKERS": str(args.api_workers)}
        server = ApiServer(env, extra_env=extra).start()
        stack.callback(server.stop)
        with httpx.Client(
            base_url=f"{server.url}/api/v1",
            timeout=120,
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            model, dataset = upload_inputs(client, tmp, "load-")
            big_run, seeded_run = seed(
                model["id"], dataset["id"], args.seed_runs, args.seed_points, args.big_series
            )
            training = client.post(
                "/runs",
                json=run_config(
                    model["id"], dataset["id"], "training under load", args.train_epochs
                ),
            )
            if training.status_code != 201:
                raise RuntimeError(f"the training run was refused: {training.text}")
            run_id = training.json()["id"]
            wait_for(client, f"/runs/{run_id}", {"running", "succeeded", "failed"}, 300)
            create_body = run_config(model["id"], dataset["id"], "created under load", 1)

            assert server.proc is not None
            assert worker.proc is not None
            split = CoreSplit()
            split.start(server.proc.pid, worker.proc.pid)
            tally, took = asyncio.run(
                load(
                    server.url,
                    token,
                    run_id,
                    create_body,
                    args.clients,
                    args.duration,
                    args.creates_per_client,
                    seeded_run,
                    args.max_points,
                    args.client,
                )
            )
            split.stop(server.proc.pid, worker.proc.pid)
            api_cpu = split.spent["API"]
            processes = len(api_processes(server.proc.pid))
            load_average = os.getloadavg()  # the machine is shared: say how busy it was
            early = summary(tally, took)  # shown now: the training run may take a while yet
            print(
                f"load ended: {sum(r['requests'] for r in early) / took:.0f} requests/s, "
                f"{1000 * api_cpu / max(sum(r['requests'] for r in early), 1):.2f} ms API CPU "
                f"per request, load average {load_average[0]:.1f} / {load_average[1]:.1f} / "
                f"{load_average[2]:.1f}\n{markdown([*early, overall(tally, took)])}",
                file=sys.stderr,
                flush=True,
            )
            big = big_series_reads(client, big_run) if big_run is not None else None
            at_end = client.get(f"/runs/{run_id}").json()
            run = wait_for(client, f"/runs/{run_id}", {"succeeded", "failed", "cancelled"}, 1800)
            steps = client.get(f"/runs/{run_id}/metrics", params={"names": "loss"}).json()[
                "series"
            ]["loss"]["steps"]
            cancelled = client.get("/runs", params={"status": "cancelled", "limit": 200}).json()

    rows = summary(tally, took)
    total = sum(r["requests"] for r in rows)
    errors = sum(r["errors"] for r in rows)
    complete = steps == list(range(1, run["total_steps"] + 1))
    result = {
        "clients": args.clients,
        "duration_s": took,
        "database": args.database,
        "requests": total,
        "requests_per_s": total / took,
        "errors": errors,
        "runs_created": tally.created,
        "api_processes": processes,
        "api_cpu_s": api_cpu,
        "api_cpu_ms_per_request": 1000 * api_cpu / max(total, 1),
        "load_average": load_average,
        "cpu_seconds": split.spent,
        "api_cpu_by_process_s": split.by_api_process,
        "seeded": {"runs": args.seed_runs, "points": args.seed_points},
        "max_points": args.max_points,
        "client": args.client,
        "worker_threads": args.worker_threads,
        "big_series": big,
        "runs_cancelled_listed": len(cancelled["items"]),
        "endpoints": rows,
        "overall": overall(tally, took),
        "training_run": {
            "status": run["status"],
            "total_steps": run["total_steps"],
            "steps_done_when_load_ended": at_end["step"],
            "metric_steps": len(steps),
            "every_step_once": complete,
            "error": run.get("error"),
        },
        "error_samples": {k: v[:3] for k, v in tally.errors.items() if v},
    }
    print(
        f"\n{args.clients} clients for {took:.1f}s on loopback ({args.database}): {total} "
        f"requests ({total / took:.0f}/s), {errors} errors, {tally.created} runs created and "
        f"cancelled; API: {processes} processes, {1000 * api_cpu / max(total, 1):.2f} ms "
        f"CPU per request; load average when the load ended {load_average[0]:.1f} / "
        f"{load_average[1]:.1f} / {load_average[2]:.1f} (1 / 5 / 15 min)\n"
    )
    print(markdown([*rows, overall(tally, took)]))
    cores = ", ".join(f"{part} {seconds:.1f}" for part, seconds in split.spent.items())
    print(
        f"\nCPU seconds during the {took:.0f} s of load ({os.cpu_count()} cores: {(os.cpu_count() or 1) * took:.0f}): {cores}"
    )
    print(f"the API's processes: {', '.join(f'{s:.1f}' for s in split.by_api_process)} s")
    if big is not None:
        print(f"\na {args.big_series}-point series, read one request at a time:")
        for label, b in big.items():
            print(
                f"- {label}: p50 {b['p50_ms']:.0f} ms, max {b['max_ms']:.0f} ms, "
                f"{b['bytes'] / 1000:.0f} KB, {b['points_served']} points"
            )
    print(
        f"\ntraining run: {run['status']}, {at_end['step']} of {run['total_steps']} steps done "
        f"when the load ended; metrics: {len(steps)} steps, every step once: {complete}"
    )
    if result["error_samples"]:
        print("errors:", json.dumps(result["error_samples"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if errors == 0 and complete and run["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
