"""The segmentation task: its datasets and refusals, metrics, students, and a short distillation
with dense and feature losses on the synthetic digits."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.catalog.tasks import task_losses, task_students
from core.config import RunConfig
from worker.engine.datasets import DatasetError
from worker.engine.students import build_student
from worker.engine.tasks import build_task, dataset_task
from worker.engine.tasks.segmentation import (
    SegmentationTask,
    confusion,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)
from worker.engine.tasks.segmentation.data import (
    IGNORE_INDEX,
    SegData,
    describe_dataset,
    load_dataset,
    synthetic_digits,
    write_npz,
    write_zip,
)
from worker.engine.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> SegData:
    return synthetic_digits(48, seed=3)


def _png(array: np.ndarray, mode: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, format="PNG")
    return out.getvalue()


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


GREY = np.zeros((6, 5), np.uint8)


def test_synthetic_digits_masks_follow_the_digits(digits: SegData) -> None:
    assert digits.x.shape == (48, 1, 32, 32) and digits.masks.shape == (48, 32, 32)
    assert digits.classes == ["background", *map(str, range(10))]
    values = set(digits.masks.unique().tolist())
    assert (
        0 in values and IGNORE_INDEX in values and values - {0, IGNORE_INDEX} <= set(range(1, 11))
    )
    ink = digits.x[:, 0] > 0.5
    assert (digits.masks[ink] != 0).float().mean() > 0.95  # bright pixels belong to digits


def test_npz_and_zip_read_the_same_data(digits: SegData, tmp_path: Path) -> None:
    a = load_dataset(write_npz(digits, tmp_path / "d.npz"))
    b = load_dataset(write_zip(digits, tmp_path / "d.zip"))
    assert a.classes == b.classes == digits.classes
    assert torch.equal(a.masks, digits.masks) and torch.equal(b.masks, digits.masks)
    assert (a.x - b.x).abs().max() <= 1 / 255
    info = describe_dataset(tmp_path / "d.zip")
    assert info["task"] == "segmentation" and info["num_classes"] == 11
    assert info["input_shape"] == [1, 32, 32] and len(info["preview"]["samples"]) == 8
    counted = int((digits.masks != IGNORE_INDEX).sum())
    assert sum(info["class_counts"].values()) == counted
    assert info["ignored_pixels"] == digits.masks.numel() - counted


def test_the_scan_finds_the_segmentation_task(digits: SegData, tmp_path: Path) -> None:
    npz = write_npz(digits, tmp_path / "d.npz")
    assert isinstance(dataset_task("npz", npz), SegmentationTask)
    assert not isinstance(dataset_task("npz"), SegmentationTask)  # no file: the default task


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"images/a.png": _png(GREY, "L"), "masks/a.png": _png(np.zeros((5, 6), np.uint8), "L")},
            "mask 'masks/a.png' is 6x5 but its image 'images/a.png' is 5x6",
        ),
        (
            {
                "images/a.png": _png(GREY, "L"),
                "images/b.png": _png(GREY, "L"),
                "masks/a.png": _png(GREY, "L"),
            },
            "'images/b.png' has no mask",
        ),
        (
            {
                "images/a.png": _png(GREY, "L"),
                "masks/a.png": _png(GREY + 3, "L"),
                "classes.txt": b"bg\nfg\n",
            },
            "the mask 'masks/a.png' has the class index 3, out of range (2 class names",
        ),
        (
            {
                "images/a.png": _png(GREY, "L"),
                "masks/a.png": _png(np.zeros((6, 5, 3), np.uint8), "RGB"),
            },
            "masks are single-channel",
        ),
        ({"../images/a.png": _png(GREY, "L")}, "contains '..'"),
    ],
)
def test_zip_refusals_name_the_file_and_the_reason(
    tmp_path: Path, files: dict, message: str
) -> None:
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(_zip(tmp_path / "bad.zip", files))


def test_npz_refusals(tmp_path: Path) -> None:
    x = np.zeros((2, 1, 4, 4), np.float32)
    np.savez(tmp_path / "size.npz", x=x, masks=np.zeros((2, 4, 5), np.uint8))
    with pytest.raises(DatasetError, match="masks are 4x5 .* but the images are 4x4"):
        load_dataset(tmp_path / "size.npz")
    masks = np.zeros((2, 4, 4), np.int64)
    masks[1, 0, 0] = 5
    np.savez(tmp_path / "range.npz", x=x, masks=masks, classes=np.array(["a", "b"]))
    with pytest.raises(DatasetError, match="mask 1 has the class index 5, out of range"):
        load_dataset(tmp_path / "range.npz")
    masks[1, 0, 0] = -1
    np.savez(tmp_path / "neg.npz", x=x, masks=masks)
    with pytest.raises(DatasetError, match="mask 1 has the class index -1"):
        load_dataset(tmp_path / "neg.npz")
    np.savez(
        tmp_path / "bomb.npz",
        x=np.zeros((64, 1, 64, 64), np.float32),
        masks=np.ones((64, 64, 64), np.uint8),
    )
    with pytest.raises(DatasetError, match="more than the limit"):
        load_dataset(tmp_path / "bomb.npz", max_decoded_bytes=100_000)


def test_metrics_by_hand() -> None:
    target = torch.tensor([[0, 0, 1, 1, -100]])
    pred = torch.tensor([[0, 1, 1, 1, 0]])
    m = confusion(pred, target, 3)
    assert m.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert iou_per_class(m) == [0.5, 2 / 3, None]  # class 2 absent from both: not averaged
    assert mean_iou(m) == pytest.approx((0.5 + 2 / 3) / 2)
    assert pixel_accuracy(m) == 0.75


def test_inspect_output_takes_per_pixel_logits_only() -> None:
    task = build_task("segmentation")
    assert task.inspect_output([11, 32, 32]) == {"num_classes": 11}
    with pytest.raises(ValueError, match=r"per-pixel class logits \[N, classes, H, W\]"):
        task.inspect_output([10])


def test_the_catalog_offers_segmentation_students_and_losses() -> None:
    assert task_students("segmentation") == ["seg_fcn", "seg_unet"]
    assert "seg_fcn" not in task_students("classification")
    assert {"ce", "pixel_kd", "cwd", "fitnets", "at"} <= set(task_losses("segmentation"))
    assert "cwd" not in task_losses("classification") and "kd" in task_losses("classification")


@pytest.mark.parametrize("name", ["seg_fcn", "seg_unet"])
def test_students_output_logits_at_the_input_size(name: str) -> None:
    model = build_student(name, (3, 20, 28), 5, depth=8, width=0.25).eval()
    assert model(torch.randn(2, 3, 20, 28)).shape == (2, 5, 20, 28)
    with pytest.raises(ValueError, match="6n\\+2"):
        build_student(name, (3, 20, 28), 5, depth=9)


def _config(losses: list, pairs: list | None = None, epochs: int = 2) -> RunConfig:
    return RunConfig.model_validate(
        {
            "task": "segmentation",
            "teacher": {"path": "unused.pt2"},
            "dataset": {"path": "unused.npz"},
            "student": {"architecture": "seg_fcn", "kwargs": {"width": 0.25}},
            "losses": losses,
            "layer_pairs": pairs or [],
            "training": {
                "epochs": epochs,
                "batch_size": 16,
                "lr": 0.05,
                "device": "cpu",
                "export_onnx": False,
            },
        }
    )


@pytest.mark.parametrize(
    ("losses", "pairs"),
    [
        ([{"name": "ce"}, {"name": "pixel_kd"}, {"name": "cwd"}], None),
        (
            [{"name": "ce"}, {"name": "fitnets"}, {"name": "at"}],
            [{"teacher": "backbone.layer3", "student": "backbone.layer3"}],
        ),
    ],
)
def test_distillation_runs_with_dense_and_feature_losses(
    digits: SegData, losses: list, pairs: list | None
) -> None:
    """A seg_unet teacher, a seg_fcn student: the dense losses, and FitNets / AT on a pair of
    backbone stages (different widths: FitNets' regressor maps one to the other)."""
    task = build_task("segmentation")
    torch.manual_seed(0)
    teacher = build_student("seg_unet", (1, 32, 32), 11, width=0.5).eval()
    train_data, val_data = task.split(digits, 0.25, 0)
    result = train(_config(losses, pairs), teacher, train_data, val_data, task=task)
    last = result.history[-1]
    assert {"val/miou", "val/pixel_acc", "val/loss"} <= set(last)
    assert 0.0 <= last["val/miou"] <= 1.0 and np.isfinite(last["val/loss"])
    report = task.evaluate(teacher, result.student, val_data)
    assert set(report["student_class_iou"]) == set(digits.classes)
    assert 0.0 <= report["agreement"] <= 1.0
    drawn = report["samples"]  # the run page's predictions side by side
    assert len(drawn) == 4 and {"truth", "teacher", "student", "truth_classes"} <= set(drawn[0])
    assert drawn[0]["truth_classes"] and set(drawn[0]["truth_classes"]) <= set(digits.classes)
