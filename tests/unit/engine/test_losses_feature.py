"""Feature-based losses and the "other tensors": values on small hand-computed tensors, gradient
flow (student and auxiliary modules, never the teacher), the pre-training hook and a short run."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from core.config import LossSpec, RunConfig
from worker.engine.losses import LossContext, StepOutputs, build_loss
from worker.engine.losses.ft import FactorTransfer
from worker.engine.losses.reviewkd import hcl
from worker.engine.tasks.classification.data import TensorData, split
from worker.engine.trainer import Callbacks, Cancelled, StepReport, train

pytestmark = pytest.mark.usefixtures("one_thread")


Z = torch.zeros(2, 10)
Y = torch.zeros(2, dtype=torch.long)


def _loss(name: str, pairs: list, **params: object):
    return build_loss(LossSpec(name=name, params=params), LossContext(10, pairs))


def _out(fs: list[torch.Tensor], ft: list[torch.Tensor], **kw: object) -> StepOutputs:
    b = fs[0].shape[0] if fs else 2
    return StepOutputs(
        torch.zeros(b, 10), torch.zeros(b, 10), torch.zeros(b, dtype=torch.long), fs, ft, **kw
    )


def _check_grads(loss: nn.Module, fs: list[torch.Tensor], ft: list[torch.Tensor]) -> None:
    """Backward from the loss: the student features and every trainable part of the loss get a
    gradient, the teacher features none."""
    value = loss(_out(fs, [t.detach() for t in ft]))
    assert torch.isfinite(value) and value.item() != 0
    value.backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in fs)
    trainable = [(n, p) for n, p in loss.named_parameters() if p.requires_grad]
    assert trainable, "auxiliary modules must be trainable parts of the loss"
    assert [n for n, p in trainable if p.grad is None] == []
    assert all(t.grad is None for t in ft)


def _maps(*shapes: tuple[int, ...], grad: bool = False, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen).requires_grad_(grad) for s in shapes]


@torch.no_grad()
def _set_identity(module: nn.Module) -> nn.Module:
    """Every conv of `module` (equal in/out channels) the identity, every batch norm the identity
    in eval mode (running mean 0, running var + eps = 1); for inputs >= 0 ReLUs and LeakyReLUs
    are then the identity too, so the whole module is."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] // 2
            m.weight.zero_()
            m.weight[:, :, k, k] = torch.eye(m.out_channels, m.in_channels)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.eval()
            m.running_mean.zero_()
            m.running_var.fill_(1.0 - m.eps)
    return module


# ----------------------------------------------------------------------------------------------
# feature_l2


def _standardize(f: torch.Tensor) -> torch.Tensor:
    """Per channel over batch and space, population variance: written out channel by channel."""
    out = torch.empty_like(f)
    for c in range(f.shape[1]):
        v = f[:, c]
        out[:, c] = (v - v.mean()) / math.sqrt(float(((v - v.mean()) ** 2).mean()) + 1e-5)
    return out


@pytest.mark.parametrize("distance", ["l2", "l1", "cosine"])
def test_feature_l2_values_with_identity_projector(distance: str) -> None:
    fs, ft = _maps((2, 3, 4, 4), (2, 3, 4, 4))
    loss = _loss("feature_l2", [((3, 4, 4), (3, 4, 4))], distance=distance)
    a, b = _standardize(fs), _standardize(ft)
    if distance == "l2":
        expected = ((a - b) ** 2).sum() / a.numel()
    elif distance == "l1":
        expected = (a - b).abs().sum() / a.numel()
    else:
        cos = [(a[i] * b[i]).sum() / (a[i].norm() * b[i].norm()) for i in range(2)]
        expected = sum(1 - c for c in cos) / 2
    assert loss(_out([fs], [ft])).item() == pytest.approx(float(expected), rel=1e-4)
    assert loss(_out([fs], [fs.clone()])).item() == pytest.approx(0.0, abs=1e-5)
    raw = _loss("feature_l2", [((3, 4, 4), (3, 4, 4))], normalize=False)
    assert raw(_out([fs], [ft])).item() == pytest.approx(float(((fs - ft) ** 2).mean()), rel=1e-5)


