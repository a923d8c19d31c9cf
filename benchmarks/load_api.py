"""The API under load: concurrent clients on loopback while a worker trains a run.

    .venv/bin/python -m benchmarks.load_api [--clients 50] [--duration 60] [--database postgres]

Builds a throw-away studio: a fresh PostgreSQL database (`DS_TEST_POSTGRES_URL`, the production
database; `--database sqlite` for the embedded default), a Redis database (`DS_TEST_REDIS_URL`),
a local artifact store, the Alembic schema and the first admin. Starts the real API
(`distill-studio api`: uvicorn, one process) and a real Celery worker as subprocesses on
127.0.0.1, uploads a small MLP teacher (.pt2) and a tabular dataset (.npz), waits until the worker
inspected both, launches the *training run* (`--train-epochs`, every step logged) and then, for
`--duration` seconds, runs `--clients` clients, each with its own connection, in a loop:

- `GET /runs?limit=20` (list runs),
- `GET /runs/{id}/metrics?names=loss` of the training run (read metrics),
- `GET /runs/{id}` of the training run (progress),
- `POST /runs` then `POST /runs/{id}/cancel` at once (create runs), at most
  `--creates-per-client` times per client, so the queue does not grow without bound.

It records the latency of every request per endpoint (p50, p95, p99, max) and every error (a
status other than 2xx, or a failed request), then waits for the training run to finish and checks
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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


# -- the load -----------------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    created: int = 0

    def record(
        self, label: str, started: float, response: httpx.Response | None, error: str | None = None
    ) -> None:
        self.latencies[label].append(time.perf_counter() - started)
        if error is not None:
            self.errors[label].append(error)
        elif response is not None and not response.is_success:
            self.errors[label].append(f"{response.status_code} {response.text[:200]}")


async def one_client(
    url: str,
    token: str,
    run_id: int,
    create_body: dict[str, Any],
    creates: int,
    deadline: float,
    tally: Tally,
    seed: int,
) -> None:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(
        base_url=f"{url}/api/v1",
        timeout=60,
        limits=limits,
        headers={"Authorization": f"Bearer {token}"},
    ) as client:

        async def call(label: str, method: str, path: str, **kw: Any) -> httpx.Response | None:
            started = time.perf_counter()
            try:
                response = await client.request(method, path, **kw)
            except httpx.HTTPError as exc:
                tally.record(label, started, None, f"{type(exc).__name__}: {exc}")
                return None
            tally.record(label, started, response)
            return response

        left = creates
        while time.time() < deadline:
            roll = rng.random()
            if left and roll < 0.1:
                left -= 1
                created = await call("POST /runs", "POST", "/runs", json=create_body)
                if created is not None and created.status_code == 201:
                    tally.created += 1
                    await call(
                        "POST /runs/{id}/cancel", "POST", f"/runs/{created.json()['id']}/cancel"
                    )
            elif roll < 0.45:
                await call("GET /runs", "GET", "/runs", params={"limit": 20})
            elif roll < 0.8:
                await call(
                    "GET /runs/{id}/metrics",
                    "GET",
                    f"/runs/{run_id}/metrics",
                    params={"names": "loss"},
                )
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
) -> tuple[Tally, float]:
    tally = Tally()
    started = time.time()
    deadline = started + duration
    await asyncio.gather(
        *(
            one_client(url, token, run_id, create_body, creates, deadline, tally, seed)
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
    args = parser.parse_args(argv)

    from tests.conftest import WorkerProcess
    from tests.integration.servers import ApiServer

    with tempfile.TemporaryDirectory(prefix="ds-load-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        env = stack.enter_context(studio(tmp, args.database))
        token = admin_token()
        worker = WorkerProcess(env, "load").start()
        stack.callback(worker.stop)
        server = ApiServer(env).start()
        stack.callback(server.stop)
        model_file, data_file = make_inputs(tmp)
        with httpx.Client(
            base_url=f"{server.url}/api/v1",
            timeout=120,
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            with model_file.open("rb") as fh:
                model = client.post(
                    "/models", files={"file": ("teacher.pt2", fh)}, data={"name": "load-teacher"}
                ).json()
            with data_file.open("rb") as fh:
                dataset = client.post(
                    "/datasets", files={"file": ("table.npz", fh)}, data={"name": "load-table"}
                ).json()
            for path in (f"/models/{model['id']}", f"/datasets/{dataset['id']}"):
                body = wait_for(client, path, {"ready", "failed"}, 300)
                if body["status"] != "ready":
                    raise RuntimeError(f"{path} failed: {body.get('error')}")
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

            tally, took = asyncio.run(
                load(
                    server.url,
                    token,
                    run_id,
                    create_body,
                    args.clients,
                    args.duration,
                    args.creates_per_client,
                )
            )
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
        "runs_cancelled_listed": len(cancelled["items"]),
        "endpoints": rows,
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
        f"cancelled\n"
    )
    print(markdown(rows))
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
