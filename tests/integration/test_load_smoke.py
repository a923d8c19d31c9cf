"""benchmarks/load_api.py keeps working: 5 clients for 3 s against a real API server and worker
on PostgreSQL, with a short training run whose metrics must arrive complete.

The benchmark itself (50 clients, 60 s) is not a test: timed targets do not belong in tests. Its
figures are in docs/benchmarks.md ("API under load") and docs/reliability.md ("Load").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_load_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.load_api",
            "--clients",
            "5",
            "--duration",
            "3",
            "--creates-per-client",
            "2",
            "--train-epochs",
            "2",
            "--worker-threads",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["errors"] == 0 and result["requests"] > 0
    assert result["client"] == "httpx" and result["worker_threads"] == 1
    assert {r["endpoint"] for r in result["endpoints"]} >= {
        "GET /runs",
        "GET /runs/{id}",
        "GET /runs/{id}/metrics",
    }
    every = result["overall"]
    assert every["requests"] == result["requests"] and every["errors"] == 0
    assert all(
        r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
        for r in [*result["endpoints"], every]
    )
    run = result["training_run"]
    assert run["status"] == "succeeded" and run["every_step_once"]
    assert run["metric_steps"] == run["total_steps"] > 0
    assert result["duration_s"] < 30, "the load loop stops by itself"
    assert "| endpoint | requests |" in proc.stdout
    cpu = result["cpu_seconds"]  # where the machine's CPU went during the load
    assert cpu["API"] > 0 and cpu["clients (this process)"] > 0 and cpu["PostgreSQL"] > 0
    assert (
        0
        < sum(v for k, v in cpu.items() if k != "the machine, all")
        <= 1.1 * (cpu["the machine, all"] + 1)
    )
    assert "CPU seconds during the" in proc.stdout
    by_process = result["api_cpu_by_process_s"]  # the supervisor and each worker process
    assert by_process == sorted(by_process, reverse=True) and by_process[0] > 0
    assert sum(by_process) == pytest.approx(cpu["API"], abs=0.05 * len(by_process))


def test_profile_benchmark_smoke() -> None:
    """benchmarks/profile_api.py keeps working, the writes too: a few requests each, SQLite."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.profile_api",
            "--database",
            "sqlite",
            "--requests",
            "15",
            "--runs",
            "10",
            "--points",
            "100",
            "--writes",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if "| `" in line}
    for endpoint in ("`GET /runs`", "`POST /runs`", "`POST /runs/{id}/cancel (queued)`"):
        assert endpoint in rows and rows[endpoint].count(" ms") == 2, proc.stdout


def test_m4_reads_benchmark_smoke() -> None:
    """benchmarks/m4_reads.py keeps working: both reads of one short series, the same series."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.m4_reads", "--database", "postgres", "--points", "1200"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| | 1200 |")]
    assert len(rows) == 2 and {row.split("|")[3].strip() for row in rows} == {
        "the database's M4",
        "M4 of the chunks",
    }
    assert rows[0].split("|")[-2] == rows[1].split("|")[-2]  # as many points kept
