"""The detection task: its catalog entry, batches (targets packed [N, boxes, 5]), the
`centernet` loss through the trainer's contract, validation and the evaluation of a teacher in
the dense-head layout (perfect by construction: mAP 1.0) next to one outside it."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import Tensor, nn

from core.catalog.tasks import TASKS, task_losses, task_students
from worker.engine.losses.base import LossContext, StepOutputs
from worker.engine.losses.centernet import CenterNetLoss
from worker.engine.students import build_student
from worker.engine.tasks import build_task, dataset_task
from worker.engine.tasks.detection import DetectionTask, follows_layout
from worker.engine.tasks.detection.centernet import BINS, distance_logits, encode
from worker.engine.tasks.detection.data import (
    pack_targets,
    synthetic_digits,
    unpack_targets,
    write_zip,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class Perfect(nn.Module):
    """Outputs the dense-head layout that decodes to each image's ground-truth boxes."""

    def __init__(self, data) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        heat, dist, _ = encode(data.boxes, data.labels, data.num_classes, (48, 48))
        p = heat.clamp(1e-6, 1 - 1e-6)
        self.register_buffer("out", torch.cat([torch.log(p / (1 - p)), distance_logits(dist)], 1))
        self.register_buffer("x", data.x)

    def forward(self, x: Tensor) -> Tensor:
        rows = [int((self.x - xi).abs().flatten(1).sum(1).argmin()) for xi in x]
        return self.out[rows]


def test_catalog_entry_and_scan() -> None:
    task = build_task("detection")
    assert isinstance(task, DetectionTask)
    assert TASKS["detection"].metrics == ("map", "map50", "loss")
    assert task_students("detection") == ["det_centernet"]
    assert "centernet" in task_losses("detection") and "fitnets" in task_losses("detection")
    assert "centernet" not in task_losses("classification")
    assert "det_centernet" not in task_students("classification")


def test_a_coco_zip_is_found_as_detection(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write_zip(synthetic_digits(6, seed=2), tmp_path / "d.zip")
    assert isinstance(dataset_task("zip", path), DetectionTask)


def test_targets_pack_and_unpack() -> None:
    data = synthetic_digits(5, seed=3)
    t = DetectionTask().batch(data, torch.tensor([0, 2, 4]), torch.device("cpu")).targets
    most = max(1, *(len(data.boxes[i]) for i in (0, 2, 4)))
    assert t.shape == (3, most, 5)
    boxes, labels = unpack_targets(t)
    for k, i in enumerate((0, 2, 4)):
        assert torch.equal(boxes[k], data.boxes[i]) and torch.equal(labels[k], data.labels[i])
    assert pack_targets([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)]).eq(-1).all()
    with pytest.raises(ValueError, match="detection targets"):
        unpack_targets(torch.zeros(3, 4))


def test_centernet_loss_trains_the_student_a_little() -> None:
    torch.manual_seed(0)
    data = synthetic_digits(16, seed=4, digits_per_image=(1, 2))
    model = build_student("det_centernet", data.input_shape, 10, width=0.5)
    loss = CenterNetLoss(LossContext(num_classes=10))
    batch = DetectionTask().batch(data, torch.arange(16), torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    values = []
    for _ in range(6):
        out = model(batch.inputs)
        value = loss(StepOutputs(out, out.detach(), batch.targets))
        opt.zero_grad()
        value.backward()
        opt.step()
        values.append(float(value))
    assert math.isfinite(values[0]) and values[-1] < values[0]
    with pytest.raises(ValueError, match="dense-head output"):
        loss(StepOutputs(torch.zeros(2, 10), torch.zeros(2, 10), batch.targets[:2]))


def test_validation_and_evaluation_side_by_side() -> None:
    data = synthetic_digits(8, seed=5, digits_per_image=(1, 3))
    task, perfect = DetectionTask(), Perfect(data)
    metrics = task.validate(perfect, data, 4, torch.device("cpu"), contextlib.nullcontext)
    assert metrics["val/map"] == pytest.approx(1.0) and metrics["val/map50"] == pytest.approx(1.0)
    assert set(metrics) == {"val/map", "val/map50", "val/loss"}

    student = build_student("det_centernet", data.input_shape, 10, width=0.25)
    report = task.evaluate(perfect, student, data)
    assert report["teacher_map"] == pytest.approx(1.0)
    assert report["teacher_map50"] == pytest.approx(1.0)
    assert 0.0 <= report["student_map"] < 0.5
    present = {data.classes[int(c)] for lab in data.labels for c in lab}
    assert {k for k, v in report["teacher_class_ap"].items() if v is not None} == present
    sample = report["samples"][0]
    assert {"truth", "teacher", "student", "truth_classes", "teacher_classes"} <= set(sample)
    assert sorted(sample["teacher_classes"]) == sorted(sample["truth_classes"])

    flat = nn.Sequential(nn.Flatten(), nn.Linear(48 * 48, 7))  # feature-KD-only teacher
    assert follows_layout(flat(data.x[:2]), data) is not None
    other = task.evaluate(flat, student, data)
    assert other["teacher_map"] is None and "feature distillation only" in other["teacher_layout"]
    assert "teacher" not in other["samples"][0] and "student" in other["samples"][0]


def test_inspection_reads_the_zoo_layout() -> None:
    task = DetectionTask()
    assert task.inspect_output([10 + 4 * BINS, 24, 24]) == {"num_classes": 10}
    assert task.inspect_output([7]) == {} and task.inspect_output(None) == {}
