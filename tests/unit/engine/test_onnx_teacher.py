"""Teachers in ONNX: the onnxruntime wrapper against the torch model it was exported from, the
layer table from the graph, features as extra graph outputs, training, and hostile files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from core.config import RunConfig
from worker.engine import onnx_teacher
from worker.engine.export import export_onnx
from worker.engine.loading import ModelLoadError, UnsafeModelError, load_model
from worker.engine.onnx_teacher import OnnxTeacher
from worker.engine.students import build_student
from worker.engine.taps import FeatureTaps, inspect_model
from worker.engine.trainer import train

from .support import small_digits

SHAPE = (1, 8, 8)
TAPS = [("layer1", "output"), ("layer2.0", "output"), ("layer3", "output"), ("fc", "input")]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    model = build_student("resnet8", SHAPE, 10, width=0.5).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding them is tested
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def onnx_file(resnet: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "teacher.onnx"
    export_onnx(resnet, SHAPE, path)
    return path


@pytest.fixture(scope="module")
def legacy_file(resnet: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The TorchScript exporter's file: scopes only in node names (`/layer1/layer1.0/conv1/Conv`)."""
    path = tmp_path_factory.mktemp("onnx") / "legacy.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(
            resnet,
            (torch.zeros(2, *SHAPE),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
            opset_version=17,
        )
    return path


def test_wrapper_equals_the_torch_model(resnet: nn.Module, onnx_file: Path) -> None:
    loaded = load_model(onnx_file, "onnx")
    assert isinstance(loaded.module, OnnxTeacher) and loaded.format == "onnx"
    assert loaded.input_shape == SHAPE and loaded.num_classes == 10
    assert not any(p.requires_grad for p in loaded.module.parameters())
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        expected = resnet(x)
    got = loaded.module(x)
    assert got.shape == (5, 10) and got.dtype == torch.float32 and not got.requires_grad
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("which", ["dynamo", "legacy"])
def test_layer_table_from_the_graph(
    resnet: nn.Module, onnx_file: Path, legacy_file: Path, which: str
) -> None:
    loaded = load_model(onnx_file if which == "dynamo" else legacy_file, "onnx")
    got = inspect_model(loaded.module, loaded.input_shape)
    ref = inspect_model(resnet, SHAPE)
    rows = {r["path"]: r for r in got["layers"]}
    ref_rows = {r["path"]: r for r in ref["layers"]}
    # the module paths of the torch model, with the same shapes (a fused conv may vanish)
    assert {"layer1", "layer1.0", "layer2", "layer2.0", "layer3", "avgpool", "fc"} <= set(rows)
    assert set(rows) <= set(ref_rows)
    for path, row in rows.items():
        assert row["output_shape"] == ref_rows[path]["output_shape"], path
    assert rows["fc"]["input_shape"] == [32] and rows["fc"]["params"] == 32 * 10 + 10
    # both exporters fold batch norm into the convolutions
    assert got["params"] == sum(p.numel() for p in resnet.parameters()) - _bn_shifts(resnet)
    assert got["num_classes"] == 10 and got["output_shape"] == [10]
    assert got["flops"] == ref["flops"] > 0  # counted on the graph: convolutions and the Gemm
    # the stages (taps' "spatial" rule) are the torch model's
    strip = [{k: s[k] for k in ("resolution", "channels", "end")} for s in got["stages"]]
    assert strip == [{k: s[k] for k in ("resolution", "channels", "end")} for s in ref["stages"]]
    if which == "dynamo":  # class names from the exporter's metadata
        assert rows["layer1.0"]["type"] == "BasicBlock" and rows["fc"]["type"] == "Linear"


