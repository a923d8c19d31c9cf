"""COCO box metrics through a maintained evaluator (faster-coco-eval, the C++ port of
pycocotools' COCOeval with the same definitions), not a hand-written one.

`coco_metrics(targets, predictions, classes)` gives mAP@[.5:.95] (`map`), mAP@.5 (`map50`),
mAP@.75 (`map75`) and AP@[.5:.95] per class (`ap_per_class`; None for a class with no ground-truth
box, which COCO leaves out of the mean). Boxes are xyxy in pixels here and handed to the evaluator
as COCO's xywh; at most 100 detections per image count, as in COCO; class indices are 0-based
here and 1-based COCO category ids there.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Target:
    """One image's ground truth: `boxes` [K, 4] xyxy pixels, `labels` [K] class indices."""

    boxes: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Prediction:
    """One image's detections: `boxes` [D, 4] xyxy pixels, `scores` [D], `labels` [D]."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def _xywh(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def _coco_dicts(
    targets: Sequence[Target], predictions: Sequence[Prediction], classes: Sequence[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    detections: list[dict[str, Any]] = []
    for i, (t, p) in enumerate(zip(targets, predictions, strict=True)):
        images.append({"id": i + 1})
        for box, label in zip(_xywh(t.boxes), np.asarray(t.labels).reshape(-1), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": 0,
                }
            )
        scores = np.asarray(p.scores, np.float64).reshape(-1)
        labels = np.asarray(p.labels).reshape(-1)
        for box, score, label in zip(_xywh(p.boxes), scores, labels, strict=True):
            detections.append(
                {
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": [float(v) for v in box],
                    "score": float(score),
                }
            )
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    return gt, detections


def coco_metrics(
    targets: Sequence[Target], predictions: Sequence[Prediction], classes: Sequence[str]
) -> dict[str, Any]:
    """COCO bbox metrics of `predictions` against `targets` (one each per image, same order).

    Returns {"map", "map50", "map75", "ap_per_class": {name: AP@[.5:.95] or None}}; with no
    ground-truth box at all every figure is 0.0 and every class None."""
    from faster_coco_eval import COCO, COCOeval_faster  # type: ignore[import-untyped]

    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions; one each")
    gt_dict, detections = _coco_dicts(targets, predictions, classes)
    for d in detections:
        if not 1 <= d["category_id"] <= len(classes):
            raise ValueError(
                f"a prediction has class index {d['category_id'] - 1}; "
                f"expected 0..{len(classes) - 1}"
            )
    empty = {"map": 0.0, "map50": 0.0, "map75": 0.0}
    if not gt_dict["annotations"]:
        return {**empty, "ap_per_class": dict.fromkeys(classes)}
    present = {a["category_id"] - 1 for a in gt_dict["annotations"]}
    if not detections:
        none = {c: 0.0 if k in present else None for k, c in enumerate(classes)}
        return {**empty, "ap_per_class": none}
    quiet = io.StringIO()
    logger = logging.getLogger("faster_coco_eval")  # it logs its summary table at INFO
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(quiet):
            gt = COCO(gt_dict)
            dt = gt.loadRes(detections)
            ev = COCOeval_faster(gt, dt, "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
    finally:
        logger.setLevel(level)
    stats = ev.stats
    # precision: [iou thresholds T, recall points R, classes K, area ranges A, max dets M]
    precision = np.asarray(ev.eval["precision"])
    per_class: dict[str, float | None] = {}
    for k, name in enumerate(classes):
        p = precision[:, :, k, 0, -1]
        valid = p[p > -1]
        per_class[name] = float(valid.mean()) if k in present and valid.size else None
    return {
        "map": max(float(stats[0]), 0.0),
        "map50": max(float(stats[1]), 0.0),
        "map75": max(float(stats[2]), 0.0),
        "ap_per_class": per_class,
    }
