"""Evaluate a distilled student against its teacher on held-out data.

The quality side is the task's (`Task.evaluate`: for classification top-1/top-5, agreement and
calibration); this module adds the cost side, the same for every task: parameters, safetensors
size, FLOPs per sample, and latency at batch 1 and 64 on CPU and, when one is visible, on the GPU.

Latency (`latency_ms`) is measured the same way for both models: eval mode, `torch.inference_mode`,
a fixed intra-op thread count (one by default, recorded as `latency_threads`), warm-up calls
first (at least `warmup`, and at least `warmup_s` seconds, so lazy initialisation, allocator
growth and oneDNN/cuDNN kernel selection are not timed), then the two models timed alternately,
call by call, and the median kept. Alternating makes a busy, shared machine slow both models
alike instead of whichever happened to be measured second. On the GPU each call is timed with
CUDA events around it after a synchronize.

Why one thread: with two or more intra-op threads on a shared machine, every parallel operator
ends at a barrier that waits for a descheduled thread; a teacher whose convolutions are large
enough to be parallelised then measured 48.5 ms at batch 1 against 0.9 ms for a student whose
small operators run single-threaded (and up to 800 ms each under load), while one thread gives
the same ratio as batch 64 and figures comparable across workers with different core counts.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from worker.engine.export import save_safetensors
from worker.engine.loading import set_mode

if TYPE_CHECKING:
    from worker.engine.tasks.base import Task

_EVAL_BATCH = 256


def _device(module: nn.Module) -> torch.device:
    for tensor in [*module.parameters(), *module.buffers()]:
        return tensor.device
    return torch.device("cpu")


@torch.inference_mode()
def predict(module: nn.Module, x: Tensor, batch_size: int = _EVAL_BATCH) -> Tensor:
    """Logits for all of `x`, computed in batches on the module's device, returned on CPU."""
    was_training = module.training
    module.eval()
    device = _device(module)
    try:
        out = [
            module(x[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, len(x), batch_size)
        ]
    finally:
        module.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def rows_of(example: Tensor | None, input_shape: Sequence[int], batch: int) -> Tensor:
    """`batch` inputs: the rows of a task's `example` (`Task.example_input`: token ids for a
    text task) repeated, or random floats of `input_shape` without one."""
    if example is None:
        return torch.randn(batch, *[int(s) for s in input_shape])
    reps = -(-batch // max(len(example), 1))
    return example.repeat(reps, *([1] * (example.dim() - 1)))[:batch]


def count_flops(
    module: nn.Module, input_shape: Sequence[int], example: Tensor | None = None
) -> int:
    """FLOPs per sample (a multiply-add counts 2), measured on one sample on CPU (a row of
    `example` when given, see `rows_of`)."""
    counter = FlopCounterMode(display=False)
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode(), counter:
            module(rows_of(example, input_shape, 1).to(_device(module)))
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


@contextlib.contextmanager
def _eval_on(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """The module in eval mode on `device`; its device and mode are restored afterwards."""
    before, was_training = _device(module), module.training
    module.to(device)
    set_mode(module, False)
    try:
        yield module
    finally:
        module.to(before)
        set_mode(module, was_training)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[int]:
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _timer(device: torch.device) -> Callable[[nn.Module, Tensor], float]:
    """Milliseconds of one forward: wall clock on CPU, CUDA events on a GPU."""
    if device.type == "cuda":

        def cuda_time(module: nn.Module, x: Tensor) -> float:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            module(x)
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))

        return cuda_time

    def cpu_time(module: nn.Module, x: Tensor) -> float:
        start = time.perf_counter()
        module(x)
        return (time.perf_counter() - start) * 1000.0

    return cpu_time


def latency_ms(
    modules: dict[str, nn.Module],
    input_shape: Sequence[int],
    batch: int = 1,
    *,
    device: str | torch.device = "cpu",
    runs: int = 30,
    warmup: int = 5,
    warmup_s: float = 0.2,
    budget_s: float = 5.0,
    threads: int | None = None,
    example: Tensor | None = None,
    examples: dict[str, Tensor] | None = None,
) -> dict[str, float]:
    """Median milliseconds of one forward of each module at `batch`, measured the same way.
    The input is random floats of `input_shape`, or `example`'s rows (`rows_of`); `examples`
    names the modules that take rows of their own inputs instead (a text student with a
    tokenizer of its own: its token ids of the same texts).

    Every module gets the same input, at least `warmup` warm-up calls and at least `warmup_s`
    seconds of them (at least 2 and at most 50 calls, cut short after `budget_s / 2`), then up
    to `runs` timed calls, alternating between the modules; timing stops early (after at least
    5 rounds) once `budget_s` is spent, so large models on a slow CPU do not stall a run. `threads` fixes torch's intra-op threads (default:
    the current count; `evaluate` uses 1). Modules are moved to `device` and back, in eval mode.
    """
    device = torch.device(device)
    timer = _timer(device)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_threads(threads))
        stack.enter_context(torch.inference_mode())
        models = {k: stack.enter_context(_eval_on(m, device)) for k, m in modules.items()}
        xs = {
            k: rows_of((examples or {}).get(k, example), input_shape, batch).to(device)
            for k in models
        }
        for key, module in models.items():
            started, calls = time.perf_counter(), 0
            while calls < 2 or (
                calls < 50
                and (calls < warmup or time.perf_counter() - started < warmup_s)
                and time.perf_counter() - started < budget_s / 2
            ):
                timer(module, xs[key])
                calls += 1
        times: dict[str, list[float]] = {k: [] for k in models}
        deadline = time.perf_counter() + budget_s
        for i in range(runs):
            for key, module in models.items():
                times[key].append(timer(module, xs[key]))
            if i >= 4 and time.perf_counter() > deadline:
                break
    return {k: statistics.median(v) for k, v in times.items()}


