"""Peak memory of one attention_kl step on long sequences: the whole attention maps against a
chunk of heads at a time (`worker.engine.losses.attention.heads_kl`, issue 12 at LLM lengths).

    .venv/bin/python -m benchmarks.attention_memory [--tokens 1024] [--batch 8] [--heads 12]

Each setting runs in its own process: random per-head queries and keys [N, H, L, 64] for a
student (with gradients) and a teacher, causal, one forward and backward of the KL. Reported:
the process's peak resident memory above what it held before the step (`ru_maxrss`), the wall
time of the step, and the value (the same in both settings, up to float rounding).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def one(tokens: int, batch: int, heads: int, chunk: int) -> dict[str, float]:
    """One step in this process; `chunk` 0 keeps the default chunk size."""
    import torch

    from worker.engine.losses import attention

    default = attention.CHUNK_ELEMENTS
    attention.CHUNK_ELEMENTS = chunk or default
    try:
        return _step(attention, torch, tokens, batch, heads)
    finally:
        attention.CHUNK_ELEMENTS = default


def _step(attention: Any, torch: Any, tokens: int, batch: int, heads: int) -> dict[str, float]:
    torch.manual_seed(0)
    shape = (batch, heads, tokens, 64)
    sq, sk = (torch.randn(shape, requires_grad=True) for _ in range(2))
    tq, tk = torch.randn(shape), torch.randn(shape)
    real = torch.ones(batch, tokens, dtype=torch.bool)
    valid = attention.key_mask(real, causal=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    value = attention.heads_kl((tq, tk, 0.125), (sq, sk, 0.125), valid, real)
    value.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": (peak - before) / 1024, "seconds": seconds, "value": value.item()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(args.tokens, args.batch, args.heads, args.one)))
        return 0
    whole = args.batch * args.heads * args.tokens**2 + 1  # every head in one chunk
    rows = []
    for label, chunk in (("whole maps", whole), ("a chunk of heads at a time", 0)):
        cmd = [sys.executable, "-m", "benchmarks.attention_memory", "--one", str(chunk)]
        cmd += ["--tokens", str(args.tokens), "--batch", str(args.batch)]
        cmd += ["--heads", str(args.heads)]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
        rows.append((label, json.loads(out.stdout.strip().splitlines()[-1])))
    print(
        f"attention_kl, N {args.batch}, {args.heads} heads, {args.tokens} tokens, head dim 64, "
        f"causal; {platform.machine()}, CPU"
    )
    print("| setting | peak memory above the start (MiB) | step (s) | value |")
    print("| --- | ---: | ---: | ---: |")
    for label, r in rows:
        print(f"| {label} | {r['peak_mib']:.0f} | {r['seconds']:.2f} | {r['value']:.6f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
