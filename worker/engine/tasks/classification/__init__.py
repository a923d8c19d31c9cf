"""Classification: one class per sample, the teacher outputs class scores [N, classes].

The whole task lives in this package: the task (here), its datasets (`data`) and its demo
(`demo`: the digits teacher and data of the quick start).

- data: `data.TensorData` (x float32 [N, ...], y int64 class indices, class names), read from
  .npz, .zip image folders or .csv (`data.load_dataset`), split stratified by class; the
  worker's scan of an upload records `data.describe_dataset` (`describe`);
- a batch: (x[idx], y[idx]);
- validation: top-1 accuracy and mean cross-entropy (`val/top1`, `val/loss`);
- evaluation: top-1 (and top-5 with at least 5 classes) of both models, their agreement (equal
  argmax) and expected calibration error (Guo et al., "On Calibration of Modern Neural
  Networks", ICML 2017), with M = 15 equal-width confidence bins B_m over the max softmax
  probability:

      ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|

- export example: a batch of 2 random float inputs;
- inspection: a model's output width is its number of classes (`num_classes`) when the output
  is a vector of scores [N, classes];
- stages: the "spatial" rule, resolution stages of 4-D maps (`taps`, `core.pairing`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.evaluate import predict
from worker.engine.tasks.base import Autocast, Batch, IncompatibleDataError, Task, to_device
from worker.engine.tasks.classification.data import (
    TensorData,
    describe_dataset,
    load_dataset,
    split,
)

if TYPE_CHECKING:
    from core.config import DatasetRef
    from worker.engine.loading import LoadedModel

_ECE_BINS = 15
_VAL_BATCH = 256


def topk_accuracy(logits: Tensor, labels: Tensor, k: int = 1) -> float:
    """Fraction of samples whose label is among the k highest logits."""
    if len(labels) == 0:
        return 0.0
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return float((top == labels.view(-1, 1)).any(dim=1).float().mean())


def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = _ECE_BINS) -> float:
    """ECE over `bins` equal-width bins of the max softmax probability (Guo et al. 2017)."""
    if len(labels) == 0:
        return 0.0
    confidence, prediction = logits.softmax(dim=1).max(dim=1)
    correct = (prediction == labels).float()
    index = (confidence * bins).long().clamp(max=bins - 1)
    ece = torch.zeros(())
    for b in range(bins):
        mask = index == b
        if mask.any():
            ece += mask.float().mean() * (correct[mask].mean() - confidence[mask].mean()).abs()
    return float(ece)


def fit_data_to_teacher(teacher: LoadedModel, data: TensorData) -> TensorData:
    """Check the teacher takes these inputs and predicts these classes; explain when not.

    Integer labels are class indices: a teacher with more output units than the highest label
    present is fine (the dataset simply lacks the top classes), and the classes are extended.
    """
    if tuple(teacher.input_shape) != tuple(data.input_shape):
        raise IncompatibleDataError(
            f"the teacher takes inputs of shape {list(teacher.input_shape)} but the dataset's "
            f"samples are {list(data.input_shape)}; upload the data in the format the teacher "
            "was trained on (same channels and size; images as NCHW or NHWC)"
        )
    n = teacher.num_classes
    if n is None:
        raise IncompatibleDataError(
            "the teacher's output is not a batch of class scores [N, classes]; distillation "
            "here needs a classifier teacher"
        )
    numeric = data.classes == [str(i) for i in range(data.num_classes)]
    if n > data.num_classes and numeric:
        return TensorData(data.x, data.y, [str(i) for i in range(n)])
    if n != data.num_classes:
        raise IncompatibleDataError(
            f"the teacher predicts {n} classes but the dataset has {data.num_classes} "
            f"({', '.join(data.classes[:10])}{', ...' if data.num_classes > 10 else ''}); "
            "use the dataset the teacher was trained for, with labels 0..classes-1"
        )
    return data


class ClassificationTask(Task):
    """Class scores from labelled samples; see the module docstring."""

    def load(self, path: Path, ref: DatasetRef, **limits: Any) -> TensorData:
        return load_dataset(Path(path), ref.format, ref.label_column, **limits)

    def describe(self, path: Path, ref: DatasetRef, **limits: Any) -> dict[str, Any]:
        """Samples, classes and their counts, input shape, kind and a preview."""
        return describe_dataset(Path(path), ref.format, ref.label_column, **limits)

    def fit_to_teacher(self, teacher: LoadedModel, data: TensorData) -> TensorData:
        return fit_data_to_teacher(teacher, data)

    def split(
        self, data: TensorData, val_fraction: float, seed: int
    ) -> tuple[TensorData, TensorData]:
        return split(data, val_fraction, seed)

    def input_shape(self, data: TensorData) -> tuple[int, ...]:
        return data.input_shape

    def output_size(self, data: TensorData) -> int:
        return data.num_classes

    def inspect_output(self, output_shape: list[int] | None) -> dict[str, Any]:
        """`num_classes`: the width of a vector output [N, classes], else None."""
        vector = output_shape is not None and len(output_shape) == 1
        return {"num_classes": output_shape[0] if vector and output_shape else None}

    def demo(self, out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
        """The digits teacher and data (`demo.make_demo`)."""
        from worker.engine.tasks.classification.demo import make_demo

        return make_demo(out_dir, seed)

    def batch(self, data: TensorData, idx: Tensor, device: torch.device) -> Batch:
        return Batch(to_device(data.x[idx], device), to_device(data.y[idx], device))

    @torch.inference_mode()
    def validate(
        self,
        student: nn.Module,
        data: TensorData,
        batch_size: int,
        device: torch.device,
        autocast: Autocast,
    ) -> dict[str, float]:
        """Top-1 accuracy and mean cross-entropy, in batches of at least 256."""
        student.eval()
        correct, loss_sum = 0, 0.0
        step = max(batch_size, _VAL_BATCH)
        for i in range(0, len(data), step):
            x, y = to_device(data.x[i : i + step], device), to_device(data.y[i : i + step], device)
            with autocast():
                logits = student(x).float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
        student.train()
        n = max(len(data), 1)
        return {"val/top1": correct / n, "val/loss": loss_sum / n}

    def evaluate(
        self, teacher: nn.Module, student: nn.Module, data: TensorData, **options: Any
    ) -> dict[str, Any]:
        """teacher_top1, student_top1 (fractions), teacher_top5 / student_top5 (with >= 5
        classes), agreement, teacher_ece, student_ece."""
        labels = data.y.long().cpu()
        x = cast(Tensor, data.x)  # a LazyArray is read in slices the same way
        t_logits, s_logits = predict(teacher, x), predict(student, x)
        result: dict[str, Any] = {
            "teacher_top1": topk_accuracy(t_logits, labels, 1),
            "student_top1": topk_accuracy(s_logits, labels, 1),
        }
        if s_logits.dim() == 2 and s_logits.shape[1] >= 5:
            result["teacher_top5"] = topk_accuracy(t_logits, labels, 5)
            result["student_top5"] = topk_accuracy(s_logits, labels, 5)
        same = t_logits.argmax(1) == s_logits.argmax(1)
        result["agreement"] = float(same.float().mean()) if len(labels) else 0.0
        result["teacher_ece"] = expected_calibration_error(t_logits, labels)
        result["student_ece"] = expected_calibration_error(s_logits, labels)
        return result