def test_feature_l2_gradients_through_connector() -> None:
    loss = _loss("feature_l2", [((4, 8, 8), (8, 4, 4)), ((6,), (6,))])
    fs = _maps((3, 4, 8, 8), (3, 6), grad=True)
    _check_grads(loss, fs, _maps((3, 8, 4, 4), (3, 6), grad=True, seed=1))


# ----------------------------------------------------------------------------------------------
# ab


def test_ab_hinge_value_by_hand() -> None:
    s = torch.tensor([[0.5, -2.0, 2.0, -0.5]])  # one sample, 4 "channels" (a vector pair)
    t = torch.tensor([[-1.0, -1.0, 1.0, 1.0]])
    m = 1.0
    # 0.5 > -m with t <= 0: (0.5+1)^2; -2 is beyond -m: 0; 2 is beyond m: 0; -0.5 <= m, t > 0: (-1.5)^2
    expected = (1.5**2 + 1.5**2) / (1 * 1000.0)
    loss = _loss("ab", [((4,), (4,))], margin=m)
    assert loss(_out([s], [t])).item() == pytest.approx(expected, rel=1e-6)


def test_ab_zero_for_matching_sign_pattern_beyond_margin_and_pair_weights() -> None:
    t1, t2 = _maps((2, 3, 4, 4), (2, 3, 2, 2))
    beyond = [torch.where(t > 0, 1.2, -1.2) for t in (t1, t2)]
    loss = _loss("ab", [((3, 4, 4), (3, 4, 4)), ((3, 2, 2), (3, 2, 2))], margin=1.0)
    assert loss(_out(beyond, [t1, t2])).item() == 0.0
    assert loss.pair_weights == [0.5, 1.0]  # deepest pair 1, the one before 1/2
    zeros = [torch.zeros_like(t1), torch.zeros_like(t2)]
    # at s = 0 every element is inside the margin on the wrong side: it costs m^2 = 1
    expected = (0.5 * t1.numel() + t2.numel()) / (2 * 1000.0)
    assert loss(_out(zeros, [t1, t2])).item() == pytest.approx(expected, rel=1e-6)


def test_ab_gradients_reach_connector() -> None:
    loss = _loss("ab", [((2, 4, 4), (4, 4, 4))])
    _check_grads(loss, _maps((3, 2, 4, 4), grad=True), _maps((3, 4, 4, 4), grad=True, seed=1))


# ----------------------------------------------------------------------------------------------
# nst / mmd


def _mmd_by_hand(fs: torch.Tensor, ft: torch.Tensor, k) -> float:
    total = 0.0
    for b in range(fs.shape[0]):
        s = [F.normalize(fs[b, c].flatten(), dim=0) for c in range(fs.shape[1])]
        t = [F.normalize(ft[b, c].flatten(), dim=0) for c in range(ft.shape[1])]
        kss = sum(float(k(x, y)) for x in s for y in s) / len(s) ** 2
        ktt = sum(float(k(x, y)) for x in t for y in t) / len(t) ** 2
        kst = sum(float(k(x, y)) for x in s for y in t) / (len(s) * len(t))
        total += kss + ktt - 2 * kst
    return total / fs.shape[0]


def test_nst_poly_mmd_by_hand_and_zero_for_identical() -> None:
    fs, ft = _maps((2, 3, 2, 2), (2, 5, 2, 2))
    loss = _loss("nst", [((3, 2, 2), (5, 2, 2))])
    expected = _mmd_by_hand(fs, ft, lambda x, y: (x @ y) ** 2)
    assert loss(_out([fs], [ft])).item() == pytest.approx(expected, rel=1e-5)
    assert loss(_out([ft], [ft.clone()])).item() == pytest.approx(0.0, abs=1e-6)


def test_mmd_rbf_by_hand_zero_for_identical_and_gradients() -> None:
    fs, ft = _maps((2, 3, 2, 2), (2, 4, 2, 2))
    loss = _loss("mmd", [((3, 2, 2), (4, 2, 2))], kernel="rbf", sigma=0.5)
    expected = _mmd_by_hand(fs, ft, lambda x, y: math.exp(-float((x - y).pow(2).sum()) / 0.5))
    assert loss(_out([fs], [ft])).item() == pytest.approx(expected, rel=1e-5)
    assert loss(_out([fs], [fs.clone()])).item() == pytest.approx(0.0, abs=1e-6)
    fs.requires_grad_(True)
    value = loss(_out([fs], [ft]))
    value.backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0 and ft.grad is None


