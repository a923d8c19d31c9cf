"""The detection export: the student with its decoding returns boxes, scores and classes; by
construction the boxes are the ground truth's; `.pt2` and ONNX (onnxruntime) agree with PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from worker.engine.export import export_onnx, export_pt2
from worker.engine.loading import load_model
from worker.engine.tasks.detection.centernet import CenterNet, decode, distance_logits, encode
from worker.engine.tasks.detection.export import DetectionExport, export_module

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 16, 16)


class _Fixed(nn.Module):
    """A 'detector' whose output is a given dense-head tensor (batch 1)."""

    output: Tensor

    def __init__(self, output: Tensor) -> None:
        super().__init__()
        self.register_buffer("output", output)

    def forward(self, x: Tensor) -> Tensor:
        return self.output.expand(x.shape[0], -1, -1, -1)


def test_decoded_export_returns_the_boxes_by_construction() -> None:
    boxes = [torch.tensor([[1.0, 2.0, 7.0, 9.0], [8.0, 8.0, 15.0, 14.0]])]
    labels = [torch.tensor([2, 0])]
    heat, dist, _ = encode(boxes, labels, 3, (16, 16))
    eps = 1e-6
    logits = torch.log(heat.clamp(eps, 1 - eps) / (1 - heat.clamp(eps, 1 - eps)))
    wrapper = DetectionExport(_Fixed(torch.cat([logits, distance_logits(dist)], 1)), 3, SHAPE, k=5)
    out_boxes, scores, classes = wrapper(torch.zeros(2, *SHAPE))
    assert out_boxes.shape == (2, 5, 4) and scores.shape == classes.shape == (2, 5)
    assert classes.dtype == torch.int64
    top = scores[0] > 0.5  # the two centres score ~1; every other peak of a Gaussian is ~0
    assert int(top.sum()) == 2
    got = sorted(zip(classes[0][top].tolist(), out_boxes[0][top].tolist(), strict=True))
    want = sorted(zip([0, 2], [[8.0, 8.0, 15.0, 14.0], [1.0, 2.0, 7.0, 9.0]], strict=True))
    for (c, b), (wc, wb) in zip(got, want, strict=True):
        assert c == wc and np.allclose(b, wb, atol=1e-3)


def _student() -> CenterNet:
    torch.manual_seed(0)
    model = CenterNet(SHAPE, num_classes=3, width=0.25)
    nn.init.normal_(model.heatmap.weight, std=1.0)  # spread the scores: no near-ties in top-k
    assert model.heatmap.bias is not None
    nn.init.zeros_(model.heatmap.bias)
    return model.eval()


def test_decoded_export_equals_decode() -> None:
    model = _student()
    x = torch.rand(2, *SHAPE)
    boxes, scores, classes = export_module(model, SHAPE, k=20)(x)
    with torch.no_grad():
        preds = decode(model(x), 3, SHAPE[1:], k=20, threshold=-1.0)
    for i, p in enumerate(preds):
        assert np.allclose(p.scores, scores[i].detach().numpy(), atol=1e-6)
        assert np.array_equal(p.labels, classes[i].numpy())
        assert np.allclose(p.boxes, boxes[i].detach().numpy(), atol=1e-4)


def test_export_module_needs_the_class_count() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        export_module(nn.Conv2d(1, 20, 1), SHAPE)


def test_pt2_and_onnx_agree_with_pytorch(tmp_path: Path) -> None:
    """Tolerances: scores 1e-5 (sigmoid values in [0, 1]), boxes 1e-3 px, classes exact (at the
    peaks), on a random batch of 3 (the export traced batch 2: the batch is dynamic)."""
    ort = pytest.importorskip("onnxruntime")
    wrapper = export_module(_student(), SHAPE, k=20)
    assert isinstance(wrapper, DetectionExport) and not wrapper.training  # the student's mode
    export_pt2(wrapper, SHAPE, tmp_path / "student.pt2")
    export_onnx(wrapper, SHAPE, tmp_path / "student.onnx")
    x = torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = [t.numpy() for t in wrapper(x)]
    loaded = load_model(tmp_path / "student.pt2", "pt2").module
    with torch.no_grad():
        got_pt2 = [t.numpy() for t in loaded(x)]
    session = ort.InferenceSession(str(tmp_path / "student.onnx"))
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "classes"]
    got_onnx = session.run(None, {"input": x.numpy()})
    peaks = want[1] > 0  # past an image's last peak the rows score 0, in no defined order
    assert peaks.sum() >= 30, peaks.sum()
    for got in (got_pt2, got_onnx):
        boxes, scores, classes = got
        assert boxes.shape == (3, 20, 4) and scores.shape == classes.shape == (3, 20)
        assert np.allclose(scores, want[1], atol=1e-5)
        assert np.array_equal(classes[peaks], want[2][peaks])
        assert np.allclose(boxes[peaks], want[0][peaks], atol=1e-3)
    assert not wrapper.training and not wrapper.detector.training  # the export left it in eval


def test_the_task_seam_exports_the_decoding() -> None:
    from worker.engine.tasks import build_task

    student = _student()
    assert isinstance(build_task("detection").export_module(student, SHAPE), DetectionExport)
    assert build_task("classification").export_module(student, SHAPE) is student  # default
