"""The detection losses on tiny tensors: the imitation mask from the boxes by construction,
hand-computed values, LD equal to KD on the box-side distributions, gradients only into the
student, and clear refusals."""

from __future__ import annotations

import math

import pytest
import torch

from core.config import LossSpec
from worker.engine.losses import LossContext, StepOutputs, build_loss
from worker.engine.losses.detection import FineGrainedImitation, centre_mask, imitation_mask
from worker.engine.losses.kd import KD

PAD = [-1.0] * 5


def _targets(*images: list[list[float]]) -> torch.Tensor:
    """[N, M, 5] targets padded with -1 rows, as the detection task's batch gives them."""
    most = max(1, *(len(b) for b in images))
    return torch.tensor([b + [PAD] * (most - len(b)) for b in images])


def test_imitation_mask_by_construction() -> None:
    # a 4x4 box centred at (4, 4) on an 8x8 image, a stride-1 map: the moved box's IoU is
    # (4-|dx|)(4-|dy|) / (32 - (4-|dx|)(4-|dy|)), best 12.25/19.75 = 0.62 at |dx| = |dy| = 0.5;
    # above half of it: (0.5, 0.5), (0.5, 1.5), (1.5, 0.5) -> a plus of 12 cells
    targets = _targets([[2, 2, 6, 6, 3]], [])
    mask = imitation_mask(targets, (8, 8), 8, 8, psi=0.5)
    want = torch.zeros(8, 8, dtype=torch.bool)
    want[2:6, 3:5] = True
    want[3:5, 2:6] = True
    assert torch.equal(mask[0], want) and int(mask[0].sum()) == 12
    assert not mask[1].any()  # an image without boxes (only padding) has no imitation region
    # on a stride-2 map (centres 1, 3, 5, 7): the best IoU 9/23 at |d| = 1, (1, 3) gives 3/29
    coarse = imitation_mask(targets, (8, 8), 4, 4, psi=0.5)
    assert coarse[0].nonzero().tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]
    # psi 0: every location whose moved box overlaps; a 2x2 box at (4, 4): |d| < 2 -> 4x4 cells
    small = imitation_mask(_targets([[3, 3, 5, 5, 0]]), (8, 8), 8, 8, psi=0.0)
    assert small[0].nonzero().min(0).values.tolist() == [2, 2] and int(small.sum()) == 16


def test_centre_mask_is_each_box_centre_cell() -> None:
    targets = _targets([[0, 0, 4, 4, 0], [4, 2, 8, 8, 1]], [[7, 7, 8, 8, 2]])
    mask = centre_mask(targets, 4, 4, stride=2)
    assert mask[0].nonzero().tolist() == [[1, 1], [2, 3]]
    assert mask[1].nonzero().tolist() == [[3, 3]]


def _ctx(name: str, classes: int, pairs: list | None = None) -> LossContext:
    return LossContext(num_classes=classes, pairs=pairs or [], name=name)


def test_fg_imitation_hand_value_and_gradients() -> None:
    ctx = _ctx("fg_imitation", 1, [((2, 8, 8), (3, 8, 8))])
    loss = build_loss(LossSpec(name="fg_imitation"), ctx)
    assert isinstance(loss, FineGrainedImitation)
    adapter = loss.adapters[0]
    assert isinstance(adapter, torch.nn.Conv2d) and adapter.bias is not None
    torch.nn.init.zeros_(adapter.weight)
    torch.nn.init.zeros_(adapter.bias)
    s = torch.randn(2, 2, 8, 8, requires_grad=True)
    t = torch.full((2, 3, 8, 8), 2.0, requires_grad=True)
    targets = _targets([[2, 2, 6, 6, 3]], [])
    out = StepOutputs(torch.zeros(2, 1), torch.zeros(2, 1), targets, [s], [t],
                      inputs=torch.zeros(2, 1, 8, 8))  # fmt: skip
    value = loss(out)
    # adapted student 0; 12 kept cells x 3 channels x (0 - 2)^2 = 144, over 2 x 12
    assert float(value.detach()) == pytest.approx(6.0)
    value.backward()
    assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0
    torch.nn.init.normal_(adapter.weight)
    loss(out).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None  # the teacher receives nothing
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        build_loss(LossSpec(name="fg_imitation"), _ctx("fg_imitation", 1, [((8,), (8,))]))


