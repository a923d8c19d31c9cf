"""Connectors map student features onto the teacher's shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from worker.engine.connectors import build_connector

CASES = [
    ((16, 8, 8), (16, 8, 8), nn.Identity),
    ((8, 16, 16), (32, 8, 8), None),  # pool, then 1x1 conv + BN
    ((8, 4, 4), (32, 8, 8), None),  # 1x1 conv + BN, then upsample
    ((8, 8, 8), (8, 4, 4), None),  # pool only
    ((8, 4, 8), (8, 8, 4), None),  # mixed: interpolate
    ((32,), (64,), None),  # linear + BN
    ((32, 4, 4), (100,), None),  # pool, flatten, linear + BN
    ((32, 4, 4), (32,), None),  # pool, flatten
    ((5, 16), (5, 32), nn.Linear),  # tokens: linear over the last dim
]


@pytest.mark.parametrize(("student", "teacher", "kind"), CASES)
def test_connector_produces_teacher_shape(
    student: tuple[int, ...], teacher: tuple[int, ...], kind: type | None
) -> None:
    connector = build_connector(student, teacher)
    if kind is not None:
        assert isinstance(connector, kind)
    for train in (True, False):
        connector.train(train)
        assert connector(torch.randn(3, *student)).shape == (3, *teacher)


def test_connector_parts() -> None:
    parts = dict(build_connector((8, 16, 16), (32, 8, 8)).named_children())
    assert list(parts) == ["pool", "proj", "bn"]
    assert isinstance(parts["proj"], nn.Conv2d) and parts["proj"].kernel_size == (1, 1)
    parts = dict(build_connector((8, 4, 4), (32, 8, 8)).named_children())
    assert list(parts) == ["proj", "bn", "resize"]
    # a connector trains with the student
    assert any(p.requires_grad for p in build_connector((32,), (64,)).parameters())


def test_impossible_connectors_name_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"student \[64\] to teacher \[64,8,8\]: cannot rebuild"):
        build_connector((64,), (64, 8, 8))
    with pytest.raises(ValueError, match=r"without the batch dimension.*tensor.shape\[1:\]"):
        build_connector((2, 16, 8, 8), (2, 16, 8, 8))
    with pytest.raises(ValueError, match="sequence lengths differ"):
        build_connector((5, 16), (7, 16))
