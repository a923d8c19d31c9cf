"""Losses on small hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core import catalog
from core.config import LossSpec
from worker.engine.losses import LOSSES, DistillLoss, LossContext, StepOutputs, build_loss


def _out(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kw) -> StepOutputs:
    return StepOutputs(s, t, y if y is not None else torch.zeros(len(s), dtype=torch.long), **kw)


def test_engine_implements_every_catalog_loss() -> None:
    assert set(LOSSES) == set(catalog.LOSSES)
    for name, cls in LOSSES.items():
        assert issubclass(cls, DistillLoss), name


def test_kd_is_batch_mean_kl_times_t_squared() -> None:
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    temp = 2.0
    loss = build_loss(LossSpec(name="kd", params={"temperature": temp}), LossContext(3))
    expected = 0.0
    for sb, tb in zip(s.tolist(), t.tolist(), strict=True):
        zs = [math.exp(v / temp) for v in sb]
        zt = [math.exp(v / temp) for v in tb]
        ps = [v / sum(zs) for v in zs]
        pt = [v / sum(zt) for v in zt]
        expected += sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True))
    expected = expected / 2 * temp**2
    assert loss(_out(s, t)).item() == pytest.approx(expected, rel=1e-5)


def test_kd_zero_for_identical_logits_and_default_temperature() -> None:
    z = torch.randn(4, 5)
    loss = build_loss(LossSpec(name="kd"), LossContext(5))
    assert loss.temperature == 4.0
    assert loss(_out(z, z.clone())).item() == pytest.approx(0.0, abs=1e-6)


def test_ce_with_label_smoothing() -> None:
    s, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    loss = build_loss(LossSpec(name="ce", params={"label_smoothing": 0.3}), LossContext(3))
    logp = F.log_softmax(s, 1)[0]
    q = torch.tensor([0.7 + 0.1, 0.1, 0.1])
    assert loss(_out(s, s, y)).item() == pytest.approx(float(-(q * logp).sum()), rel=1e-6)


def test_at_zero_for_identical_features_and_scale_invariant() -> None:
    f = torch.randn(2, 3, 4, 4)
    loss = build_loss(LossSpec(name="at"), LossContext(10, [((3, 4, 4), (3, 4, 4))]))
    z = torch.zeros(2, 10)
    assert loss(_out(z, z, student_feats=[f], teacher_feats=[f.clone()])).item() == pytest.approx(0)
    # channel counts may differ; maps are normalised, so 3x the feature gives the same map
    loss2 = build_loss(LossSpec(name="at"), LossContext(10, [((3, 4, 4), (6, 4, 4))]))
    value = loss2(_out(z, z, student_feats=[f], teacher_feats=[torch.cat([f, f], 1) * 3]))
    assert value.item() == pytest.approx(0.0, abs=1e-7)


def test_at_matches_formula_and_pools_spatial_mismatch() -> None:
    fs, ft = torch.randn(2, 4, 4, 4), torch.randn(2, 8, 8, 8)
    loss = build_loss(LossSpec(name="at"), LossContext(10, [((4, 4, 4), (8, 8, 8))]))
    z = torch.zeros(2, 10)
    ft_pooled = F.adaptive_avg_pool2d(ft, 4)
    a_s = F.normalize(fs.pow(2).mean(1).view(2, -1))
    a_t = F.normalize(ft_pooled.pow(2).mean(1).view(2, -1))
    expected = (a_s - a_t).pow(2).mean()
    got = loss(_out(z, z, student_feats=[fs], teacher_feats=[ft]))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_at_refuses_vector_features_of_different_widths() -> None:
    with pytest.raises(ValueError, match="use 'fitnets'"):
        build_loss(LossSpec(name="at"), LossContext(10, [((16,), (32,))]))


def test_fitnets_gradients_reach_student_and_connector_not_teacher() -> None:
    loss = build_loss(LossSpec(name="fitnets"), LossContext(10, [((4, 8, 8), (8, 4, 4))]))
    fs = torch.randn(2, 4, 8, 8, requires_grad=True)
    ft = torch.randn(2, 8, 4, 4, requires_grad=True)
    z = torch.zeros(2, 10)
    value = loss(_out(z, z, student_feats=[fs], teacher_feats=[ft.detach()]))
    assert value.item() > 0
    value.backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    assert all(p.grad is not None for p in loss.parameters() if p.requires_grad)
    assert list(loss.parameters()), "the connector must be a trainable part of the loss"
    assert ft.grad is None


def _mse_by_hand(a: torch.Tensor, b: torch.Tensor) -> float:
    pairs = list(zip(a.flatten().tolist(), b.flatten().tolist(), strict=True))
    return sum((x - y) ** 2 for x, y in pairs) / len(pairs)


def test_fitnets_identity_connector_sums_the_pairs_mse_and_is_zero_for_identical() -> None:
    s1, t1 = torch.randn(2, 3), torch.randn(2, 3)
    s2, t2 = torch.randn(2, 2, 2, 2), torch.randn(2, 2, 2, 2)
    pairs = [((3,), (3,)), ((2, 2, 2), (2, 2, 2))]
    loss = build_loss(LossSpec(name="fitnets"), LossContext(10, pairs))
    assert all(isinstance(c, torch.nn.Identity) for c in loss.connectors)  # shapes match
    z = torch.zeros(2, 10)
    got = loss(_out(z, z, student_feats=[s1, s2], teacher_feats=[t1, t2]))
    assert got.item() == pytest.approx(_mse_by_hand(s1, t1) + _mse_by_hand(s2, t2), rel=1e-5)
    same = loss(_out(z, z, student_feats=[t1, t2], teacher_feats=[t1.clone(), t2.clone()]))
    assert same.item() == 0.0


def test_fitnets_value_through_a_known_linear_bn_connector() -> None:
    """Student [3] -> teacher [2]: Linear (no bias) then BatchNorm1d with batch statistics."""
    s = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 1.0], [-1.0, 2.0, 0.0]])
    t = torch.tensor([[0.5, 1.0], [-1.0, 0.0], [2.0, -0.5]])
    w = [[1.0, -0.5, 0.25], [0.0, 2.0, -1.0]]
    loss = build_loss(LossSpec(name="fitnets"), LossContext(10, [((3,), (2,))]))
    with torch.no_grad():
        loss.connectors[0].proj.weight.copy_(torch.tensor(w))
    expected = 0.0
    for c in range(2):
        r = [sum(w[c][k] * s[b, k].item() for k in range(3)) for b in range(3)]
        mean = sum(r) / 3
        var = sum((v - mean) ** 2 for v in r) / 3  # biased, as batch norm normalises
        expected += sum(
            ((r[b] - mean) / math.sqrt(var + 1e-5) - t[b, c].item()) ** 2 for b in range(3)
        )
    z = torch.zeros(3, 10)
    got = loss(_out(z, z, student_feats=[s], teacher_feats=[t]))
    assert got.item() == pytest.approx(expected / 6, rel=1e-5)


def test_fitnets_zero_when_the_pooled_student_map_is_the_teacher() -> None:
    fs = torch.randn(2, 3, 4, 4)
    loss = build_loss(LossSpec(name="fitnets"), LossContext(10, [((3, 4, 4), (3, 2, 2))]))
    z = torch.zeros(2, 10)
    ft = fs.reshape(2, 3, 2, 2, 2, 2).mean((3, 5))  # 2x2 block means: the connector pools
    got = loss(_out(z, z, student_feats=[fs], teacher_feats=[ft]))
    assert got.item() == pytest.approx(0.0, abs=1e-12)


def test_fitnets_hint_stage_is_exclusive() -> None:
    loss = build_loss(
        LossSpec(name="fitnets", params={"hint_epochs": 2}), LossContext(10, [((4,), (4,))])
    )
    assert loss.exclusive(0) and loss.exclusive(1) and not loss.exclusive(2)
    assert loss.active(0) and loss.active(5)


def test_feature_loss_checks_feature_count() -> None:
    loss = build_loss(LossSpec(name="at"), LossContext(10, [((3, 4, 4), (3, 4, 4))]))
    z = torch.zeros(2, 10)
    with pytest.raises(ValueError, match="1 layer pair"):
        loss(_out(z, z))
