"""Quantized students: quantization-aware training with distillation (`training.qat`), the int8
export (`student_int8.onnx`, ONNX QDQ run by onnxruntime) and evaluation.json's `quantized` block
(fp32 and int8 side by side, measured on the exported file)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from torch import nn

from core.catalog.training import TRAINING
from core.config import RunConfig
from core.trained_models import trained_models
from worker.engine import quantize
from worker.engine.evaluate import predict
from worker.engine.export import export_pt2
from worker.engine.loading import ModelLoadError, UnsafeModelError, load_model
from worker.engine.pipeline import run_distillation
from worker.engine.tasks.classification import ClassificationTask
from worker.engine.tasks.classification.data import TensorData
from worker.engine.trainer import Callbacks, Cancelled, train

# Integer kernels differ by CPU: on x86 without VNNI (AVX2 only; AVX-512 without VNNI), the
# uint8 x int8 kernels of onnxruntime (and fbgemm) add pairs of products in 16 bits
# (VPMADDUBSW), which saturates when activations use the full uint8 range (qnnpack's qconfig;
# x86's reduces the range to 7 bits for this reason). The int8 model then agrees a little less
# with the float and torch-int8 ones on such hosts; elsewhere the tighter bounds hold.
_CPUINFO = Path("/proc/cpuinfo")
U8S8_SATURATES = (
    platform.machine() in ("x86_64", "AMD64")
    and _CPUINFO.exists()
    and "vnni" not in _CPUINFO.read_text(errors="replace")
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _teacher() -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _config(**fields: Any) -> RunConfig:
    return RunConfig.model_validate(
        {
            "teacher": {"path": "unused.pt2"},
            "dataset": {"path": "unused.npz", "val_fraction": 0.25},
            "student": {"architecture": "resnet8"},
            "losses": [{"name": "ce"}, {"name": "kd"}],
            **fields,
            "training": {
                "epochs": 3,
                "batch_size": 32,
                "lr": 0.05,
                "device": "cpu",
                "export_onnx": False,
                "qat": "x86",
                **fields.get("training", {}),
            },
        }
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits (600 samples) and a small MLP teacher trained on them, as .pt2."""
    tmp = tmp_path_factory.mktemp("qat")
    d = load_digits()
    x = (d.images[:600, None] / 16.0).astype("float32")
    np.savez(tmp / "data.npz", x=x, y=d.target[:600])
    teacher = _teacher()
    opt = torch.optim.Adam(teacher.parameters(), lr=0.01)
    xs, ys = torch.from_numpy(x), torch.from_numpy(d.target[:600]).long()
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(teacher(xs), ys).backward()
        opt.step()
    export_pt2(teacher.eval(), (1, 8, 8), tmp / "teacher.pt2")
    return tmp


@pytest.fixture(scope="module")
def qat_run(files: Path) -> tuple[Path, dict[str, Any]]:
    """One whole QAT run (resnet8 student) through the pipeline: (out dir, summary)."""
    config = _config(
        teacher={"path": str(files / "teacher.pt2")},
        dataset={"path": str(files / "data.npz"), "val_fraction": 0.25},
    )
    out = files / "out"
    return out, run_distillation(config, files / "teacher.pt2", files / "data.npz", out)


# ----------------------------------------------------------------------------------------------
# the run config


