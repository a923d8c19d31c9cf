"""Semantic segmentation: one class per pixel; the teacher outputs per-pixel class logits
[N, classes, H, W] at the input's size.

The whole task lives in this package: the task (here), its datasets (`data`: .npz and .zip
readers, checks, the synthetic digits data) and its demo (`demo`).

- data: `data.SegData` (x float32 [N, C, H, W], masks int64 [N, H, W] with
  `data.IGNORE_INDEX` = 255 for ignored pixels, class names), split by image;
- a batch: (x[idx], masks[idx]) with ignored pixels as -100, the ignore index of
  `torch.nn.functional.cross_entropy`, so the `ce` loss and the dense losses skip them;
- validation: mIoU, pixel accuracy and mean per-pixel cross-entropy over the pixels not ignored
  (`val/miou`, `val/pixel_acc`, `val/loss`);
- evaluation: from the confusion matrix M (M[i, j]: pixels of class i predicted j, ignored
  pixels left out), IoU_c = M[c, c] / (sum_j M[c, j] + sum_i M[i, c] - M[c, c]) and
  mIoU = the mean of IoU_c over the classes present in the targets or the predictions
  (MMSegmentation's `mIoU`), pixel accuracy = trace(M) / sum(M); per model (`teacher_*`,
  `student_*`), per-class IoU (`*_class_iou`: name -> IoU, None for a class absent from both),
  and `agreement`: the fraction of counted pixels where both models predict the same class;
  `samples`: a few validation images with the ground truth's and each model's classes painted
  over them (PNG, base64), which the pipeline writes as the `predictions` artifact;
- export example: a batch of 2 random images;
- inspection: an output [classes, H, W] (per-pixel logits) gives `num_classes`; anything else is
  refused, saying what a segmentation teacher outputs;
- stages: the "spatial" rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.evaluate import predict
from worker.engine.tasks.base import Autocast, Batch, IncompatibleDataError, Task
from worker.engine.tasks.segmentation.data import (
    IGNORE_INDEX,
    SegData,
    _png,
    describe_dataset,
    is_segmentation,
    load_dataset,
    overlay,
    split,
)

if TYPE_CHECKING:
    from core.config import DatasetRef
    from worker.engine.loading import LoadedModel

TORCH_IGNORE = -100  # F.cross_entropy's default ignore_index: what a batch carries
_VAL_BATCH = 128
SAMPLES = 4  # validation images drawn with both models' predictions in the evaluation


def targets(masks: Tensor) -> Tensor:
    """Masks as a batch's targets: int64, ignored pixels as TORCH_IGNORE."""
    masks = masks.long()
    return torch.where(masks == IGNORE_INDEX, torch.full_like(masks, TORCH_IGNORE), masks)


