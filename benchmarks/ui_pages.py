"""How long each studio page takes to load with 1,000 runs (with metrics) in the database.

    .venv/bin/python -m benchmarks.ui_pages [--runs 1000] [--repeat 5]

Builds a throw-away SQLite studio in a temporary folder (Alembic schema, the first admin), seeds
a teacher, a dataset with its preview, `--runs` runs (mostly succeeded, with summaries and
~100 metric points each) and a saved comparison, serves the real API with uvicorn in a thread,
then for every page:

- times a full run of the page script through Streamlit's AppTest (the page's Python plus every
  API call it makes, as a browser session would run it; rendering in the browser is not
  included), median of `--repeat` runs after one warm-up;
- times the API calls the page makes, each on its own (median over the repeats).

It prints a Markdown table (copied into docs/benchmarks.md). Needs Redis for the API's broker
check only (`DS_TEST_REDIS_URL`, default redis://127.0.0.1:6379); no worker runs.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "ui" / "streamlit_app.py")
BUDGET_S = 2.0


def _env(tmp: Path) -> None:
    redis = os.environ.get("DS_TEST_REDIS_URL", "redis://127.0.0.1:6379")
    os.environ.update(
        DS_ENV="test",
        DS_DATA_DIR=str(tmp),
        DS_DATABASE_URL=f"sqlite:///{tmp / 'studio.db'}",
        DS_BROKER_URL=f"{redis}/15",
        DS_ARTIFACTS_URL=(tmp / "artifacts").as_uri(),
        DS_SECRET_KEY="benchmark-secret-key-that-is-long-enough-0123456789",
        DS_ADMIN_USERNAME="admin",
        DS_ADMIN_PASSWORD="admin-password-123",
    )


INSPECTION = {
    "input_shape": [1, 8, 8],
    "output_shape": [10],
    "num_classes": 10,
    "params": 272_474,
    "flops": 8_000_000,
    "layers": [
        {
            "path": f"layer{i}",
            "type": "Sequential",
            "input_shape": [16, 8, 8],
            "output_shape": [16, 8, 8],
            "params": 1000 * i,
            "stage": i % 3,
        }
        for i in range(1, 40)
    ],
    "stages": [
        {"index": i, "resolution": [8, 8], "channels": 16, "layers": [], "end": None}
        for i in range(3)
    ],
}


def _seed(n_runs: int) -> dict[str, int]:
    import numpy as np
    import torch
    from sqlalchemy import insert

    from core.db import session_scope
    from core.db.tables import Comparison, Dataset, Metric, Model, Run, Team
    from worker.engine.tasks.classification.data import TensorData, dataset_info, dataset_preview

    rng = random.Random(0)
    x = torch.from_numpy(np.random.default_rng(0).random((200, 1, 8, 8), dtype=np.float32))
    data = TensorData(x, torch.arange(200) % 10, [str(i) for i in range(10)])
    info = {**dataset_info(data), "preview": dataset_preview(data)}
    with session_scope() as s:
        team = s.query(Team).first()
        assert team is not None
        teacher = Model(
            team_id=team.id,
            name="digits-teacher",
            version=1,
            format="pt2",
            storage_key="x",
            size_bytes=1_100_000,
            status="ready",
            inspection=INSPECTION,
            card={"params": 272_474, "flops": 8_000_000},
        )
        dataset = Dataset(
            team_id=team.id,
            name="digits",
            format="npz",
            storage_key="y",
            size_bytes=500_000,
            status="ready",
            info=info,
        )
        s.add_all([teacher, dataset])
        s.flush()
        t0 = datetime.now(UTC) - timedelta(days=30)
        runs = []
        for i in range(n_runs):
            status = rng.choices(["succeeded", "failed", "cancelled", "running"], [90, 5, 4, 1])[0]
            width = rng.choice([0.25, 0.5, 1.0])
            temperature = rng.choice([2.0, 4.0, 8.0])
            config = {
                "name": f"run-{i:04d}",
                "teacher": {"model_id": teacher.id},
                "student": {"source": "zoo", "architecture": "resnet8", "kwargs": {"width": width}},
                "dataset": {"dataset_id": dataset.id, "val_fraction": 0.2},
                "layer_pairs": [{"teacher": "layer3", "student": "layer3", "tap": "output"}],
                "losses": [
                    {"name": "ce", "weight": 1.0, "params": {}},
                    {"name": "kd", "weight": 1.0, "params": {"temperature": temperature}},
                ],
                "scheme": "offline",
                "training": {"epochs": 10, "batch_size": 64, "lr": 0.05},
                "seed": i,
            }
            top1 = 0.80 + 0.15 * width - 0.005 * abs(temperature - 4) + rng.uniform(-0.02, 0.02)
            summary = (
                {}
                if status != "succeeded"
                else {
                    "teacher_top1": 0.97,
                    "student_top1": round(min(top1, 0.99), 4),
                    "agreement": round(min(top1 + 0.01, 1.0), 4),
                    "teacher_params": 272_474,
                    "student_params": int(78_000 * width * width),
                    "teacher_size_bytes": 1_100_000,
                    "student_size_bytes": int(320_000 * width * width),
                    "teacher_flops": 8_000_000,
                    "student_flops": int(2_000_000 * width * width),
                    "teacher_cpu_latency_ms": 1.2,
                    "student_cpu_latency_ms": round(0.3 + 0.5 * width, 3),
                }
            )
            created = t0 + timedelta(minutes=40 * i)
            runs.append(
                Run(
                    team_id=team.id,
                    name=config["name"],
                    config=config,
                    status=status,
                    queue="cpu",
                    progress=1.0 if status == "succeeded" else 0.4,
                    epoch=9,
                    step=100,
                    total_steps=100,
                    summary=summary,
                    error="lost the worker" if status == "failed" else None,
                    attempts=1,
                    teacher_model_id=teacher.id,
                    dataset_id=dataset.id,
                    created_at=created,
                    started_at=created + timedelta(seconds=5),
                    finished_at=None if status == "running" else created + timedelta(minutes=3),
                )
            )
        s.add_all(runs)
        s.flush()
        rows: list[dict[str, Any]] = []
        for run in runs:
            for step in range(1, 101, 5):  # 20 logged steps x 4 series + 10 epochs of val/top1
                for name, value in (
                    ("loss", 3.0 / step),
                    ("loss/ce", 2.0 / step),
                    ("loss/kd", 1.0 / step),
                    ("lr", 0.05),
                ):
                    rows.append(
                        {
                            "run_id": run.id,
                            "name": name,
                            "step": step,
                            "epoch": (step - 1) // 10,
                            "value": value,
                        }
                    )
            for epoch in range(10):
                rows.append(
                    {
                        "run_id": run.id,
                        "name": "val/top1",
                        "step": 10 * (epoch + 1),
                        "epoch": epoch,
                        "value": 0.5 + 0.04 * epoch,
                    }
                )
        s.execute(insert(Metric), rows)
        done = [r.id for r in runs if r.status == "succeeded"]
        comparison = Comparison(team_id=team.id, name="width sweep", run_ids=done[-5:])
        s.add(comparison)
        s.flush()
        return {
            "teacher": teacher.id,
            "dataset": dataset.id,
            "run": done[-1],
            "comparison": comparison.id,
            "metrics": len(rows),
        }


def _serve() -> tuple[Any, str]:
    import uvicorn

    from backend.app import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def _median_s(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _page_timer(url: str, token: str, page: str, query: dict[str, Any]) -> Callable[[], None]:
    from streamlit.testing.v1 import AppTest

    from client import Client

    me = Client(url, token).me().model_dump(mode="json")

    def load() -> None:
        at = AppTest.from_file(APP, default_timeout=60)
        at.session_state["token"] = token
        at.session_state["me"] = me
        at.session_state["team_id"] = me["team_id"]
        at.query_params.update({k: str(v) for k, v in query.items()})
        at.switch_page(f"app_pages/{page}").run()
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error, [e.value for e in at.error]
        assert at.title, f"{page} showed no title"

    return load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        _env(Path(tmp))
        from backend.bootstrap import ensure_admin
        from backend.migrate import upgrade
        from client import Client
        from core.db import session_scope

        upgrade()
        with session_scope() as session:
            token = ensure_admin(session).token
        started = time.perf_counter()
        ids = _seed(args.runs)
        print(
            f"seeded {args.runs} runs and {ids['metrics']:,} metric points in "
            f"{time.perf_counter() - started:.1f}s",
            file=sys.stderr,
        )
        server, url = _serve()
        os.environ["DS_API_URL"] = url  # what the pages talk to
        api = Client(url, token)
        runs_for_compare = [r.id for r in api.runs(status="succeeded", limit=5).items]
        run_id = ids["run"]
        pages: list[tuple[str, str, dict[str, Any], list[tuple[str, Callable[[], Any]]]]] = [
            (
                "Runs",
                "runs.py",
                {},
                [
                    ("GET /runs?limit=50", lambda: api.runs(limit=50)),
                    ("GET /models?limit=100", lambda: api.models(limit=100)),
                ],
            ),
            (
                "Run (succeeded)",
                "run.py",
                {"id": run_id},
                [
                    ("GET /runs/{id}", lambda: api.run(run_id)),
                    ("GET /runs/{id}/metrics", lambda: api.metrics(run_id)),
                    ("GET /runs/{id}/artifacts", lambda: api.artifacts(run_id)),
                    ("GET /runs/{id}/config.yaml", lambda: api.run_config_yaml(run_id)),
                ],
            ),
            (
                "Compare (5 runs)",
                "compare.py",
                {"runs": ",".join(map(str, runs_for_compare))},
                [
                    ("GET /comparisons", lambda: api.comparisons(limit=100)),
                    ("GET /runs?limit=100", lambda: api.runs(limit=100)),
                    (
                        "GET /runs/{id}/metrics?names=val/top1",
                        lambda: api.metrics(run_id, ["val/top1"]),
                    ),
                ],
            ),
            ("Compare (saved)", "compare.py", {"comparison": ids["comparison"]}, []),
            ("Models", "models.py", {}, [("GET /models", lambda: api.models(limit=100))]),
            (
                "Model (teacher of 1,000 runs)",
                "model.py",
                {"id": ids["teacher"]},
                [
                    ("GET /models/{id}", lambda: api.model(ids["teacher"])),
                    (
                        "GET /runs?teacher_model_id=&limit=20",
                        lambda: api.runs(teacher_model_id=ids["teacher"], limit=20),
                    ),
                ],
            ),
            (
                "Datasets",
                "datasets.py",
                {},
                [
                    ("GET /datasets", lambda: api.datasets(limit=100)),
                    ("GET /datasets/{id}/samples", lambda: api.dataset_samples(ids["dataset"])),
                ],
            ),
            ("New run", "new_run.py", {}, [("GET /catalog", api.catalog)]),
            (
                "Team & tokens",
                "team.py",
                {},
                [
                    ("GET /auth/tokens", api.tokens),
                    ("GET /teams/{id}/members", lambda: api.team_members(api.me().team_id)),
                ],
            ),
        ]
        print(
            f"\n| page | load (AppTest, median of {args.repeat}) | API calls it makes "
            "(each, median) |"
        )
        print("| --- | ---: | --- |")
        worst = 0.0
        for title, page, query, calls in pages:
            seconds = _median_s(_page_timer(url, token, page, query), args.repeat)
            worst = max(worst, seconds)
            timed = ", ".join(
                f"`{name}` {_median_s(fn, args.repeat) * 1000:.0f} ms" for name, fn in calls
            )
            print(f"| {title} | {seconds:.2f} s | {timed or '—'} |", flush=True)
        server.should_exit = True
        verdict = "within" if worst < BUDGET_S else "OVER"
        print(f"\nslowest page {worst:.2f} s: {verdict} the {BUDGET_S:.0f} s budget")


if __name__ == "__main__":
    main()