# ----------------------------------------------------------------------------------------------
# ft / ka: pre-trained auto-encoders


def _feature_source(feats: list[torch.Tensor], calls: list[int]):
    def batches() -> Iterator[list[torch.Tensor]]:
        calls.append(1)
        for i in range(0, len(feats[0]), 4):
            yield [f[i : i + 4] for f in feats]

    return batches


@pytest.mark.parametrize("name", ["ft", "ka"])
def test_prepare_pretrains_once_then_freezes(name: str) -> None:
    pairs = [((4, 4, 4), (6, 4, 4))]
    epochs_param = "paraphraser_epochs" if name == "ft" else "autoencoder_epochs"
    torch.manual_seed(0)
    loss = _loss(name, pairs, **{epochs_param: 3})
    aes = loss.paraphrasers if name == "ft" else loss.autoencoders
    assert loss.needs_prepare and not bool(loss.prepared)
    assert not any(p.requires_grad for p in aes.parameters())  # out of the main optimizer
    (ft,) = _maps((8, 6, 4, 4), seed=3)
    before = F.mse_loss(aes[0](ft), ft).item()
    calls: list[int] = []
    assert loss.prepare_once(_feature_source([ft], calls), torch.device("cpu")) is True
    assert len(calls) == 3 and bool(loss.prepared)
    assert F.mse_loss(aes[0](ft), ft).item() < before  # it learned to reconstruct
    assert not any(p.requires_grad for p in aes.parameters())
    assert loss.prepare_once(_feature_source([ft], calls), torch.device("cpu")) is False
    assert len(calls) == 3
    # a fresh loss restored from the state dict (a resumed run) does not pre-train again
    torch.manual_seed(1)
    fresh = _loss(name, pairs, **{epochs_param: 3})
    fresh.load_state_dict(loss.state_dict())
    assert fresh.prepare_once(_feature_source([ft], calls), torch.device("cpu")) is False
    assert len(calls) == 3
    fresh_aes = fresh.paraphrasers if name == "ft" else fresh.autoencoders
    assert all(
        torch.equal(a, b) for a, b in zip(aes.parameters(), fresh_aes.parameters(), strict=True)
    )


def test_ft_value_and_gradients() -> None:
    torch.manual_seed(0)
    loss = _loss("ft", [((4, 8, 8), (6, 4, 4))], rate=0.5)
    fs, ft = _maps((2, 4, 8, 8), (2, 6, 4, 4), grad=True)
    factor_t = loss.paraphrasers[0].encoder(ft.detach())
    factor_s = F.adaptive_avg_pool2d(loss.translators[0](fs), 4)  # student map is larger
    assert factor_t.shape == factor_s.shape == (2, 3, 4, 4)
    a = factor_t.flatten(1) / factor_t.flatten(1).norm(dim=1, keepdim=True)
    b = factor_s.flatten(1) / factor_s.flatten(1).norm(dim=1, keepdim=True)
    expected = (a - b).abs().sum() / a.numel()
    assert loss(_out([fs], [ft.detach()])).item() == pytest.approx(expected.item(), rel=1e-5)
    _check_grads(loss, [fs], [ft])
    assert all(p.grad is None for p in loss.paraphrasers.parameters())


def test_ka_value_affinity_and_gradients() -> None:
    torch.manual_seed(0)
    loss = _loss("ka", [((4, 4, 4), (6, 4, 4))], affinity_weight=2.0)
    fs, ft = _maps((2, 4, 4, 4), (2, 6, 4, 4), grad=True)
    z_t = loss.autoencoders[0].encoder(ft.detach())
    z_s = loss.adapters[0](fs)
    a = z_s.flatten(1) / z_s.flatten(1).norm(dim=1, keepdim=True)
    b = z_t.flatten(1) / z_t.flatten(1).norm(dim=1, keepdim=True)
    adapt = ((a - b) ** 2).sum() / 2

    def aff(z: torch.Tensor) -> torch.Tensor:  # cosine similarity of every two positions
        v = z.flatten(2)
        return torch.stack(
            [
                torch.stack(
                    [F.cosine_similarity(v[:, :, i], v[:, :, j], dim=1) for j in range(16)], 1
                )
                for i in range(16)
            ],
            1,
        )

    expected = adapt + 2.0 * ((aff(z_s) - aff(z_t)) ** 2).mean()
    assert loss(_out([fs], [ft.detach()])).item() == pytest.approx(expected.item(), rel=1e-4)
    _check_grads(loss, [fs], [ft])
    assert all(p.grad is None for p in loss.autoencoders.parameters())


