"""Quantized students on digits: an int8 QAT student against the fp32 student it replaces.

    .venv/bin/python -m benchmarks.qat_table            # measure, print, update docs/benchmarks.md
    .venv/bin/python -m benchmarks.qat_table --no-write --seeds 1

The paper table's protocol (`benchmarks/paper_table.py`: demo teacher, resnet8 width 0.25 on a
stratified subset, 40 epochs, ce 0.1 + kd 0.9 at T 4, held-out digits). Per seed: the fp32
student; the same config with `training.qat: x86` (int8 fake quantization through torch.ao,
`worker/engine/quantize.py`), read as its float weights and as the int8 model that the run
stores (`student_int8.onnx`, ONNX QDQ), reloaded in onnxruntime; weight bytes of the
convolutions and linears, file sizes and CPU latency at batch 1 on one thread. The fp32 student
is measured both ways: as ONNX in onnxruntime (the like-for-like row for the int8 file) and as
safetensors in torch eager (the run's own `student_*` figures).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.paper_table import (
    EPOCHS,
    FRACTION,
    STUDENT,
    TRAINING,
    _fmt,
    _top1,
    publish,
)
from core.config import RunConfig
from worker.engine import quantize
from worker.engine.evaluate import latency_ms, safetensors_size
from worker.engine.loading import load_model
from worker.engine.pipeline import make_demo
from worker.engine.tasks.classification import ClassificationTask
from worker.engine.tasks.classification.data import digits_data, split
from worker.engine.trainer import train

SECTION = "## Quantized students on digits"
COMMAND = ".venv/bin/python -m benchmarks.qat_table"
BACKEND = "x86"
_KD = [
    {"name": "ce", "weight": 0.1},
    {"name": "kd", "weight": 0.9, "params": {"temperature": 4}},
]


def _config(seed: int, qat: str) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": f"qat-table-{qat}",
            "teacher": {"path": "demo teacher"},
            "dataset": {"path": "digits"},
            "student": STUDENT,
            "losses": _KD,
            "training": {**TRAINING, "qat": qat},
            "seed": seed,
        }
    )


def run(seeds: list[int]) -> dict[str, Any]:
    started = time.perf_counter()
    train_full, val = split(digits_data(), 0.2, 0)
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        teacher = load_model(make_demo(Path(tmp))[0], "pt2").module
        for seed in seeds:
            _, small = split(train_full, FRACTION, seed)
            fp32 = train(_config(seed, "none"), teacher, small, val).student.cpu().eval()
            qat = quantize.qat_student(_config(seed, BACKEND), ClassificationTask(), small, None)
            train(_config(seed, BACKEND), teacher, small, val, student=qat.prepared)
            float_weights = qat.synced().cpu().eval()
            converted = quantize.convert(qat.prepared.cpu(), BACKEND)
            example = torch.rand(2, 1, 8, 8)
            int8_path, fp32_path = Path(tmp) / f"int8_{seed}.onnx", Path(tmp) / f"fp32_{seed}.onnx"
            quantize.save_onnx(converted, example, int8_path, BACKEND)
            quantize.save_onnx(fp32, example, fp32_path, BACKEND)
            int8 = quantize.load_int8(int8_path, BACKEND)
            fp32_ort = quantize.OnnxModel(fp32_path)
            with quantize.engine(BACKEND):
                pair = {"fp32": fp32_ort, "int8": int8, "fp32 torch": fp32}
                ms = latency_ms(pair, (1, 8, 8), 1, threads=1, runs=200)
                measured = {
                    "fp32 top-1": _top1(fp32, val),
                    "qat int8 top-1": _top1(int8, val),
                    "qat fp32-weights top-1": _top1(float_weights, val),
                    "fp32 weight bytes": quantize.float_weight_bytes(fp32),
                    "int8 weight bytes": quantize.onnx_int8_weights(int8_path)["bytes"],
                    "fp32 file bytes": fp32_path.stat().st_size,
                    "int8 file bytes": int8_path.stat().st_size,
                    "fp32 safetensors bytes": safetensors_size(fp32),
                    "fp32 ms": ms["fp32"],
                    "int8 ms": ms["int8"],
                    "fp32 torch ms": ms["fp32 torch"],
                }
            for key, value in measured.items():
                rows.setdefault(key, []).append(float(value))
            print(f"seed {seed}", {k: round(v, 4) for k, v in measured.items()}, flush=True)
    return {"rows": rows, "seeds": seeds, "seconds": time.perf_counter() - started}


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _gap(a: list[float], b: list[float]) -> str:
    """How far mean `a` is from mean `b`, in top-1 points, in words."""
    points = (statistics.mean(a) - statistics.mean(b)) * 100
    return f"{abs(points):.2f} points {'below' if points < 0 else 'above'}"


def section(measured: dict[str, Any]) -> str:
    r = measured["rows"]
    seeds = ", ".join(map(str, measured["seeds"]))
    return f"""{SECTION}

