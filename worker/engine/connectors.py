"""Connectors: small trainable modules that map a student feature onto the teacher's shape.

Shapes exclude the batch dimension (as `taps.inspect_model` reports them); the module itself
takes and returns batch-first tensors.

- map [C_s, H_s, W_s] -> map [C_t, H_t, W_t]: adaptive average pooling when the student map is
  larger (pool first, it is cheaper), a 1x1 convolution + BatchNorm when channels differ (the
  FitNets regressor; RepDistiller's `ConvReg`), bilinear interpolation when the student map is
  smaller in any direction;
- vector [D_s] -> vector [D_t]: Linear + BatchNorm1d;
- map [C_s, H, W] -> vector [D_t]: global average pooling, flatten, Linear + BatchNorm1d;
- sequence [L, D_s] -> sequence [L, D_t]: Linear on the last dimension;
- equal shapes: Identity.

Why a projector with batch norm: Miles, Elezi & Deng, "Understanding the Role of the Projector
in Knowledge Distillation" (AAAI 2024) show that a simple linear/1x1 projector followed by batch
normalisation of the features already recovers most of the gains of elaborate feature losses; the
normalisation stops the student from matching the teacher's feature scale instead of its content.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from core.pairing import fmt_shape, shape_problem


def build_connector(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """A module mapping student features (N, *student_shape) to (N, *teacher_shape).

    Raises ValueError naming both shapes when no connector can do it (e.g. a vector to a map).
    """
    s, t = [int(x) for x in student_shape], [int(x) for x in teacher_shape]
    if len(s) == 4 or len(t) == 4:
        raise ValueError(
            f"build_connector takes shapes without the batch dimension (as inspect_model reports "
            f"them), got student {fmt_shape(s)} and teacher {fmt_shape(t)}: pass tensor.shape[1:]"
        )
    problem = shape_problem(s, t)
    if problem is not None:
        raise ValueError(
            f"no connector maps student {fmt_shape(s)} to teacher {fmt_shape(t)}: {problem}"
        )
    if s == t:
        return nn.Identity()
    if len(s) == 3 and len(t) == 3:
        return _map_to_map(s, t)
    if len(s) == 3:
        return _map_to_vector(s, t[0])
    if len(s) == 1:
        return _vector_to_vector(s[0], t[0])
    return nn.Linear(s[1], t[1])  # over the last dimension of (N, L, D)


def _map_to_map(s: list[int], t: list[int]) -> nn.Module:
    (c_s, h_s, w_s), (c_t, h_t, w_t) = s, t
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    larger = h_s >= h_t and w_s >= w_t and (h_s, w_s) != (h_t, w_t)
    if larger:
        parts["pool"] = nn.AdaptiveAvgPool2d((h_t, w_t))
    if c_s != c_t:
        parts["proj"] = nn.Conv2d(c_s, c_t, kernel_size=1, bias=False)
        parts["bn"] = nn.BatchNorm2d(c_t)
    if not larger and (h_s, w_s) != (h_t, w_t):
        parts["resize"] = nn.Upsample(size=(h_t, w_t), mode="bilinear", align_corners=False)
    return nn.Sequential(parts)


def _vector_to_vector(d_s: int, d_t: int) -> nn.Module:
    return nn.Sequential(OrderedDict(proj=nn.Linear(d_s, d_t, bias=False), bn=nn.BatchNorm1d(d_t)))


def _map_to_vector(s: list[int], d_t: int) -> nn.Module:
    parts: OrderedDict[str, nn.Module] = OrderedDict(
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1)
    )
    if s[0] != d_t:
        parts["proj"] = nn.Linear(s[0], d_t, bias=False)
        parts["bn"] = nn.BatchNorm1d(d_t)
    return nn.Sequential(parts)