def test_ft_zero_when_the_translator_reproduces_the_paraphraser() -> None:
    """Same channels, the translator given the paraphraser's conv weights (its batch norms the
    identity): the student factor of the teacher's own feature is the teacher factor."""
    torch.manual_seed(0)
    loss = _loss("ft", [((3, 4, 4), (3, 4, 4))], rate=0.5).eval()
    encoder_convs = [m for m in loss.paraphrasers[0].encoder if isinstance(m, nn.Conv2d)]
    translator_convs = [m for m in loss.translators[0] if isinstance(m, nn.Conv2d)]
    _set_identity(loss.translators[0])
    with torch.no_grad():
        for src, dst in zip(encoder_convs, translator_convs, strict=True):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    (ft,) = _maps((2, 3, 4, 4))
    assert loss(_out([ft.clone()], [ft])).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(_out([ft.roll(1, 0)], [ft])).item() > 1e-3


def test_ka_zero_for_a_positive_multiple_of_the_code_with_identity_modules() -> None:
    """Identity encoder and adapter (rate 1): the codes are the features themselves, compared
    after L2 normalisation, so any positive multiple of the teacher feature gives zero, both
    for the code and the affinity term; another sample's feature does not."""
    loss = _loss("ka", [((3, 4, 4), (3, 4, 4))], rate=1.0, affinity_weight=2.0).eval()
    _set_identity(loss.autoencoders[0].encoder)
    _set_identity(loss.adapters[0])
    ft = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.1  # > 0
    assert loss(_out([ft.clone()], [ft])).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(_out([3.0 * ft], [ft])).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(_out([ft.roll(1, 0)], [ft])).item() > 1e-3


# ----------------------------------------------------------------------------------------------
# vid


def test_vid_gaussian_nll_by_hand() -> None:
    loss = _loss("vid", [((2,), (2,))], init_var=2.0)
    with torch.no_grad():  # mu(s) = s for s >= 0: every 1x1 conv the identity
        for conv in loss.regressors[0][::2]:
            conv.weight.copy_(torch.eye(2)[:, :, None, None])
    s = torch.tensor([[0.5, 1.0], [2.0, 0.0]])
    t = torch.tensor([[1.5, 1.0], [0.0, -1.0]])
    expected = (
        sum(
            0.5 * (math.log(2.0) + (b - a) ** 2 / 2.0)
            for a, b in zip(s.flatten().tolist(), t.flatten().tolist(), strict=True)
        )
        / 4
    )
    assert loss.variance(0).tolist() == pytest.approx([2.0, 2.0], rel=1e-6)
    assert loss(_out([s], [t])).item() == pytest.approx(expected, rel=1e-5)


