"""Quantized students: quantization-aware training (QAT) with distillation, and an int8 export.

QAT (Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018) trains the student through fake quantization: every
weight and activation that the int8 model will hold is rounded on the way forward,

    fq(x) = (clamp(round(x / s) + z, q_min, q_max) - z) * s

with the scale s and zero point z from observers (moving min/max), and passes its gradient
straight through (the straight-through estimator), so the weights learn to live on the int8 grid.
The distillation losses apply as usual: the student's (fake-quantized) logits against the fp32
teacher's.

The path is torch.ao's FX graph mode: `prepare_qat_fx` with the backend's default QAT qconfig
mapping (`x86`: per-channel symmetric int8 weights, uint8 activations; `qnnpack`: per-tensor),
which fuses conv-bn(-relu) and linear-relu and inserts `FakeQuantize` modules; `convert_fx` then
gives real int8 kernels. torch 2.13 keeps only this path in `torch.ao` (pt2e moved to torchao,
which the studio does not install); it warns that it is deprecated.

The prepared model shares every parameter and BatchNorm buffer with the float student (the fused
QAT modules are built from the float modules' own tensors), so training it trains the float
student: the run's fp32 artifacts are the same weights without fake quantization.

The int8 model is saved as TorchScript (`student_int8.pt`, `torch.jit.trace` of the converted
model): `torch.export` cannot trace the packed-weight objects of quantized convolutions. It is an
artifact of its own kind (`student_int8`) for deployment; the studio never loads it as a model or
teacher (its loader takes `.pt2` and safetensors only, pure ATen), only the worker that wrote it
reloads it, to evaluate it.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

INT8_ARTIFACT = ("student_int8", "student_int8.pt")


@contextlib.contextmanager
def engine(backend: str) -> Iterator[None]:
    """torch's quantized engine set to `backend` (x86 or qnnpack), restored afterwards."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = backend
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.ao's FX path warns on every call that it is deprecated (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def prepare(student: nn.Module, example: Tensor, backend: str) -> nn.Module:
    """The student ready for QAT: fused, with fake quantization on weights and activations.

    The result shares the student's parameters and BatchNorm buffers. ValueError when torch.fx
    cannot trace the student (e.g. data-dependent control flow).
    """
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    student.train()
    try:
        with _quiet(), engine(backend):
            return prepare_qat_fx(
                student, get_default_qat_qconfig_mapping(backend), (example.cpu(),)
            )
    except Exception as exc:
        raise ValueError(
            f"training.qat: torch.fx could not trace the student for quantization-aware training "
            f"({type(exc).__name__}: {exc}); use a zoo or derived student, or set qat: none"
        ) from exc


def fake_quantizers(model: nn.Module) -> list[nn.Module]:
    """The model's fake-quantize modules (weights' and activations')."""
    from torch.ao.quantization import FakeQuantizeBase

    return [m for m in model.modules() if isinstance(m, FakeQuantizeBase)]


def convert(prepared: nn.Module, backend: str) -> nn.Module:
    """The int8 model of a trained QAT model (a copy, on CPU, eval mode)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    model = copy.deepcopy(prepared).cpu().eval()
    if not isinstance(model, torch.fx.GraphModule):
        raise TypeError(f"convert wants the model `prepare` returned, got {type(model).__name__}")
    with _quiet(), engine(backend):
        return convert_fx(model)


def int8_weight_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of the quantized conv/linear weights, how many of them hold an int8 dtype)."""
    total, int8 = 0, 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if ".quantized" in type(module).__module__ and callable(weight):  # also intrinsic
            w = weight()
            total += w.numel() * w.element_size()
            int8 += int(w.dtype in (torch.qint8, torch.quint8))
    return total, int8


def float_weight_bytes(model: nn.Module) -> int:
    """Bytes of the float model's conv and linear weights."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return sum(
        m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, kinds)
    )


def save_int8(model: nn.Module, example: Tensor, path: Path, backend: str) -> None:
    """Write the int8 model as TorchScript (traced on `example`)."""
    with _quiet(), engine(backend), torch.inference_mode():
        traced = torch.jit.trace(model, (example.cpu(),), check_trace=False)
        torch.jit.save(traced, str(path))


def load_int8(path: Path, backend: str) -> nn.Module:
    """The int8 TorchScript model this worker wrote (never an upload: see the module docstring)."""
    with _quiet(), engine(backend):
        module: nn.Module = torch.jit.load(str(path), map_location="cpu")
    return module.eval()


@dataclass
class QatStudent:
    """A run's quantization-aware student: the float student, its prepared (fake-quantized)
    model that trains, the backend, and which of the prepared model's tensors are the float
    student's (`shared`: prepared name -> float name)."""

    fp32: nn.Module
    prepared: nn.Module
    backend: str
    shared: dict[str, str]

    def synced(self) -> nn.Module:
        """The float student holding the trained weights and BatchNorm statistics.

        Parameters stay shared when the prepared model moves to a GPU; buffers do not (`.to`
        replaces them), so every shared tensor is copied back.
        """
        ours = self.fp32.state_dict(keep_vars=True)
        theirs = self.prepared.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, fp32_name in self.shared.items():
                src, dst = theirs[name], ours[fp32_name]
                if src is not dst:
                    dst.copy_(src.detach().to(dst.device))
        return self.fp32