def test_the_setting_is_declared_once_and_old_configs_are_unchanged() -> None:
    spec = TRAINING["qat"]
    assert spec.type == "choice" and spec.default == "none"
    assert spec.choices == ("none", "x86", "qnnpack") and "int8" in spec.help
    plain = RunConfig.model_validate({"teacher": {"path": "t.pt2"}, "dataset": {"path": "d.npz"}})
    assert plain.training.qat == "none"
    qat = _config()
    assert RunConfig.from_yaml(qat.to_yaml()) == qat
    assert yaml.safe_load(qat.to_yaml())["training"]["qat"] == "x86"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"training": {"qat": "int4"}}, "'none', 'x86' or 'qnnpack'"),
        ({"scheme": {"name": "online", "params": {"peers": 2}}}, "use scheme 'offline'"),
        (
            {
                "layer_pairs": [{"teacher": "1", "student": "layer1"}],
                "losses": [{"name": "ce"}, {"name": "fitnets"}],
            },
            "layer_pairs cannot tap them",
        ),
    ],
)
def test_configs_qat_cannot_run_are_refused_saying_why(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _config(**fields)


# ----------------------------------------------------------------------------------------------
# QAT: the model that trains


def test_the_prepared_student_fake_quantizes_and_shares_the_float_weights() -> None:
    config = _config()
    data = TensorData(torch.rand(8, 1, 8, 8), torch.arange(8) % 10, [str(i) for i in range(10)])
    qat = quantize.qat_student(config, ClassificationTask(), data, None)
    assert qat is not None and qat.backend == "x86"
    quantizers = quantize.fake_quantizers(qat.prepared)
    assert len(quantizers) >= 10  # weights of every conv/linear, and activations
    assert all(bool(q.fake_quant_enabled[0]) and bool(q.observer_enabled[0]) for q in quantizers)
    types = {type(m).__name__ for m in qat.prepared.modules()}
    assert {"ConvBnReLU2d", "ConvBn2d"} <= types  # conv-bn(-relu) fused for QAT
    # every float parameter is the prepared model's own tensor: training one trains the other
    fp32 = dict(qat.fp32.named_parameters())
    assert set(qat.shared.values()) >= set(fp32)
    # forward through fake quantization: outputs on the int8 grid differ from the float ones
    x = torch.rand(4, 1, 8, 8)
    qat.prepared.train()
    qat.prepared(x)  # observers see data
    qat.prepared.eval()
    qat.fp32.eval()
    with torch.no_grad():
        assert not torch.allclose(qat.prepared(x), qat.fp32(x))
    # a zoo student comes out as the trainer would build it (same seed, same weights)
    from worker.engine.students import build_student

    torch.manual_seed(config.seed)
    fresh = build_student("resnet8", (1, 8, 8), 10)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in qat.fp32.state_dict().items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))  # fmt: skip


def test_training_runs_through_active_fake_quantization_and_moves_the_float_weights() -> None:
    """The trainer steps the prepared model: every fake quantizer stays on and its observer
    sees the data (scales move off their initial 1.0), and the float student's weights move
    with it (they are the same tensors)."""
    d = load_digits()
    x = torch.tensor(d.images[:200], dtype=torch.float32)[:, None] / 16.0
    data = TensorData(x, torch.tensor(d.target[:200]), [str(i) for i in range(10)])
    config = _config(training={"epochs": 1})
    qat = quantize.qat_student(config, ClassificationTask(), data, None)
    assert qat is not None
    before = {k: v.clone() for k, v in qat.fp32.state_dict().items()}
    quantizers = quantize.fake_quantizers(qat.prepared)
    assert all(float(q.scale.flatten()[0]) == 1.0 for q in quantizers)  # nothing observed yet
    result = train(config, _teacher(), data, data.subset(list(range(50))), student=qat.prepared)
    assert result.student is qat.prepared and result.steps == 7
    assert all(bool(q.fake_quant_enabled[0]) and bool(q.observer_enabled[0]) for q in quantizers)
    assert all(float(q.scale.flatten()[0]) != 1.0 for q in quantizers)  # observed during training
    after = qat.synced().state_dict()
    conv = "conv1.weight"
    assert not torch.equal(before[conv], after[conv])
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])