def _layout(classes: int, cls: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """[N, C + 4 * B, h, w] from class logits [N, C, h, w] and bin logits [N, 4, B, h, w]."""
    n, _, b, h, w = bins.shape
    return torch.cat([cls, bins.reshape(n, 4 * b, h, w)], 1)


def test_ld_hand_value() -> None:
    # one box centred in cell (1, 1) of a 4x4 map; 2 bins per side: teacher p = (1/4, 3/4),
    # student (1/2, 1/2); T = 1: KL = 1/4 log(1/2) + 3/4 log(3/2) on each side
    bins_t = torch.zeros(1, 4, 2, 4, 4)
    bins_t[:, :, 1] = math.log(3.0)
    t = _layout(1, torch.zeros(1, 1, 4, 4), bins_t)
    s = _layout(1, torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 2, 4, 4)).requires_grad_(True)
    loss = build_loss(LossSpec(name="ld", params={"temperature": 1.0}), _ctx("ld", 1))
    t.requires_grad_(True)
    value = loss(StepOutputs(s, t, _targets([[0, 0, 4, 4, 0]])))
    assert float(value.detach()) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    value.backward()
    assert s.grad is not None and t.grad is None
    assert s.grad[:, 1:].reshape(1, 4, 2, 4, 4)[..., 1, 1].abs().sum() > 0  # the positive cell
    assert s.grad[:, :1].abs().sum() == 0  # nothing into the class logits
    # elsewhere nothing: only the centre cell (1, 1) of the box carries the distillation
    grad = s.grad[:, 1:].reshape(1, 4, 2, 4, 4).clone()
    grad[..., 1, 1] = 0
    assert grad.abs().sum() == 0


def test_ld_reduces_to_kd_on_the_box_distributions() -> None:
    torch.manual_seed(0)
    classes, bins, tau = 3, 5, 4.0
    s = torch.randn(2, classes + 4 * bins, 4, 4)
    t = torch.randn(2, classes + 4 * bins, 4, 4)
    targets = _targets([[0, 0, 4, 4, 0], [4, 2, 8, 8, 1]], [[7, 7, 8, 8, 2]])
    ld = build_loss(LossSpec(name="ld", params={"temperature": tau}), _ctx("ld", classes))
    got = ld(StepOutputs(s, t, targets))
    cells = [(0, 1, 1), (0, 2, 3), (1, 3, 3)]  # each box's centre cell (image, row, column)

    def rows(x: torch.Tensor) -> torch.Tensor:  # [cells * 4 sides, bins]
        return torch.stack([x[n, classes:, i, j].reshape(4, bins) for n, i, j in cells]).reshape(
            -1, bins
        )

    kd = KD(_ctx("kd", bins), temperature=tau)
    want = kd(StepOutputs(rows(s), rows(t), torch.zeros(12)))
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    # no box in the batch: zero, and still differentiable
    empty = ld(StepOutputs(s.clone().requires_grad_(True), t, _targets([], [])))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_heatmap_kd_hand_value_and_zero_at_agreement() -> None:
    loss = build_loss(LossSpec(name="heatmap_kd"), _ctx("heatmap_kd", 1))
    t = torch.zeros(1, 1 + 8, 1, 1)  # teacher q = 1/2
    s = t.clone()
    s[:, 0] = math.log(3.0)  # student p = 3/4
    s.requires_grad_(True)
    value = loss(StepOutputs(s, t, _targets([])))
    assert float(value.detach()) == pytest.approx(
        0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    )
    value.backward()
    assert s.grad is not None and s.grad[:, 1:].abs().sum() == 0  # only the class scores
    same = torch.randn(2, 1 + 8, 3, 3)
    assert float(loss(StepOutputs(same, same, _targets([])))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["ld", "heatmap_kd"])
def test_prediction_losses_refuse_other_outputs(name: str) -> None:
    loss = build_loss(LossSpec(name=name), _ctx(name, 3))
    with pytest.raises(ValueError, match="dense-head outputs"):
        loss(StepOutputs(torch.zeros(2, 3), torch.zeros(2, 3), _targets([])))
    with pytest.raises(ValueError, match="same shape"):
        loss(StepOutputs(torch.zeros(1, 11, 4, 4), torch.zeros(1, 19, 4, 4), _targets([])))


def test_ld_refuses_class_labels() -> None:
    loss = build_loss(LossSpec(name="ld"), _ctx("ld", 1))
    x = torch.zeros(2, 9, 4, 4)
    with pytest.raises(ValueError, match=r"targets \[N, boxes, 5\]"):
        loss(StepOutputs(x, x, torch.tensor([0, 1])))


def test_only_the_detection_task_offers_them() -> None:
    from core.catalog.tasks import task_losses

    mine = {"fg_imitation", "ld", "heatmap_kd"}
    assert mine <= set(task_losses("detection"))
    assert not mine & set(task_losses("classification"))
    assert not mine & set(task_losses("segmentation"))