def _bn_shifts(model: nn.Module) -> int:
    """Folding batch norm into the convolutions drops scale/shift pairs down to one bias."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return sum(2 * b.num_features for b in bns) - sum(
        c.out_channels for c in convs if c.bias is None
    )


def test_extra_outputs_equal_the_torch_features(resnet: nn.Module, onnx_file: Path) -> None:
    loaded = load_model(onnx_file, "onnx")
    teacher = loaded.module
    assert isinstance(teacher, OnnxTeacher)
    x = torch.randn(3, *SHAPE)
    with (
        FeatureTaps(teacher, TAPS, detach=True) as got,
        FeatureTaps(resnet, TAPS, detach=True) as ref,
        torch.no_grad(),
    ):
        logits = teacher(x)
        expected = resnet(x)
        features, ref_features = got.features, ref.features
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    for (path, _), a, b in zip(TAPS, features, ref_features, strict=True):
        assert a.shape == b.shape, path
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # one session per set of outputs: the logits-only one (the load's dummy run) and this one
    assert len(teacher._sessions) == 2
    teacher(x)  # no hooks now: the logits-only session again
    assert len(teacher._sessions) == 2
    with pytest.raises(ValueError, match="layer2.9"):
        FeatureTaps(teacher, [("layer2.9", "output")])
    # a hook that replaces a layer's output (scheme split) cannot change the graph: refused
    handle = dict(teacher.named_modules())["layer2"].register_forward_hook(lambda m, a, o: o * 0)
    with pytest.raises(ValueError, match="cannot have its output replaced"):
        teacher(x)
    handle.remove()


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.stage = nn.ReLU()
        self.fc = nn.Linear(8 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(self.stage(self.conv(x)), 2)
        return self.fc(h.flatten(1))


def test_distils_from_an_onnx_teacher_like_from_the_torch_one(tmp_path: Path) -> None:
    """kd + a fitnets pair: the same student, to float tolerance, from either teacher."""
    torch.manual_seed(3)
    teacher = Small().eval()
    with pytest.warns(DeprecationWarning):  # the TorchScript exporter: quicker to run here
        torch.onnx.export(
            teacher,
            (torch.zeros(2, *SHAPE),),
            str(tmp_path / "small.onnx"),
            dynamic_axes={"x": {0: "batch"}},
            input_names=["x"],
            dynamo=False,
        )
    onnx_module = load_model(tmp_path / "small.onnx", "onnx").module
    config = RunConfig.model_validate(
        {
            "teacher": {"path": "small.onnx", "format": "onnx"},
            "dataset": {"path": "unused.npz"},
            "layer_pairs": [{"teacher": "fc", "student": "layers.0", "tap": "input"}],
            "student": {"architecture": "mlp", "kwargs": {"hidden": 16, "depth": 1}},
            "losses": [
                {"name": "ce"},
                {"name": "kd", "params": {"temperature": 4}},
                {"name": "fitnets", "weight": 0.5},
            ],
            "training": {"epochs": 1, "batch_size": 32, "lr": 0.05, "device": "cpu"},
            "seed": 7,
        }
    )
    data = small_digits(160)
    results = [train(config, t, *data) for t in (teacher, onnx_module)]
    a, b = (r.student.state_dict() for r in results)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-4)
    # the fitnets term read the ONNX teacher's `fc` input (FeatureTaps raises when a tap is empty)
    losses = [r.history[-1]["train/loss"] for r in results]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


# --------------------------------------------------------------------------------------------
# hostile and broken files
# --------------------------------------------------------------------------------------------


def _graph_file(
    tmp: Path,
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto] | None = None,
    opsets: list[tuple[str, int]] | None = None,
    input_type: int = TensorProto.FLOAT,
) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", input_type, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=initializers or [],
    )
    imports = [helper.make_opsetid(d, v) for d, v in (opsets or [("", 17)])]
    model = helper.make_model(graph, opset_imports=imports)
    path = tmp / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _external(location: str) -> onnx.TensorProto:
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return w


@pytest.mark.parametrize("location", ["/etc/passwd", "../../../../etc/passwd", "weights.bin"])
def test_external_data_is_refused(tmp_path: Path, location: str) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)  # even beside the file: never read
    path = _graph_file(
        tmp_path, [helper.make_node("Add", ["x", "w"], ["y"])], [_external(location)]
    )
    with pytest.raises(UnsafeModelError, match="external file") as err:
        load_model(path, "onnx")
    assert location in str(err.value) and "Save the model as one file" in str(err.value)


def test_external_data_in_a_constant_inside_a_subgraph_is_refused(tmp_path: Path) -> None:
    const = helper.make_node("Constant", [], ["c"], value=_external("/etc/passwd"))
    branch = helper.make_graph(
        [const], "b", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4])]
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Cast", ["s"], ["cond"], to=TensorProto.BOOL),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch),
    ]
    with pytest.raises(UnsafeModelError, match="external file"):
        load_model(_graph_file(tmp_path, nodes), "onnx")


@pytest.mark.parametrize(
    ("domain", "op"), [("com.example.evil", "RunShell"), ("com.microsoft", "Gelu")]
)
def test_custom_operator_domains_are_refused(tmp_path: Path, domain: str, op: str) -> None:
    node = helper.make_node(op, ["x"], ["y"], domain=domain)
    path = _graph_file(tmp_path, [node], opsets=[("", 17), (domain, 1)])
    with pytest.raises(UnsafeModelError, match=f"domain '{domain}'") as err:
        load_model(path, "onnx")
    assert "only the default ONNX domain and ai.onnx.ml" in str(err.value)


def test_unknown_operators_functions_and_opsets_are_refused(tmp_path: Path) -> None:
    path = _graph_file(tmp_path, [helper.make_node("NotAnOp", ["x"], ["y"])])
    with pytest.raises(UnsafeModelError, match="'NotAnOp' is not a standard ONNX operator"):
        load_model(path, "onnx")
    path = _graph_file(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], opsets=[("", 999)])
    with pytest.raises(ModelLoadError, match="opset 999 cannot be checked"):
        load_model(path, "onnx")
    model = onnx.load(str(_graph_file(tmp_path, [helper.make_node("Relu", ["x"], ["y"])])))
    model.functions.append(
        helper.make_function(
            "local", "F", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])], []
        )
    )
    path.write_bytes(model.SerializeToString())
    with pytest.raises(UnsafeModelError, match="defines its own functions"):
        load_model(path, "onnx")


def test_truncated_and_oversized_and_non_float_inputs_are_refused(
    tmp_path: Path, onnx_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = onnx_file.read_bytes()
    for cut in (len(data) // 2, len(data) - 3, 40):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError) as err:
            load_model(path, "onnx")
        assert "truncated or not ONNX" in str(err.value), err.value
    monkeypatch.setattr(onnx_teacher, "MAX_NODES", 5)
    with pytest.raises(ModelLoadError, match="more than 5 nodes; refused as oversized"):
        load_model(onnx_file, "onnx")
    monkeypatch.undo()
    ints = _graph_file(
        tmp_path, [helper.make_node("Cast", ["x"], ["y"], to=1)], input_type=TensorProto.INT64
    )
    with pytest.raises(ModelLoadError, match="is not a float tensor"):
        load_model(ints, "onnx")


def test_distill_studio_train_takes_an_onnx_teacher_file(tmp_path: Path) -> None:
    """The fourth door: `distill-studio train run.yaml`, the teacher named by its .onnx file."""
    import json

    import numpy as np
    import yaml
    from typer.testing import CliRunner

    from cli.main import app

    torch.manual_seed(3)
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(
            Small().eval(),
            (torch.zeros(2, *SHAPE),),
            str(tmp_path / "teacher.onnx"),
            dynamic_axes={"x": {0: "batch"}},
            input_names=["x"],
            dynamo=False,
        )
    train_split, val_split = small_digits(120)
    np.savez(
        tmp_path / "digits.npz",
        x=torch.cat([train_split.x, val_split.x]).numpy(),
        y=torch.cat([train_split.y, val_split.y]).numpy(),
    )
    run = {
        "teacher": {"path": "teacher.onnx"},
        "dataset": {"path": "digits.npz", "val_fraction": 0.25},
        "student": {"source": "zoo", "architecture": "mlp", "kwargs": {"hidden": 16, "depth": 1}},
        "layer_pairs": [{"teacher": "fc", "student": "layers.0", "tap": "input"}],
        "losses": [{"name": "ce"}, {"name": "kd"}, {"name": "fitnets", "weight": 0.5}],
        "training": {"epochs": 1, "batch_size": 32, "device": "cpu", "export_onnx": False},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["train", str(tmp_path / "run.yaml"), "--out", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert 0.0 <= evaluation["teacher_top1"] <= 1.0 and evaluation["latency_form"] == "eager"
    assert evaluation["teacher_params"] == 8 * 9 + 8 + 128 * 10 + 10
    assert evaluation["teacher_flops"] == 2 * (8 * 64 * 9 + 128 * 10)  # per sample
    assert evaluation["teacher_size_bytes"] == (tmp_path / "teacher.onnx").stat().st_size


def test_every_door_names_the_onnx_format() -> None:
    """The client (and so `distill-studio models push`), run configs and the pipeline."""
    from client.base import guess_format
    from client.models import MODEL_SUFFIXES
    from worker.engine.pipeline import model_format

    assert guess_format("teacher.ONNX", MODEL_SUFFIXES, "model") == "onnx"
    assert model_format(Path("t.onnx"), None) == "onnx"
    ref = RunConfig.model_validate(
        {"teacher": {"path": "t.bin", "format": "onnx"}, "dataset": {"path": "d.npz"}}
    )
    assert ref.teacher.format == "onnx"
