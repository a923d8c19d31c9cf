"""A downsampled read of a series too short for the rollups' buckets: the database's M4 against
the M4 of its chunks of JSON (`backend/runs/service.py` `_m4`, `_m4_chunks`).

    .venv/bin/python -m benchmarks.m4_reads [--database postgres] [--points 1500 3000 3700]

Builds a throw-away studio (`benchmarks.load_api.studio`), writes one series of each length
through the worker's reporter (a flush every 180 steps, as a training run does: points, rollups
and chunks), and times each way of reading it at `max_points=1000`, in this process, 100 times
after 10: the wall time (with the database's work) and this process's CPU, medians. Checks that
both give the very same series.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.load_api import admin_token, studio  # noqa: E402

MAX_POINTS = 1000


def timed(read: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall ms, CPU ms, result) of `read`: medians of 100 calls after 10."""
    for _ in range(10):
        read()
    walls, cpus = [], []
    for _ in range(100):
        wall, cpu = time.perf_counter(), time.process_time()
        result = read()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return 1000 * statistics.median(walls), 1000 * statistics.median(cpus), result


def write_series(run_id: int, name: str, steps: int) -> None:
    from worker.reporting import DbReporter

    reporter = DbReporter(run_id, "unused", "bench")
    reporter.flush_every = float("inf")
    reporter.on_start(steps, 0)
    for step in range(1, steps + 1):
        value = 2 * math.exp(-step / 900) + 0.1 * math.sin(step)
        reporter.on_step(
            SimpleNamespace(
                step=step,
                epoch=step // 1000,
                total_steps=steps,
                metrics={name: value},
                throughput=1.0,
                eta_seconds=1.0,
            )
        )
        if step % 180 == 0:
            reporter.flush()
    reporter.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--points", type=int, nargs="+", default=[1500, 3000, 3700])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ds-m4-") as tmp, studio(Path(tmp), args.database):
        from backend.runs import service
        from core.db import session_scope
        from core.db.tables import Run, Team

        admin_token()
        with session_scope() as session:
            team = session.query(Team).first()
            assert team is not None
            run = Run(team_id=team.id, name="m4", status="running", worker="bench", config={})
            session.add(run)
            session.flush()
            run_id = run.id
        print(f"| {args.database} | points | way | wall ms | API CPU ms | points kept |")
        print("| --- | ---: | --- | ---: | ---: | ---: |")
        for steps in args.points:
            if service.rollup_buckets(1, steps, MAX_POINTS) is not None:
                parser.error(f"{steps} points are read from the rollups at max_points=1000")
            name = f"loss{steps}"
            write_series(run_id, name, steps)
            with session_scope() as session:
                ref = session.get(Run, run_id)
                assert ref is not None
                ways = {
                    "the database's M4": partial(
                        service._m4, session, ref, name, 1, steps, MAX_POINTS
                    ),
                    "M4 of the chunks": partial(service._m4_chunks, session, ref, name, MAX_POINTS),
                }
                results = []
                for way, read in ways.items():
                    wall, cpu, result = timed(read)
                    results.append(result)
                    kept = len(result["steps"])
                    print(f"| | {steps} | {way} | {wall:.2f} | {cpu:.2f} | {kept} |")
                if results[0] != results[1]:
                    raise SystemExit(f"{steps} points: the two reads differ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
