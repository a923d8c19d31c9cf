"""Smoke tests of the peers benchmark (issue 14 item 7): its CPU mode and the GPU script's paths
(bf16 flag, compile, the table under $OUT) run on CPU with tiny models."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import dense_tasks, peers

ROOT = Path(__file__).resolve().parents[2]


def test_peers_quick_reports_every_variant_and_the_ratios(tmp_path: Path) -> None:
    out = tmp_path / "peers.md"
    before = (ROOT / "docs" / "benchmarks.md").read_text()
    assert peers.main(["--device", "cpu", "--quick", "--no-write", "--out", str(out)]) == 0
    text = out.read_text()
    for variant in ("floor", "hand kd", "engine kd", "hand +fit", "engine +fit"):
        assert f"| {variant} | " in text
    assert "| torchdistill +fit | not available" in text or "| torchdistill +fit | " in text
    assert "cached teacher epochs | measured apart: `benchmarks/teacher_cache.py`" in text
    assert "engine / hand loop: kd " in text and "engine / floor: kd " in text
    assert "the engine's taps beyond the hand loop's hooks" in text
    assert (ROOT / "docs" / "benchmarks.md").read_text() == before  # --no-write keeps the docs


@pytest.mark.slow
def test_gpu_script_runs_its_settings_on_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu.sh with DEVICE=cpu QUICK=1: fp32, amp and amp + compile (eager backend)
    each give a table under $OUT, with every variant measured, and the 1-vs-N line says what is
    missing."""
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "QUICK": "1",
        "OUT": str(tmp_path),
        "PYTHON": sys.executable,
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "peers.md").read_text()
    assert "failed or ran past" not in table, (tmp_path / "log.txt").read_text()[-3000:]
    assert table.count("| engine kd | ") == 3
    assert "--amp --compile" in table and "compile on" in table
    assert "failed:" not in table, table
    assert "1 vs N GPUs:" in table
    assert (tmp_path / "log.txt").exists()


@pytest.mark.parametrize("task", list(dense_tasks.SETUPS))
def test_dense_tasks_quick_gives_the_teacher_and_a_row_per_offered_loss(
    task: str, tmp_path: Path
) -> None:
    """The dense-task table (issue 13) in its quick mode: the teacher, the student alone and one
    row per distillation loss the catalog offers for the task, each with a value per metric."""
    out = tmp_path / f"{task}.md"
    before = (ROOT / "docs" / "benchmarks.md").read_text()
    assert dense_tasks.main(["--task", task, "--quick", "--seeds", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith(f"{dense_tasks.SECTION}: {task}\n")
    setup = dense_tasks.SETUPS[task]
    labels = list(dense_tasks.rows(task, setup))
    assert labels[0].startswith(dense_tasks.ALONE) and len(labels) >= 3
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| row | " + " | ".join(m.title for m in setup.metrics) + " |")
    assert lines[2].startswith("| teacher (")
    assert [line.split(" | ")[0][2:] for line in lines[3:]] == labels
    for line in lines[2:]:
        cells = line.split(" | ")
        for cell in cells[1 : 1 + len(setup.metrics)]:
            assert math.isfinite(float(cell.split(" ± ")[0])), line
    assert (ROOT / "docs" / "benchmarks.md").read_text() == before  # --quick keeps the docs


def test_attention_memory_runs_both_settings_to_the_same_value() -> None:
    """benchmarks/attention_memory.py's step, tiny: whole maps and every head its own chunk."""
    from benchmarks.attention_memory import one
    from worker.engine.losses import attention

    default = attention.CHUNK_ELEMENTS
    whole, chunked = one(32, 2, 4, 2 * 4 * 32 * 32 + 1), one(32, 2, 4, 1)
    assert chunked["value"] == pytest.approx(whole["value"], rel=1e-5)
    assert whole["peak_mib"] >= 0 and chunked["seconds"] > 0
    assert attention.CHUNK_ELEMENTS == default  # restored


@pytest.mark.slow
def test_lm_replay_run_quick_replays_without_the_teacher() -> None:
    """benchmarks/lm_replay_run.py, tiny: the three runs in their own processes; the replaying
    one loads no teacher, replays every batch and reports the recording run's teacher."""
    from benchmarks.lm_replay_run import measure

    live, recording, replaying = measure(layers=2, width=64, rows=48, epochs=1)
    assert (live["teacher_loaded"], replaying["teacher_loaded"]) == ("yes", "no")
    assert replaying["replayed"] == recording["recorded"] > 0 == replaying["recorded"]
    assert replaying["teacher_perplexity"] == recording["teacher_perplexity"]
    assert min(r["wall_s"] for r in (live, recording, replaying)) > 0


def test_the_load_counts_the_cpu_of_a_process_that_ended_in_its_parent() -> None:
    """`benchmarks.load_api`'s CPU split counts a child that ran and ended between its two
    readings (a training job's sandbox process ends with its job) in its parent's."""
    from benchmarks.load_api import cpu_seconds, cpu_spent

    before = cpu_seconds(os.getpid())
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    assert cpu_spent(before, cpu_seconds(os.getpid())) >= 0.3
