"""Model inspection, feature taps and layer pairing."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

from core.catalog.tasks import TASKS
from core.pairing import check_pair, find_layer, suggest_pairs
from worker.engine.loading import ModelLoadError
from worker.engine.students import build_student
from worker.engine.taps import FeatureTaps, inspect_model


@pytest.fixture(scope="module")
def digits() -> dict:
    return inspect_model(build_student("resnet20", (1, 8, 8), 10), (1, 8, 8))


@pytest.fixture(scope="module")
def cifar_pair() -> tuple[dict, dict]:
    teacher = inspect_model(build_student("resnet20", (3, 32, 32), 10, width=2.0), (3, 32, 32))
    student = inspect_model(build_student("resnet8", (3, 32, 32), 10, width=0.5), (3, 32, 32))
    return teacher, student


def test_inspect_resnet20_digits(digits: dict) -> None:
    json.dumps(digits)  # JSON-able
    assert digits["input_shape"] == [1, 8, 8] and digits["output_shape"] == [10]
    assert digits["num_classes"] == 10 and 0.26e6 < digits["params"] < 0.28e6
    assert digits["flops"] > 0
    rows = {r["path"]: r for r in digits["layers"]}
    first = [r["path"] for r in digits["layers"][:5]]
    assert first == ["conv1", "bn1", "relu", "layer1", "layer1.0"]
    assert rows["layer2"] == {
        "path": "layer2",
        "type": "Sequential",
        "input_shape": [16, 8, 8],
        "output_shape": [32, 4, 4],
        "params": rows["layer2"]["params"],
        "stage": 1,
    }
    assert rows["fc"]["input_shape"] == [64] and rows["fc"]["stage"] == 3
    stages = [(s["resolution"], s["channels"], s["end"]) for s in digits["stages"]]
    assert stages == [
        ([8, 8], 16, "layer1"),
        ([4, 4], 32, "layer2"),
        ([2, 2], 64, "layer3"),
        (None, 10, "fc"),
    ]
    assert digits["stages"][3]["layers"] == ["avgpool", "fc"]
    assert "layer2.2.relu2" in digits["stages"][1]["layers"]


def test_inspect_resnet20_cifar(cifar_pair: tuple[dict, dict]) -> None:
    teacher, _ = cifar_pair
    ends = [(s["resolution"], s["channels"], s["end"]) for s in teacher["stages"]]
    assert ends == [
        ([32, 32], 32, "layer1"),
        ([16, 16], 64, "layer2"),
        ([8, 8], 128, "layer3"),
        (None, 10, "fc"),
    ]
    # resnet20 at width 1: about 41M multiply-adds on CIFAR, i.e. ~82M FLOPs
    flops = inspect_model(build_student("resnet20", (3, 32, 32), 10), (3, 32, 32))["flops"]
    assert 75e6 < flops < 90e6


def test_inspect_mlp_has_a_head_stage_only() -> None:
    info = inspect_model(build_student("mlp", (1, 8, 8), 10, hidden=16), (1, 8, 8))
    assert [(s["resolution"], s["end"]) for s in info["stages"]] == [(None, "fc")]


def test_inspect_wrong_input_shape_names_it() -> None:
    model = build_student("mlp", (1, 8, 8), 10, hidden=16)
    expected = r"shape \[3, 32, 32\].*expects input_shape \[1, 8, 8\]"
    with pytest.raises(ModelLoadError, match=expected):
        inspect_model(model, (3, 32, 32))


def test_feature_taps() -> None:
    model = build_student("resnet8", (1, 8, 8), 10).train()
    taps = [("layer3", "output"), ("fc", "input"), ("layer2.0.relu1", "output")]
    with FeatureTaps(model, taps, side="student") as t:
        model(torch.randn(4, 1, 8, 8))
        feats = t.features
        assert [tuple(f.shape) for f in feats] == [(4, 64, 2, 2), (4, 64), (4, 32, 4, 4)]
        assert feats[0].requires_grad
        model(torch.randn(2, 1, 8, 8))  # a new forward replaces the features
        assert t.features[0].shape[0] == 2
    with FeatureTaps(model, taps[:1], detach=True) as t:
        model(torch.randn(2, 1, 8, 8))
        assert not t.features[0].requires_grad
    model(torch.randn(2, 1, 8, 8))  # hooks are gone
    assert not model._forward_hooks and not model.layer3._forward_hooks


def test_feature_taps_unknown_path() -> None:
    model = build_student("resnet8", (1, 8, 8), 10)
    with pytest.raises(ValueError) as err:
        FeatureTaps(model, [("layer9", "output")])
    assert str(err.value) == "layer 'layer9' not in teacher; nearest: layer3, layer2, layer1"


def test_suggest_pairs_matches_stage_ends(cifar_pair: tuple[dict, dict]) -> None:
    teacher, student = cifar_pair
    assert suggest_pairs(teacher, student) == [
        {
            "teacher": "layer1",
            "student": "layer1",
            "teacher_shape": [32, 32, 32],
            "student_shape": [8, 32, 32],
        },
        {
            "teacher": "layer2",
            "student": "layer2",
            "teacher_shape": [64, 16, 16],
            "student_shape": [16, 16, 16],
        },
        {
            "teacher": "layer3",
            "student": "layer3",
            "teacher_shape": [128, 8, 8],
            "student_shape": [32, 8, 8],
        },
    ]
    two = suggest_pairs(teacher, student, max_pairs=2)
    assert [p["teacher"] for p in two] == ["layer2", "layer3"]


def test_suggest_pairs_for_mlps_uses_penultimate_features() -> None:
    t = inspect_model(build_student("mlp", (6,), 3, hidden=32, depth=2), (6,))
    s = inspect_model(build_student("mlp", (6,), 3, hidden=8, depth=1), (6,))
    assert suggest_pairs(t, s) == [
        {"teacher": "layers.1", "student": "layers.0", "teacher_shape": [32], "student_shape": [8]}
    ]


def test_check_pair(cifar_pair: tuple[dict, dict]) -> None:
    teacher, student = cifar_pair
    t3, s3 = find_layer(teacher, "layer3", "teacher"), find_layer(student, "layer3", "student")
    assert check_pair(t3, find_layer(student, "layer1", "student")) is None  # pool + conv
    assert check_pair(find_layer(teacher, "fc", "teacher"), s3) is None  # pool + linear
    message = check_pair(t3, find_layer(student, "fc", "student"), student=student)
    assert message == (
        "teacher layer 'layer3' [128,8,8] vs student layer 'fc' [10]: cannot rebuild a spatial "
        "map from a vector; pick a student layer with a 4D output such as layer3 [32,8,8]"
    )
    expected = "layer 'layer7' not in student; nearest: layer3, layer2, layer1"
    with pytest.raises(ValueError, match=expected):
        find_layer(student, "layer7", "student")


def test_check_pair_points_to_the_student_layers_of_the_tasks_stage_rule(
    cifar_pair: tuple[dict, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hint in the message is the task's catalog entry's, the layer it names is a stage end
    of the entry's rule."""
    teacher, student = cifar_pair
    t3, fc = find_layer(teacher, "layer3", "teacher"), find_layer(student, "fc", "student")
    hinted = dataclasses.replace(
        TASKS["classification"], name="hinted", stage_hint="that ends a resolution stage"
    )
    monkeypatch.setitem(TASKS, "hinted", hinted)
    message = check_pair(t3, fc, student=student, task="hinted")
    assert message is not None
    assert message.endswith(
        "; pick a student layer that ends a resolution stage such as layer3 [32,8,8]"
    )
    assert check_pair(t3, find_layer(student, "layer2", "student"), task="hinted") is None