def test_the_float_student_gets_back_what_a_device_move_unshared() -> None:
    """`.to(device)` keeps parameters shared but replaces buffers (BatchNorm statistics):
    `synced` copies them back into the float student. `.double().float()` replaces buffers the
    same way on a CPU-only machine."""
    data = TensorData(torch.rand(8, 1, 8, 8), torch.arange(8) % 10, [str(i) for i in range(10)])
    qat = quantize.qat_student(_config(), ClassificationTask(), data, None)
    assert qat is not None
    qat.prepared.double().float()
    qat.prepared.train()
    qat.prepared(torch.rand(4, 1, 8, 8))  # BatchNorm statistics move in the prepared model only
    stats = [(k, v) for k, v in qat.shared.items() if k.endswith("running_mean")]
    assert stats
    ours, theirs = qat.fp32.state_dict(), qat.prepared.state_dict()
    assert not any(torch.equal(ours[v], theirs[k]) for k, v in stats)
    synced = qat.synced().state_dict()
    assert all(torch.equal(synced[v], theirs[k]) for k, v in stats)


def test_a_student_torch_fx_cannot_trace_is_refused_saying_what_works() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow
                return self.fc(x.flatten(1))
            return -self.fc(x.flatten(1))

    with pytest.raises(ValueError, match="torch.fx could not trace the student.*zoo or derived"):
        quantize.prepare(Branchy(), torch.rand(2, 1, 8, 8), "x86")


# ----------------------------------------------------------------------------------------------
# the whole run: fp32 artifacts as before, the int8 artifact, the side-by-side evaluation


