"""The ImageNet-style zoo: resnet18/34/50, mobilenetv3_small/large, efficientnet_b0, deit_tiny.

Any input size and class count, a training step, the layer table (stages; token maps for the
ViT), suggested pairs by resolution, export to .pt2 and back, students derived from a teacher of
the family. Most tests use narrow, shallow versions (same structure, same module names) to stay
fast; the full sizes are checked by their parameter counts against torchvision/timm.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.catalog.tasks import task_students
from core.config import StudentSpec
from core.pairing import check_pair, find_layer, suggest_pairs
from worker.engine.export import export_pt2
from worker.engine.loading import load_model
from worker.engine.students import build_student, derive_student
from worker.engine.taps import inspect_model

pytestmark = pytest.mark.usefixtures("one_thread")

ZOO = [
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenetv3_small",
    "mobilenetv3_large",
    "efficientnet_b0",
    "deit_tiny",
]
SMALL = {"width": 0.25, "depth": 0.1}  # one block per stage (deit: one block), a quarter wide


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# torchvision's / timm's counts at 224x224 and 1000 classes
FULL_SIZE = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "mobilenetv3_small": 2_542_856,
    "mobilenetv3_large": 5_483_032,
    "efficientnet_b0": 5_288_548,
    "deit_tiny": 5_717_416,
}


def test_the_new_run_page_offers_them() -> None:
    """The New run page's student list is the classification task's zoo students."""
    assert set(ZOO) <= set(task_students("classification"))


@pytest.mark.slow
def test_full_sizes_match_torchvision_and_timm() -> None:
    for name, count in FULL_SIZE.items():
        assert _params(build_student(name, (3, 224, 224), 1000)) == count, name


def test_torchvision_names() -> None:
    """State-dict keys (and shapes) as torchvision/timm name them, so their weights map on."""
    keys = {
        "resnet50": {
            "conv1.weight": (16, 3, 7, 7),
            "layer1.0.downsample.0.weight": (64, 16, 1, 1),
            "layer4.0.conv3.weight": (512, 128, 1, 1),
            "fc.weight": (5, 512),
        },
        "mobilenetv3_small": {
            "features.0.0.weight": (8, 3, 3, 3),
            "features.1.block.1.fc1.weight": (8, 8, 1, 1),
            "classifier.3.weight": (5, 1024),
        },
        "efficientnet_b0": {
            "features.0.1.running_mean": (8,),
            "features.2.0.block.3.1.weight": (8,),
            "features.8.0.weight": (1280, 80, 1, 1),
            "classifier.1.weight": (5, 1280),
        },
        "deit_tiny": {
            "patch_embed.proj.weight": (48, 3, 16, 16),
            "cls_token": (1, 1, 48),
            "pos_embed": (1, 197, 48),
            "blocks.0.attn.qkv.weight": (144, 48),
            "blocks.0.mlp.fc2.weight": (48, 192),
            "norm.weight": (48,),
            "head.weight": (5, 48),
        },
    }
    for name, expected in keys.items():
        state = build_student(name, (3, 224, 224), 5, **SMALL).state_dict()
        assert {k: tuple(state[k].shape) for k in expected} == expected, name


@pytest.mark.parametrize("name", ZOO)
def test_any_input_size_and_class_count(name: str) -> None:
    for shape, classes in (((3, 224, 224), 1000), ((3, 32, 32), 10), ((1, 28, 28), 2)):
        model = build_student(name, shape, classes, **SMALL).eval()
        with torch.inference_mode():
            assert model(torch.randn(2, *shape)).shape == (2, classes), (name, shape)
        assert model.arch == name and model.num_classes == classes
        assert model.arch_kwargs["width"] == 0.25


@pytest.mark.parametrize("name", ZOO)
def test_a_training_step(name: str) -> None:
    model = build_student(name, (3, 32, 32), 10, **SMALL).train()
    first = next(m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    before = first.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
    opt.step()
    assert not torch.equal(first.weight, before)  # the gradient reached the first layer


def _stages(name: str, shape: tuple[int, ...], **kwargs: float) -> list[tuple]:
    info = inspect_model(build_student(name, shape, 10, **{**SMALL, **kwargs}), shape)
    return [(s["resolution"], s["end"]) for s in info["stages"]]


def test_stages_of_the_cnns_at_32_and_224_pixels() -> None:
    """Stages end at torchvision's modules; the `features` trunk hides no stage."""
    assert _stages("resnet50", (3, 32, 32)) == [
        ([32, 32], "layer1"),
        ([16, 16], "layer2"),
        ([8, 8], "layer3"),
        ([4, 4], "layer4"),
        (None, "fc"),
    ]
    assert _stages("resnet18", (3, 224, 224)) == [
        ([112, 112], "relu"),
        ([56, 56], "layer1"),
        ([28, 28], "layer2"),
        ([14, 14], "layer3"),
        ([7, 7], "layer4"),
        (None, "fc"),
    ]
    assert _stages("mobilenetv3_large", (3, 32, 32), depth=1.0) == [
        ([32, 32], "features.3"),
        ([16, 16], "features.6"),
        ([8, 8], "features.12"),
        ([4, 4], "features"),
        (None, "classifier"),
    ]
    assert _stages("mobilenetv3_small", (3, 224, 224), depth=1.0) == [
        ([112, 112], "features.0"),
        ([56, 56], "features.1"),
        ([28, 28], "features.3"),
        ([14, 14], "features.8"),
        ([7, 7], "features"),
        (None, "classifier"),
    ]
    assert _stages("efficientnet_b0", (3, 32, 32)) == [
        ([32, 32], "features.2"),
        ([16, 16], "features.3"),
        ([8, 8], "features.5"),
        ([4, 4], "features"),
        (None, "classifier"),
    ]
    # 8x8 digits (overall stride 8): the last stage is 1x1
    assert _stages("resnet18", (1, 8, 8))[-2:] == [([1, 1], "layer4"), (None, "fc")]
    # (the squeeze-excitation's pooling of a 1x1 map is not the head's)
    assert _stages("efficientnet_b0", (1, 8, 8))[-2:] == [
        ([1, 1], "features"),
        (None, "classifier"),
    ]


