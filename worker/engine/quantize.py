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

The int8 model is exported as ONNX in QDQ form (`student_int8.onnx`, artifact kind
`student_int8_onnx`): torch's TorchScript-based ONNX exporter (`torch.onnx.export(...,
dynamo=False)`, opset 17; per-channel weights need opset >= 13 for DequantizeLinear's `axis`)
turns each quantized conv/linear of the converted model into DequantizeLinear(int8 weight
constant, per-channel scales) -> Conv/Gemm -> QuantizeLinear, so the file holds int8 weights and
uint8 activations' scales, and onnxruntime fuses the pattern into integer kernels (QLinearConv,
QGemm, QLinearAdd). Only this path works in torch 2.13: the dynamo ONNX exporter and
`torch.export` (a `.pt2`) both fail on the packed-weight objects of quantized convolutions, and
the fake-quantized (prepared) model exports to neither (`fused_moving_avg_obs_fake_quant` has no
ONNX symbolic). The exporter lacks the quantized batch norms (`wrn`'s pre-activation BN-ReLU):
`_register_symbolics` adds them. Should it fail on another student's op, the int8 model is saved
as TorchScript instead (`student_int8.pt`, kind `student_int8`, `torch.jit.trace` of the
converted model) and the `quantized` block says why under `int8_onnx_error`.

evaluation.json's `quantized` block measures the file it wrote, reloaded: the ONNX model in a
fresh onnxruntime session (accuracy, file size, CPU latency at batch 1 on one thread), beside
the fp32 student exported the same way and run by the same runtime, so the latency ratio is
int8 against fp32 and not onnxruntime against torch eager. The studio never loads the int8
artifact as a model or teacher (its loader takes `.pt2` and safetensors only, pure ATen).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

INT8_ARTIFACT = ("student_int8_onnx", "student_int8.onnx")  # (kind, file name)
INT8_TORCHSCRIPT = ("student_int8", "student_int8.pt")  # when the ONNX exporter cannot
ONNX_OPSET = 17


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
    """Write the int8 model as TorchScript (traced on `example`): the fallback format."""
    with _quiet(), engine(backend), torch.inference_mode():
        traced = torch.jit.trace(model, (example.cpu(),), check_trace=False)
        torch.jit.save(traced, str(path))


_SYMBOLICS: list[str] = []


def _register_symbolics() -> None:
    """ONNX symbolics for the quantized batch norms torch's exporter lacks
    (`quantized::batch_norm2d[_relu]`: wrn's pre-activation BN-ReLU): dequantize,
    BatchNormalization (inference: running statistics), Relu, quantize to the op's output
    scale and zero point, the pattern of torch's own quantized layer_norm symbolic."""
    if _SYMBOLICS:
        return
    from torch.onnx import symbolic_helper as sh

    def batch_norm(relu: bool) -> Any:
        @sh.parse_args("v", "v", "v", "v", "v", "f", "v", "v")
        def symbolic(g, qx, weight, bias, mean, var, eps, scale, zero_point):  # type: ignore[no-untyped-def]
            x, _, _, _ = sh.dequantize_helper(g, qx)
            out = g.op("BatchNormalization", x, weight, bias, mean, var, epsilon_f=eps)
            if relu:
                out = g.op("Relu", out)
            return sh.quantize_helper(g, out, scale, zero_point)

        return symbolic

    for name, relu in (("batch_norm2d", False), ("batch_norm2d_relu", True)):
        torch.onnx.register_custom_op_symbolic(f"quantized::{name}", batch_norm(relu), 13)
        _SYMBOLICS.append(name)


def save_onnx(model: nn.Module, example: Tensor, path: Path, backend: str) -> None:
    """Write `model` (the converted int8 model, or a float one) as a single-file ONNX model
    with a dynamic batch (input "input", output "logits") through the TorchScript-based
    exporter: a converted model comes out in QDQ form with int8 weights (module docstring)."""
    _register_symbolics()
    with _quiet(), engine(backend), torch.no_grad():
        torch.onnx.export(
            model,
            (example.cpu(),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


class OnnxModel(nn.Module):
    """An ONNX file run by onnxruntime (CPU, `threads` intra-op threads) behind a module's
    call: float tensor in, float logits out, any batch size. No parameters: it lives on CPU."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out, *_) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(out)


def load_int8(path: Path, backend: str) -> nn.Module:
    """The int8 model this worker wrote, reloaded: an onnxruntime session for `.onnx`, the
    TorchScript module for `.pt` (never an upload: see the module docstring)."""
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxModel(path).eval()
    with _quiet(), engine(backend):
        module: nn.Module = torch.jit.load(str(path), map_location="cpu")
    return module.eval()


def onnx_int8_weights(path: Path) -> dict[str, int]:
    """What the ONNX file stores for its weights: the int8 tensors of two or more dimensions
    (conv/linear weights) that feed a DequantizeLinear, their count and bytes, and the bytes of
    float tensors of two or more dimensions (0 in a real int8 model)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    tensors = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensors[node.output[0]] = node.attribute[0].t
    dequantized = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    int8, int8_bytes, float_bytes = 0, 0, 0
    for name, proto in tensors.items():
        if len(proto.dims) < 2:
            continue
        array = numpy_helper.to_array(proto)
        if proto.data_type == onnx.TensorProto.INT8 and name in dequantized:
            int8, int8_bytes = int8 + 1, int8_bytes + array.nbytes
        elif proto.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            float_bytes += array.nbytes
    return {"tensors": int8, "bytes": int8_bytes, "float_bytes": float_bytes}


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
    """Convert the trained QAT model to int8, write `student_int8.onnx` (QDQ; TorchScript
    `student_int8.pt` when the ONNX exporter cannot), reload it and measure it next to the
    float student; (the artifact {kind: file name}, the `quantized` block).

    `fp32_size`: the float student's safetensors bytes (reported as `fp32_safetensors_bytes`).
    """
    prepared = qat.prepared.cpu()
    converted = convert(prepared, qat.backend)
    fp32 = qat.synced().cpu().eval()
    with torch.random.fork_rng(devices=[]):
        example = task.example_input(input_shape)
    out_dir = Path(out_dir)
    for _, stale in (INT8_ARTIFACT, INT8_TORCHSCRIPT):  # a resumed run keeps no older export
        (out_dir / stale).unlink(missing_ok=True)
    kind, name = INT8_ARTIFACT
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            save_onnx(converted, example, out_dir / name, qat.backend)
            fp32_onnx = Path(tmp) / "student_fp32.onnx"
            save_onnx(fp32, example, fp32_onnx, qat.backend)
            int8_model = load_int8(out_dir / name, qat.backend)
            fp32_model: nn.Module = OnnxModel(fp32_onnx).eval()
            fp32_bytes = fp32_onnx.stat().st_size
            extra = {
                "artifact_format": "onnx-qdq",
                "runtime": f"onnxruntime {_ort_version()} (CPUExecutionProvider)",
                "artifact_int8_weights": onnx_int8_weights(out_dir / name),
            }
        except Exception as exc:  # noqa: BLE001 - the int8 model is good; save it another way
            why = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"[:500]
            log.warning("int8 ONNX export failed (%s); saving TorchScript", why)
            (out_dir / name).unlink(missing_ok=True)
            kind, name = INT8_TORCHSCRIPT
            save_int8(converted, example, out_dir / name, qat.backend)
            int8_model, fp32_model, fp32_bytes = (
                load_int8(out_dir / name, qat.backend),
                fp32,
                fp32_size,
            )
            extra = {
                "artifact_format": "torchscript",
                "runtime": f"torch {torch.__version__}",
                "int8_onnx_error": why,  # its first line (the exporter appends the graph)
            }
        block = report(
            task=task,
            teacher=teacher,
            fp32=fp32,
            fp32_runtime=fp32_model,
            prepared=prepared,
            int8=int8_model,
            converted=converted,
            data=data,
            input_shape=input_shape,
            sizes=(fp32_bytes, (out_dir / name).stat().st_size),
            backend=qat.backend,
        )
    return {kind: name}, {
        **block,
        "artifact": name,
        "artifact_kind": kind,
        **extra,
        "fp32_safetensors_bytes": fp32_size,
    }


def _ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


def report(
    *,
    task: Any,
    teacher: nn.Module,
    fp32: nn.Module,
    fp32_runtime: nn.Module,
    prepared: nn.Module,
    int8: nn.Module,
    converted: nn.Module,
    data: Any,
    input_shape: Sequence[int],
    sizes: tuple[int, int],
    backend: str,
) -> dict[str, Any]:
    """evaluation.json's `quantized` block: fp32 and int8 side by side.

    Accuracy (the task's student metrics: top1, ...; fp32 from the float student, int8 from
    the reloaded artifact `int8`), size in bytes (`sizes`: the fp32 and the int8 file) and CPU
    latency at batch 1 (one thread, timed alternately, `evaluate.latency_ms`) of `fp32_runtime`
    (the float student in the int8 artifact's format and runtime) and `int8`; the
    fake-quantized model's metrics, and the int8 artifact's top-1 agreement with it and with
    the in-memory converted model; the conv/linear weight bytes of both.
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
            converted_agreement = task.evaluate(converted, int8, data).get("agreement")
            ms = latency_ms({"fp32": fp32_runtime, "int8": int8}, input_shape, 1, threads=1)
    finally:
        prepared.train(was_training)
    int8_weights, int8_tensors = int8_weight_bytes(converted)
    return {
        "method": "qat",
        "backend": backend,
        "fp32": {**fp32_q, "size_bytes": sizes[0], "cpu_latency_ms": ms["fp32"]},
        "int8": {**int8_q, "size_bytes": sizes[1], "cpu_latency_ms": ms["int8"]},
        "fake_quant": fake_q,
        "int8_agreement_with_fake_quant": agreement,
        "int8_agreement_with_converted": converted_agreement,
        "weight_bytes": {"fp32": float_weight_bytes(fp32), "int8": int8_weights},
        "int8_weight_tensors": int8_tensors,
        "latency_threads": 1,
    }
