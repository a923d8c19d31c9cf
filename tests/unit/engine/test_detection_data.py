"""The detection task's COCO-format datasets: the synthetic digits written out as the real format
and read back, and each refusal with the file and the reason."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from worker.engine.datasets import DatasetError
from worker.engine.tasks.detection.data import (
    DetData,
    box_counts,
    describe_dataset,
    is_detection,
    load_dataset,
    split,
    synthetic_digits,
    write_zip,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> DetData:
    return synthetic_digits(40, seed=3)


def _png(width: int = 8, height: int = 6, mode: str = "L") -> bytes:
    out = io.BytesIO()
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    Image.fromarray(np.zeros(shape, np.uint8), mode).save(out, format="PNG")
    return out.getvalue()


def _coco(**change: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 6}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 4, 3]}],
    }
    doc.update(change)
    return doc


def _zip(path: Path, doc: Any, images: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in (images if images is not None else {"images/a.png": _png()}).items():
            zf.writestr(name, data)
        zf.writestr("annotations.json", doc if isinstance(doc, bytes) else json.dumps(doc))
    return path


def test_synthetic_boxes_hold_the_digits(digits: DetData) -> None:
    assert digits.x.shape == (40, 1, 48, 48) and digits.classes == [str(d) for d in range(10)]
    assert any(len(b) == 0 for b in digits.boxes)  # some canvases hold no digit
    for x, boxes in zip(digits.x, digits.boxes, strict=True):
        covered = torch.zeros(48, 48, dtype=torch.bool)
        for x0, y0, x1, y1 in boxes.round().long().tolist():
            assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48
            covered[y0:y1, x0:x1] = True
        assert not (x[0] > 0.5)[~covered].any()  # every bright pixel lies in some box


def test_zip_round_trip_and_scan(digits: DetData, tmp_path: Path) -> None:
    path = write_zip(digits, tmp_path / "d.zip")
    assert is_detection(path, "zip") and not is_detection(path, "npz")
    back = load_dataset(path)
    assert back.classes == digits.classes and back.category_ids == list(range(1, 11))
    assert (back.x - digits.x).abs().max() <= 1 / 255
    for a, b, la, lb in zip(back.boxes, digits.boxes, back.labels, digits.labels, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    info = describe_dataset(path)
    assert info["task"] == "detection" and info["input_shape"] == [1, 48, 48]
    assert info["images_without_boxes"] == sum(1 for b in digits.boxes if len(b) == 0) > 0
    assert info["class_counts"] == box_counts(digits)
    assert sum(info["class_counts"].values()) == info["num_boxes"] > 0
    assert len(info["preview"]["samples"]) == 8
    train, val = split(back, 0.25, seed=0)
    assert len(train) == 30 and len(val) == 10


def test_category_ids_map_to_classes_and_images_resize_with_their_boxes(tmp_path: Path) -> None:
    doc = _coco(
        images=[
            {"id": 1, "file_name": "a.png", "width": 8, "height": 6},
            {"id": 5, "file_name": "b.png"},  # no width/height: read from the file
            {"id": 9, "file_name": "c.png"},  # no annotation: allowed, counted
        ],
        annotations=[
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 4, 3]},
            {"id": 2, "image_id": 5, "category_id": 1, "bbox": [0, 0, 16, 12]},
        ],
    )
    images = {"images/a.png": _png(), "images/b.png": _png(16, 12), "c.png": _png()}
    data = load_dataset(_zip(tmp_path / "ok.zip", doc, images))
    assert data.classes == ["cat", "dog"] and data.category_ids == [1, 7]
    assert data.labels[0].tolist() == [1] and data.labels[1].tolist() == [0]
    assert data.boxes[0].tolist() == [[1, 1, 5, 4]]
    assert data.boxes[1].tolist() == [[0, 0, 8, 6]]  # 16x12 resized to 8x6: the box halves
    assert len(data.boxes[2]) == 0
    assert describe_dataset(tmp_path / "ok.zip")["images_without_boxes"] == 1


def _ann(**change: Any) -> list[dict[str, Any]]:
    return [{"id": 3, "image_id": 1, "category_id": 7, "bbox": [1, 1, 4, 3], **change}]


@pytest.mark.parametrize(
    ("doc", "images", "message"),
    [
        (
            _coco(annotations=_ann(bbox=[5, 1, 4, 3])),
            None,
            "a box [x=5, y=1, w=4, h=3] on 'a.png' lies outside the image (8x6)",
        ),
        (_coco(annotations=_ann(bbox=[-2, 1, 4, 3])), None, "on 'a.png' lies outside the image"),
        (
            _coco(annotations=_ann(bbox=[1, 1, 0, 3])),
            None,
            "the annotation 3 (image 'a.png') has a box with no area",
        ),
        (
            _coco(annotations=_ann(bbox=[1, 1, 4])),
            None,
            "the annotation 3 (image 'a.png') has bbox [1, 1, 4]",
        ),
        (
            _coco(annotations=_ann(category_id=4)),
            None,
            "the annotation 3 (image 'a.png') has the unknown category id 4",
        ),
        (
            _coco(annotations=_ann(image_id=2)),
            None,
            "the annotation 3 is on image 2, which 'images' does not list",
        ),
        (_coco(), {"images/b.png": _png()}, "the image file 'a.png' (image 1) is missing"),
        (
            _coco(images=[{"id": 1, "file_name": "a.png", "width": 9, "height": 6}]),
            None,
            "'a.png' is 8x6 but annotations.json gives 9x6",
        ),
        (
            _coco(categories=[{"id": 7, "name": "a"}, {"id": 7, "name": "b"}]),
            None,
            "the category id 7 appears twice",
        ),
        (_coco(categories=[]), None, "lists no categories"),
        ({"images": []}, None, "'categories' must be a list of objects"),
        (b"{not json", None, "is not valid UTF-8 JSON"),
        (_coco(), {"../a.png": _png()}, "contains '..'"),
    ],
)
def test_refusals_name_the_file_and_the_reason(
    tmp_path: Path, doc: Any, images: dict[str, bytes] | None, message: str
) -> None:
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_dataset(_zip(tmp_path / "bad.zip", doc, images))


def test_no_annotations_file_and_other_formats_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "none.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images/a.png", _png())
    with pytest.raises(DatasetError, match="no annotations.json; a detection .zip holds COCO"):
        load_dataset(path)
    np.savez(tmp_path / "d.npz", x=np.zeros((1, 2)))
    with pytest.raises(DatasetError, match="detection reads a .zip of images with COCO"):
        load_dataset(tmp_path / "d.npz")


def test_decoded_size_is_refused_from_the_headers(digits: DetData, tmp_path: Path) -> None:
    path = write_zip(digits, tmp_path / "d.zip")
    with pytest.raises(DatasetError, match="decodes to .* more than the limit"):
        load_dataset(path, max_decoded_bytes=1000)