def qat_student(config: Any, task: Any, data: Any, student: nn.Module | None) -> QatStudent | None:
    """The run's QAT student when `training.qat` names a backend (None when it is "none").

    `student` is the run's student module, or None for a zoo student: built here the way the
    trainer builds it (seeded with the run's seed), so it starts from the same weights.
    """
    backend = config.training.qat
    if backend == "none":
        return None
    shape = task.input_shape(data)
    if student is None:
        from worker.engine.students import build_student

        torch.manual_seed(config.seed)
        spec = config.student
        student = build_student(spec.architecture, shape, task.output_size(data), **spec.kwargs)
    with torch.random.fork_rng(devices=[]):
        example = task.example_input(shape)
    prepared = prepare(student, example, backend)
    by_ptr = {t.data_ptr(): k for k, t in student.state_dict().items() if t.numel()}
    shared = {
        k: by_ptr[t.data_ptr()]
        for k, t in prepared.state_dict().items()
        if t.numel() and t.data_ptr() in by_ptr
    }
    return QatStudent(student, prepared, backend, shared)


def export_int8(
    qat: QatStudent,
    *,
    task: Any,
    teacher: nn.Module,
    out_dir: Path,
    data: Any,
    input_shape: Sequence[int],
    fp32_size: int,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Convert the trained QAT model to int8, write `student_int8.pt`, reload it and measure
    it next to the float student; (the artifact {kind: file name}, the `quantized` block)."""
    kind, name = INT8_ARTIFACT
    path = Path(out_dir) / name
    prepared = qat.prepared.cpu()
    converted = convert(prepared, qat.backend)
    with torch.random.fork_rng(devices=[]):
        example = task.example_input(input_shape)
    save_int8(converted, example, path, qat.backend)
    block = report(
        task=task,
        teacher=teacher,
        fp32=qat.synced().cpu().eval(),
        prepared=prepared,
        int8=load_int8(path, qat.backend),
        converted=converted,
        data=data,
        input_shape=input_shape,
        sizes=(fp32_size, path.stat().st_size),
        backend=qat.backend,
    )
    return {kind: name}, block


def report(
    *,
    task: Any,
    teacher: nn.Module,
    fp32: nn.Module,
    prepared: nn.Module,
    int8: nn.Module,
    converted: nn.Module,
    data: Any,
    input_shape: Sequence[int],
    sizes: tuple[int, int],
    backend: str,
) -> dict[str, Any]:
    """evaluation.json's `quantized` block: fp32 and int8 side by side.

    Accuracy (the task's student metrics: top1, ...), size in bytes (`sizes`: the fp32
    safetensors file, the int8 artifact) and CPU latency at batch 1 (one thread, timed
    alternately, `evaluate.latency_ms`); the fake-quantized model's metrics, and the int8
    model's top-1 agreement with it; the conv/linear weight bytes of both.
    """
    from worker.engine.evaluate import latency_ms

    def quality(model: nn.Module) -> dict[str, Any]:
        found = task.evaluate(teacher, model, data)
        return {k.removeprefix("student_"): v for k, v in found.items() if k.startswith("student_")}

    was_training = prepared.training
    prepared.eval()
    try:
        with _quiet(), engine(backend):
            fp32_q, int8_q, fake_q = quality(fp32), quality(int8), quality(prepared)
            agreement = task.evaluate(prepared, int8, data).get("agreement")
            ms = latency_ms({"fp32": fp32, "int8": int8}, input_shape, 1, threads=1)
    finally:
        prepared.train(was_training)
    int8_weights, int8_tensors = int8_weight_bytes(converted)
    return {
        "method": "qat",
        "backend": backend,
        "artifact": INT8_ARTIFACT[1],
        "artifact_format": "torchscript",
        "fp32": {**fp32_q, "size_bytes": sizes[0], "cpu_latency_ms": ms["fp32"]},
        "int8": {**int8_q, "size_bytes": sizes[1], "cpu_latency_ms": ms["int8"]},
        "fake_quant": fake_q,
        "int8_agreement_with_fake_quant": agreement,
        "weight_bytes": {"fp32": float_weight_bytes(fp32), "int8": int8_weights},
        "int8_weight_tensors": int8_tensors,
        "latency_threads": 1,
    }