Command: `{COMMAND}` (CPU, one thread; {measured["seconds"] / 60:.1f} min wall clock on a 2-core
machine shared with other jobs). Protocol as the paper table: resnet8 width 0.25 on a stratified
{FRACTION:.0%} subset, {EPOCHS} epochs, ce 0.1 + kd 0.9 (T 4), seeds {seeds}; the QAT student is
the same config with `training.qat: {BACKEND}`. Sizes and latencies are medians over the seeds;
latency is the median of 200 calls at batch 1 on one thread.

| student | top-1 % (mean ± std) | conv/linear weight bytes | file bytes | CPU ms, batch 1 |
| --- | --- | --- | --- | --- |
| fp32 (kd), ONNX in onnxruntime | {_fmt(r["fp32 top-1"])} | {_median(r["fp32 weight bytes"]):,.0f} | \
{_median(r["fp32 file bytes"]):,.0f} | {_median(r["fp32 ms"]):.3f} |
| QAT, int8: `student_int8.onnx` (QDQ) in onnxruntime | {_fmt(r["qat int8 top-1"])} | \
{_median(r["int8 weight bytes"]):,.0f} | {_median(r["int8 file bytes"]):,.0f} | {_median(r["int8 ms"]):.3f} |
| QAT, its float weights | {_fmt(r["qat fp32-weights top-1"])} | | | |
| fp32 (kd), safetensors in torch eager | same model | | \
{_median(r["fp32 safetensors bytes"]):,.0f} | {_median(r["fp32 torch ms"]):.3f} |

Reading. Top-1 is measured on the file a run stores (`student_int8.onnx`, reloaded in
onnxruntime, whose graph optimiser fuses the QuantizeLinear/DequantizeLinear pairs into integer
kernels: QLinearConv, QLinearAdd, QGemm). The int8 student is {_gap(r["qat int8 top-1"], r["fp32 top-1"])}
the fp32 student (the seeds' std is about {statistics.mean([statistics.stdev(r["fp32 top-1"]) * 100, statistics.stdev(r["qat int8 top-1"]) * 100]):.1f});
against its own float weights the int8 export is {_gap(r["qat int8 top-1"], r["qat fp32-weights top-1"])} them, so
what int8 loses here comes from training through fake quantization, not from the conversion
(Jacob et al. 2018 report int8 QAT within about a point of float on ImageNet). The file holds
the weights as int8, a quarter of the float bytes, yet it is \
{_median(r["int8 file bytes"]) / _median(r["fp32 file bytes"]):.2f}x the fp32 ONNX file: with
5k weights, the QDQ graph's extra nodes (a DequantizeLinear with per-channel scales per weight,
int32 biases, a QuantizeLinear/DequantizeLinear pair per activation) outweigh the 15 KB saved;
a full-width resnet8 (77 KB of int8 weights, the unit test's) comes out at 0.34x. In the same
runtime int8 / fp32 latency is {_median(r["int8 ms"]) / _median(r["fp32 ms"]):.2f} at batch 1:
at 8x8 inputs the (de)quantize steps cost about what the int8 kernels save. Torch eager runs the
same fp32 student {_median(r["fp32 torch ms"]) / _median(r["fp32 ms"]):.0f}x slower than
onnxruntime (per-op overhead), which is why both sides are timed in onnxruntime; this table's
previous version timed int8 TorchScript against fp32 torch eager (0.16 vs 0.33 ms), a
comparison across two runtimes.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0, 1, ...)")
    parser.add_argument("--no-write", action="store_true", help="print only, keep the docs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    measured = run(list(range(args.seeds)))
    publish(section(measured), SECTION, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
