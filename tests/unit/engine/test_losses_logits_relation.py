"""Response-based (dkd, dist, logit_std, pad) and relation-based (rkd, sp, cc, pkt, crd) losses.

Expected values are computed independently, with numpy and explicit loops over 2-3 samples.
The gradient check at the end also covers kd, at and nst.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from core.config import LossSpec, RunConfig
from worker.engine.losses import LossContext, StepOutputs, build_loss
from worker.engine.tasks.classification.data import TensorData
from worker.engine.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


def _loss(name: str, pairs: list | None = None, n: int = 0, **params: object) -> nn.Module:
    return build_loss(LossSpec(name=name, params=params), LossContext(10, pairs or [], n, 10))


def _logits_out(s: Tensor, t: Tensor, y: list[int], epoch: int = 100) -> StepOutputs:
    return StepOutputs(s, t, torch.tensor(y), epoch=epoch)


def _feat_out(fs: Tensor, ft: Tensor) -> StepOutputs:
    z = torch.zeros(len(fs), 10)
    return StepOutputs(z, z, torch.zeros(len(fs), dtype=torch.long), [fs], [ft])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(sum(a * math.log(a / b) for a, b in zip(p, q, strict=True)))


S = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.5], [2.0, 2.0, -2.0, 1.0]])
T = torch.tensor([[2.0, 1.0, 0.0, 0.5], [1.0, 1.0, 1.5, -0.5], [0.5, 3.0, -1.0, 0.0]])
Y = [0, 2, 1]


# ---------------------------------------------------------------------------------------------
# dkd


def _dkd_numpy(s: Tensor, t: Tensor, y: list[int], temp: float) -> tuple[float, float]:
    tckd = nckd = 0.0
    for sb, tb, yb in zip(s.numpy(), t.numpy(), y, strict=True):
        ps, pt = _softmax(sb / temp), _softmax(tb / temp)
        tckd += _kl(np.array([pt[yb], 1 - pt[yb]]), np.array([ps[yb], 1 - ps[yb]]))
        rest = [c for c in range(len(sb)) if c != yb]
        nckd += _kl(pt[rest] / pt[rest].sum(), ps[rest] / ps[rest].sum())
    n = len(y)
    return tckd / n * temp**2, nckd / n * temp**2


def test_dkd_matches_loop_computation_and_warms_up() -> None:
    tckd, nckd = _dkd_numpy(S, T, Y, 2.0)
    loss = _loss("dkd", alpha=0.5, beta=3.0, temperature=2.0, warmup=4)
    full = 0.5 * tckd + 3.0 * nckd
    assert loss(_logits_out(S, T, Y, epoch=10)).item() == pytest.approx(full, rel=1e-5)
    assert loss(_logits_out(S, T, Y, epoch=3)).item() == pytest.approx(full, rel=1e-5)
    assert loss(_logits_out(S, T, Y, epoch=0)).item() == pytest.approx(full / 4, rel=1e-5)
    assert loss(_logits_out(S, T, Y, epoch=1)).item() == pytest.approx(full / 2, rel=1e-5)


def test_dkd_beta0_alpha1_is_tckd_and_kd_decomposes() -> None:
    tckd, nckd = _dkd_numpy(S, T, Y, 4.0)
    only_tckd = _loss("dkd", alpha=1.0, beta=0.0, temperature=4.0, warmup=0)
    assert only_tckd(_logits_out(S, T, Y)).item() == pytest.approx(tckd, rel=1e-5)
    # the paper's identity, per sample: KD = TCKD + (1 - p^t_y) * NCKD
    kd = _loss("kd", temperature=4.0)
    for b in range(3):
        s, t, y = S[b : b + 1], T[b : b + 1], [Y[b]]
        p_t = torch.softmax(t / 4.0, 1)[0, Y[b]].item()
        got = _loss("dkd", alpha=1.0, beta=1 - p_t, temperature=4.0, warmup=0)(_logits_out(s, t, y))
        assert got.item() == pytest.approx(kd(_logits_out(s, t, y)).item(), rel=1e-5)


def test_dkd_defaults_follow_mdistiller_and_identical_logits_give_zero() -> None:
    loss = _loss("dkd")
    assert (loss.alpha, loss.beta, loss.temperature, loss.warmup) == (1.0, 8.0, 4.0, 20)
    assert loss(_logits_out(S, S.clone(), Y)).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# dist


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-8))


def test_dist_matches_loop_computation() -> None:
    temp, beta, gamma = 2.0, 1.5, 0.5
    ys = np.stack([_softmax(r / temp) for r in S.numpy()])
    yt = np.stack([_softmax(r / temp) for r in T.numpy()])
    inter = 1 - np.mean([_pearson(ys[b], yt[b]) for b in range(3)])
    intra = 1 - np.mean([_pearson(ys[:, c], yt[:, c]) for c in range(4)])
    expected = temp**2 * (beta * inter + gamma * intra)
    loss = _loss("dist", beta=beta, gamma=gamma, temperature=temp)
    assert loss(_logits_out(S, T, Y)).item() == pytest.approx(expected, rel=1e-5)


def test_dist_zero_for_identical_logits() -> None:
    # not exactly 0: the eps 1e-8 of the correlation's denominator, times T^2
    assert _loss("dist")(_logits_out(S, S.clone(), Y)).item() == pytest.approx(0.0, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# logit_std


def _zscore(z: np.ndarray) -> np.ndarray:
    return (z - z.mean()) / (z.std(ddof=1) + 1e-7)


def test_logit_std_kd_matches_loop_computation() -> None:
    temp = 2.0
    expected = 0.0
    for sb, tb in zip(S.numpy(), T.numpy(), strict=True):
        expected += _kl(_softmax(_zscore(tb) / temp), _softmax(_zscore(sb) / temp))
    expected = expected / 3 * temp**2
    loss = _loss("logit_std", temperature=temp)
    assert loss(_logits_out(S, T, Y)).item() == pytest.approx(expected, rel=1e-5)


def test_logit_std_ignores_logit_range_and_dkd_base_is_dkd_on_zscores() -> None:
    loss = _loss("logit_std")
    assert loss(_logits_out(S, S.clone(), Y)).item() == pytest.approx(0.0, abs=1e-6)
    # a student whose logits are an affine map of the teacher's: LS sees no difference, KD does
    affine = 3.0 * T + 1.5
    assert loss(_logits_out(affine, T, Y)).item() == pytest.approx(0.0, abs=1e-5)
    assert _loss("kd")(_logits_out(affine, T, Y)).item() > 0.1
    zs = torch.tensor(np.stack([_zscore(r) for r in S.numpy()]), dtype=torch.float32)
    zt = torch.tensor(np.stack([_zscore(r) for r in T.numpy()]), dtype=torch.float32)
    ls_dkd = _loss("logit_std", base="dkd", temperature=2.0, beta=2.0, warmup=0)
    dkd = _loss("dkd", temperature=2.0, beta=2.0, warmup=0)
    expected = dkd(_logits_out(zs, zt, Y)).item()
    assert ls_dkd(_logits_out(S, T, Y)).item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# pad


def test_pad_matches_formula_with_given_variance_head() -> None:
    fs, ft = torch.randn(3, 4), torch.randn(3, 4)
    loss = _loss("pad", [((4,), (4,))], eps=1e-4)  # equal shapes: the connector is the identity
    w, bias = np.array([0.3, -0.2, 0.5, 0.1]), -0.4
    with torch.no_grad():
        head = loss.variance_heads[0].linear
        head.weight.copy_(torch.tensor(w[None], dtype=torch.float32))
        head.bias.fill_(bias)
    expected = 0.0
    for b in range(3):
        d = float(((fs[b] - ft[b]).numpy() ** 2).mean())
        var = math.exp(float(fs[b].numpy() @ w) + bias) + 1e-4
        expected += d / (2 * var) + 0.5 * math.log(var)
    assert loss(_feat_out(fs, ft)).item() == pytest.approx(expected / 3, rel=1e-5)


def test_pad_variance_optimum_is_the_squared_error_and_minimum_is_negative() -> None:
    fs, ft = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)
    loss = _loss("pad", [((2, 3, 3), (2, 3, 3))], eps=1e-4)
    d = float((fs - ft).pow(2).mean())
    with torch.no_grad():
        loss.variance_heads[0].linear.bias.fill_(math.log(d - 1e-4))  # sigma^2 = d exactly
    loss(_feat_out(fs, ft)).backward()
    assert loss.variance_heads[0].linear.bias.grad.abs().item() < 1e-5  # d/d sigma^2 = 0 there
    # identical features: training the variance head drives the loss below zero toward log(eps)/2
    head_opt = torch.optim.SGD(loss.variance_heads.parameters(), lr=1.0)
    for _ in range(30):
        head_opt.zero_grad()
        value = loss(_feat_out(ft, ft.clone()))
        value.backward()
        head_opt.step()
    assert 0.5 * math.log(1e-4) <= value.item() < -1.0


# ---------------------------------------------------------------------------------------------
# rkd


def _smooth_l1(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(np.where(d < 1, 0.5 * d**2, d - 0.5).mean())


def _rkd_numpy(s: np.ndarray, t: np.ndarray, w_d: float, w_a: float) -> float:
    def dist(e: np.ndarray) -> np.ndarray:
        n = len(e)
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
        return d / d[d > 0].mean()

    def angles(e: np.ndarray) -> np.ndarray:
        def unit(v: np.ndarray) -> np.ndarray:
            n = np.linalg.norm(v)
            return v / n if n > 0 else v

        n = len(e)
        return np.array(
            [
                unit(e[i] - e[j]) @ unit(e[k] - e[j])
                for j in range(n)
                for i in range(n)
                for k in range(n)
            ]
        )

    return w_d * _smooth_l1(dist(s), dist(t)) + w_a * _smooth_l1(angles(s), angles(t))


def test_rkd_matches_loop_computation() -> None:
    fs, ft = torch.randn(3, 2, 2), torch.randn(3, 5)  # flattened to 4 and 5 dimensions
    loss = _loss("rkd", [((2, 2), (5,))])
    expected = _rkd_numpy(fs.reshape(3, -1).numpy(), ft.numpy(), 25.0, 50.0)
    assert loss(_feat_out(fs, ft)).item() == pytest.approx(expected, rel=1e-4)


def test_rkd_is_scale_invariant_and_zero_for_identical_features() -> None:
    fs, ft = torch.randn(4, 6), torch.randn(4, 3)
    loss = _loss("rkd", [((6,), (3,))])
    assert loss(_feat_out(fs, fs.clone())).item() == pytest.approx(0.0, abs=1e-6)
    only_dist = _loss("rkd", [((6,), (3,))], w_angle=0.0)
    base = only_dist(_feat_out(fs, ft)).item()
    assert base > 0
    assert only_dist(_feat_out(7.0 * fs, ft)).item() == pytest.approx(base, rel=1e-4)
    assert only_dist(_feat_out(fs, 0.1 * ft)).item() == pytest.approx(base, rel=1e-4)
    # a scaled copy of the teacher has the same relations: both terms vanish
    ft6 = torch.randn(4, 6)
    assert loss(_feat_out(3.0 * ft6, ft6)).item() == pytest.approx(0.0, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# sp


def _gram_rows(f: np.ndarray) -> np.ndarray:
    g = f @ f.T
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def test_sp_matches_loop_computation_and_zero_for_identical() -> None:
    fs, ft = torch.randn(3, 2, 2, 2), torch.randn(3, 4, 1, 1)
    loss = _loss("sp", [((2, 2, 2), (4, 1, 1))])
    gs, gt = _gram_rows(fs.reshape(3, -1).numpy()), _gram_rows(ft.reshape(3, -1).numpy())
    expected = sum((gs[i, j] - gt[i, j]) ** 2 for i in range(3) for j in range(3)) / 9
    assert loss(_feat_out(fs, ft)).item() == pytest.approx(expected, rel=1e-5)
    assert loss(_feat_out(ft, 5.0 * ft)).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# cc


def test_cc_matches_taylor_expansion_loop() -> None:
    fs, ft = torch.randn(3, 4), torch.randn(3, 6)
    gamma, order = 0.4, 2
    loss = _loss("cc", [((4,), (6,))], gamma=gamma, order=order)

    def corr(f: np.ndarray) -> np.ndarray:
        x = f / np.linalg.norm(f, axis=1, keepdims=True)
        return np.array(
            [
                [
                    sum(
                        math.exp(-2 * gamma)
                        * (2 * gamma) ** p
                        / math.factorial(p)
                        * (x[i] @ x[j]) ** p
                        for p in range(order + 1)
                    )
                    for j in range(3)
                ]
                for i in range(3)
            ]
        )

    expected = ((corr(fs.numpy()) - corr(ft.numpy())) ** 2).sum() / 9
    assert loss(_feat_out(fs, ft)).item() == pytest.approx(expected, rel=1e-5)
    assert loss(_feat_out(fs, 2.0 * fs)).item() == pytest.approx(0.0, abs=1e-7)


def test_cc_high_order_approaches_the_exact_rbf_kernel() -> None:
    from worker.engine.losses.cc import rbf_correlation

    f = torch.randn(3, 5, dtype=torch.float64)
    x = torch.nn.functional.normalize(f, dim=1)
    exact = torch.exp(-0.4 * torch.cdist(x, x).pow(2))
    torch.testing.assert_close(rbf_correlation(f, 0.4, 12).double(), exact, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# pkt


def test_pkt_matches_loop_computation_and_zero_for_identical() -> None:
    fs, ft = torch.randn(3, 4), torch.randn(3, 2)
    loss = _loss("pkt", [((4,), (2,))])

    def cond(f: np.ndarray) -> np.ndarray:
        x = f / np.linalg.norm(f, axis=1, keepdims=True)
        k = (x @ x.T + 1) / 2
        return k / k.sum(1, keepdims=True)

    ps, pt = cond(fs.numpy()), cond(ft.numpy())
    eps = 1e-7
    expected = np.mean(
        [
            [pt[i, j] * math.log((pt[i, j] + eps) / (ps[i, j] + eps)) for j in range(3)]
            for i in range(3)
        ]
    )
    assert loss(_feat_out(fs, ft)).item() == pytest.approx(expected, rel=1e-4)
    assert loss(_feat_out(fs, 4.0 * fs)).item() == pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------------------------------------------------
# crd


def test_crd_matches_infonce_with_its_queue_and_enqueues_fifo() -> None:
    fs, ft = torch.randn(2, 3), torch.randn(2, 5)
    loss = _loss("crd", [((3,), (5,))], n=100, feat_dim=4, queue_size=6, nce_t=0.5)
    queue = loss.queue_0.clone().numpy()

    def embed(lin: nn.Linear, f: Tensor) -> np.ndarray:
        e = f.numpy() @ lin.weight.detach().numpy().T + lin.bias.detach().numpy()
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    s, t = embed(loss.embed_s[0].linear, fs), embed(loss.embed_t[0].linear, ft)
    expected = 0.0
    for b in range(2):
        logits = np.array([s[b] @ t[b], *(s[b] @ q for q in queue)]) / 0.5
        expected += -(logits[0] - math.log(np.exp(logits).sum()))
    assert loss(_feat_out(fs, ft)).item() == pytest.approx(expected / 2, rel=1e-5)
    np.testing.assert_allclose(loss.queue_0[:2].numpy(), t, atol=1e-6)  # newest keys first
    np.testing.assert_allclose(loss.queue_0[2:].numpy(), queue[2:])
    assert int(loss.queue_ptr[0]) == 2


def test_crd_queue_size_is_fixed_capped_and_in_the_state_dict() -> None:
    loss = _loss("crd", [((3,), (5,))], n=50, queue_size=4096)
    assert loss.queue_0.shape == (50, 128)  # capped at the number of training samples
    loss = _loss("crd", [((3,), (5,))], n=10_000, feat_dim=8, queue_size=20)
    for _ in range(13):  # 13 steps of 7: wraps around several times
        loss(_feat_out(torch.randn(7, 3), torch.randn(7, 5)))
    assert loss.queue_0.shape == (20, 8)
    assert int(loss.queue_ptr[0]) == (13 * 7) % 20
    torch.testing.assert_close(loss.queue_0.norm(dim=1), torch.ones(20))
    assert {"queue_0", "queue_ptr"} <= set(loss.state_dict())


def test_crd_aligned_embeddings_give_the_minimum_and_shuffled_ones_more() -> None:
    """Same heads and same features: every positive has similarity 1, the largest possible, so
    the loss is its lower bound for this queue, log(1 + sum_k exp((s.q_k - 1) / tau)); pairing
    each student with another sample's teacher feature only lowers the positives."""
    torch.manual_seed(0)
    f = torch.randn(6, 5)
    loss = _loss("crd", [((5,), (5,))], n=100, feat_dim=4, queue_size=8, nce_t=0.5).eval()
    loss.embed_t.load_state_dict(loss.embed_s.state_dict())
    queue = loss.queue_0.clone()
    s = torch.nn.functional.normalize(loss.embed_s[0].linear(f), dim=1).detach().numpy()
    bound = np.mean(
        [math.log(1 + np.exp((s[b] @ queue.numpy().T - 1) / 0.5).sum()) for b in range(6)]
    )
    aligned = loss(_feat_out(f, f.clone())).item()
    assert aligned == pytest.approx(bound, rel=1e-5)
    for shift in range(1, 6):
        shuffled = loss(_feat_out(f, f.roll(shift, 0))).item()
        assert shuffled > aligned + 0.1, shift
    assert torch.equal(loss.queue_0, queue)  # in eval mode nothing is enqueued