def test_vid_nll_is_minimal_when_the_mean_is_the_teacher_and_at_the_empirical_variance() -> None:
    loss = _loss("vid", [((3, 2, 2), (3, 2, 2))], init_var=2.0)
    _set_identity(loss.regressors[0])  # mu(s) = s for s >= 0
    t = torch.rand(2, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    s = t.clone().requires_grad_(True)
    best = loss(_out([s], [t]))
    assert best.item() == pytest.approx(0.5 * math.log(2.0), rel=1e-6)  # only 0.5 log sigma^2
    best.backward()
    assert s.grad is not None and s.grad.abs().max().item() < 1e-7  # a stationary point
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        moved = t + 0.1 * torch.randn(t.shape, generator=gen)
        assert loss(_out([moved], [t])).item() > best.item()
    # for a fixed mean, the best sigma_c^2 is the channel's mean squared residual
    s = torch.rand(2, 3, 2, 2, generator=gen)
    residual = (t - s).pow(2).mean((0, 2, 3))
    with torch.no_grad():
        loss.log_scales[0].copy_(torch.log(torch.expm1(residual - loss.eps)))
    assert loss.variance(0).tolist() == pytest.approx(residual.tolist(), rel=1e-5)
    loss.zero_grad()
    loss(_out([s], [t])).backward()
    assert loss.log_scales[0].grad.abs().max().item() < 1e-6


def test_vid_gradients_reach_regressor_and_variance() -> None:
    loss = _loss("vid", [((4, 8, 8), (6, 4, 4))])
    _check_grads(loss, _maps((2, 4, 8, 8), grad=True), _maps((2, 6, 4, 4), grad=True, seed=1))


# ----------------------------------------------------------------------------------------------
# ickd


def test_ickd_gram_by_hand_zero_for_identical_and_gradients() -> None:
    fs, ft = _maps((2, 3, 2, 2), (2, 3, 4, 4))  # spatial sizes may differ: Gram is C x C
    loss = _loss("ickd", [((3, 2, 2), (3, 4, 4))])  # identity-initialised embedding

    def gram(f: torch.Tensor, b: int) -> torch.Tensor:
        g = torch.tensor([[float((f[b, i] * f[b, j]).sum()) for j in range(3)] for i in range(3)])
        return g / g.norm(dim=1, keepdim=True)

    expected = sum(float(((gram(fs, b) - gram(ft, b)) ** 2).sum()) for b in range(2)) / (3 * 2)
    assert loss(_out([fs], [ft])).item() == pytest.approx(expected, rel=1e-5)
    assert loss(_out([ft], [ft.clone()])).item() == pytest.approx(0.0, abs=1e-6)
    grown = _loss("ickd", [((2, 4, 4), (5, 4, 4))])
    _check_grads(grown, _maps((2, 2, 4, 4), grad=True), _maps((2, 5, 4, 4), grad=True, seed=1))


# ----------------------------------------------------------------------------------------------
# reviewkd


def test_hcl_by_hand() -> None:
    fs, ft = _maps((1, 2, 4, 4), (1, 2, 4, 4))
    d = fs - ft
    full = (d**2).mean()
    # 4 >= h: skipped; 2x2 pooled with weight 1/2; 1x1 with weight 1/4
    p2 = d.reshape(1, 2, 2, 2, 2, 2).mean((3, 5))  # block means are linear: pool(d)
    p1 = d.mean((2, 3))
    expected = (full + 0.5 * (p2**2).mean() + 0.25 * (p1**2).mean()) / 1.75
    assert hcl(fs, ft).item() == pytest.approx(expected.item(), rel=1e-5)


def test_reviewkd_orders_levels_shallow_to_deep_and_trains_all_fusions() -> None:
    s_shapes, t_shapes = [(4, 8, 8), (8, 4, 4), (8,)], [(8, 8, 8), (16, 4, 4), (16,)]
    fs = _maps((2, 4, 8, 8), (2, 8, 4, 4), (2, 8), grad=True)
    ft = _maps((2, 8, 8, 8), (2, 16, 4, 4), (2, 16), seed=1)
    torch.manual_seed(0)
    loss = _loss("reviewkd", list(zip(s_shapes, t_shapes, strict=True)), mid_channels=8)
    torch.manual_seed(0)
    rev = _loss("reviewkd", list(zip(s_shapes[::-1], t_shapes[::-1], strict=True)), mid_channels=8)
    assert loss.order == [0, 1, 2] and rev.order == [2, 1, 0]
    assert [abf.att is None for abf in loss.abfs] == [False, False, True]  # deepest: no fusion
    value = loss(_out(fs, ft))
    assert rev(_out(fs[::-1], ft[::-1])).item() == pytest.approx(value.item(), rel=1e-6)
    _check_grads(loss, fs, [f.requires_grad_(True) for f in ft])
    ramp = _loss("reviewkd", list(zip(s_shapes, t_shapes, strict=True)), warmup_epochs=4)
    assert ramp(_out(fs, ft, epoch=0)).item() == pytest.approx(
        ramp(_out(fs, ft, epoch=9)).item() / 4, rel=1e-5
    )


def _hcl_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """MSE at full size, then of l x l block means (l = 4, 2, 1 below the size), weights 1/2^k."""
    h = a.shape[2]
    loss, weight, total = float(((a - b) ** 2).mean()), 1.0, 1.0
    for level in (4, 2, 1):
        if level >= h:
            continue
        k = h // level
        pa = a.reshape(*a.shape[:2], level, k, level, k).mean((3, 5))
        pb = b.reshape(*b.shape[:2], level, k, level, k).mean((3, 5))
        weight /= 2
        loss += weight * float(((pa - pb) ** 2).mean())
        total += weight
    return loss / total


def test_reviewkd_whole_loss_by_hand_and_zero_when_fused_features_are_the_teacher() -> None:
    """Identity convs and batch norms, a constant attention (weights 0, biases b0, b1): the
    deepest output is its student feature s_d, the shallower one sig(b0) s_sh + sig(b1) up(s_d)
    (nearest upsampling of the deeper level's residual)."""
    pairs = [((4, 4, 4), (4, 4, 4)), ((4, 2, 2), (4, 2, 2))]
    loss = _loss("reviewkd", pairs, mid_channels=4, warmup_epochs=4).eval()
    for abf in loss.abfs:
        _set_identity(abf.conv1)
        _set_identity(abf.conv2)
    att = loss.abfs[0].att[0]
    with torch.no_grad():
        att.weight.zero_()
        att.bias.copy_(torch.tensor([0.5, -1.0]))
    fs, ft = _maps((2, 4, 4, 4), (2, 4, 2, 2)), _maps((2, 4, 4, 4), (2, 4, 2, 2), seed=1)
    sig = 1 / (1 + np.exp(-np.array([0.5, -1.0])))
    s_sh, s_d = fs[0].numpy(), fs[1].numpy()
    fused_sh = sig[0] * s_sh + sig[1] * s_d.repeat(2, axis=2).repeat(2, axis=3)
    expected = _hcl_by_hand(fused_sh, ft[0].numpy()) + _hcl_by_hand(s_d, ft[1].numpy())
    assert loss(_out(fs, ft, epoch=1)).item() == pytest.approx(expected / 2, rel=1e-5)  # ramp 2/4
    assert loss(_out(fs, ft, epoch=7)).item() == pytest.approx(expected, rel=1e-5)
    teacher = [torch.tensor(fused_sh, dtype=torch.float32), fs[1].clone()]
    assert loss(_out(fs, teacher, epoch=7)).item() == pytest.approx(0.0, abs=1e-10)


# ----------------------------------------------------------------------------------------------
# fsp


def test_fsp_by_hand_zero_for_identical_and_needs_two_pairs() -> None:
    s1, s2, t1, t2 = _maps((2, 2, 4, 4), (2, 3, 2, 2), (2, 2, 4, 4), (2, 3, 2, 2))

    def flow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = a.reshape(2, 2, 2, 2, 2, 2).mean((3, 5))  # 4x4 -> 2x2 average pooling
        return torch.stack(
            [
                torch.tensor(
                    [[float((a[n, i] * b[n, j]).sum()) / 4 for j in range(3)] for i in range(2)]
                )
                for n in range(2)
            ]
        )

    expected = ((flow(s1, s2) - flow(t1, t2)) ** 2).mean()
    pairs = [((2, 4, 4), (2, 4, 4)), ((3, 2, 2), (3, 2, 2))]
    loss = _loss("fsp", pairs)
    assert loss(_out([s1, s2], [t1, t2])).item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss(_out([t1, t2], [t1.clone(), t2.clone()])).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="at least 2 layer pairs"):
        _loss("fsp", pairs[:1])


