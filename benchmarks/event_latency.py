"""Live run events: how long an update takes from the worker writing it to clients that follow
the run (`GET /runs/{id}/events`, server-sent events through the broker's pub/sub).

    .venv/bin/python -m benchmarks.event_latency [--clients 10] [--updates 50] [--database sqlite|postgres]

Builds a throw-away studio like benchmarks/load_api.py (fresh database, Redis db, schema, first
admin), starts the real API (`distill-studio api`, its default processes) and opens `--clients`
streams on one running run. Then `--updates` times, what the worker does every
DS_METRICS_FLUSH_S: `DbReporter.on_step` and `flush()` (the metric points and progress written
to the database in one transaction, then published), timing from just before `flush()` until
each client has read the `progress` event of that step. Prints a Markdown table (median, p95,
max) for docs/benchmarks.md; `--json` writes the figures.

For comparison, a page that polls every 2 s sees an update 1 s after it was written on average,
2 s at worst (plus the request).
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.load_api import admin_token, percentile, studio  # noqa: E402

WORKER = "benchmark-worker:1"


def follow(url: str, token: str, arrivals: queue.Queue[tuple[int, float]], ready: Any) -> None:
    """One client: every progress event's step with the moment it arrived."""
    from client.events import parse_sse

    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.stream("GET", url, headers=headers, timeout=120) as response:
            for event in parse_sse(response.iter_lines()):
                if event.kind == "status":
                    ready.release()
                elif event.kind == "progress":
                    arrivals.put((int(event.data["step"]), time.monotonic()))
    except httpx.HTTPError:  # the API stopped
        pass


def measure(clients: int, updates: int, database: str) -> dict[str, Any]:
    from core.db import session_scope
    from core.db.tables import Membership, Run
    from tests.integration.servers import ApiServer
    from worker.reporting import DbReporter

    tmp = Path(tempfile.mkdtemp(prefix="ds-events-"))
    try:
        with studio(tmp, database) as env:
            token = admin_token()
            with session_scope() as session:
                team_id = session.query(Membership.team_id).order_by(Membership.id).first()[0]
                run = Run(team_id=team_id, name="live", config={}, status="running")
                run.worker, run.total_steps = WORKER, updates
                session.add(run)
                session.flush()
                run_id = run.id
            server = ApiServer(env).start()
            try:
                url = f"{server.url}/api/v1/runs/{run_id}/events"
                arrivals: queue.Queue[tuple[int, float]] = queue.Queue()
                ready = threading.Semaphore(0)
                for _ in range(clients):
                    threading.Thread(
                        target=follow, args=(url, token, arrivals, ready), daemon=True
                    ).start()
                for _ in range(clients):
                    assert ready.acquire(timeout=60), "a client did not connect"
                reporter = DbReporter(run_id, "unused", WORKER)
                reporter.flush_every = float("inf")  # only the flush() timed below writes
                latencies: list[float] = []
                for step in range(1, updates + 1):
                    reporter.on_step(
                        SimpleNamespace(
                            step=step,
                            epoch=0,
                            total_steps=updates,
                            metrics={"loss": 1.0 / step, "loss/kd": 0.5 / step},
                            throughput=1000.0,
                            eta_seconds=float(updates - step),
                        )
                    )
                    written = time.monotonic()
                    reporter.flush()
                    for _ in range(clients):
                        got, at = arrivals.get(timeout=30)
                        assert got == step, (got, step)
                        latencies.append(at - written)
                    assert arrivals.empty()
                    time.sleep(0.05)
            finally:
                server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ms = [s * 1000 for s in latencies]
    return {
        "database": database,
        "clients": clients,
        "updates": updates,
        "p50_ms": statistics.median(ms),
        "p95_ms": percentile(ms, 95),
        "max_ms": max(ms),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    row = measure(args.clients, args.updates, args.database)
    print("| database | clients | updates | flush -> client p50 | p95 | max |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {row['database']} | {row['clients']} | {row['updates']} | {row['p50_ms']:.1f} ms "
        f"| {row['p95_ms']:.1f} ms | {row['max_ms']:.1f} ms |"
    )
    if args.json:
        args.json.write_text(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
