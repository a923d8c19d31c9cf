"""The spare sandbox child is ready for a job's first step (worker/sandbox.py,
worker/sandbox_jobs.py): it has paid the first-use costs of loading a `.pt2` while it waited, and
the next job's child is started only once the current job makes its first call, so it does not
compete with the current job's start-up. How fast a run starts is in docs/benchmarks.md
(benchmarks/queue_latency.py), not here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from worker import sandbox

ROOT = Path(__file__).resolve().parents[2]


def test_preload_warms_up_what_loading_a_pt2_imports(tmp_path: Path) -> None:
    """A cold `.pt2` load imports hundreds of modules (about a second); after preload, none."""
    from torch import nn

    from worker.engine.export import export_pt2

    path = tmp_path / "m.pt2"
    export_pt2(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).eval(), (3,), path)
    code = f"""
import sys
from pathlib import Path
{{preload}}
import worker.engine.loading, worker.engine.pipeline, worker.engine.taps
from worker.engine.loading import load_model
before = set(sys.modules)
load_model(Path({str(path)!r}), "pt2", None, {{}})
print(len(set(sys.modules) - before))
"""
    counts = []
    for preload in ("pass", "from worker import sandbox_jobs; sandbox_jobs.preload()"):
        script = tmp_path / "load.py"
        script.write_text(code.replace("{preload}", preload))
        out = subprocess.run(
            [sys.executable, str(script)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        counts.append(int(out.strip().splitlines()[-1]))
    cold, warm = counts
    assert cold > 50 and warm == 0, counts


def test_the_next_child_starts_at_the_jobs_first_call() -> None:
    """`_serve` calls `on_first_call` once, when the child's first call after "started" comes."""
    r, w = os.pipe()
    messages = [
        {"call": "started"},
        {"call": "on_start", "args": [10, 0]},
        {"call": "on_step", "args": {}},
        {"result": 1},
    ]
    with open(w, "wb") as fh:
        for m in messages:
            fh.write(json.dumps(m).encode() + b"\n")
    events: list[str] = []
    outcome = sandbox._serve(
        r,
        None,
        lambda name, _args: events.append(name),
        None,
        on_first_call=lambda: events.append("spare"),
    )
    assert outcome == {"result": 1}
    assert events == ["spare", "on_start", "on_step"]
