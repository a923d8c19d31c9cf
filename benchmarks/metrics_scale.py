"""Metrics at scale: one run's long series read whole and downsampled, and the table's size.

    .venv/bin/python -m benchmarks.metrics_scale [--database sqlite|postgres|both]
        [--points 200000] [--storage-points 1000000] [--repeat 9] [--json out.json]

For each database, a throw-away studio (schema by Alembic, the first admin; PostgreSQL in a fresh
database at `DS_TEST_POSTGRES_URL`, as `benchmarks/load_api.py` makes it) gets one run with a
`--points` long `loss` series. Through the app in-process (FastAPI's TestClient, signed in as the
admin) it times, `--repeat` times each, and reports the median and the response size of:

- `GET /runs/{id}/metrics?names=loss&max_points=1000` from the points (downsampled in the
  database, M4, as before migration 0006: the series is bulk-inserted without rollups), then
  again after the run's rollups are built (`worker.reporting.rebuild_rollups`, timed), from them,
- `GET /runs/{id}/metrics?names=loss` (every point, as before `max_points`),
- `GET /runs/{id}/metrics?names=loss&since_step=N-10&max_points=1000` (a live chart's refresh);

on PostgreSQL the downsampled read again after `VACUUM metrics` (what autovacuum leaves after
the inserts: index-only counting).

Then the storage: the schema goes back to revision 0004 (the metrics table with a surrogate id,
a timestamp and a unique index), `--storage-points` points are bulk-inserted, and the table's size
with its indexes is measured (PostgreSQL: `pg_total_relation_size`; SQLite: its pages in
`dbstat`, after VACUUM); then migration 0005 runs (timed: it copies every row) and the size is
measured again, and the downsampled read is timed on that longer series too; then migration
0006 (timed: it fills the rollups in SQL) and the rollups' size, and the read again from them.

Last, the writer's cost: `DbReporter.flush()` of `--flush-steps` steps of 4 series each, timed
`--flushes` times with rollups and with `write_rollups` left out (as before 0006).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.load_api import admin_token, studio  # noqa: E402 - after the path is set

BATCH = 50_000
API = "http://testserver/api/v1"


def _value(step: int) -> float:
    return 2.0 / (1 + step / 1000) + 0.05 * math.sin(step * 1.7)


def _rows(run_id: int, points: int, stamp: bool) -> Iterator[tuple[Any, ...]]:
    for step in range(1, points + 1):
        row = (run_id, "loss", step, step // 1000, _value(step))
        yield (*row, "2026-12-03 08:00:00+00") if stamp else row


def bulk_insert(run_id: int, points: int, stamp: bool = False) -> float:
    """Insert the `loss` series through the driver (COPY on PostgreSQL); seconds taken."""
    from core.db import get_engine

    columns = "run_id, name, step, epoch, value" + (", created_at" if stamp else "")
    started = time.perf_counter()
    raw = get_engine().raw_connection()
    try:
        cursor = raw.cursor()
        if get_engine().dialect.name == "postgresql":
            with cursor.copy(f"COPY metrics ({columns}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                for row in _rows(run_id, points, stamp):
                    copy.write_row(row)
        else:
            marks = ", ".join("?" * len(columns.split(",")))
            batch: list[tuple[Any, ...]] = []
            for row in _rows(run_id, points, stamp):
                batch.append(row)
                if len(batch) == BATCH:
                    cursor.executemany(f"INSERT INTO metrics ({columns}) VALUES ({marks})", batch)
                    batch.clear()
            if batch:
                cursor.executemany(f"INSERT INTO metrics ({columns}) VALUES ({marks})", batch)
        raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - started


def metrics_bytes() -> tuple[int, int]:
    """(bytes of the metrics table with its indexes, rows in it)."""
    from sqlalchemy import text

    from core.db import get_engine

    engine = get_engine()
    if engine.dialect.name == "sqlite":
        import sqlite3

        with closing(sqlite3.connect(str(engine.url.database), isolation_level=None)) as db:
            db.execute("VACUUM")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT COUNT(*) FROM metrics")).scalar_one()
        if engine.dialect.name == "postgresql":
            size = conn.execute(text("SELECT pg_total_relation_size('metrics')")).scalar_one()
        else:
            size = conn.execute(
                text(
                    "SELECT SUM(pgsize) FROM dbstat WHERE name IN "
                    "(SELECT name FROM sqlite_schema WHERE tbl_name = 'metrics')"
                )
            ).scalar_one()
    return int(size), int(rows)


def new_run() -> int:
    from sqlalchemy import select

    from core.db import session_scope
    from core.db.tables import Membership, Run

    with session_scope() as session:
        member = session.scalars(select(Membership).order_by(Membership.id)).first()
        assert member is not None
        run = Run(team_id=member.team_id, name="long", config={}, status="succeeded")
        session.add(run)
        session.flush()
        return run.id


def timed(client: Any, path: str, params: dict[str, Any], repeat: int) -> dict[str, Any]:
    took, size, body = [], 0, {}
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path, params=params)
        took.append(time.perf_counter() - started)
        response.raise_for_status()
        size, body = len(response.content), response.json()["series"]["loss"]
    return {
        "median_ms": round(1000 * statistics.median(took), 1),
        "min_ms": round(1000 * min(took), 1),
        "bytes": size,
        "points_sent": len(body["steps"]),
        "total": body.get("total"),
        "downsampled": body.get("downsampled"),
    }


def rebuild(run_id: int) -> float:
    """Build the run's rollups from its points (as migration 0006 does); seconds taken."""
    from core.db import session_scope
    from worker.reporting import rebuild_rollups

    started = time.perf_counter()
    with session_scope() as session:
        rebuild_rollups(session, run_id, -1)
    return time.perf_counter() - started