def test_fsp_connectors_bridge_channel_mismatch() -> None:
    loss = _loss("fsp", [((2, 4, 4), (4, 4, 4)), ((3, 2, 2), (6, 2, 2))])
    fs = _maps((3, 2, 4, 4), (3, 3, 2, 2), grad=True)
    _check_grads(loss, fs, _maps((3, 4, 4, 4), (3, 6, 2, 2), grad=True, seed=1))


# ----------------------------------------------------------------------------------------------
# grad_match


def test_grad_match_linear_models_by_hand_and_teacher_frozen() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    teacher.requires_grad_(False)
    x = torch.randn(2, 4, requires_grad=True)
    y = torch.tensor([0, 2])
    loss = _loss("grad_match", [])
    assert loss.needs_input_grad

    def input_grad(m: nn.Linear) -> torch.Tensor:  # d CE / dx = W^T (softmax(Wx + b) - onehot)
        p = torch.softmax(x.detach() @ m.weight.detach().T + m.bias.detach(), 1)
        return (p - F.one_hot(y, 3)) @ m.weight.detach()

    g_s, g_t = input_grad(student), input_grad(teacher)
    cos = (g_s * g_t).sum(1) / (g_s.norm(dim=1) * g_t.norm(dim=1))
    out = StepOutputs(student(x), torch.empty(0), y, inputs=x, student=student, teacher=teacher)
    value = loss(out)
    assert value.item() == pytest.approx(float((1 - cos).mean()), rel=1e-5)
    value.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    l2 = _loss("grad_match", [], distance="l2")
    out = StepOutputs(student(x), torch.empty(0), y, inputs=x, student=student, teacher=teacher)
    assert l2(out).item() == pytest.approx(float(((g_s - g_t) ** 2).mean()), rel=1e-5)


