"""The token-level divergences on digits: the paper table's setting with one logit loss per row.

    nice -n 10 .venv/bin/python -m benchmarks.divergence_table             # measure, update docs
    .venv/bin/python -m benchmarks.divergence_table --no-write --seeds 1   # a quick look

Everything but the rows is `benchmarks.paper_table`'s: the demo teacher trained once, the resnet8
(width 0.25) student on a stratified 15% subset, 40 epochs, the same seeds and schedule, top-1 on
the held-out part. Every distillation row is ce 0.1 + 0.9 x the divergence at T = 4, the kd row's
weights and temperature, so the rows differ only in the divergence. On [N, classes] logits the
divergences are those an LM would use per token (`worker/engine/losses/divergence.py`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from benchmarks import paper_table

SECTION = "## Token-level divergences on digits"
COMMAND = "nice -n 10 .venv/bin/python -m benchmarks.divergence_table"


def _row(name: str, **params: Any) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """ce 0.1 + 0.9 x `name` at T = 4 (the paper table's kd weights), no layer pairs."""
    loss = {"name": name, "weight": 0.9, "params": {"temperature": 4.0, **params}}
    return [{"name": "ce", "weight": 0.1}, loss], []


ROWS: paper_table.Rows = {
    "student (ce)": paper_table.METHODS["student (ce)"],
    "kd (forward KL)": _row("kd"),
    "reverse_kl": _row("reverse_kl"),
    "gkd_jsd (beta 0.5)": _row("gkd_jsd", beta=0.5),
    "skew_kl (alpha 0.1)": _row("skew_kl", alpha=0.1),
    "tvd": _row("tvd"),
}


def section(measured: dict[str, Any], reading: str) -> str:
    return f"""{SECTION}

Command: `{COMMAND}` (CPU, one thread; this run took {measured["cpu_seconds"] / 60:.1f} min of
CPU time, {measured["seconds"] / 60:.1f} min wall clock on a 2-core machine shared with other
jobs). Code: `benchmarks/divergence_table.py`. The setting is the paper table's above (same
teacher, student, {paper_table.FRACTION:.0%} subset, {paper_table.EPOCHS} epochs, schedule and
held-out {measured["val_size"]} samples); seeds {", ".join(map(str, measured["seeds"]))}. Each
distillation row is ce 0.1 + 0.9 x the divergence at T = 4 (the kd row's weights), so the rows
differ only in the divergence (`worker/engine/losses/divergence.py`; on [N, classes] logits they
are what a language model uses per token).

{paper_table.table(measured)}

{reading}
"""


READING = """Reading. Every divergence helps this data-starved student: alone it reaches 89.6%,
and the rows gain 2.8 to 5.3 points of the 8.5-point gap to the teacher. The student and kd rows
repeat the paper table's seeds 0-2 to the digit (training on CPU is deterministic). Forward KL
(kd), reverse KL and skew KL are tied (94.3-94.9%, differences below their spreads of 0.3-1.0
points): with a 98% teacher the per-sample teacher distribution has one clear mode, so the
mode-covering / mode-seeking contrast the LM papers rely on (shown on a bimodal teacher in
`tests/unit/engine/test_divergence_losses.py`) has little to act on. TVD is in between
(+3.7, the widest spread). gkd_jsd at beta 0.5 gains the least (+2.8): at the same weight it
pulls less hard, since near agreement JSD(beta) is beta(1 - beta) = 1/4 of the KL's value (both
are then quadratic in the difference of the distributions), an effective weight of about 0.23
against kd's 0.9; a larger weight was not tried, so this ranks the settings, not the
divergences. Three seeds, one teacher-student pair, no tuning: a difference below about 2 points
is not a ranking. The language-model use (per-token, masked) is tested, not benchmarked here."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument("--no-write", action="store_true", help="print only, keep the docs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    measured = paper_table.run(list(range(args.seeds)), list(ROWS), ROWS)
    paper_table.publish(section(measured, READING), SECTION, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
