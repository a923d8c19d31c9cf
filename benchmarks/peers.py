"""Training steps per second of the engine against a hand-written loop and the floor (issue 14 item 7).

    nice -n 5 .venv/bin/python -m benchmarks.peers            # CPU: measure, print, update the docs
    .venv/bin/python -m benchmarks.peers --device cpu --quick --no-write    # smoke (tiny models)
    python3 -m benchmarks.peers --device cuda --amp --compile --out $OUT/peers.md   # benchmarks/gpu.sh

One setting for every variant: a resnet32x4 teacher (built from the zoo, random weights, eval mode)
and a resnet8x4 student (the zoo's, the same seed and so the same initialisation everywhere),
random 3x32x32 inputs with 100 classes, batch 64, SGD (lr 0.05, momentum 0.9, wd 5e-4) with a
cosine schedule stepped every step. The losses are ce (0.1) + kd (0.9, T=4) and, in the `+fit`
variants, fitnets (weight 100) on RepDistiller's hint pair for this couple: layer2 of both, 128 x
16 x 16 on each side, so the regressor is the identity. The variants:

- `floor`: teacher forward without gradient + a plain student step on cross-entropy, nothing else;
- `hand kd`, `hand +fit`: a minimal hand-written loop doing the same math as the engine, as
  torchdistill and mdistiller do per step: teacher under `no_grad`, forward hooks for the features,
  the loss terms written out, `zero_grad/backward/step`, and the loss read back with `.item()`
  every step (both peers log it so); bf16 autocast, channels-last and `torch.compile` when asked,
  as the engine gets them;
- `engine kd`, `engine +fit`: `worker.engine.trainer.train` with the same run config (its data
  path, taps, loss terms, schedule, device-side metrics);
- `hand kd nosync` (asked for by name; gpu.sh does): `hand kd` without the `.item()` per step,
  the best a hand-written loop can do on a GPU;
- `torchdistill +fit` (only when `torchdistill` is importable): the hand loop with torchdistill's
  own `ForwardHookManager` for the teacher's and student's features (as its `DistillationBox`
  does) in place of plain hooks, kd + fitnets.

Each run builds its student, takes `--warmup` steps, then times `--steps` steps (the clock starts
and stops on a synchronised device); the variants run interleaved `--repeats` times and the median
steps/s of each is reported, of wall time and (CPU runs, one thread) of the process's CPU time,
which holds on a shared, busy machine.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.config import RunConfig
from worker.engine import trainer
from worker.engine.students import build_student
from worker.engine.tasks.classification.data import TensorData
from worker.engine.trainer import Callbacks, train

SECTION = "## Against the peers: engine, hand-written loop, floor (issue 14 item 7)"
COMMAND = "nice -n 5 .venv/bin/python -m benchmarks.peers"
CLASSES = 100
WEIGHTS = {"ce": 0.1, "kd": 0.9, "fitnets": 100.0}
TEMPERATURE = 4.0
PAIR = ("layer2", "layer2")  # (teacher, student): RepDistiller's FitNets hint for this couple
SGD = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
VARIANTS = ("floor", "hand kd", "engine kd", "hand +fit", "engine +fit", "torchdistill +fit")
EXTRA = ("hand kd nosync",)  # on request (gpu.sh): the hand loop without the per-step .item()


@dataclass
class Setting:
    device: torch.device
    teacher: str
    student: str
    student_kwargs: dict[str, Any]
    shape: tuple[int, int, int]
    batch: int
    warmup: int
    steps: int
    amp: bool
    compile: bool
    channels_last: bool
    teacher_kwargs: dict[str, Any] | None = None
    seed: int = 0
    threads: int = 0  # torch's CPU threads during the run

    @property
    def total(self) -> int:
        return self.warmup + self.steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Wall and CPU time of the timed steps: started at step `warmup`, stopped at the end."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.wall = self.cpu = 0.0

    def start(self) -> None:
        _sync(self.device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        _sync(self.device)
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def make_data(s: Setting) -> TensorData:
    """`total` batches of random inputs (CPU, as a loaded dataset) and labels, fixed seed."""
    gen = torch.Generator().manual_seed(1234)
    n = s.total * s.batch
    x = torch.randn(n, *s.shape, generator=gen)
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    return TensorData(x, y, [str(i) for i in range(CLASSES)])


def make_teacher(s: Setting) -> nn.Module:
    torch.manual_seed(99)
    return build_student(s.teacher, s.shape, CLASSES, **(s.teacher_kwargs or {})).eval()


# ----------------------------------------------------------------------------------------------
# the engine


def engine_run(s: Setting, teacher: nn.Module, data: TensorData, fit: bool) -> tuple[float, float]:
    losses: list[dict[str, Any]] = [
        {"name": "ce", "weight": WEIGHTS["ce"]},
        {"name": "kd", "weight": WEIGHTS["kd"], "params": {"temperature": TEMPERATURE}},
    ]
    if fit:
        losses.append({"name": "fitnets", "weight": WEIGHTS["fitnets"]})
    config = RunConfig.model_validate(
        {
            "teacher": {"path": "unused.pt2"},
            "dataset": {"path": "unused.npz"},
            "student": {"architecture": s.student, "kwargs": s.student_kwargs},
            "layer_pairs": [{"teacher": PAIR[0], "student": PAIR[1]}] if fit else [],
            "losses": losses,
            "seed": s.seed,
            "training": {
                "epochs": 1,
                "batch_size": s.batch,
                "schedule": "cosine",
                **SGD,
                "device": s.device.type,
                "amp": s.amp,
                "compile": s.compile,
                "channels_last": "on" if s.channels_last else "off",
                "log_every": 50,
                "checkpoint_every": 1_000_000,
            },
        }
    )
    clock = _Clock(s.device)

    class Timer(Callbacks):
        calls = 0

        def should_stop(self) -> bool:  # asked once before each step
            if self.calls == s.warmup:
                clock.start()
            self.calls += 1
            return False

    empty = data.subset([])
    result = train(config, teacher, data, empty, callbacks=Timer())
    assert result.steps == s.total, (result.steps, s.total)
    return clock.stop()


# ----------------------------------------------------------------------------------------------
# the hand-written loop and the floor


def _hooks(modules: dict[str, nn.Module]) -> tuple[dict[str, Tensor], list[Any]]:
    store: dict[str, Tensor] = {}
    handles = []
    for name, module in modules.items():

        def hook(_m: nn.Module, _i: Any, out: Tensor, name: str = name) -> None:
            store[name] = out

        handles.append(module.register_forward_hook(hook))
    return store, handles


def _torchdistill_hooks(
    s: Setting, teacher: nn.Module, student: nn.Module
) -> Callable[[], tuple[Tensor, Tensor]]:  # pragma: no cover - needs torchdistill
    """torchdistill's ForwardHookManager on both models; returns a reader of (t_feat, s_feat)."""
    from torchdistill.core.forward_hook import ForwardHookManager  # type: ignore[import-not-found]

    t_fhm, s_fhm = ForwardHookManager(s.device), ForwardHookManager(s.device)
    t_fhm.add_hook(teacher, PAIR[0], requires_input=False, requires_output=True)
    s_fhm.add_hook(student, PAIR[1], requires_input=False, requires_output=True)

    def read() -> tuple[Tensor, Tensor]:
        t_io, s_io = t_fhm.pop_io_dict(), s_fhm.pop_io_dict()
        return t_io[PAIR[0]]["output"], s_io[PAIR[1]]["output"]

    return read