def test_a_qat_run_writes_a_working_int8_model_next_to_the_fp32_one(
    qat_run: tuple[Path, dict[str, Any]],
) -> None:
    out, summary = qat_run
    arts = summary["artifacts"]
    assert (
        arts["student_int8_onnx"] == "student_int8.onnx" and (out / "student_int8.onnx").is_file()
    )
    assert "student_int8" not in arts and not (out / "student_int8.pt").exists()
    assert {"student_safetensors", "student_pt2", "config", "evaluation"} <= set(arts)
    # the fp32 student is today's artifact: a zoo model in safetensors and a pure-ATen .pt2
    fp32 = load_model(out / "student.safetensors", "safetensors").module.eval()
    assert getattr(fp32, "arch", None) == "resnet8"
    graph = load_model(out / "student.pt2", "pt2").module
    d = load_digits()
    x = torch.from_numpy((d.images[450:600, None] / 16.0).astype("float32"))
    y = torch.from_numpy(d.target[450:600]).long()
    assert torch.allclose(predict(graph, x), predict(fp32, x), atol=1e-4)
    # the int8 model: int8 weights, a quarter of the float weight bytes, and it runs
    report = json.loads((out / "evaluation.json").read_text())["quantized"]
    assert report["int8_weight_tensors"] >= 10
    ratio = report["weight_bytes"]["int8"] / report["weight_bytes"]["fp32"]
    assert 0.24 <= ratio <= 0.26, ratio
    # the file users download, in a fresh onnxruntime session (no torch in the loop)
    session = ort.InferenceSession(
        str(out / "student_int8.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == ["input"]
    for batch in (1, 7, 150):
        (logits,) = session.run(None, {"input": x[:batch].numpy()})
        assert logits.shape == (batch, 10)
    logits = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert (logits.argmax(1) == y).float().mean() > 0.8  # it learned the digits, in int8
    # its outputs agree with the fake-quantized model's (the report measures it on val data)
    floor = 0.93 if U8S8_SATURATES else 0.95  # measured 0.947 on an AVX2 host (see above)
    assert report["int8_agreement_with_fake_quant"] >= floor
    assert report["int8_agreement_with_converted"] >= floor
    assert abs(report["int8"]["top1"] - report["fake_quant"]["top1"]) <= 0.05
    # the int8 artifact is no model the studio loads: the safe loader refuses it
    with pytest.raises((ModelLoadError, UnsafeModelError)):
        load_model(out / "student_int8.onnx", "pt2")


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray:
    """The value of a constant tensor of the graph (an initializer, a Constant node's output,
    or either through Identity nodes)."""
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return onnx.numpy_helper.to_array(tensor)
    node = next(n for n in model.graph.node if name in n.output)
    if node.op_type == "Identity":
        return _constant(model, node.input[0])
    assert node.op_type == "Constant", node.op_type
    return onnx.numpy_helper.to_array(node.attribute[0].t)


def _trained_qat(arch: str, backend: str, **kwargs: Any) -> quantize.QatStudent:
    """A QAT student trained one epoch on 300 digits (fake quantization observed the data)."""
    d = load_digits()
    x = torch.tensor(d.images[:300], dtype=torch.float32)[:, None] / 16.0
    data = TensorData(x, torch.tensor(d.target[:300]), [str(i) for i in range(10)])
    config = _config(
        student={"architecture": arch, "kwargs": kwargs}, training={"epochs": 2, "qat": backend}
    )
    qat = quantize.qat_student(config, ClassificationTask(), data, None)
    assert qat is not None
    train(config, _teacher(), data, data.subset(list(range(50))), student=qat.prepared)
    return qat


@pytest.mark.parametrize(
    ("arch", "backend", "kwargs"),
    [
        ("resnet8", "x86", {}),
        ("mlp", "qnnpack", {"hidden": 256, "depth": 1}),
        ("wrn_16_1", "x86", {}),  # pre-activation BN-ReLU: the registered symbolic
    ],
)
def test_the_exported_int8_onnx_is_a_real_int8_model_that_matches_the_converted_one(
    tmp_path: Path, arch: str, backend: str, kwargs: dict[str, Any]
) -> None:
    """The QDQ file holds int8 weights (no float weight tensor left), is about 4x smaller than
    the same student exported in fp32, reloads in a fresh onnxruntime session, and its outputs
    equal the in-memory converted (torch int8) model's within a few steps of the output's
    quantization grid (measured: at most 6, on average under 1)."""
    qat = _trained_qat(arch, backend, **kwargs)
    converted = quantize.convert(qat.prepared, backend)
    example = torch.rand(2, 1, 8, 8)
    quantize.save_onnx(converted, example, tmp_path / "int8.onnx", backend)
    quantize.save_onnx(qat.synced().eval(), example, tmp_path / "fp32.onnx", backend)
    model = onnx.load(str(tmp_path / "int8.onnx"))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = quantize.onnx_int8_weights(tmp_path / "int8.onnx")
    expected_bytes, expected_tensors = quantize.int8_weight_bytes(converted)
    assert (weights["tensors"], weights["bytes"]) == (expected_tensors, expected_bytes)
    assert weights["float_bytes"] == 0  # every weight matrix is int8
    assert quantize.onnx_int8_weights(tmp_path / "fp32.onnx")["tensors"] == 0
    if backend == "x86":  # per-channel weight scales: DequantizeLinear with an axis (opset 13+)
        assert any(
            a.name == "axis" for n in model.graph.node if n.op_type == "DequantizeLinear"
            for a in n.attribute
        )  # fmt: skip
    size = (tmp_path / "int8.onnx").stat().st_size / (tmp_path / "fp32.onnx").stat().st_size
    limit = 0.35 if arch == "mlp" else 0.4  # nodes, scales and int32 biases: 237 nodes in resnet8
    assert size < limit, size
    # a fresh session runs it; onnxruntime fuses the QDQ pattern into integer kernels
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "fused.onnx")
    session = ort.InferenceSession(
        str(tmp_path / "int8.onnx"), options, providers=["CPUExecutionProvider"]
    )
    fused = {n.op_type for n in onnx.load(str(tmp_path / "fused.onnx")).graph.node}
    assert fused & {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger"}, fused
    d = load_digits()
    x = torch.from_numpy((d.images[300:600, None] / 16.0).astype("float32"))
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with quantize.engine(backend), torch.no_grad():
        want = converted(x)
    last = next(n for n in reversed(model.graph.node) if n.op_type == "DequantizeLinear")
    scale = float(_constant(model, last.input[1]))  # the output's quantization step
    # the two runtimes round requantized activations differently, layer after layer
    steps = (got - want).abs() / scale
    if backend == "qnnpack" and U8S8_SATURATES:  # full-range uint8 activations (see above)
        assert steps.mean() <= 8.0, (steps.max(), steps.mean())  # measured 34 / 5.8 on AVX2
    else:
        assert steps.max() <= 8.01 and steps.mean() <= 1.5, (steps.max(), steps.mean())
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.9


def test_when_the_onnx_exporter_fails_the_int8_model_is_saved_as_torchscript_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quantized op the ONNX exporter has no symbolic for (none among the zoo's students:
    wrn's batch norms are registered, see the test above) must not lose the int8 model: it is
    then saved as TorchScript, and the block says so and why."""
    qat = _trained_qat("mlp", "x86", hidden=32, depth=1)
    d = load_digits()
    x = torch.from_numpy((d.images[300:400, None] / 16.0).astype("float32"))
    data = TensorData(x, torch.tensor(d.target[300:400]), [str(i) for i in range(10)])

    def unsupported(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Exporting the operator 'quantized::novel' to ONNX is not supported")

    monkeypatch.setattr(quantize, "save_onnx", unsupported)
    arts, block = quantize.export_int8(
        qat, task=ClassificationTask(), teacher=_teacher().eval(), out_dir=tmp_path, data=data,
        input_shape=(1, 8, 8), fp32_size=1000,
    )  # fmt: skip
    assert arts == {"student_int8": "student_int8.pt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student_int8.pt"]
    assert block["artifact_format"] == "torchscript" and block["artifact_kind"] == "student_int8"
    assert "quantized::novel" in block["int8_onnx_error"]
    assert block["int8"]["size_bytes"] == (tmp_path / "student_int8.pt").stat().st_size
    assert block["fp32"]["size_bytes"] == 1000  # fp32 side: the safetensors file, torch eager
    assert block["int8_agreement_with_converted"] == 1.0


def test_evaluation_shows_fp32_and_int8_accuracy_size_and_latency(
    qat_run: tuple[Path, dict[str, Any]],
) -> None:
    out, summary = qat_run
    report = json.loads((out / "evaluation.json").read_text())
    block = report["quantized"]
    assert block["backend"] == "x86" and block["method"] == "qat"
    assert block["artifact"] == "student_int8.onnx" and block["artifact_format"] == "onnx-qdq"
    assert block["artifact_kind"] == "student_int8_onnx"
    assert block["runtime"].startswith("onnxruntime ")
    for side in ("fp32", "int8"):
        assert 0.0 <= block[side]["top1"] <= 1.0
        assert block[side]["size_bytes"] > 0 and block[side]["cpu_latency_ms"] > 0
    assert block["fp32"]["top1"] == report["student_top1"]  # the same fp32 student
    assert block["fp32_safetensors_bytes"] == report["student_size_bytes"]
    # the sizes are of ONNX files, fp32 and int8 alike; the int8 one is the artifact
    assert block["int8"]["size_bytes"] == (out / "student_int8.onnx").stat().st_size
    assert block["int8"]["size_bytes"] < 0.4 * block["fp32"]["size_bytes"]
    assert block["artifact_int8_weights"]["bytes"] == block["weight_bytes"]["int8"]
    assert block["artifact_int8_weights"]["float_bytes"] == 0
    assert summary["quantized"] == block
    assert yaml.safe_load((out / "run.yaml").read_text())["training"]["qat"] == "x86"
    # the int8 row of the trained models links the ONNX artifact
    int8_row = next(r for r in trained_models(summary) if r["label"] == "int8")
    assert int8_row["artifacts"] == {"student_int8_onnx": "student_int8.onnx"}


def test_a_run_without_qat_writes_no_int8_model(files: Path, tmp_path: Path) -> None:
    config = _config(
        teacher={"path": str(files / "teacher.pt2")},
        dataset={"path": str(files / "data.npz"), "val_fraction": 0.25},
        student={"architecture": "mlp", "kwargs": {"hidden": 16, "depth": 1}},
        training={"qat": "none", "epochs": 1},
    )
    summary = run_distillation(config, files / "teacher.pt2", files / "data.npz", tmp_path)
    assert not {"student_int8", "student_int8_onnx"} & set(summary["artifacts"])
    assert "quantized" not in summary
    assert not (tmp_path / "student_int8.onnx").exists()


def test_distill_studio_train_runs_a_qat_student(files: Path, tmp_path: Path) -> None:
    """`distill-studio train run.yaml` (no server) with `training.qat: qnnpack`."""
    from typer.testing import CliRunner

    from cli.main import app

    doc = yaml.safe_load(_config(training={"qat": "qnnpack", "epochs": 1}).to_yaml())
    doc["teacher"] = {"path": str(files / "teacher.pt2")}
    doc["dataset"] = {"path": str(files / "data.npz")}
    doc["student"] = {"architecture": "mlp", "kwargs": {"hidden": 32, "depth": 1}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["train", str(tmp_path / "run.yaml"), "--out", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["quantized"]["backend"] == "qnnpack"
    assert summary["quantized"]["int8_weight_tensors"] == 2  # the MLP's two linear layers
    assert summary["quantized"]["artifact_int8_weights"]["tensors"] == 2  # in the file too
    assert (out / "student_int8.onnx").is_file()


def test_a_stopped_qat_run_resumes_to_the_same_weights_and_int8_model(
    files: Path, tmp_path: Path
) -> None:
    """The checkpoint holds the fake-quantized model (weights and observers' state): a run
    stopped mid-epoch and resumed ends where an uninterrupted one does."""

    class StopAt(Callbacks):
        def __init__(self, at: int | None) -> None:
            self.at, self.checks = at, 0

        def should_stop(self) -> bool:
            self.checks += 1
            return self.at is not None and self.checks > self.at

    config = _config(
        teacher={"path": str(files / "teacher.pt2")},
        dataset={"path": str(files / "data.npz"), "val_fraction": 0.25},
        student={"architecture": "resnet8", "kwargs": {"width": 0.5}},
        training={"epochs": 2, "checkpoint_every": 5},
    )
    args = (config, files / "teacher.pt2", files / "data.npz")
    whole = run_distillation(*args, tmp_path / "whole")
    ckpt = tmp_path / "c.ckpt"
    with pytest.raises(Cancelled):
        run_distillation(*args, tmp_path / "resumed", callbacks=StopAt(17), checkpoint_path=ckpt)
    saved = torch.load(ckpt, weights_only=True)
    assert 0 < saved["step"] < whole["train_steps"]
    assert any(k.endswith("activation_post_process_0.scale") for k in saved["student"])
    resumed = run_distillation(*args, tmp_path / "resumed", checkpoint_path=ckpt)
    assert resumed["train_steps"] == whole["train_steps"]
    a_sd = load_file(tmp_path / "whole" / "student.safetensors")
    b_sd = load_file(tmp_path / "resumed" / "student.safetensors")
    assert a_sd.keys() == b_sd.keys() and all(torch.equal(a_sd[k], b_sd[k]) for k in a_sd)
    x = torch.rand(16, 1, 8, 8)
    a = quantize.load_int8(tmp_path / "whole" / "student_int8.onnx", "x86")(x)
    b = quantize.load_int8(tmp_path / "resumed" / "student_int8.onnx", "x86")(x)
    assert torch.equal(a, b)
    assert resumed["quantized"]["int8"]["top1"] == whole["quantized"]["int8"]["top1"]