def test_pairing_is_torch_free() -> None:
    code = "import sys, core.pairing; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


class OddNet(nn.Module):
    """A teacher with odd module names whose one `trunk` wraps all its stages (16, 8, 4 pixels
    on 32x32 inputs), as torchvision's `features` does."""

    def __init__(self) -> None:
        super().__init__()

        def convs(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1)
            )

        self.trunk = nn.Sequential(
            OrderedDict(
                [
                    ("1st", nn.Conv2d(3, 8, 3, 2, 1)),
                    ("block-a", convs(8, 16, 1)),
                    ("block-b", convs(16, 32, 2)),
                    ("block-c", convs(32, 64, 2)),
                ]
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.flatten(self.pool(self.trunk(x)), 1))


def test_a_trunk_hides_no_stage_and_pairs_match_by_resolution() -> None:
    """OddNet's stages inside its trunk are stages of their own, and suggestions pair every
    resolution both networks have (16 and 8 pixels), not the trunk with the last stage."""
    shape = (3, 32, 32)
    teacher = inspect_model(OddNet(), shape)
    ends = [(s["resolution"], s["end"]) for s in teacher["stages"]]
    assert ends == [
        ([16, 16], "trunk.block-a"),
        ([8, 8], "trunk.block-b"),
        ([4, 4], "trunk"),
        (None, "out"),
    ]
    student = inspect_model(build_student("resnet8", shape, 10, width=0.5), shape)  # 32/16/8
    pairs = suggest_pairs(teacher, student)
    assert [(p["teacher"], p["student"]) for p in pairs] == [
        ("trunk.block-a", "layer2"),
        ("trunk.block-b", "layer3"),
    ]
    assert [p["teacher_shape"] for p in pairs] == [[16, 16, 16], [32, 8, 8]]


def _inspection(stages: list[tuple[list[int] | None, str, list[int]]]) -> dict:
    """A hand-written inspection: (resolution, end, end's output shape) per stage."""
    return {
        "layers": [{"path": end, "output_shape": out} for _, end, out in stages],
        "stages": [{"resolution": res, "end": end, "layers": [end]} for res, end, out in stages],
    }


def test_suggest_pairs_by_resolution_torch_free() -> None:
    teacher = _inspection(
        [
            ([56, 56], "s1", [64, 56, 56]),
            ([28, 28], "s2", [128, 28, 28]),
            ([14, 14], "s3", [256, 14, 14]),
            ([7, 7], "s4", [512, 7, 7]),
            (None, "fc", [10]),
        ]
    )
    student = _inspection(
        [
            ([112, 112], "stem", [16, 112, 112]),
            ([28, 28], "b2", [24, 28, 28]),
            ([7, 7], "b4", [96, 7, 7]),
            (None, "head", [10]),
        ]
    )
    pairs = suggest_pairs(teacher, student)
    assert [(p["teacher"], p["student"]) for p in pairs] == [("s2", "b2"), ("s4", "b4")]
    # no resolution in common: aligned from the end, as before
    other = _inspection([([9, 9], "x", [8, 9, 9]), ([3, 3], "y", [8, 3, 3]), (None, "z", [10])])
    assert [(p["teacher"], p["student"]) for p in suggest_pairs(teacher, other)] == [
        ("s3", "x"),
        ("s4", "y"),
    ]
