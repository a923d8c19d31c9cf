"""Student zoo: catalog agreement, shapes, parameter counts, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from core import catalog
from core.config import StudentSpec
from core.pairing import suggest_pairs
from worker.engine.export import export_pt2
from worker.engine.loading import load_model
from worker.engine.students import REGISTRY, build_student, derive_student
from worker.engine.taps import inspect_model


def test_registry_matches_catalog() -> None:
    assert set(REGISTRY) == set(catalog.STUDENTS)


# text students (kind "text") are built from their Hugging Face teacher by a text task
# (tests/unit/engine/test_text_tasks.py); the zoo refuses to build them alone
TEXT = sorted(n for n, e in catalog.STUDENTS.items() if e.kind == "text")
# every other student on digits (8x8, one channel) and on CIFAR (32x32, three channels)
CASES = [
    (name, shape)
    for name in sorted(REGISTRY)
    if name not in TEXT
    for shape in ((1, 8, 8), (3, 32, 32))
]


@pytest.mark.parametrize("name", TEXT)
def test_text_students_are_refused_without_a_teacher(name: str) -> None:
    with pytest.raises(ValueError, match="built from a Hugging Face teacher by a text task"):
        build_student(name, (16,), 2)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small models: intra-op threads only add overhead, and stall on a busy shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_every_student_builds_and_runs(name: str, shape: tuple[int, ...]) -> None:
    model = build_student(name, shape, 7).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, *shape))
    kind = catalog.STUDENTS[name].kind
    if kind in ("segmentation", "generation"):  # per-pixel logits, or an image of 7 channels
        assert out.shape == (2, 7, *shape[1:])
    elif kind == "detection":  # the dense-head layout at stride 2: 16 distance bins per side
        assert out.shape == (2, 7 + 4 * 16, *(-(-s // 2) for s in shape[1:]))
    else:
        assert out.shape == (2, 7)
    assert model.input_shape == shape and model.num_classes == 7 and model.arch == name
    assert isinstance(model.arch_kwargs, dict)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# CIFAR-100 sizes as RepDistiller reports them (ours, measured: 0.278M, 2.255M, 0.703M, 9.462M,
# 3.965M, 0.813M, 0.949M, 1.356M)
REPDISTILLER_PARAMS = {
    "resnet20": (0.27e6, 0.285e6),
    "wrn_40_2": (2.2e6, 2.3e6),
    "wrn_16_2": (0.68e6, 0.72e6),
    "vgg13": (9.4e6, 9.5e6),
    "vgg8": (3.9e6, 4.0e6),
    "mobilenetv2": (0.78e6, 0.84e6),
    "shufflenetv1": (0.92e6, 0.98e6),
    "shufflenetv2": (1.32e6, 1.40e6),
}


def test_parameter_counts_match_repdistiller() -> None:
    assert 0.26e6 < _params(build_student("resnet20", (3, 32, 32), 10)) < 0.28e6
    assert 1.1e6 < _params(build_student("resnet8x4", (3, 32, 32), 100)) < 1.3e6
    assert 7.3e6 < _params(build_student("resnet32x4", (3, 32, 32), 100)) < 7.5e6
    for name, (low, high) in REPDISTILLER_PARAMS.items():
        assert low < _params(build_student(name, (3, 32, 32), 100)) < high, name


def test_width_scales_channels_and_module_names() -> None:
    model = build_student("resnet8", (1, 8, 8), 10, width=0.5)
    assert model.conv1.out_channels == 8 and model.layer3[0].conv2.out_channels == 32
    assert model.arch_kwargs == {"width": 0.5}
    tiny = build_student("resnet8", (1, 8, 8), 10, width=0.125)
    assert tiny.conv1.out_channels == 2
    top = [name for name, _ in model.named_children()]
    assert top == ["conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "fc"]


def test_mlp_layout() -> None:
    model = build_student("mlp", (1, 8, 8), 10, hidden=32, depth=3, dropout=0.1)
    names = {name for name, _ in model.named_modules()}
    assert {"layers.0", "layers.1", "layers.2", "layers.2.linear", "fc"} <= names
    assert model.layers[0].linear.in_features == 64
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="architecture 'resnet21'; nearest: resnet"):
        build_student("resnet21", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="width"):
        build_student("resnet20", (3, 32, 32), 10, width=100.0)
    with pytest.raises(ValueError, match="unknown parameter 'depth'"):
        build_student("resnet20", (3, 32, 32), 10, depth=3)
    with pytest.raises(ValueError, match="use 'mlp'"):
        build_student("resnet8", (64,), 10)
    with pytest.raises(
        ValueError, match=r"'depth' of 'resnet' must be 6n\+2, got 21; nearest: 20, 26"
    ):
        build_student("resnet", (3, 32, 32), 10, depth=21)
    with pytest.raises(ValueError, match=r"'depth' of 'wrn' must be 6n\+4"):
        StudentSpec(architecture="wrn", kwargs={"depth": 12})


# --- stages and pairing -------------------------------------------------------------------------


def _ends(name: str, shape: tuple[int, ...] = (3, 32, 32), **kwargs: float) -> list[tuple]:
    info = inspect_model(build_student(name, shape, 100, **kwargs), shape)
    return [(s["resolution"], s["channels"], s["end"]) for s in info["stages"]]


def test_stages_of_the_new_families_end_at_their_blocks() -> None:
    """Old-resolution work inside a down-sampling block (pre-activation, 1x1 expansions,
    branches) neither splits nor ends a stage."""
    assert _ends("wrn_16_2") == [
        ([32, 32], 32, "layer1"),
        ([16, 16], 64, "layer2"),
        ([8, 8], 128, "relu"),
        (None, 100, "fc"),
    ]
    assert _ends("vgg8") == [
        ([32, 32], 64, "block0"),
        ([16, 16], 128, "block1"),
        ([8, 8], 512, "block3"),
        ([4, 4], 512, "block4"),
        (None, 100, "classifier"),
    ]
    # (one block per stage keeps the structure and the test fast)
    assert [e[2] for e in _ends("mobilenetv2", depth=0.1)] == [
        "blocks.1",
        "blocks.2",
        "blocks.4",
        "conv2",
        "classifier",
    ]
    assert [e[2] for e in _ends("shufflenetv1", depth=0.1)] == [
        "relu",
        "layer1",
        "layer2",
        "layer3",
        "fc",
    ]
    assert [e[2] for e in _ends("shufflenetv2", depth=0.1)] == [
        "relu",
        "layer1",
        "layer2",
        "conv2",
        "fc",
    ]
    # digits: VGG's pools stop at 1x1 and the last block joins the head
    assert [e[2] for e in _ends("vgg8", (1, 8, 8))] == ["block0", "block1", "block3", "classifier"]
    assert [e[2] for e in _ends("mobilenetv2", (1, 8, 8), depth=0.1)] == [
        "blocks.1",
        "blocks.2",
        "blocks.4",
        "conv2",
        "classifier",
    ]


@pytest.mark.parametrize(
    ("teacher", "student", "expected"),
    [
        (
            "wrn_40_2",
            "wrn_16_2",
            [("layer1", [32, 32, 32]), ("layer2", [64, 16, 16]), ("relu", [128, 8, 8])],
        ),
        (
            "vgg13",
            "vgg8",
            [("block1", [128, 16, 16]), ("block3", [512, 8, 8]), ("block4", [512, 4, 4])],
        ),
    ],
)
def test_suggest_pairs_on_repdistiller_pairs(teacher: str, student: str, expected: list) -> None:
    shape = (3, 32, 32)
    pairs = suggest_pairs(
        inspect_model(build_student(teacher, shape, 100), shape),
        inspect_model(build_student(student, shape, 100), shape),
    )
    assert [(p["teacher"], p["teacher_shape"]) for p in pairs] == expected
    assert [p["student"] for p in pairs] == [path for path, _ in expected]
    assert all(p["student_shape"] == p["teacher_shape"] for p in pairs)


# The pipeline exports every student as .pt2, which must pass the safe loader's operator checks.
# torch.export is slow, so small versions of the families with operators ResNet lacks (tested in
# test_loading): max pooling (VGG); channel shuffle, average-pool shortcut, concatenation, group
# convolutions (ShuffleNetV1); channel split by slicing (ShuffleNetV2). WRN and MobileNetV2 use
# only ResNet's operators (depthwise is a grouped convolution).
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("vgg8", {"width": 0.25}),
        ("shufflenetv1", {"width": 0.25, "depth": 0.1}),
        ("shufflenetv2", {"width": 0.5, "depth": 0.1}),
    ],
)
def test_new_families_export_and_load_back(name: str, kwargs: dict, tmp_path: Path) -> None:
    model = build_student(name, (1, 8, 8), 10, **kwargs).eval()
    export_pt2(model, (1, 8, 8), tmp_path / "m.pt2")
    loaded = load_model(tmp_path / "m.pt2", "pt2")
    assert loaded.input_shape == (1, 8, 8) and loaded.num_classes == 10
    x = torch.randn(3, 1, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), model(x), atol=1e-5, rtol=1e-4)


# --- students derived from the teacher ----------------------------------------------------------

DERIVED = [
    # teacher, its kwargs, depth factor, width factor -> architecture, kwargs
    ("resnet56", {}, 0.5, 0.5, "resnet", {"depth": 26, "width": 0.5}),
    ("resnet110", {"width": 2.0}, 0.5, 0.5, "resnet56", {"width": 1.0}),
    ("resnet20", {}, 0.5, 1.0, "resnet8", {"width": 1.0}),
    ("resnet32x4", {}, 0.5, 0.5, "resnet14", {"width": 2.0}),
    ("wrn_40_2", {}, 0.5, 0.5, "wrn", {"depth": 22, "width": 1.0, "dropout": 0.0}),
    ("wrn_40_2", {}, 0.4, 1.0, "wrn_16_2", {}),
    ("vgg13", {}, 0.5, 0.5, "vgg8", {"width": 0.5}),
    ("vgg13", {}, 0.7, 1.0, "vgg", {"depth": 10, "width": 1.0}),
    (
        "mlp",
        {"hidden": 64, "depth": 4},
        0.5,
        0.5,
        "mlp",
        {"hidden": 32, "depth": 2, "dropout": 0.0},
    ),
    ("mobilenetv2", {}, 0.5, 0.5, "mobilenetv2", {"width": 0.25, "depth": 0.5}),
    ("shufflenetv2", {}, 0.5, 0.5, "shufflenetv2", {"width": 0.5, "depth": 0.5}),
]


@pytest.mark.parametrize(("teacher", "t_kwargs", "df", "wf", "arch", "kwargs"), DERIVED)
def test_derived_architecture(
    teacher: str, t_kwargs: dict, df: float, wf: float, arch: str, kwargs: dict
) -> None:
    spec = StudentSpec(source="derived", depth_factor=df, width_factor=wf)
    assert spec.zoo_architecture(teacher, {**t_kwargs, "num_classes": 10}) == (arch, kwargs)


@pytest.mark.parametrize(
    "teacher",
    ["resnet56", "wrn_40_2", "vgg13", "mlp", "mobilenetv2", "shufflenetv1", "shufflenetv2"],
)
def test_derived_students_are_smaller(teacher: str) -> None:
    shape = (1, 8, 8) if teacher != "mlp" else (64,)
    t = build_student(teacher, shape, 10)
    s = derive_student(teacher, t.arch_kwargs, 0.5, 0.5, shape, 10)
    assert _params(s) < _params(t) / 2.5, (teacher, _params(s), _params(t))
    assert s(torch.randn(2, *shape)).shape == (2, 10)


def test_derived_student_has_the_predicted_depth_and_width() -> None:
    s = derive_student("resnet56", {}, 0.5, 0.5, (3, 32, 32), 100)
    assert (s.arch, s.arch_kwargs) == ("resnet", {"depth": 26, "width": 0.5})
    assert [len(s.layer1), len(s.layer2), len(s.layer3)] == [4, 4, 4]  # (26 - 2) / 6 blocks
    assert (s.conv1.out_channels, s.layer3[0].conv2.out_channels) == (8, 32)
    w = derive_student("wrn_40_2", {}, 0.5, 0.5, (3, 32, 32), 100)
    assert len(w.layer1) == 3 and w.layer3[0].conv2.out_channels == 64  # WRN-22-1
    v = derive_student("vgg13", {}, 0.5, 0.5, (3, 32, 32), 100)
    assert v.arch == "vgg8" and v.block4[0].out_channels == 256
    # self-distillation: the teacher's own architecture
    spec = StudentSpec(source="teacher")
    assert spec.zoo_architecture("wrn_40_2", {"input_shape": [3, 32, 32]}) == ("wrn_40_2", {})


def test_derived_needs_a_zoo_teacher() -> None:
    needs = (
        r"derived students need a teacher whose architecture is in the zoo \(upload it as "
        r"safetensors with architecture=...\); this teacher has no architecture"
    )
    with pytest.raises(ValueError, match=needs):
        derive_student(None, {}, 0.5, 0.5, (1, 8, 8), 10)
    with pytest.raises(ValueError, match="self-distillation students"):
        StudentSpec(source="teacher").zoo_architecture(None, {})
    with pytest.raises(ValueError, match=r"depth_factor must be in \(0, 1\]"):
        derive_student("resnet20", {}, 1.5, 0.5, (1, 8, 8), 10)
    with pytest.raises(ValueError, match=r"width_factor\n.*must be in \(0.0, 1.0\], got 2.0"):
        StudentSpec(source="derived", width_factor=2.0)