def test_vit_layer_table_shows_token_maps() -> None:
    shape = (3, 32, 32)
    info = inspect_model(build_student("deit_tiny", shape, 10, width=0.25, depth=0.2), shape)
    rows = {r["path"]: r for r in info["layers"]}
    tokens = 1 + (32 // 4) ** 2  # class token + 8x8 patches of 4 pixels
    assert rows["patch_embed.proj"]["output_shape"] == [48, 8, 8]
    assert rows["patch_embed"]["output_shape"] == [64, 48]
    assert rows["blocks.0"]["output_shape"] == [tokens, 48]
    assert rows["blocks.1.attn.qkv"]["output_shape"] == [tokens, 144]
    assert rows["norm"]["output_shape"] == [tokens, 48] and rows["head"]["output_shape"] == [10]
    assert [s["end"] for s in info["stages"]][-1] == "head"


def test_suggested_pairs_match_stages_by_resolution() -> None:
    shape = (3, 32, 32)
    teacher = inspect_model(build_student("resnet50", shape, 10, **SMALL), shape)
    student = inspect_model(build_student("mobilenetv3_large", shape, 10, width=0.25), shape)
    pairs = suggest_pairs(teacher, student)
    assert [(p["teacher"], p["student"]) for p in pairs] == [
        ("layer2", "features.6"),
        ("layer3", "features.12"),
        ("layer4", "features"),
    ]
    assert all(p["teacher_shape"][1:] == p["student_shape"][1:] for p in pairs)
    # a ViT student's token maps do not pair with CNN maps: the error says what would
    vit = inspect_model(build_student("deit_tiny", shape, 10, width=0.25, depth=0.1), shape)
    message = check_pair(find_layer(teacher, "layer4", "teacher"), find_layer(vit, "blocks.0", ""))
    assert message is not None and "transformer tokens [65,48]" in message
    assert "pair token layers with another transformer's" in message
    # two ViTs: their token maps pair (same token count, a linear connector on dim)
    other = inspect_model(build_student("deit_tiny", shape, 10, width=0.5, depth=0.1), shape)
    assert check_pair(find_layer(other, "blocks.0", ""), find_layer(vit, "blocks.0", "")) is None
    # and suggestions pair two ViTs' blocks at the same relative depth (6 teacher, 3 student)
    teacher_vit = build_student("deit_tiny", shape, 10, width=0.5, depth=0.5)
    student_vit = build_student("deit_tiny", shape, 10, width=0.25, depth=0.25)
    pairs = suggest_pairs(inspect_model(teacher_vit, shape), inspect_model(student_vit, shape))
    assert [(p["teacher"], p["student"]) for p in pairs] == [
        ("blocks.1", "blocks.0"),
        ("blocks.3", "blocks.1"),
        ("blocks.5", "blocks.2"),
    ]
    assert [p["student_shape"] for p in pairs] == [[65, 48]] * 3


# torch.export is slow: the smallest versions on 8x8 inputs; resnet34 and mobilenetv3_large use
# the operators of resnet18 and mobilenetv3_small
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(ZOO) - {"resnet34", "mobilenetv3_large"}))
def test_export_pt2_and_load_back(name: str, tmp_path: Path) -> None:
    shape = (3, 8, 8)
    model = build_student(name, shape, 4, width=0.125, depth=0.1).eval()
    export_pt2(model, shape, tmp_path / "m.pt2")
    loaded = load_model(tmp_path / "m.pt2", "pt2")
    assert loaded.input_shape == shape and loaded.num_classes == 4
    x = torch.randn(3, *shape)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), model(x), atol=1e-5, rtol=1e-4)