def confusion(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """int64 [classes, classes]: M[i, j] = pixels of class i (target) predicted j; pixels whose
    target is not in 0..classes-1 (ignored) are left out."""
    keep = (target >= 0) & (target < num_classes)
    index = target[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(m: Tensor) -> list[float | None]:
    """IoU of each class from a confusion matrix; None where the class is absent from both."""
    inter = m.diag().double()
    union = m.sum(0).double() + m.sum(1).double() - inter
    return [float(i / u) if u > 0 else None for i, u in zip(inter, union, strict=True)]


def mean_iou(m: Tensor) -> float:
    present = [v for v in iou_per_class(m) if v is not None]
    return sum(present) / len(present) if present else 0.0


def pixel_accuracy(m: Tensor) -> float:
    total = int(m.sum())
    return float(m.diag().sum()) / total if total else 0.0


def prediction_samples(
    data: SegData, predictions: dict[str, Tensor], n: int = SAMPLES
) -> list[dict[str, Any]]:
    """The first `n` images with the ground-truth mask (`truth`) and each model's predicted
    classes (`predictions[who]`: [N, H, W]) painted over them, as base64 PNGs, with the classes
    each shows (the run page's and Compare's predictions side by side)."""
    scale = max(1, 96 // max(int(max(data.input_shape[1:])), 1))
    samples = []
    for i in range(min(n, len(data))):
        image = data.x[i].float().numpy()
        sample: dict[str, Any] = {"index": i, "mime": "image/png"}
        for who, mask in (("truth", data.masks[i]), *((w, p[i]) for w, p in predictions.items())):
            m = mask.numpy()
            present = sorted(int(c) for c in np.unique(m) if 0 < c < data.num_classes)
            sample[who] = _png(overlay(image, m), scale)
            sample[f"{who}_classes"] = [data.classes[c] for c in present]
        samples.append(sample)
    return samples


def fit_data_to_teacher(teacher: LoadedModel, data: SegData) -> SegData:
    """Check the teacher takes these images and outputs per-pixel logits for these classes."""
    if tuple(teacher.input_shape) != tuple(data.input_shape):
        raise IncompatibleDataError(
            f"the teacher takes inputs of shape {list(teacher.input_shape)} but the dataset's "
            f"images are {list(data.input_shape)}; upload the images at the size and channels "
            "the teacher was trained on"
        )
    module = teacher.module
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            out = module(data.x[:1].float())
    finally:
        module.train(was_training)
    shape = list(getattr(out, "shape", []))[1:]
    if len(shape) != 3 or shape[1:] != list(data.input_shape[1:]):
        raise IncompatibleDataError(
            f"the teacher outputs {shape or type(out).__name__} per image, not per-pixel class "
            f"logits [classes, {data.input_shape[1]}, {data.input_shape[2]}] at the input's "
            "size; segmentation needs a teacher whose output is [N, classes, H, W]"
        )
    n = int(shape[0])
    numeric = data.classes == [str(i) for i in range(data.num_classes)]
    if n > data.num_classes and numeric:
        return SegData(data.x, data.masks, [str(i) for i in range(n)])
    if n != data.num_classes:
        raise IncompatibleDataError(
            f"the teacher predicts {n} classes per pixel but the dataset has "
            f"{data.num_classes} ({', '.join(data.classes[:10])}"
            f"{', ...' if data.num_classes > 10 else ''}); use masks with the teacher's "
            "class indices 0..classes-1"
        )
    return data


class SegmentationTask(Task):
    """Per-pixel class logits from images with masks; see the module docstring."""

    ignore_index = IGNORE_INDEX

    def load(self, path: Path, ref: DatasetRef, **limits: Any) -> SegData:
        return load_dataset(Path(path), ref.format, **limits)

    def describe(self, path: Path, ref: DatasetRef, **limits: Any) -> dict[str, Any]:
        """Images, classes with their pixel counts, input shape, a preview with masks drawn."""
        return describe_dataset(Path(path), ref.format, **limits)

    @staticmethod
    def recognizes(path: Path, format: str | None) -> bool:
        """Whether an upload is laid out as segmentation data (`data.is_segmentation`)."""
        return is_segmentation(Path(path), format)

    def fit_to_teacher(self, teacher: LoadedModel, data: SegData) -> SegData:
        return fit_data_to_teacher(teacher, data)

    def split(self, data: SegData, val_fraction: float, seed: int) -> tuple[SegData, SegData]:
        return split(data, val_fraction, seed)

    def input_shape(self, data: SegData) -> tuple[int, ...]:
        return data.input_shape

    def output_size(self, data: SegData) -> int:
        return data.num_classes

    def batch(self, data: SegData, idx: Tensor, device: torch.device) -> Batch:
        return Batch(data.x[idx].to(device), targets(data.masks[idx]).to(device))

    def inspect_output(self, output_shape: list[int] | None) -> dict[str, Any]:
        """`num_classes` of per-pixel logits [classes, H, W]; anything else is refused."""
        if output_shape is None or len(output_shape) != 3:
            raise ValueError(
                f"the model outputs {output_shape if output_shape is not None else 'no tensor'}"
                " per sample; a segmentation model outputs per-pixel class logits "
                "[N, classes, H, W] at its input's size"
            )
        return {"num_classes": int(output_shape[0])}

    def demo(self, out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
        """A small U-Net teacher on synthetic digits (`demo.make_demo`)."""
        from worker.engine.tasks.segmentation.demo import make_demo

        return make_demo(out_dir, seed)

    @torch.inference_mode()
    def validate(
        self,
        student: nn.Module,
        data: SegData,
        batch_size: int,
        device: torch.device,
        autocast: Autocast,
    ) -> dict[str, float]:
        """mIoU, pixel accuracy and mean cross-entropy over the pixels not ignored."""
        student.eval()
        m = torch.zeros(data.num_classes, data.num_classes, dtype=torch.long)
        loss_sum, counted = 0.0, 0
        step = max(batch_size, _VAL_BATCH)
        for i in range(0, len(data), step):
            x = data.x[i : i + step].to(device)
            y = targets(data.masks[i : i + step]).to(device)
            with autocast():
                logits = student(x).float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            counted += int((y != TORCH_IGNORE).sum())
            m += confusion(logits.argmax(1).cpu(), y.cpu(), data.num_classes)
        student.train()
        return {
            "val/miou": mean_iou(m),
            "val/pixel_acc": pixel_accuracy(m),
            "val/loss": loss_sum / max(counted, 1),
        }

    def evaluate(
        self, teacher: nn.Module, student: nn.Module, data: SegData, **options: Any
    ) -> dict[str, Any]:
        """teacher_/student_ miou, pixel_acc, class_iou; agreement."""
        y = targets(data.masks)
        t_pred = predict(teacher, data.x).argmax(1)
        s_pred = predict(student, data.x).argmax(1)
        result: dict[str, Any] = {}
        for who, pred in (("teacher", t_pred), ("student", s_pred)):
            m = confusion(pred, y, data.num_classes)
            result[f"{who}_miou"] = mean_iou(m)
            result[f"{who}_pixel_acc"] = pixel_accuracy(m)
            result[f"{who}_class_iou"] = dict(zip(data.classes, iou_per_class(m), strict=True))
        counted = y != TORCH_IGNORE
        same = (t_pred == s_pred) & counted
        result["agreement"] = float(same.sum()) / max(int(counted.sum()), 1)
        result["samples"] = prediction_samples(data, {"teacher": t_pred, "student": s_pred})
        return result
