"""Queued -> running: how long an idle worker takes to start training a run after `POST /runs`.

    .venv/bin/python -m benchmarks.queue_latency [--runs 5] [--database sqlite|postgres] [--idle 8]

Builds a throw-away studio like benchmarks/load_api.py (fresh database, Redis db, schema, first
admin), starts the real API (`distill-studio api`) and a real Celery worker
(`tests.conftest.WorkerProcess`: `-c 1`, prefork, as the tests run it), uploads a small MLP
teacher and a tabular dataset and waits until the worker inspected both. Then, `--runs` times,
with the worker idle for `--idle` seconds (the previous run finished, its spare sandbox child
started): `POST /runs`
(1 epoch, every step logged) and time, from just before the request,

- `running`: the run's `started_at` (set when the worker claims it; same clock, same machine),
- `first step`: until `GET /runs/{id}` shows `step >= 1` (polled every 50 ms),
- `first metric`: until `GET /runs/{id}/metrics` has a point (polled every 50 ms),
- `succeeded`: until the run finished.

Prints a Markdown table (median, max) for docs/benchmarks.md; `--json` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.load_api import (  # noqa: E402
    admin_token,
    run_config,
    studio,
    upload_inputs,
    wait_for,
)

POLL_S = 0.05


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def one_run(client: httpx.Client, body: dict[str, Any], timeout: float = 300) -> dict[str, float]:
    """POST a run and time its start, first step, first metric and end (seconds)."""
    posted = time.time()
    created = client.post("/runs", json=body)
    created.raise_for_status()
    run_id = created.json()["id"]
    out: dict[str, float] = {"answered": time.time() - posted}
    deadline = posted + timeout
    run: dict[str, Any] = {}
    while time.time() < deadline and ("first step" not in out or "first metric" not in out):
        run = client.get(f"/runs/{run_id}").json()
        now = time.time() - posted
        if run.get("step", 0) >= 1:
            out.setdefault("first step", now)
        if "first metric" not in out:
            series = client.get(f"/runs/{run_id}/metrics", params={"names": "loss"}).json()
            if series["series"].get("loss", {}).get("steps"):
                out["first metric"] = now
        if run["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"run {run_id} {run['status']}: {run.get('error')}")
        time.sleep(POLL_S)
    run = wait_for(client, f"/runs/{run_id}", {"succeeded", "failed", "cancelled"}, timeout)
    if run["status"] != "succeeded":
        raise RuntimeError(f"run {run_id} {run['status']}: {run.get('error')}")
    out["running"] = _epoch(run["started_at"]) - posted
    out["succeeded"] = _epoch(run["finished_at"]) - posted
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="sqlite")
    parser.add_argument("--json", type=Path, help="Write the figures here as JSON.")
    parser.add_argument(
        "--idle", type=float, default=8.0, help="Seconds the worker idles before each run."
    )
    parser.add_argument("--logs", type=Path, help="Copy the worker's and the API's logs here.")
    args = parser.parse_args(argv)

    from tests.conftest import WorkerProcess
    from tests.integration.servers import ApiServer

    with tempfile.TemporaryDirectory(prefix="ds-queue-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        env = stack.enter_context(studio(tmp, args.database))
        token = admin_token()
        worker = WorkerProcess(env, "queue").start()
        stack.callback(worker.stop)
        server = ApiServer(env).start()
        stack.callback(server.stop)
        with httpx.Client(
            base_url=f"{server.url}/api/v1",
            timeout=120,
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            model, dataset = upload_inputs(client, tmp, "")
            runs = []
            for i in range(args.runs):
                time.sleep(args.idle)  # the worker idles: its spare sandbox child is up again
                runs.append(one_run(client, run_config(model["id"], dataset["id"], f"q{i}", 1)))
                print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in runs[-1].items()))
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in (worker.log, server.log):
                shutil.copy(log, args.logs / log.name)

    labels = ["answered", "running", "first step", "first metric", "succeeded"]
    rows = {
        label: {
            "median_s": statistics.median(r[label] for r in runs),
            "max_s": max(r[label] for r in runs),
        }
        for label in labels
    }
    print(f"\n{args.runs} runs, one at a time, idle worker ({args.database}); from POST /runs:\n")
    print("| until | median s | max s |\n| --- | ---: | ---: |")
    for label, row in rows.items():
        print(f"| {label} | {row['median_s']:.2f} | {row['max_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"database": args.database, "runs": runs, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