def test_grad_match_zero_for_identical_models_and_clear_error_without_inputs() -> None:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 10))
    teacher = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 10))
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    x = torch.randn(3, 1, 4, 4, requires_grad=True)
    y = torch.tensor([1, 4, 7])
    loss = _loss("grad_match", [])
    out = StepOutputs(student(x), torch.empty(0), y, inputs=x, student=student, teacher=teacher)
    assert loss(out).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="requires_grad"):
        loss(
            StepOutputs(student(x.detach()), torch.empty(0), y, inputs=x.detach(), teacher=teacher)
        )


# ----------------------------------------------------------------------------------------------
# weight_match


def _weight_loss(s_mod: nn.Module, t_mod: nn.Module, **params: object):
    ctx = LossContext(
        10,
        [((1,), (1,))],
        pair_paths=[("s", "t")],
        student_modules=[s_mod],
        teacher_modules=[t_mod],
    )
    return build_loss(LossSpec(name="weight_match", params=params), ctx)


def test_weight_match_zero_for_identical_weights_and_identity_projections() -> None:
    s, t = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
    t.load_state_dict(s.state_dict())
    assert _weight_loss(s, t)(_out([], [])).item() == pytest.approx(0.0, abs=1e-6)
    raw = _weight_loss(nn.Sequential(s, nn.ReLU()), t, normalize=False)  # finds the conv inside
    assert raw(_out([], [])).item() == pytest.approx(0.0, abs=1e-7)


def test_weight_match_projection_and_kernel_pooling_by_hand() -> None:
    torch.manual_seed(0)
    s, t = nn.Conv2d(2, 3, 1), nn.Conv2d(4, 5, 3)  # in 4 -> 2, out 5 -> 3, kernel 3x3 -> 1x1
    t.requires_grad_(False)
    loss = _weight_loss(s, t, normalize=False)
    w_t = t.weight.mean((2, 3), keepdim=True)[:3, :2]  # identity-initialised P: first channels
    expected = ((s.weight - w_t) ** 2).mean()
    value = loss(_out([], []))
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    assert s.weight.grad is not None and s.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in loss.parameters())
    assert all(p.grad is None for p in t.parameters())
    assert set(loss.state_dict()) == {"p_out.0.u", "p_in.0.u"}  # the models are not inside


def test_weight_match_low_rank_and_linear_layers() -> None:
    s, t = nn.Linear(6, 4), nn.Linear(8, 5)
    loss = _weight_loss(s, t, rank=2)
    assert loss.p_out[0].u.shape == (4, 2) and loss.p_out[0].v.shape == (2, 5)
    assert loss.p_out[0]().shape == (4, 5) and loss.p_in[0]().shape == (6, 8)
    value = loss(_out([], []))
    value.backward()
    assert all(p.grad is not None for p in loss.parameters())


# ----------------------------------------------------------------------------------------------
# the trainer: a mix of losses, input gradients, modules by path, the prepare hook on resume


