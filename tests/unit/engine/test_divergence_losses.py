"""The token-level divergences (kd as forward KL, reverse_kl, gkd_jsd, skew_kl, tvd): hand values,
the theory's forward/reverse contrast on a bimodal teacher, GKD's end points, masking of
[N, T, V] logits, stability, and a run on digits that learns with one of them."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from core.config import LossSpec, RunConfig
from tests.unit.engine.support import TINY_MLP, Epochs, small_digits
from worker.engine.losses import LossContext, StepOutputs, build_loss
from worker.engine.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILY = ["kd", "reverse_kl", "gkd_jsd", "skew_kl", "tvd"]


def _loss(name: str, **params: Any) -> nn.Module:
    return build_loss(LossSpec(name=name, params=params), LossContext(num_classes=2))


def _value(name: str, s: Tensor, t: Tensor, labels: Tensor | None = None, **params: Any) -> float:
    y = torch.zeros(s.shape[:-1], dtype=torch.long) if labels is None else labels
    return _loss(name, **params)(StepOutputs(s, t, y)).item()


# two positions: p_T = (1/2, 1/2), p_S = (1/4, 3/4) at the first; identical at the second (D = 0)
P_T, P_S = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
S = torch.stack([P_S.log(), P_T.log()])
T = torch.stack([P_T.log(), P_T.log()])
LN = math.log
HAND = {  # D at the first position, by hand
    ("kd", ()): 0.5 * LN(0.5 / 0.25) + 0.5 * LN(0.5 / 0.75),
    ("reverse_kl", ()): 0.25 * LN(0.25 / 0.5) + 0.75 * LN(0.75 / 0.5),
    # M = (0.375, 0.625)
    ("gkd_jsd", (("beta", 0.5),)): 0.5 * (0.5 * LN(0.5 / 0.375) + 0.5 * LN(0.5 / 0.625))
    + 0.5 * (0.25 * LN(0.25 / 0.375) + 0.75 * LN(0.75 / 0.625)),
    # M = 0.1 p_T + 0.9 p_S = (0.275, 0.725)
    ("skew_kl", (("alpha", 0.1),)): 0.5 * LN(0.5 / 0.275) + 0.5 * LN(0.5 / 0.725),
    # M = 0.1 p_S + 0.9 p_T = (0.475, 0.525)
    ("skew_kl", (("alpha", 0.1), ("direction", "reverse"))): 0.25 * LN(0.25 / 0.475)
    + 0.75 * LN(0.75 / 0.525),
    ("tvd", ()): 0.5 * (0.25 + 0.25),
}


@pytest.mark.parametrize(("name", "params"), list(HAND), ids=lambda v: str(v))
def test_hand_values_mean_over_positions_and_t_squared(name: str, params: tuple) -> None:
    want = HAND[(name, params)] / 2  # the mean over the two positions
    assert _value(name, S, T, temperature=1.0, **dict(params)) == pytest.approx(want, rel=1e-5)
    # logits twice as large at T = 2: the same distributions, the value times T^2 = 4
    assert _value(name, 2 * S, 2 * T, temperature=2.0, **dict(params)) == pytest.approx(
        4 * want, rel=1e-5
    )
    assert _value(name, T, T, **dict(params)) == pytest.approx(0.0, abs=1e-7)


def _bins(mu: float, sigma: float) -> Tensor:
    """Log of a discretised Gaussian over 21 bins (unnormalised: log-softmax normalises)."""
    x = torch.arange(21, dtype=torch.float32)
    return -((x - mu) ** 2) / (2 * sigma**2)


def test_forward_kl_covers_modes_and_reverse_kl_picks_one() -> None:
    """Teacher: two separated modes (bins 4 and 16). A broad student over both modes is better
    under forward KL (mode-covering) than a student on one mode; under reverse KL (mode-seeking)
    the one-mode student is better, as it puts no mass in the valley the teacher leaves empty."""
    teacher = torch.logaddexp(_bins(4, 1.0), _bins(16, 1.0))[None]
    cover, pick = _bins(10, 6.0)[None], _bins(4, 1.0)[None]
    fwd = {k: _value("kd", s, teacher, temperature=1.0) for k, s in (("c", cover), ("p", pick))}
    rev = {k: _value("reverse_kl", s, teacher) for k, s in (("c", cover), ("p", pick))}
    assert fwd["c"] < fwd["p"] and rev["p"] < rev["c"]
    assert rev["p"] == pytest.approx(math.log(2), rel=1e-3)  # half the teacher's mass, matched


def test_gkd_jsd_end_points_are_the_two_kls_and_the_middle_is_trls_formula() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(3, 5, 7) * 3, torch.randn(3, 5, 7) * 3
    labels = torch.randint(0, 7, (3, 5))
    labels[0, :2] = -100
    for tau in (1.0, 2.5):
        kd = _value("kd", s, t, labels, temperature=tau)
        rev = _value("reverse_kl", s, t, labels, temperature=tau)
        assert kd != pytest.approx(rev, rel=1e-2)
        assert _value("gkd_jsd", s, t, labels, beta=0.0, temperature=tau) == pytest.approx(kd)
        assert _value("gkd_jsd", s, t, labels, beta=1.0, temperature=tau) == pytest.approx(rev)
    # 0 < beta < 1, against Eq. 1 written with probabilities (T = 1, no T^2 factor)
    p, q, b = t.softmax(-1), s.softmax(-1), 0.3
    m = b * p + (1 - b) * q
    jsd = b * (p * (p / m).log()).sum(-1) + (1 - b) * (q * (q / m).log()).sum(-1)
    want = jsd[labels >= 0].mean().item()
    assert _value("gkd_jsd", s, t, labels, beta=b, temperature=1.0) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("name", FAMILY)
def test_mask_excludes_positions_of_token_logits(name: str) -> None:
    """[N, T, V] logits: positions labelled -100 neither count in the value nor get a gradient."""
    torch.manual_seed(1)
    s, t = torch.randn(2, 4, 6, requires_grad=True), torch.randn(2, 4, 6)
    labels = torch.tensor([[3, -100, 1, -100], [-100, 0, 5, 2]])
    loss = _loss(name)(StepOutputs(s, t, labels))
    keep = labels >= 0
    flat = _loss(name)(StepOutputs(s[keep], t[keep], labels[keep]))  # the kept rows as [K, V]
    assert loss.item() == pytest.approx(flat.item(), rel=1e-6)
    loss.backward()
    assert s.grad is not None and s.grad[~keep].abs().max() == 0 and s.grad[keep].abs().max() > 0
    t2 = t.clone()
    t2[~keep] = 100 * torch.randn(int((~keep).sum()), 6)  # what masked positions hold is ignored
    assert _loss(name)(StepOutputs(s, t2, labels)).item() == pytest.approx(loss.item(), rel=1e-6)
    none = _loss(name)(StepOutputs(s, t, torch.full_like(labels, -100)))  # nothing counts
    assert none.item() == 0.0 and none.requires_grad


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_gradients_for_extreme_logits(name: str, dtype: torch.dtype) -> None:
    s = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype=dtype, requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, 0.0], [1e4, -1e4, -1e4]], dtype=dtype)
    params = {"beta": 0.5} if name == "gkd_jsd" else {}
    loss = _loss(name, temperature=1.0, **params)(StepOutputs(s, t, torch.zeros(2).long()))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss.item() > 0
    assert s.grad is not None and s.grad.dtype == dtype and torch.isfinite(s.grad).all()


def test_refuses_logits_of_different_shapes_and_bad_params() -> None:
    with pytest.raises(ValueError, match=r"'tvd' needs student and teacher logits of the same"):
        _loss("tvd")(StepOutputs(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2).long()))
    with pytest.raises(ValueError, match=r"parameter 'beta' of 'gkd_jsd' must be in \[0.0, 1.0\]"):
        _loss("gkd_jsd", beta=1.5)
    with pytest.raises(ValueError, match="parameter 'direction' of 'skew_kl' must be one of"):
        _loss("skew_kl", direction="sideways")


def test_ce_plus_gkd_jsd_learns_digits() -> None:
    """An engine run with ce + gkd_jsd distils a trained MLP teacher into a tiny MLP: the
    training loss falls and the student ends far above chance (10%)."""
    train_data, val = small_digits(600)
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(teacher(train_data.x), train_data.y).backward()
        opt.step()
    teacher.eval()
    config = RunConfig.model_validate(
        {
            "teacher": {"path": "unused.pt2"},
            "dataset": {"path": "unused.npz"},
            "student": TINY_MLP,
            "losses": [{"name": "ce"}, {"name": "gkd_jsd", "params": {"beta": 0.5}}],
            "training": {"epochs": 8, "batch_size": 32, "lr": 0.05, "device": "cpu"},
            "seed": 0,
        }
    )
    rec = Epochs()
    train(config, teacher, train_data, val, callbacks=rec)
    losses = [e["train/loss"] for e in rec.epochs]
    assert losses[-1] < 0.5 * losses[0], losses  # measured: 2.79 -> 0.45
    assert rec.epochs[-1]["val/top1"] > 0.6, rec.epochs[-1]  # measured: 0.91


RUN_YAML = """
teacher: {path: teacher.pt2}
dataset: {path: digits.npz}
student: {architecture: resnet8}
losses:
  - {name: ce}
  - {name: reverse_kl, weight: 0.9, params: {temperature: 2.0}}
  - {name: skew_kl, params: {alpha: 0.2, direction: reverse}}
"""


def test_a_run_config_with_them_validates_for_classification_only() -> None:
    """What `distill-studio train run.yaml` and `POST /runs` parse: classification takes them,
    a dense task refuses them by name."""
    config = RunConfig.from_yaml(RUN_YAML)
    assert [loss.name for loss in config.losses] == ["ce", "reverse_kl", "skew_kl"]
    assert config.losses[2].resolved_params() == {
        "alpha": 0.2,
        "direction": "reverse",
        "temperature": 1.0,
    }
    seg = RUN_YAML.replace("resnet8}", "seg_fcn}\ntask: segmentation")
    with pytest.raises(ValueError, match="losses\\[1\\] 'reverse_kl' does not work with task"):
        RunConfig.from_yaml(seg)
