"""Object detection: boxes with a class each, from COCO-format datasets.

The whole task lives in this package: the task (here), its datasets (`data`: the COCO .zip
reader, its checks, the synthetic digits), COCO mAP through faster-coco-eval (`evaluate`), the
CenterNet-style student's targets, loss and decoding (`centernet`) and the demo (`demo`).

- data: `data.DetData` (x float32 [N, C, H, W], per image boxes [K, 4] xyxy pixels and labels
  [K]), split by image;
- a batch: (x[idx], targets [N, M, 5]): per image its boxes' x0, y0, x1, y1 and class index,
  padded with rows of -1 to the most boxes of an image in the batch (`data.pack_targets`;
  `data.unpack_targets` reads them back, as the `centernet` loss does);
- the dense-head layout (the studio's documented detector output, the `det_centernet`
  student's; `centernet`'s docstring gives it whole): one tensor
  [N, classes + 4 * bins, ceil(H / 2), ceil(W / 2)], class-centre logits then, per box side
  (left, top, right, bottom), bin logits whose softmax expectation is the side's distance from
  the location's centre; `centernet.decode` turns it into boxes, scores and classes;
- teachers: any .pt2 serves feature distillation (layers tapped by name, no output contract);
  a teacher whose output follows the dense-head layout for the dataset's classes is also
  decoded and evaluated (`follows_layout`);
- validation: COCO mAP@[.5:.95], mAP@.5 and the mean `centernet` loss per batch (`val/map`,
  `val/map50`, `val/loss`);
- evaluation: per model (`teacher_*`, `student_*`) map, map50, map75 and per-class AP
  (`*_class_ap`: name -> AP@[.5:.95], None for a class without boxes); a teacher outside the
  layout has None for its figures and `teacher_layout` says why; `samples`: a few validation
  images with the ground truth, the teacher's and the student's boxes drawn (PNG, base64), for
  the run page;
- export: the student with its decoding (`export.DetectionExport`, `export_module`): the .pt2
  and ONNX return boxes, scores and classes of the top 100 peaks; the safetensors stay the
  student's weights;
- export example: a batch of 2 random images; inspection: an output [classes + 4 * 16, h, w]
  gives `num_classes`, any other output none (feature distillation only);
- stages: the "spatial" rule.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from worker.engine.tasks.base import Autocast, Batch, IncompatibleDataError, Task, to_device
from worker.engine.tasks.detection.centernet import (
    BINS,
    STRIDE,
    centernet_loss,
    decode,
    encode,
    split_output,
)
from worker.engine.tasks.detection.data import (
    DetData,
    describe_dataset,
    draw_boxes,
    is_detection,
    load_dataset,
    pack_targets,
    split,
)
from worker.engine.tasks.detection.evaluate import Prediction, Target, coco_metrics

if TYPE_CHECKING:
    from core.config import DatasetRef
    from worker.engine.loading import LoadedModel

_VAL_BATCH = 64
SAMPLES = 4  # validation images drawn with both models' boxes in the evaluation
DRAW_SCORE = 0.3  # the least score of a drawn predicted box


def follows_layout(output: Any, data: DetData) -> str | None:
    """None when a model's batch output follows the dense-head layout for `data`
    ([N, classes + 4 * bins, ceil(H / 2), ceil(W / 2)], bins >= 2); else why not."""
    h, w = (math.ceil(int(s) / STRIDE) for s in data.input_shape[1:])
    shape = list(output.shape)[1:] if isinstance(output, Tensor) else None
    if shape is not None and len(shape) == 3 and shape[1:] == [h, w]:
        try:
            split_output(output, data.num_classes)
            return None
        except ValueError:
            pass
    return (
        f"the output is {shape if shape is not None else type(output).__name__} per image, not "
        f"the dense-head layout [{data.num_classes} + 4 * bins, {h}, {w}] (class-centre logits, "
        "then the distance bins of each box side, at stride 2); such a teacher serves feature "
        "distillation only"
    )


def _forward(module: nn.Module, x: Tensor, batch_size: int = _VAL_BATCH) -> Any:
    """The module's outputs on `x` in eval mode, batched; a tensor when every batch gives one."""
    from worker.engine.evaluate import _device

    was_training = module.training
    module.eval()
    device = _device(module)
    try:
        with torch.inference_mode():
            outs = [module(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    finally:
        module.train(was_training)
    if outs and all(isinstance(o, Tensor) for o in outs):
        return torch.cat([o.float().cpu() for o in outs])
    return outs[0] if outs else torch.empty(0)


def truths(data: DetData) -> list[Target]:
    return [Target(b.numpy(), lab.numpy()) for b, lab in zip(data.boxes, data.labels, strict=True)]


def _png(image: Tensor, boxes: np.ndarray, labels: np.ndarray, scale: int) -> str:
    out = io.BytesIO()
    draw_boxes(image.float().numpy(), boxes, labels, scale).save(out, format="PNG", optimize=True)
    return base64.b64encode(out.getvalue()).decode("ascii")


def prediction_samples(
    data: DetData, predictions: dict[str, list[Prediction]], n: int = SAMPLES
) -> list[dict[str, Any]]:
    """The first `n` images with boxes drawn: the ground truth (`truth`) and each model's
    detections scoring at least DRAW_SCORE (`predictions[who]`), as base64 PNGs, with the
    classes each shows."""
    scale = max(1, 96 // max(int(max(data.input_shape[1:])), 1))
    samples = []
    for i in range(min(n, len(data))):
        sample: dict[str, Any] = {
            "index": i,
            "file": data.files[i],
            "mime": "image/png",
            "truth": _png(data.x[i], data.boxes[i].numpy(), data.labels[i].numpy(), scale),
            "truth_classes": [data.classes[int(c)] for c in data.labels[i].tolist()],
        }
        for who, preds in predictions.items():
            keep = preds[i].scores >= DRAW_SCORE
            labels = preds[i].labels[keep]
            sample[who] = _png(data.x[i], preds[i].boxes[keep], labels, scale)
            sample[f"{who}_classes"] = [data.classes[int(c)] for c in labels.tolist()]
        samples.append(sample)
    return samples


class DetectionTask(Task):
    """Boxes and classes from images with COCO annotations; see the module docstring."""

    def load(self, path: Path, ref: DatasetRef, **limits: Any) -> DetData:
        return load_dataset(Path(path), ref.format, **limits)

    def describe(self, path: Path, ref: DatasetRef, **limits: Any) -> dict[str, Any]:
        """Images, classes with their box counts, images without boxes, a preview with boxes."""
        return describe_dataset(Path(path), ref.format, **limits)

    @staticmethod
    def recognizes(path: Path, format: str | None) -> bool:
        """Whether an upload is a .zip holding a COCO annotations.json (`data.is_detection`)."""
        return is_detection(Path(path), format)

    def fit_to_teacher(self, teacher: LoadedModel, data: DetData) -> DetData:
        """The teacher must take these images; its output may be anything (feature KD)."""
        if tuple(teacher.input_shape) != tuple(data.input_shape):
            raise IncompatibleDataError(
                f"the teacher takes inputs of shape {list(teacher.input_shape)} but the "
                f"dataset's images are {list(data.input_shape)}; upload the images at the size "
                "and channels the teacher was trained on"
            )
        return data

    def split(self, data: DetData, val_fraction: float, seed: int) -> tuple[DetData, DetData]:
        return split(data, val_fraction, seed)

    def input_shape(self, data: DetData) -> tuple[int, ...]:
        return data.input_shape

    def output_size(self, data: DetData) -> int:
        return data.num_classes

    def batch(self, data: DetData, idx: Tensor, device: torch.device) -> Batch:
        keep = [int(i) for i in idx.tolist()]
        targets = pack_targets([data.boxes[i] for i in keep], [data.labels[i] for i in keep])
        return Batch(to_device(data.x[idx], device), to_device(targets, device))

    def export_module(self, student: nn.Module, input_shape: Sequence[int]) -> nn.Module:
        """The student with its decoding: the exported .pt2 and ONNX return boxes [N, k, 4],
        scores [N, k] and classes [N, k] (`export.DetectionExport`, k = 100)."""
        from worker.engine.tasks.detection.export import export_module

        return export_module(student, input_shape)

    def inspect_output(self, output_shape: list[int] | None) -> dict[str, Any]:
        """`num_classes` of a dense-head output [classes + 4 * BINS, h, w] (the zoo's bins);
        none otherwise (a teacher for feature distillation needs no output contract)."""
        if output_shape is not None and len(output_shape) == 3 and output_shape[0] > 4 * BINS:
            return {"num_classes": int(output_shape[0]) - 4 * BINS}
        return {}

    def demo(self, out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
        """A small CenterNet teacher on synthetic digits (`demo.make_demo`)."""
        from worker.engine.tasks.detection.demo import make_demo

        return make_demo(out_dir, seed)

    @torch.inference_mode()
    def validate(
        self,
        student: nn.Module,
        data: DetData,
        batch_size: int,
        device: torch.device,
        autocast: Autocast,
    ) -> dict[str, float]:
        """COCO mAP@[.5:.95], mAP@.5 and the mean `centernet` loss per batch."""
        student.eval()
        size = (int(data.input_shape[1]), int(data.input_shape[2]))
        predictions: list[Prediction] = []
        losses: list[float] = []
        step = max(batch_size, _VAL_BATCH)
        for i in range(0, len(data), step):
            with autocast():
                out = student(data.x[i : i + step].to(device)).float()
            heat, dist, mask = encode(
                data.boxes[i : i + step], data.labels[i : i + step], data.num_classes, size
            )
            losses.append(
                float(centernet_loss(out, heat.to(device), dist.to(device), mask.to(device)))
            )
            predictions += decode(out, data.num_classes, size)
        student.train()
        metrics = coco_metrics(truths(data), predictions, data.classes)
        return {
            "val/map": metrics["map"],
            "val/map50": metrics["map50"],
            "val/loss": sum(losses) / max(len(losses), 1),
        }

    def evaluate(
        self, teacher: nn.Module, student: nn.Module, data: DetData, **options: Any
    ) -> dict[str, Any]:
        """teacher_/student_ map, map50, map75, class_ap; teacher_layout; samples."""
        size = (int(data.input_shape[1]), int(data.input_shape[2]))
        result: dict[str, Any] = {}
        drawn: dict[str, list[Prediction]] = {}
        for who, model in (("teacher", teacher), ("student", student)):
            out = _forward(model, data.x)
            why = follows_layout(out, data)
            if why is not None:
                result.update({f"{who}_{k}": None for k in ("map", "map50", "map75", "class_ap")})
                result[f"{who}_layout"] = why
                continue
            preds = decode(out, data.num_classes, size)
            metrics = coco_metrics(truths(data), preds, data.classes)
            result[f"{who}_map"] = metrics["map"]
            result[f"{who}_map50"] = metrics["map50"]
            result[f"{who}_map75"] = metrics["map75"]
            result[f"{who}_class_ap"] = metrics["ap_per_class"]
            drawn[who] = preds
        result["samples"] = prediction_samples(data, drawn)
        return result
