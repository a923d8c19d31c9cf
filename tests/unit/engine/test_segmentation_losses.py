"""Dense losses: pixel-wise KD and CWD by hand, CWD as KD over channels, feature losses on
segmentation models."""

from __future__ import annotations

import math

import pytest
import torch

from core.config import LossSpec
from worker.engine.losses import LossContext, StepOutputs, build_loss


def _kl(p_logits: list[float], q_logits: list[float], t: float) -> float:
    """KL(softmax(p/t) || softmax(q/t)) by hand."""
    zp = [math.exp(v / t) for v in p_logits]
    zq = [math.exp(v / t) for v in q_logits]
    p = [v / sum(zp) for v in zp]
    q = [v / sum(zq) for v in zq]
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _loss(name: str, **params: float):
    return build_loss(LossSpec(name=name, params=params), LossContext(3))


S = torch.tensor([[[[1.0, 0.0]], [[2.0, -1.0]], [[0.5, 0.5]]]])  # [1, 3, 1, 2]
T = torch.tensor([[[[0.0, 1.0]], [[1.0, 1.0]], [[3.0, -2.0]]]])


def test_pixel_kd_is_the_mean_kl_over_counted_pixels_times_t_squared() -> None:
    t = 2.0
    pixels = [
        _kl([T[0, c, 0, w].item() for c in range(3)], [S[0, c, 0, w].item() for c in range(3)], t)
        for w in range(2)
    ]
    every = _loss("pixel_kd", temperature=t)(StepOutputs(S, T, torch.tensor([[[0, 2]]])))
    assert every.item() == pytest.approx(sum(pixels) / 2 * t * t, rel=1e-5)
    # the second pixel is ignored (-100): only the first counts
    one = _loss("pixel_kd", temperature=t)(StepOutputs(S, T, torch.tensor([[[1, -100]]])))
    assert one.item() == pytest.approx(pixels[0] * t * t, rel=1e-5)


def test_cwd_is_the_spatial_softmax_kl_per_channel() -> None:
    t = 1.5
    channels = [_kl(T[0, c, 0].tolist(), S[0, c, 0].tolist(), t) for c in range(3)]
    loss = _loss("cwd", temperature=t)(StepOutputs(S, T, torch.zeros(1, 1, 2, dtype=torch.long)))
    assert loss.item() == pytest.approx(sum(channels) / 3 * t * t, rel=1e-5)


def test_cwd_equals_kd_over_channels() -> None:
    """CWD is Hinton's KD with the roles of class and location swapped: each (sample, channel)
    a row, each location a "class"."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 5, 6, generator=g), torch.randn(2, 4, 5, 6, generator=g)
    cwd = _loss("cwd", temperature=3.0)(StepOutputs(s, t, torch.zeros(2, 5, 6, dtype=torch.long)))
    rows = StepOutputs(s.reshape(8, 30), t.reshape(8, 30), torch.zeros(8, dtype=torch.long))
    kd = build_loss(LossSpec(name="kd", params={"temperature": 3.0}), LossContext(30))(rows)
    assert cwd.item() == pytest.approx(kd.item(), rel=1e-5)


def test_pixel_kd_on_one_pixel_is_kd() -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    y = torch.zeros(4, dtype=torch.long)
    kd = build_loss(LossSpec(name="kd", params={"temperature": 2.0}), LossContext(5))
    dense = _loss("pixel_kd", temperature=2.0)
    a = dense(StepOutputs(s[..., None, None], t[..., None, None], y[:, None, None]))
    assert a.item() == pytest.approx(kd(StepOutputs(s, t, y)).item(), rel=1e-5)


def test_dense_losses_refuse_class_scores() -> None:
    with pytest.raises(ValueError, match="per-pixel logits"):
        _loss("cwd")(StepOutputs(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2)))


def test_ce_skips_ignored_pixels() -> None:
    ce = build_loss(LossSpec(name="ce"), LossContext(3))
    y = torch.tensor([[[2, -100]]])
    expected = -torch.log_softmax(S[0, :, 0, 0], 0)[2].item()
    assert ce(StepOutputs(S, T, y)).item() == pytest.approx(expected, rel=1e-5)