def test_depth_multiplier_of_mobilenetv3_and_efficientnet() -> None:
    """Each run of same-width blocks (stage) scaled, at least one block, repeated above 1."""
    blocks = {
        d: len(build_student("mobilenetv3_large", (3, 32, 32), 10, width=0.25, depth=d).features)
        for d in (0.1, 1.0, 2.0)
    }
    assert blocks == {0.1: 8, 1.0: 17, 2.0: 32}  # stem + blocks + last conv; 6 runs, 15 blocks
    effnet = build_student("efficientnet_b0", (3, 32, 32), 10, width=0.25, depth=2.0)
    assert [len(effnet.features[i]) for i in range(1, 8)] == [2, 4, 4, 6, 6, 8, 2]


def test_stem_and_patch_size_choices() -> None:
    forced = build_student("resnet18", (3, 32, 32), 10, stem="imagenet", **SMALL)
    assert forced.conv1.kernel_size == (7, 7) and forced.arch_kwargs["stem"] == "imagenet"
    small = build_student("efficientnet_b0", (3, 224, 224), 10, stem="small", **SMALL)
    assert small.features[0][0].stride == (1, 1)
    assert (
        build_student("deit_tiny", (3, 32, 32), 10, patch_size=8, **SMALL).pos_embed.shape[1] == 17
    )
    with pytest.raises(ValueError, match=r"parameter 'stem'.*must be one of"):
        build_student("resnet18", (3, 32, 32), 10, stem="tiny")
    with pytest.raises(ValueError, match="patch_size 16 is larger than the input's 8x8"):
        build_student("deit_tiny", (1, 8, 8), 10, patch_size=16)
    with pytest.raises(ValueError, match="use 'mlp'"):
        build_student("efficientnet_b0", (64,), 10)