def cpu_latency_ms(
    module: nn.Module, input_shape: Sequence[int], batch: int = 1, runs: int = 20, warmup: int = 5
) -> float:
    """Median wall time of one forward of one module on CPU, in milliseconds (see `latency_ms`)."""
    return latency_ms({"m": module}, input_shape, batch, runs=runs, warmup=warmup)["m"]


def safetensors_size(module: nn.Module) -> int:
    """Bytes of the module's safetensors file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_safetensors(module, path)
        return path.stat().st_size


def _latencies(
    teacher: nn.Module | None,
    student: nn.Module,
    shape: list[int],
    threads: int,
    example: Tensor | None = None,
    student_example: Tensor | None = None,
) -> dict[str, Any]:
    """Both models' latency at batch 1 and 64 on CPU, and on the GPU when one is visible (the
    student's alone when `teacher` is None); `student_example`: the student's own inputs."""
    own = {"student": student_example} if student_example is not None else None
    pair = {"student": student} if teacher is None else {"teacher": teacher, "student": student}
    devices = [("cpu", torch.device("cpu"))]
    if torch.cuda.is_available():
        devices.append(("gpu", torch.device("cuda", torch.cuda.current_device())))
    result: dict[str, Any] = {"latency_threads": threads}
    for label, device in devices:
        for batch, suffix, runs in ((1, "", 30), (64, "_b64", 10)):
            measured = latency_ms(
                pair,
                shape,
                batch,
                device=device,
                runs=runs,
                threads=threads,
                example=example,
                examples=own,
            )
            for who, ms in measured.items():
                result[f"{who}_{label}_latency{suffix}_ms"] = ms
    if torch.cuda.is_available():
        result["gpu_name"] = torch.cuda.get_device_name()
    return result


def _cost(
    module: nn.Module, input_shape: Sequence[int], prefix: str, example: Tensor | None = None
) -> dict[str, Any]:
    """Parameters, safetensors size and FLOPs per sample (counted on CPU); a graph run by
    another runtime (an ONNX teacher, `onnx_teacher.OnnxTeacher`) states its own."""
    graph_cost = getattr(module, "graph_cost", None)
    if callable(graph_cost):
        return {f"{prefix}_{key}": value for key, value in graph_cost().items()}
    with _eval_on(module, torch.device("cpu")) as cpu:
        return {
            f"{prefix}_params": sum(p.numel() for p in cpu.parameters()),
            f"{prefix}_size_bytes": safetensors_size(cpu),
            f"{prefix}_flops": count_flops(cpu, input_shape, example),
        }


def evaluate(
    teacher: nn.Module,
    student: nn.Module,
    data: Any,
    input_shape: Sequence[int],
    *,
    task: Task | None = None,
    latency_threads: int = 1,
    latency_student: nn.Module | None = None,
    teacher_figures: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Quality and cost of the student next to its teacher on the held-out `data`.

    Quality: the task's report (`task.evaluate`; the default task, classification, reports
    teacher_top1, student_top1, top5 with >= 5 classes, agreement, teacher_ece, student_ece).
    Cost: {teacher,student}_params, _size_bytes (safetensors), _flops (per sample),
    _cpu_latency_ms (batch 1) and _cpu_latency_b64_ms (batch 64), with latency_threads; on a
    machine with a GPU also _gpu_latency_ms, _gpu_latency_b64_ms and gpu_name. Latencies are
    medians measured alternately, the same way for both (`latency_ms`), on CPU with
    `latency_threads` intra-op threads. `latency_student` is the student to time instead, in the
    teacher's form (e.g. its own .pt2 loaded like a .pt2 teacher). The student is measured as
    deployed (`Task.native_inputs`: a text student with a tokenizer of its own on its own
    token ids, not the teacher's mapped to them).

    `teacher_figures`: the teacher's cost and latency as an earlier run measured them (its
    `teacher_*` keys of evaluation.json), for a teacher that was not loaded (`loading.is_shell`:
    the run replayed its outputs); only the student is measured then.
    """
    from worker.engine.tasks import default_task

    shape = [int(s) for s in input_shape]
    task = task or default_task()
    result = dict(task.evaluate(teacher, student, data))
    example = task.example_input(shape)  # the task's inputs (token ids for text)
    # the student as deployed: a text student with a tokenizer of its own reads its own ids
    costed = task.native_inputs(student, example)
    timed = task.native_inputs(student if latency_student is None else latency_student, example)
    result.update(_cost(costed[0], shape, "student", costed[1]))
    if teacher_figures is not None:
        result.update(_latencies(None, timed[0], shape, latency_threads, example, timed[1]))
        measured = {
            k.replace("student_", "teacher_", 1) for k in result if k.startswith("student_")
        }
        result.update({k: v for k, v in teacher_figures.items() if k in measured})
        return result
    result.update(_cost(teacher, shape, "teacher", example))
    result.update(_latencies(teacher, timed[0], shape, latency_threads, example, timed[1]))
    return result
