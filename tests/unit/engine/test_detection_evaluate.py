"""COCO box metrics through faster-coco-eval on cases whose values are known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from worker.engine.tasks.detection.evaluate import Prediction, Target, coco_metrics

CLASSES = ["a", "b", "c"]


def _t(boxes: list[list[float]], labels: list[int]) -> Target:
    return Target(np.array(boxes, np.float64).reshape(-1, 4), np.array(labels))


def _p(boxes: list[list[float]], scores: list[float], labels: list[int]) -> Prediction:
    return Prediction(
        np.array(boxes, np.float64).reshape(-1, 4), np.array(scores), np.array(labels)
    )


TARGETS = [
    _t([[0, 0, 20, 20], [30, 10, 60, 40]], [0, 1]),
    _t([[5, 5, 45, 25]], [1]),
    _t([], []),  # an image without boxes
]


def test_perfect_predictions_give_one() -> None:
    preds = [_p(t.boxes.tolist(), [0.9] * len(t.labels), t.labels.tolist()) for t in TARGETS]
    m = coco_metrics(TARGETS, preds, CLASSES)
    assert m["map"] == m["map50"] == m["map75"] == 1.0
    assert m["ap_per_class"] == {"a": 1.0, "b": 1.0, "c": None}  # c has no box: left out


@pytest.mark.parametrize(
    ("iou", "passed"),
    [(0.52, 1), (0.62, 3), (0.72, 5), (0.77, 6), (0.93, 9), (0.97, 10), (0.45, 0)],
)
def test_shifted_boxes_pass_the_thresholds_below_their_iou(iou: float, passed: int) -> None:
    """A 20x20 box shifted by dx along x has IoU (20 - dx) / (20 + dx); it is a true positive at
    the thresholds .50, .55, ..., .95 up to that IoU, so AP@[.5:.95] is the fraction passed."""
    dx = 20 * (1 - iou) / (1 + iou)
    m = coco_metrics([_t([[0, 0, 20, 20]], [2])], [_p([[dx, 0, 20 + dx, 20]], [0.8], [2])], CLASSES)
    assert m["map"] == pytest.approx(passed / 10)
    assert m["map50"] == (1.0 if iou >= 0.5 else 0.0)
    assert m["ap_per_class"]["c"] == pytest.approx(passed / 10)


def test_a_missed_box_halves_recall_and_a_wrong_class_scores_nothing() -> None:
    targets = [_t([[0, 0, 20, 20]], [0]), _t([[0, 0, 20, 20]], [0])]
    # one found, one missed: precision 1 up to recall 0.5 -> 51 of COCO's 101 recall points
    m = coco_metrics(targets, [_p([[0, 0, 20, 20]], [0.9], [0]), _p([], [], [])], CLASSES)
    assert m["map"] == pytest.approx(51 / 101)
    # a lower-scored false positive after every true positive leaves AP at 1
    preds = [
        _p([[0, 0, 20, 20], [50, 50, 70, 70]], [0.9, 0.1], [0, 0]),
        _p([[0, 0, 20, 20]], [0.8], [0]),
    ]
    assert coco_metrics(targets, preds, CLASSES)["map"] == pytest.approx(1.0)
    wrong = [_p([[0, 0, 20, 20]], [0.9], [1]), _p([[0, 0, 20, 20]], [0.9], [1])]
    m = coco_metrics(targets, wrong, CLASSES)
    assert m["map"] == 0.0 and m["ap_per_class"]["a"] == 0.0


def test_no_predictions_or_no_boxes_and_bad_input() -> None:
    m = coco_metrics(TARGETS, [_p([], [], [])] * 3, CLASSES)
    assert m["map"] == 0.0 and m["ap_per_class"] == {"a": 0.0, "b": 0.0, "c": None}
    empty = [_t([], [])]
    assert coco_metrics(empty, [_p([], [], [])], CLASSES)["map"] == 0.0
    with pytest.raises(ValueError, match="class index 5; expected 0..2"):
        coco_metrics(empty, [_p([[0, 0, 1, 1]], [0.5], [5])], CLASSES)
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        coco_metrics(empty * 2, [_p([], [], [])], CLASSES)
