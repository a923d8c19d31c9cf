"""The CenterNet-style detector: its output layout, targets that decode back to the boxes (mAP
1.0 through the COCO evaluator), and a few training steps on the synthetic digits."""

from __future__ import annotations

import math

import pytest
import torch

from worker.engine.tasks.detection.centernet import (
    BINS,
    STRIDE,
    CenterNet,
    centernet_loss,
    decode,
    distance_logits,
    distance_unit,
    distribution_focal_loss,
    encode,
    expected_distances,
    split_output,
)
from worker.engine.tasks.detection.data import synthetic_digits
from worker.engine.tasks.detection.evaluate import Target, coco_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def test_output_layout() -> None:
    model = CenterNet((1, 48, 48), num_classes=10, width=0.5)
    out = model(torch.rand(2, 1, 48, 48))
    assert out.shape == (2, 10 + 4 * BINS, 48 // STRIDE, 48 // STRIDE)
    logits, bins = split_output(out, 10)
    assert logits.shape == (2, 10, 24, 24) and bins.shape == (2, 4, BINS, 24, 24)
    d = expected_distances(bins)  # distances lie between bin 0 and the last bin
    assert (d >= 0).all() and (d <= (BINS - 1) * distance_unit(24, 24, BINS)).all()
    with pytest.raises(ValueError, match="multiple of 4"):
        split_output(out[:, :-1], 10)


def test_distance_bins_round_trip_and_dfl() -> None:
    dist = torch.tensor([0.0, 3.3, 10.0, 25.0]).reshape(1, 4, 1, 1).expand(1, 4, 24, 24)
    bins = distance_logits(dist).reshape(1, 4, BINS, 24, 24)  # up to 26 px on a 24x24 map
    assert torch.allclose(expected_distances(bins), dist, atol=1e-3)
    # DFL by hand: 2 bins at unit 1 px; y = 0.25 -> -(0.75 log p0 + 0.25 log p1)
    logits = torch.tensor([[[0.0, math.log(3.0)]]]).expand(1, 4, 2)  # p = (1/4, 3/4)
    got = distribution_focal_loss(logits, torch.full((1, 4), 0.25), 1.0)
    want = -(0.75 * math.log(0.25) + 0.25 * math.log(0.75))
    assert torch.allclose(got, torch.full((1, 4), want))


def test_targets_decode_back_to_the_boxes() -> None:
    data = synthetic_digits(12, seed=1, digits_per_image=(1, 3))
    heat, dist, mask = encode(data.boxes, data.labels, 10, (48, 48))
    assert int(mask.sum()) == sum(len(b) for b in data.boxes) == 21  # no two centres collide
    eps = 1e-6
    logits = torch.log(heat.clamp(eps, 1 - eps) / (1 - heat.clamp(eps, 1 - eps)))
    preds = decode(torch.cat([logits, distance_logits(dist)], 1), 10, (48, 48))
    targets = [
        Target(b.numpy(), lab.numpy()) for b, lab in zip(data.boxes, data.labels, strict=True)
    ]
    m = coco_metrics(targets, preds, data.classes)
    assert [len(p.scores) for p in preds] == [len(b) for b in data.boxes]  # one peak per box
    assert m["map"] == m["map50"] == 1.0


def test_a_few_training_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    data = synthetic_digits(16, seed=2, digits_per_image=(1, 2))
    heat, dist, mask = encode(data.boxes, data.labels, 10, (48, 48))
    model = CenterNet((1, 48, 48), num_classes=10, width=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(15):
        loss = centernet_loss(model(data.x), heat, dist, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    preds = decode(model(data.x), 10, (48, 48))
    assert len(preds) == 16 and all(p.boxes.shape[1] == 4 for p in preds)