def table_bytes(table: str) -> int:
    from sqlalchemy import text

    from core.db import get_engine

    with get_engine().connect() as conn:
        if get_engine().dialect.name == "postgresql":
            return int(conn.execute(text(f"SELECT pg_total_relation_size('{table}')")).scalar_one())
        return int(
            conn.execute(
                text(
                    "SELECT SUM(pgsize) FROM dbstat WHERE name IN "
                    f"(SELECT name FROM sqlite_schema WHERE tbl_name = '{table}')"
                )
            ).scalar_one()
            or 0
        )


def flush_cost(steps: int, flushes: int) -> dict[str, Any]:
    """Median ms of `DbReporter.flush()` of `steps` steps x 4 series, with and without rollups."""
    from types import SimpleNamespace
    from unittest import mock

    from sqlalchemy import update

    from core.db import session_scope
    from core.db.tables import Run
    from worker import reporting

    out: dict[str, Any] = {"points per flush": steps * 4}
    for label, rollups in (("without rollups (before)", False), ("with rollups", True)):
        run_id = new_run()
        with session_scope() as session:
            session.execute(update(Run).where(Run.id == run_id).values(worker="bench"))
        reporter = reporting.DbReporter(run_id, "unused", "bench")
        reporter.flush_every = float("inf")
        took = []
        with mock.patch.object(
            reporting, "write_rollups", reporting.write_rollups if rollups else lambda *a: None
        ):
            for flush in range(flushes):
                for step in range(flush * steps + 1, (flush + 1) * steps + 1):
                    reporter.on_step(
                        SimpleNamespace(
                            step=step,
                            epoch=0,
                            total_steps=flushes * steps,
                            metrics={n: _value(step + i) for i, n in enumerate("abcd")},
                            throughput=1.0,
                            eta_seconds=1.0,
                        )
                    )
                started = time.perf_counter()
                reporter.flush()
                took.append(time.perf_counter() - started)
        out[label] = round(1000 * statistics.median(took), 2)
    return out