DERIVED = [
    # teacher, its kwargs -> architecture, kwargs (depth and width factors 0.5)
    ("resnet50", {}, "resnet50", {"width": 0.5, "depth": 0.5, "stem": "auto"}),
    ("resnet34", {"stem": "small"}, "resnet34", {"width": 0.5, "depth": 0.5, "stem": "small"}),
    ("mobilenetv3_large", {}, "mobilenetv3_large", {"width": 0.5, "depth": 0.5, "stem": "auto"}),
    (
        "efficientnet_b0",
        {"width": 0.5},
        "efficientnet_b0",
        {"width": 0.25, "depth": 0.5, "stem": "auto"},
    ),
    ("deit_tiny", {"patch_size": 4}, "deit_tiny", {"width": 0.5, "depth": 0.5, "patch_size": 4}),
]


@pytest.mark.parametrize(("teacher", "t_kwargs", "arch", "kwargs"), DERIVED)
def test_derived_from_a_teacher_of_the_family(
    teacher: str, t_kwargs: dict, arch: str, kwargs: dict
) -> None:
    spec = StudentSpec(source="derived", depth_factor=0.5, width_factor=0.5)
    assert spec.zoo_architecture(teacher, {**t_kwargs, "num_classes": 10}) == (arch, kwargs)
    shape = (3, 32, 32)
    t = build_student(teacher, shape, 10, **t_kwargs)
    s = derive_student(teacher, t.arch_kwargs, 0.5, 0.5, shape, 10)
    assert (s.arch, s.arch_kwargs) == (arch, kwargs)
    assert _params(s) < _params(t) / 3, (teacher, _params(s), _params(t))
    assert s(torch.randn(2, *shape)).shape == (2, 10)


# --- the run.yaml door --------------------------------------------------------------------------


@pytest.mark.slow
def test_train_run_yaml_with_the_new_students(tmp_path: Path) -> None:
    """`distill-studio train run.yaml`: a deit_tiny (exported to ONNX too), and a student
    derived from a resnet18 safetensors teacher with a feature pair at their 4x4 stages."""
    import json

    import numpy as np
    import yaml
    from typer.testing import CliRunner

    from cli.main import app
    from worker.engine.export import save_safetensors
    from worker.engine.tasks.classification.data import digits_data

    data = digits_data()
    np.savez(tmp_path / "digits.npz", x=data.x.numpy(), y=data.y.numpy())
    teacher = build_student("resnet18", data.input_shape, 10, width=0.25, depth=0.5)
    save_safetensors(teacher, tmp_path / "teacher.safetensors")
    vit = {"architecture": "deit_tiny", "kwargs": {"width": 0.25, "depth": 0.1}}
    derived = {"source": "derived", "depth_factor": 0.5, "width_factor": 0.5}
    cases = [
        (vit, None, True, "deit_tiny"),
        (derived, [{"teacher": "layer2", "student": "layer2"}], False, "resnet18"),
    ]
    for student, pairs, onnx, arch in cases:
        losses = [{"name": "ce"}, {"name": "kd"}] + ([{"name": "at"}] if pairs else [])
        doc = {
            "teacher": {"path": "teacher.safetensors"},
            "dataset": {"path": "digits.npz"},
            "student": {"source": "zoo", **student},
            "losses": losses,
            "training": {"epochs": 1, "batch_size": 128, "device": "cpu", "export_onnx": onnx},
            **({"layer_pairs": pairs} if pairs else {}),
        }
        config = tmp_path / f"{arch}.yaml"
        config.write_text(yaml.safe_dump(doc))
        out = tmp_path / f"out-{arch}"
        result = CliRunner().invoke(
            app, ["train", str(config), "--out", str(out)], catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["student_architecture"] == arch
        assert (out / "student.safetensors").exists()
        assert (out / "student.onnx").exists() == onnx, summary.get("onnx_export_error")
    assert (summary["student_kwargs"]["width"], summary["student_kwargs"]["depth"]) == (0.125, 0.25)