def test_crd_training_step_decreases_the_loss_on_a_toy_problem() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    teacher_feat = torch.tanh(x @ torch.randn(8, 16))  # fixed teacher features, no gradient
    student = nn.Linear(8, 6)
    loss = _loss("crd", [((6,), (16,))], n=64, feat_dim=16, queue_size=64, nce_t=0.1)
    opt = torch.optim.Adam([*student.parameters(), *loss.parameters()], lr=0.01)
    values = []
    for _ in range(40):
        value = loss(_feat_out(student(x), teacher_feat))
        opt.zero_grad()
        value.backward()
        opt.step()
        values.append(value.item())
    assert values[-1] < 0.7 * values[0]


# ---------------------------------------------------------------------------------------------
# all of them: gradients reach the student and the loss's own modules, never the teacher

CASES = {
    "kd": ({}, None),
    "at": ({}, ((4, 4, 4), (8, 2, 2))),  # channels differ, the student map is pooled
    "nst": ({"degree": 3, "c": 1.0}, ((4, 4, 4), (8, 2, 2))),  # poly kernel (x.y + 1)^3
    "dkd": ({}, None),
    "dist": ({}, None),
    "logit_std": ({"base": "dkd", "warmup": 0}, None),
    "pad": ({}, ((4, 4, 4), (8, 2, 2))),
    "rkd": ({}, ((4, 4, 4), (8, 2, 2))),
    "sp": ({}, ((4, 4, 4), (8, 2, 2))),
    "cc": ({}, ((16,), (8,))),
    "pkt": ({}, ((16,), (8,))),
    "crd": ({"queue_size": 32}, ((4, 4, 4), (8,))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_reach_student_and_created_modules_never_teacher(name: str) -> None:
    params, pair = CASES[name]
    loss = _loss(name, [pair] if pair else [], n=100, **params)
    s_logits = torch.randn(4, 10, requires_grad=True)
    t_logits = torch.randn(4, 10)
    fs = [torch.randn(4, *pair[0], requires_grad=True)] if pair else []
    ft = [torch.randn(4, *pair[1])] if pair else []
    out = StepOutputs(s_logits, t_logits, torch.tensor([0, 3, 3, 9]), fs, ft, epoch=5)
    value = loss(out)
    assert torch.isfinite(value) and value.item() != 0
    value.backward()
    student = fs[0] if pair else s_logits
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert torch.isfinite(student.grad).all()
    assert t_logits.grad is None and all(f.grad is None and not f.requires_grad for f in ft)
    for pname, p in loss.named_parameters():
        if pname.startswith("embed_t") or not p.requires_grad:
            continue  # the teacher-side head of crd is trained, checked below
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    if name == "crd":
        assert loss.embed_t[0].linear.weight.grad is not None  # the teacher head learns, its
        # input (the teacher feature) does not


def test_teacher_tensors_that_require_grad_still_get_none() -> None:
    """The losses detach the teacher side themselves (a peer in online schemes may track grad)."""
    for name in ("rkd", "sp", "cc", "pkt", "crd", "pad"):
        loss = _loss(name, [((6,), (5,))], n=100)
        fs = torch.randn(4, 6, requires_grad=True)
        ft = torch.randn(4, 5, requires_grad=True)
        loss(_feat_out(fs, ft)).backward()
        assert ft.grad is None, name
    for name in ("dkd", "dist", "logit_std"):
        s, t = S.clone().requires_grad_(), T.clone().requires_grad_()
        params = {} if name == "dist" else {"warmup": 0}
        _loss(name, **params)(_logits_out(s, t, Y)).backward()
        assert t.grad is None and s.grad is not None, name


# ---------------------------------------------------------------------------------------------
# through the trainer


def test_trainer_runs_the_new_losses_together() -> None:
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.images[:96], dtype=torch.float32)[:, None] / 16.0
    data = TensorData(x, torch.tensor(d.target[:96]), [str(i) for i in range(10)])
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    config = RunConfig.model_validate(
        {
            "teacher": {"path": "unused.pt2"},
            "dataset": {"path": "unused.npz"},
            "layer_pairs": [{"teacher": "3", "student": "layers.0", "tap": "input"}],
            "student": {"architecture": "mlp", "kwargs": {"hidden": 16, "depth": 1}},
            "losses": [
                {"name": "ce"},
                {"name": "dkd", "params": {"warmup": 1}},
                {"name": "dist"},
                {"name": "logit_std"},
                {"name": "pad"},
                {"name": "rkd"},
                {"name": "sp", "weight": 3000},
                {"name": "cc"},
                {"name": "pkt", "weight": 30000},
                {"name": "crd", "weight": 0.8},
            ],
            "training": {"epochs": 2, "batch_size": 32, "lr": 0.01, "device": "cpu"},
        }
    )
    result = train(config, teacher, data, data)
    assert len(result.history) == 2 and all(math.isfinite(h["train/loss"]) for h in result.history)