def measure(
    database: str,
    points: int,
    storage_points: int,
    repeat: int,
    flush_steps: int = 100,
    flushes: int = 50,
) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from backend.app import create_app
    from backend.migrate import downgrade, upgrade

    out: dict[str, Any] = {"database": database}
    with tempfile.TemporaryDirectory() as tmp, studio(Path(tmp), database):
        token = admin_token()
        run_id = new_run()
        out["seed_s"] = round(bulk_insert(run_id, points), 1)
        path = f"/runs/{run_id}/metrics"
        reads: dict[str, Any] = {}
        with TestClient(create_app(), base_url=API) as client:
            client.headers["Authorization"] = f"Bearer {token}"
            timed(client, path, {"names": "loss", "max_points": 1000}, 1)  # warm up
            reads["max_points=1000 from the points (before 0006)"] = timed(
                client, path, {"names": "loss", "max_points": 1000}, repeat
            )
            out["rollups built s"] = round(rebuild(run_id), 2)
            reads["max_points=1000 from the rollups"] = timed(
                client, path, {"names": "loss", "max_points": 1000}, repeat
            )
            reads["every point"] = timed(client, path, {"names": "loss"}, max(3, repeat // 3))
            reads["since_step (last 10), max_points=1000"] = timed(
                client,
                path,
                {"names": "loss", "since_step": points - 10, "max_points": 1000},
                repeat,
            )
        out[f"reads of {points:,} points"] = reads
        if database == "postgres":  # what autovacuum leaves after the inserts: a visibility map
            from core.db import get_engine

            with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM metrics")
                conn.exec_driver_sql("VACUUM metric_rollups")
            with TestClient(create_app(), base_url=API) as client:
                client.headers["Authorization"] = f"Bearer {token}"
                out[f"reads of {points:,} points, after VACUUM"] = {
                    "max_points=1000 from the rollups": timed(
                        client, path, {"names": "loss", "max_points": 1000}, repeat
                    )
                }
                with get_engine().begin() as conn:
                    conn.exec_driver_sql("DELETE FROM metric_rollups")
                out[f"reads of {points:,} points, after VACUUM"][
                    "max_points=1000 from the points (before 0006)"
                ] = timed(client, path, {"names": "loss", "max_points": 1000}, repeat)
                rebuild(run_id)

        out["flush"] = flush_cost(flush_steps, flushes)

        from core.db import get_engine, reset_caches

        with get_engine().begin() as conn:
            conn.exec_driver_sql("DELETE FROM metrics")
        downgrade("0004")
        bulk_insert(run_id, storage_points, stamp=True)
        before, rows = metrics_bytes()
        started = time.perf_counter()
        upgrade("0005")
        migrate_s = time.perf_counter() - started
        reset_caches()
        after, rows_after = metrics_bytes()
        started = time.perf_counter()
        upgrade("head")
        rollups_s = time.perf_counter() - started
        if database == "sqlite":
            metrics_bytes()  # VACUUM
        rollup_bytes = table_bytes("metric_rollups")
        assert rows == rows_after == storage_points, (rows, rows_after)
        out["storage"] = {
            "points": storage_points,
            "before (0004) bytes/point": round(before / rows, 1),
            "after (0005) bytes/point": round(after / rows, 1),
            "before MB": round(before / 1e6, 1),
            "after MB": round(after / 1e6, 1),
            "migration 0005 s": round(migrate_s, 1),
            "migration 0006 s": round(rollups_s, 1),
            "rollups bytes/point": round(rollup_bytes / rows, 1),
        }
        with TestClient(create_app(), base_url=API) as client:
            client.headers["Authorization"] = f"Bearer {token}"
            long = {"names": "loss", "max_points": 1000}
            read = {"max_points=1000 from the rollups": timed(client, path, long, repeat)}
            with get_engine().begin() as conn:
                conn.exec_driver_sql("DELETE FROM metric_rollups")
            read["max_points=1000 from the points (before 0006)"] = timed(
                client, path, long, max(3, repeat // 3)
            )
            out[f"reads of {storage_points:,} points"] = read
    return out


def report(results: list[dict[str, Any]]) -> str:
    lines = [
        "| database | request | median ms | min ms | bytes | points sent / total |",
        "|---|---|---:|---:|---:|---|",
    ]
    for result in results:
        for key, reads in result.items():
            if not key.startswith("reads of"):
                continue
            for label, r in reads.items():
                lines.append(
                    f"| {result['database']} | {key.removeprefix('reads of ')}: {label} | "
                    f"{r['median_ms']} | {r['min_ms']} | {r['bytes']:,} | "
                    f"{r['points_sent']:,} / {r['total']:,} |"
                )
    lines += [
        "",
        "| database | points | bytes/point before (0004) | after (0005) | MB before | MB after "
        "| migration 0005 s | rollups bytes/point | migration 0006 s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        s = result["storage"]
        lines.append(
            f"| {result['database']} | {s['points']:,} | {s['before (0004) bytes/point']} | "
            f"{s['after (0005) bytes/point']} | {s['before MB']} | {s['after MB']} | "
            f"{s['migration 0005 s']} | {s['rollups bytes/point']} | {s['migration 0006 s']} |"
        )
    lines += [
        "",
        "| database | points per flush | flush ms without rollups (before) | with rollups "
        "| rollups built from 200k points s |",
        "|---|---:|---:|---:|---:|",
    ]
    for result in results:
        f = result["flush"]
        lines.append(
            f"| {result['database']} | {f['points per flush']} | "
            f"{f['without rollups (before)']} | {f['with rollups']} | {result['rollups built s']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--points", type=int, default=200_000, help="Points of the timed series.")
    parser.add_argument(
        "--storage-points", type=int, default=1_000_000, help="Points of the storage check."
    )
    parser.add_argument("--repeat", type=int, default=9, help="Timed reads of each kind.")
    parser.add_argument("--flush-steps", type=int, default=100, help="Steps per timed flush.")
    parser.add_argument("--flushes", type=int, default=50, help="Timed flushes of each kind.")
    parser.add_argument("--json", type=Path, help="Write the figures here too.")
    args = parser.parse_args(argv)
    databases = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    results = []
    for database in databases:
        print(f"{database}: seeding and reading ...", file=sys.stderr)
        results.append(
            measure(
                database,
                args.points,
                args.storage_points,
                args.repeat,
                args.flush_steps,
                args.flushes,
            )
        )
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