class Conv2(nn.Module):
    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = (
            nn.Conv2d(1, c1, 3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
        )
        self.conv2, self.relu2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU()
        self.fc = nn.Linear(c2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.bn1(self.conv1(x)))
        h = self.relu2(self.conv2(h))
        return self.fc(h.mean((2, 3)))


@pytest.fixture(scope="module")
def digits() -> tuple[TensorData, TensorData]:
    d = load_digits()
    x = torch.tensor(d.images[:150], dtype=torch.float32)[:, None] / 16.0
    data = TensorData(x, torch.tensor(d.target[:150]), [str(i) for i in range(10)])
    return split(data, 0.2, seed=0)


def _config(losses: list[dict], **training: object) -> RunConfig:
    return RunConfig.model_validate(
        {
            "teacher": {"path": "unused.pt2"},
            "dataset": {"path": "unused.npz"},
            "layer_pairs": [
                {"teacher": "conv1", "student": "conv1"},
                {"teacher": "conv2", "student": "conv2"},
            ],
            "losses": losses,
            "training": {
                "epochs": 2,
                "batch_size": 40,
                "lr": 0.05,
                "device": "cpu",
                "checkpoint_every": 2,
                **training,
            },
            "seed": 3,
        }
    )


class Recorder(Callbacks):
    def __init__(self, stop_at: int | None = None) -> None:
        self.reports: list[StepReport] = []
        self.stop_at, self.checks = stop_at, 0

    def on_step(self, report: StepReport) -> None:
        self.reports.append(report)

    def should_stop(self) -> bool:
        self.checks += 1
        return self.stop_at is not None and self.checks > self.stop_at


def _models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return Conv2(8, 16), Conv2(4, 8)


def test_short_run_with_a_mix_logs_every_term(digits) -> None:
    teacher, student = _models()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    losses = [
        {"name": "ce"},
        {"name": "kd"},
        {"name": "feature_l2", "pairs": [1]},
        {"name": "fsp", "weight": 0.5},
        {"name": "vid", "weight": 0.1, "pairs": [1]},
        {"name": "grad_match", "weight": 0.5},
        {"name": "weight_match", "weight": 0.1},
    ]
    rec = Recorder()
    result = train(_config(losses), teacher, *digits, student=student, callbacks=rec)
    assert result.steps == 6 and len(rec.reports) == 6
    keys = {"loss", "lr", *(f"loss/{x['name']}" for x in losses)}
    assert all(set(r.metrics) == keys for r in rec.reports)
    assert all(math.isfinite(v) for r in rec.reports for v in r.metrics.values())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())


def test_prepare_runs_once_and_not_again_on_resume(digits, tmp_path: Path, monkeypatch) -> None:
    calls: list[int] = []
    original = FactorTransfer.prepare

    def counting(self, teacher_features, device):
        calls.append(1)
        return original(self, teacher_features, device)

    monkeypatch.setattr(FactorTransfer, "prepare", counting)
    losses = [{"name": "ce"}, {"name": "ft", "pairs": [1], "params": {"paraphraser_epochs": 1}}]
    teacher, student = _models()
    full = train(_config(losses), teacher, *digits, student=student)
    assert len(calls) == 1
    ckpt = tmp_path / "run.ckpt"
    teacher, student = _models()
    with pytest.raises(Cancelled, match="pre-training"):  # cancel is checked while pre-training
        train(
            _config(losses),
            teacher,
            *digits,
            student=student,
            callbacks=Recorder(stop_at=1),
            checkpoint_path=ckpt,
        )
    assert not ckpt.exists()
    teacher, student = _models()
    with pytest.raises(Cancelled, match="at step 3"):  # 3 pre-training batches, then 3 steps
        train(
            _config(losses),
            teacher,
            *digits,
            student=student,
            callbacks=Recorder(stop_at=6),
            checkpoint_path=ckpt,
        )
    assert len(calls) == 3
    saved = torch.load(ckpt, weights_only=True)["losses"]
    assert bool(saved["1.prepared"]) is True
    teacher, student = _models()
    resumed = train(_config(losses), teacher, *digits, student=student, checkpoint_path=ckpt)
    assert len(calls) == 3  # restored from the checkpoint, not pre-trained again
    a, b = full.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
