"""The first publish of a process (what the first `POST /runs` of each API process pays), against
the ones after it.

    .venv/bin/python -m benchmarks.first_publish [--repeat 5]

Each case runs in a fresh Python process (`core.jobs` imported, nothing published yet), which
publishes with `core.jobs.send_task` as `POST /runs` does, and times:

- `cold`: the first publish, then the median of the next five;
- `readied`: `core.jobs.warm_up` first (what the API's start-up does in the background), then
  the first publish (not on a checkout older than `warm_up`);
- `new thread`: after a first publish, the first one from another thread (the API publishes
  from a pool of threads).

On a Redis database leased like the tests' (`tests.conftest`: free, flushed before and after).
Prints a Markdown table of the medians over `--repeat` processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE_PROCESS = """
import json, sys, threading, time
from core import jobs

def send():
    started = time.perf_counter()
    jobs.send_task("benchmark.nothing", [0], "cpu")
    return (time.perf_counter() - started) * 1000

case, out = sys.argv[1], {}
if case == "readied" and not hasattr(jobs, "warm_up"):  # an older checkout: no such case
    print(json.dumps(out))
    sys.exit()
if case == "readied":
    started = time.perf_counter()
    jobs.warm_up(jobs.producer_app())
    out["warm_up"] = (time.perf_counter() - started) * 1000
out["first"] = send()
out["next"] = sorted(send() for _ in range(5))[2]
if case == "new thread":
    took = []
    thread = threading.Thread(target=lambda: took.append(send()))
    thread.start()
    thread.join()
    out["thread"] = took[0]
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    import redis

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.conftest import _redis_db_url

    url = _redis_db_url()
    broker = redis.Redis.from_url(url)
    env = {**os.environ, "DS_BROKER_URL": url}
    rows: dict[str, dict[str, list[float]]] = {}
    try:
        for case in ("cold", "readied", "new thread"):
            for _ in range(args.repeat):
                done = subprocess.run(
                    [sys.executable, "-c", ONE_PROCESS, case],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                for key, ms in json.loads(done.stdout.splitlines()[-1]).items():
                    rows.setdefault(case, {}).setdefault(key, []).append(ms)
    finally:
        broker.flushdb()
    print("| case | warm-up ms | first publish ms | next ones ms | first from a new thread ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for case, figures in rows.items():
        cells = [
            f"{statistics.median(figures[key]):.1f}" if key in figures else "-"
            for key in ("warm_up", "first", "next", "thread")
        ]
        print(f"| {case} | {' | '.join(cells)} |")
    print(f"(medians of {args.repeat} processes each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