def hand_run(
    s: Setting, teacher: nn.Module, data: TensorData, kind: str, sync: bool = True
) -> tuple[float, float]:
    """`kind`: floor, kd, fit, torchdistill; `sync`: read the loss on the host every step."""
    torch.manual_seed(s.seed)
    student = build_student(s.student, s.shape, CLASSES, **s.student_kwargs).to(s.device).train()
    teacher.to(s.device).eval()
    if s.channels_last:
        student.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        teacher.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.SGD(
        student.parameters(), SGD["lr"], SGD["momentum"], weight_decay=SGD["weight_decay"]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, s.total) / s.total))
    )
    read: Callable[[], tuple[Tensor, Tensor]] | None = None
    handles: list[Any] = []
    if kind == "fit":
        t_store, h1 = _hooks({"t": dict(teacher.named_modules())[PAIR[0]]})
        s_store, h2 = _hooks({"s": dict(student.named_modules())[PAIR[1]]})
        handles = h1 + h2

        def read() -> tuple[Tensor, Tensor]:
            return t_store["t"], s_store["s"]

    elif kind == "torchdistill":
        read = _torchdistill_hooks(s, teacher, student)
    t_fwd: Callable[..., Tensor] = teacher
    s_fwd: Callable[..., Tensor] = student
    if s.compile:  # as the engine: trainer.COMPILE_BACKEND (`--compile-backend`)
        t_fwd = torch.compile(teacher, backend=trainer.COMPILE_BACKEND)
        s_fwd = torch.compile(student, backend=trainer.COMPILE_BACKEND)
    cuda = s.device.type == "cuda"  # bf16 autocast on a GPU only, as the engine
    amp = torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.amp and cuda)
    gen = torch.Generator().manual_seed(s.seed)
    order = torch.randperm(len(data), generator=gen).split(s.batch)
    clock = _Clock(s.device)
    t = TEMPERATURE
    try:
        for i, idx in enumerate(order):
            if i == s.warmup:
                clock.start()
            x = data.x[idx].to(s.device, non_blocking=True)
            y = data.y[idx].to(s.device, non_blocking=True)
            if s.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), amp:
                t_logits = t_fwd(x)
            with amp:
                s_logits = s_fwd(x)
            if kind == "floor":
                loss = F.cross_entropy(s_logits.float(), y)
            else:
                kl = F.kl_div(
                    F.log_softmax(s_logits.float() / t, 1),
                    F.log_softmax(t_logits.float() / t, 1),
                    reduction="batchmean",
                    log_target=True,
                )
                loss = WEIGHTS["ce"] * F.cross_entropy(s_logits.float(), y)
                loss = loss + WEIGHTS["kd"] * kl * t * t
                if read is not None:
                    t_feat, s_feat = read()
                    loss = loss + WEIGHTS["fitnets"] * F.mse_loss(s_feat.float(), t_feat.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if sync:
                loss.item()  # torchdistill and mdistiller log the loss every step
        return clock.stop()
    finally:
        for h in handles:
            h.remove()


def torchdistill_available() -> bool:
    try:
        import torchdistill  # type: ignore[import-not-found]  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken: the row says so
        return False
    return True


RUNNERS: dict[str, Callable[[Setting, nn.Module, TensorData], tuple[float, float]]] = {
    "floor": lambda s, t, d: hand_run(s, t, d, "floor"),
    "hand kd": lambda s, t, d: hand_run(s, t, d, "kd"),
    "hand kd nosync": lambda s, t, d: hand_run(s, t, d, "kd", sync=False),
    "engine kd": lambda s, t, d: engine_run(s, t, d, fit=False),
    "hand +fit": lambda s, t, d: hand_run(s, t, d, "fit"),
    "engine +fit": lambda s, t, d: engine_run(s, t, d, fit=True),
    "torchdistill +fit": lambda s, t, d: hand_run(s, t, d, "torchdistill"),
}


# ----------------------------------------------------------------------------------------------
# measuring and reporting


def measure(
    s: Setting, variants: list[str], repeats: int, failures: dict[str, str] | None = None
) -> dict[str, dict[str, float]]:
    """Median steps/s (wall, cpu) of each variant, the variants interleaved `repeats` times. A
    variant that raises is dropped, its error kept in `failures` (an unattended run goes on)."""
    teacher, data = make_teacher(s), make_data(s)
    failed = failures if failures is not None else {}
    wall: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(repeats):
        for v in variants:
            if v in failed:
                continue
            if s.compile:  # each run compiles afresh, as a job in its own process would
                torch._dynamo.reset()  # (a cached graph of the shared teacher has no taps)
            try:
                w, c = RUNNERS[v](s, copy.deepcopy(teacher), data)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                failed[v] = f"{type(exc).__name__}: {first}"
                print(f"  repeat {r + 1}/{repeats} {v:16s} failed: {failed[v]}", flush=True)
                continue
            wall[v].append(s.steps / w)
            cpu[v].append(s.steps / max(c, 1e-9))
            print(f"  repeat {r + 1}/{repeats} {v:16s} {s.steps / w:8.2f} steps/s", flush=True)
    return {
        v: {"wall": statistics.median(wall[v]), "cpu": statistics.median(cpu[v])}
        for v in variants
        if v not in failed
    }


def _ratio(res: dict[str, dict[str, float]], a: str, b: str, key: str) -> str:
    if a not in res or b not in res:
        return "n/a"
    return f"{res[a][key] / res[b][key]:.3f}"


def report(
    res: dict[str, dict[str, float]],
    s: Setting,
    repeats: int,
    command: str,
    failures: dict[str, str] | None = None,
) -> str:
    failures = failures or {}
    key = "cpu" if s.device.type == "cpu" else "wall"
    lines = [
        SECTION,
        "",
        f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        f"Machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end; "
        f"device {s.device.type}"
        + (f" ({torch.cuda.get_device_name(s.device)})" if s.device.type == "cuda" else "")
        + f"; torch {torch.__version__}, {s.threads} thread(s).",
        f"Setting: {s.teacher} -> {s.student} {s.student_kwargs or ''}, inputs "
        f"{'x'.join(map(str, s.shape))}, batch {s.batch}, {s.warmup} warm-up + {s.steps} timed "
        f"steps, {repeats} interleaved repeats (median); amp {'bf16' if s.amp else 'off'}, "
        f"compile {'on' if s.compile else 'off'}, channels-last "
        f"{'on' if s.channels_last else 'off'}.",
        "",
        "| variant | steps/s (wall) | steps/s (CPU time) |",
        "| --- | ---: | ---: |",
    ]
    for v in (*VARIANTS, *EXTRA):
        if v in res:
            lines.append(f"| {v} | {res[v]['wall']:.2f} | {res[v]['cpu']:.2f} |")
        elif v in failures:
            lines.append(f"| {v} | failed: {failures[v].replace('|', '/')} | |")
        elif v == "torchdistill +fit":
            lines.append(f"| {v} | not available (torchdistill is not installed here) | |")
    lines.append(
        "| engine, cached teacher epochs | measured apart: `benchmarks/teacher_cache.py` "
        '(section "Teacher-output cache") | |'
    )
    fit_cost = {
        side: 1 - res[f"{side} +fit"][key] / res[f"{side} kd"][key]
        for side in ("engine", "hand")
        if f"{side} +fit" in res and f"{side} kd" in res
    }
    lines += [
        "",
        f"Ratios (of steps/s, {'CPU time' if key == 'cpu' else 'wall time'}; goals in brackets):",
        "",
        f"- engine / hand loop: kd {_ratio(res, 'engine kd', 'hand kd', key)}, "
        f"kd + fitnets {_ratio(res, 'engine +fit', 'hand +fit', key)} (>= 1)",
        f"- engine / floor: kd {_ratio(res, 'engine kd', 'floor', key)}, "
        f"kd + fitnets {_ratio(res, 'engine +fit', 'floor', key)} (>= 1/1.10 = 0.909)",
        "- hand loop / floor: kd " + _ratio(res, "hand kd", "floor", key),
    ]
    if "hand kd nosync" in res:
        lines.append(
            "- engine / hand loop without the per-step `.item()`: kd "
            + _ratio(res, "engine kd", "hand kd nosync", key)
        )
    if len(fit_cost) == 2:
        lines.append(
            f"- cost of one feature pair (taps + the fitnets term) in steps/s: engine "
            f"{fit_cost['engine']:+.1%}, hand loop {fit_cost['hand']:+.1%}; the engine's taps "
            f"beyond the hand loop's hooks {fit_cost['engine'] - fit_cost['hand']:+.1%} (< 3%)"
        )
    return "\n".join(lines) + "\n"


def setting(args: argparse.Namespace) -> Setting:
    device = torch.device(args.device)
    if args.quick:  # tiny models, few steps: checks that every path runs
        return Setting(device, "resnet8", "resnet8", {"width": 0.25}, (3, 16, 16), 8, 1, 2,
                       args.amp, args.compile, args.channels_last == "on",
                       {"width": 0.25})  # fmt: skip
    cl = args.channels_last == "on" or (args.channels_last == "auto" and device.type == "cuda")
    wide = args.models == "x4" or (args.models == "auto" and device.type == "cuda")
    teacher, student = ("resnet32x4", "resnet8x4") if wide else ("resnet32", "resnet8")
    return Setting(device, teacher, student, {}, (3, 32, 32), args.batch, args.warmup,
                   args.steps, args.amp, args.compile, cl)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 steps: a smoke run")
    parser.add_argument(
        "--models",
        choices=("auto", "x4", "plain"),
        default="auto",
        help="x4: resnet32x4 -> resnet8x4; plain: resnet32 -> resnet8 (4x narrower, about 16x "
        "fewer operations: what 2 shared CPU cores time in minutes); auto: x4 on cuda only",
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of every variant (eager: a quick check of the path)",
    )
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (CPU runs)")
    parser.add_argument("--out", help="also append the table (markdown) to this file")
    parser.add_argument("--no-write", action="store_true", help="keep docs/benchmarks.md")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in RUNNERS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if "torchdistill +fit" in variants and not torchdistill_available():
        variants.remove("torchdistill +fit")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU")
    threads, backend = torch.get_num_threads(), trainer.COMPILE_BACKEND
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    trainer.COMPILE_BACKEND = args.compile_backend
    s = setting(args)
    s.threads = torch.get_num_threads()
    try:
        failures: dict[str, str] = {}
        results = measure(s, variants, 1 if args.quick else args.repeats, failures)
    finally:  # as they were (main may run inside another process: the smoke test)
        torch.set_num_threads(threads)
        trainer.COMPILE_BACKEND = backend
    command = " ".join(
        ["python -m benchmarks.peers", *(argv if argv is not None else sys.argv[1:])]
    )
    text = report(results, s, 1 if args.quick else args.repeats, command, failures)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text.replace(SECTION, f"### {command}") + "\n")
    from benchmarks.paper_table import publish

    write = not (args.no_write or args.quick or s.device.type != "cpu")
    publish(text, SECTION, write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
