"""The detection task's datasets: images with boxes, COCO format, read, checked, split, described.

Format (`load_dataset`, `describe_dataset`): a `.zip` holding `annotations.json` (COCO: `images`
with `id`, `file_name` and optionally `width`/`height`; `categories` with `id` and `name`;
`annotations` with `image_id`, `category_id`, `bbox` [x, y, w, h] in pixels) and the image files,
found at `file_name` next to `annotations.json` or under an `images/` folder beside it (optionally
under one top folder). Every image is resized to the first image's size; its boxes scale with it.

Checked, each refusal naming the file (or annotation) and the reason: what `datasets` checks for
every upload (path traversal, symbolic links, zip bombs, image and decoded sizes read from the
headers before anything is decoded), an annotations.json that is missing, too large or not COCO,
duplicate image or category ids, an annotation on an unknown image or with an unknown category
id, a box that is malformed, has no area or lies outside its image, an image file that is missing
or whose size differs from the width/height the JSON gives. Images without annotations are
allowed and counted (`describe_dataset`'s `images_without_boxes`); crowd annotations
(`iscrowd: 1`) are read like any box.

`synthetic_digits` composes a dataset from scikit-learn's bundled 8x8 digits placed at random
positions and scales on larger canvases (a box is a digit's visible extent), and `write_zip`
writes any `DetData` out as the real format, for the tests and the demo.
"""

from __future__ import annotations

import base64
import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch import Tensor

from worker.engine.datasets import (
    DatasetError,
    GiB,
    Limits,
    MiB,
    check_decoded,
    check_zip_entries,
    decode_image,
    decoding_bytes,
    float32_rows,
    image_header,
    size_text,
    split_indices,
    target_mode,
)

ANNOTATIONS = "annotations.json"
MAX_ANNOTATIONS_BYTES = 256 * MiB  # annotations.json is parsed whole; refused above this
BOX_TOLERANCE = 0.5  # pixels a box may overhang its image (rounding); clipped to the image


@dataclass
class DetData:
    """Images [N, C, H, W] (float32 in [0, 1], or uint8 when read compact) with, per image,
    `boxes[i]` [K_i, 4] float32 xyxy pixels and `labels[i]` [K_i] int64 class indices into
    `classes`; `category_ids[k]` is class k's id in the upload, `files[i]` image i's file."""

    x: Tensor
    boxes: list[Tensor]
    labels: list[Tensor]
    classes: list[str]
    category_ids: list[int] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.category_ids:
            self.category_ids = list(range(1, len(self.classes) + 1))
        if not self.files:
            self.files = [f"{i:05d}.png" for i in range(len(self.x))]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x.shape[1:])

    def subset(self, idx: Any) -> DetData:
        keep = [int(i) for i in np.asarray(idx).reshape(-1)]
        return DetData(
            self.x[keep],
            [self.boxes[i] for i in keep],
            [self.labels[i] for i in keep],
            list(self.classes),
            list(self.category_ids),
            [self.files[i] for i in keep],
        )


# ----------------------------------------------------------------------------------------------
# reading annotations.json


def _annotations_member(zf: zipfile.ZipFile, where: str) -> str:
    found = [n for n in zf.namelist() if PurePosixPath(n).name == ANNOTATIONS]
    if not found:
        raise DatasetError(
            f"{where}: no {ANNOTATIONS}; a detection .zip holds COCO annotations in "
            f"{ANNOTATIONS} next to the images (or their images/ folder)"
        )
    if len(found) > 1:
        raise DatasetError(
            f"{where}: {len(found)} files named {ANNOTATIONS} ({', '.join(found[:3])}); "
            "keep exactly one"
        )
    size = zf.getinfo(found[0]).file_size
    if size > MAX_ANNOTATIONS_BYTES:
        raise DatasetError(
            f"{where}: '{found[0]}' is {size_text(size)}, more than the limit of "
            f"{size_text(MAX_ANNOTATIONS_BYTES)}; split the dataset into smaller uploads"
        )
    return found[0]


def _list(doc: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = doc.get(key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise DatasetError(
            f"{where}: '{key}' must be a list of objects (COCO format: images, categories, "
            "annotations)"
        )
    return value


def _int_id(item: dict[str, Any], key: str, what: str, where: str) -> int:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DatasetError(f"{where}: {what} has '{key}' {value!r}; COCO ids are integers")
    return value


def _read_json(zf: zipfile.ZipFile, member: str, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(zf.read(member).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{where}: '{member}' is not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise DatasetError(
            f"{where}: '{member}' must be a JSON object with images, categories and annotations"
        )
    return doc


def _image_member(names: set[str], base: PurePosixPath, file_name: str) -> str | None:
    for candidate in (base / file_name, base / "images" / file_name):
        if str(candidate) in names:
            return str(candidate)
    return None


@dataclass(frozen=True)
class _Parsed:
    members: list[str]  # image i's zip member
    files: list[str]  # image i's file_name
    sizes: list[tuple[int, int] | None]  # image i's (width, height) from the JSON, if given
    boxes: list[list[tuple[float, float, float, float]]]  # xywh per image
    labels: list[list[int]]
    classes: list[str]
    category_ids: list[int]


def _parse(zf: zipfile.ZipFile, member: str, where: str) -> _Parsed:
    doc = _read_json(zf, member, f"{where}: '{member}'")
    here = f"{where}: '{member}'"
    images = _list(doc, "images", here)
    categories = _list(doc, "categories", here)
    annotations = _list(doc, "annotations", here)
    if not images:
        raise DatasetError(f"{here} lists no images; add at least one under 'images'")
    if not categories:
        raise DatasetError(
            f"{here} lists no categories; add one object per class under 'categories'"
        )

    category_index: dict[int, int] = {}
    classes: list[str] = []
    for c in categories:
        cid = _int_id(c, "id", "a category", here)
        if cid in category_index:
            raise DatasetError(f"{here}: the category id {cid} appears twice; give each its own")
        category_index[cid] = len(classes)
        classes.append(str(c.get("name", cid)))

    names = set(zf.namelist())
    base = PurePosixPath(member).parent
    image_index: dict[int, int] = {}
    members: list[str] = []
    files: list[str] = []
    sizes: list[tuple[int, int] | None] = []
    for img in images:
        iid = _int_id(img, "id", "an image", here)
        if iid in image_index:
            raise DatasetError(f"{here}: the image id {iid} appears twice; give each its own")
        file_name = img.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise DatasetError(f"{here}: the image {iid} has no 'file_name'; name its file")
        found = _image_member(names, base, file_name)
        if found is None:
            raise DatasetError(
                f"{where}: the image file '{file_name}' (image {iid}) is missing; put it next "
                f"to {ANNOTATIONS} or in an images/ folder beside it"
            )
        w, h = img.get("width"), img.get("height")
        sizes.append((int(w), int(h)) if isinstance(w, int) and isinstance(h, int) else None)
        image_index[iid] = len(members)
        members.append(found)
        files.append(file_name)

    boxes: list[list[tuple[float, float, float, float]]] = [[] for _ in members]
    labels: list[list[int]] = [[] for _ in members]
    for k, a in enumerate(annotations):
        what = f"the annotation {a.get('id', f'#{k}')}"
        iid = _int_id(a, "image_id", what, here)
        cid = _int_id(a, "category_id", what, here)
        if iid not in image_index:
            raise DatasetError(
                f"{here}: {what} is on image {iid}, which 'images' does not list; add the image "
                "or remove the annotation"
            )
        if cid not in category_index:
            raise DatasetError(
                f"{here}: {what} (image '{files[image_index[iid]]}') has the unknown category "
                f"id {cid}; 'categories' lists {sorted(category_index)[:20]}"
            )
        bbox = a.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
            or not all(math.isfinite(v) for v in bbox)
        ):
            raise DatasetError(
                f"{here}: {what} (image '{files[image_index[iid]]}') has bbox {bbox!r}; "
                "expected [x, y, width, height] in pixels"
            )
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise DatasetError(
                f"{here}: {what} (image '{files[image_index[iid]]}') has a box with no area "
                f"(width {w:g}, height {h:g}); remove it or give it a positive size"
            )
        boxes[image_index[iid]].append((x, y, w, h))
        labels[image_index[iid]].append(category_index[cid])
    return _Parsed(members, files, sizes, boxes, labels, classes, list(category_index))


def _check_inside(
    parsed: _Parsed, i: int, size: tuple[int, int], where: str
) -> list[tuple[float, float, float, float]]:
    """Image i's boxes as xyxy, refused if outside the image (beyond BOX_TOLERANCE), clipped."""
    width, height = size
    out = []
    for x, y, w, h in parsed.boxes[i]:
        t = BOX_TOLERANCE
        if x < -t or y < -t or x + w > width + t or y + h > height + t:
            raise DatasetError(
                f"{where}: a box [x={x:g}, y={y:g}, w={w:g}, h={h:g}] on '{parsed.files[i]}' lies "
                f"outside the image ({width}x{height}); fix or remove it"
            )
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(width)), min(y + h, float(height))
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            raise DatasetError(
                f"{where}: a box [x={x:g}, y={y:g}, w={w:g}, h={h:g}] on '{parsed.files[i]}' has "
                "no area inside the image; remove it"
            )
        out.append((x0, y0, x1, y1))
    return out


def _load_zip(path: Path, limits: Limits, compact: bool) -> DetData:
    where = path.name
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{where}: not a valid .zip file ({exc})") from exc
    with zf:
        check_zip_entries(zf, where, limits.entries, limits.unpacked)
        parsed = _parse(zf, _annotations_member(zf, where), where)
        heads = [image_header(zf, m, where) for m in parsed.members]
        xyxy = []
        for i, (_, hsize) in enumerate(heads):
            declared = parsed.sizes[i]
            if declared is not None and declared != hsize:
                raise DatasetError(
                    f"{where}: '{parsed.files[i]}' is {hsize[0]}x{hsize[1]} but "
                    f"{ANNOTATIONS} gives {declared[0]}x{declared[1]}; correct width/height"
                )
            xyxy.append(_check_inside(parsed, i, hsize, where))
        size = heads[0][1]
        mode = "RGB" if any(target_mode(m) == "RGB" for m, _ in heads) else "L"
        channels = 3 if mode == "RGB" else 1
        n = len(heads)
        samples = n * channels * size[0] * size[1] * (1 if compact else 4)
        worst = max(decoding_bytes(m, s, mode, size) for m, s in heads)
        check_decoded(
            where,
            samples + worst,
            f"{n} images of {size[0]}x{size[1]} {mode}",
            limits.decoded,
            "resize the images smaller or upload fewer",
        )
        x = np.empty((n, channels, size[1], size[0]), np.uint8)
        boxes, labels = [], []
        for i, member in enumerate(parsed.members):
            pixels = decode_image(zf, member, mode, size, where)
            x[i] = pixels.transpose(2, 0, 1) if pixels.ndim == 3 else pixels[None]
            sx, sy = size[0] / heads[i][1][0], size[1] / heads[i][1][1]
            b = np.asarray(xyxy[i], np.float32).reshape(-1, 4) * np.array(
                [sx, sy, sx, sy], np.float32
            )
            boxes.append(torch.from_numpy(b))
            labels.append(torch.as_tensor(parsed.labels[i], dtype=torch.int64))
    data = float32_rows(x, where, compact)
    return DetData(
        torch.from_numpy(data), boxes, labels, parsed.classes, parsed.category_ids, parsed.files
    )


# ----------------------------------------------------------------------------------------------
# public API


def _read(path: Path, format: str | None, limits: Limits, compact: bool) -> DetData:
    path = Path(path)
    fmt = format or path.suffix.lower().lstrip(".")
    if not path.is_file():
        raise DatasetError(f"dataset file '{path}' does not exist")
    if fmt == "zip":
        return _load_zip(path, limits, compact)
    raise DatasetError(
        f"'{path.name}': detection reads a .zip of images with COCO {ANNOTATIONS}, not '{fmt}'"
    )


def load_dataset(
    path: Path,
    format: str | None = None,
    *,
    max_entries: int = 100_000,
    max_uncompressed_bytes: int = 2 * GiB,
    max_decoded_bytes: int | None = None,
) -> DetData:
    """Read a detection upload (see the module docstring) into float32 images and boxes."""
    limits = Limits(max_entries, max_uncompressed_bytes, max_decoded_bytes)
    return _read(path, format, limits, compact=False)


def is_detection(path: Path, format: str | None) -> bool:
    """Whether an upload is laid out as detection data (a .zip with annotations.json), read from
    its member names only."""
    fmt = format or Path(path).suffix.lower().lstrip(".")
    if fmt != "zip":
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return any(PurePosixPath(n).name == ANNOTATIONS for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def split(data: DetData, val_fraction: float, seed: int) -> tuple[DetData, DetData]:
    """Deterministic split: round(N * val_fraction) images (at least 1, at most N - 1) chosen by
    a permutation seeded with `seed` go to validation; indices stay in dataset order."""
    train_idx, val_idx = split_indices(len(data), val_fraction, seed)
    return data.subset(train_idx), data.subset(val_idx)


def pack_targets(boxes: list[Tensor], labels: list[Tensor]) -> Tensor:
    """A batch's targets as one tensor [N, M, 5] float32: per image its boxes' x0, y0, x1, y1
    (pixels) and class index, padded with rows of -1 up to M = the most boxes of any image in
    the batch (at least 1)."""
    most = max([1, *(len(b) for b in boxes)])
    out = torch.full((len(boxes), most, 5), -1.0)
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        out[i, : len(b), :4] = b
        out[i, : len(b), 4] = lab.float()
    return out


def unpack_targets(targets: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """`pack_targets`' tensor back to per-image boxes [K, 4] float32 and labels [K] int64
    (the padding rows, class -1, dropped), on the tensor's device."""
    if targets.dim() != 3 or targets.shape[-1] != 5:
        raise ValueError(
            f"detection targets are [N, boxes, 5] (x0, y0, x1, y1, class; -1 rows pad), got "
            f"{list(targets.shape)}; use them with the detection task"
        )
    boxes, labels = [], []
    for t in targets:
        keep = t[:, 4] >= 0
        boxes.append(t[keep, :4].float())
        labels.append(t[keep, 4].long())
    return boxes, labels


def box_counts(data: DetData) -> dict[str, int]:
    """Boxes per class name."""
    if not data.labels:
        return dict.fromkeys(data.classes, 0)
    counts = torch.bincount(torch.cat(data.labels), minlength=data.num_classes).tolist()
    return {c: int(k) for c, k in zip(data.classes, counts, strict=False)}


_COLOURS = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128),
]  # fmt: skip


def draw_boxes(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scale: int = 1) -> Any:
    """A PIL RGB image of `image` (float [C, H, W] in [0, 1]) enlarged `scale` times with
    `boxes` (xyxy pixels) outlined, one colour per class."""
    from PIL import Image, ImageDraw

    grey = np.clip(image[:3].mean(0) if image.shape[0] < 3 else image[:3].transpose(1, 2, 0), 0, 1)
    rgb = (np.repeat(grey[..., None], 3, -1) if grey.ndim == 2 else grey) * 255.0
    img = Image.fromarray(rgb.astype(np.uint8), "RGB")
    img = img.resize((img.size[0] * scale, img.size[1] * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    for box, label in zip(
        np.asarray(boxes).reshape(-1, 4), np.asarray(labels).reshape(-1), strict=True
    ):
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=_COLOURS[int(label) % len(_COLOURS)])
    return img


def dataset_preview(data: DetData, n: int = 8) -> dict[str, Any]:
    """The first `n` images with their boxes drawn, as PNG thumbnails; each sample's label lists
    its boxes' classes."""
    samples = []
    side = max(data.x.shape[-2:])
    scale = max(1, 96 // max(int(side), 1))
    for i in range(min(n, len(data))):
        image = data.x[i].float().numpy()
        if data.x.dtype == torch.uint8:
            image = image / 255.0
        img = draw_boxes(image, data.boxes[i].numpy(), data.labels[i].numpy(), scale)
        out = io.BytesIO()
        img.save(out, format="PNG", optimize=True)
        label = ", ".join(data.classes[int(c)] for c in data.labels[i].tolist())
        samples.append(
            {
                "index": i,
                "label": label,
                "mime": "image/png",
                "data": base64.b64encode(out.getvalue()).decode("ascii"),
            }
        )
    return {"kind": "image", "samples": samples}


def describe_dataset(
    path: Path,
    format: str | None = None,
    *,
    max_entries: int = 100_000,
    max_uncompressed_bytes: int = 2 * GiB,
    max_decoded_bytes: int | None = None,
) -> dict[str, Any]:
    """What the scan of an upload records: size, classes, boxes per class (`class_counts`),
    images without boxes (allowed, counted), input shape and a preview with the boxes drawn."""
    limits = Limits(max_entries, max_uncompressed_bytes, max_decoded_bytes)
    data = _read(path, format, limits, compact=True)
    return {
        "task": "detection",
        "num_samples": len(data),
        "num_classes": data.num_classes,
        "classes": list(data.classes),
        "class_counts": box_counts(data),
        "num_boxes": sum(len(b) for b in data.boxes),
        "images_without_boxes": sum(1 for b in data.boxes if len(b) == 0),
        "input_shape": list(data.input_shape),
        "kind": "image",
        "preview": dataset_preview(data),
    }


# ----------------------------------------------------------------------------------------------
# synthetic data from scikit-learn's digits


def synthetic_digits(
    n: int = 400,
    size: int = 48,
    seed: int = 0,
    digits_per_image: tuple[int, int] = (0, 3),
    scale: tuple[int, int] = (12, 24),
    ink: float = 0.1,
) -> DetData:
    """`n` canvases of size x size with 0-3 of sklearn's 8x8 digits each, resized to a random
    side in `scale` and placed at random; each box is the extent of the digit's pixels whose ink
    is above `ink` (xyxy, so a one-pixel digit is 1 wide); classes "0".."9" (COCO ids 1..10).
    Canvases with no digit are images without annotations. Deterministic in `seed`."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    glyphs = digits.images.astype(np.float32) / 16.0
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, size, size), np.float32)
    boxes, labels = [], []
    for k in range(n):
        kb, kl = [], []
        for _ in range(int(rng.integers(digits_per_image[0], digits_per_image[1] + 1))):
            g = int(rng.integers(len(glyphs)))
            side = int(rng.integers(scale[0], min(scale[1], size) + 1))
            img = Image.fromarray(glyphs[g], "F").resize((side, side), Image.Resampling.BILINEAR)
            pixels = np.clip(np.asarray(img, np.float32), 0.0, 1.0)
            top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            window = (slice(top, top + side), slice(left, left + side))
            x[k, 0][window] = np.maximum(x[k, 0][window], pixels)
            rows, cols = np.nonzero(pixels > ink)
            kb.append(
                [left + cols.min(), top + rows.min(), left + cols.max() + 1, top + rows.max() + 1]
            )
            kl.append(int(digits.target[g]))
        boxes.append(torch.tensor(kb, dtype=torch.float32).reshape(-1, 4))
        labels.append(torch.tensor(kl, dtype=torch.int64))
        x[k, 0] += rng.normal(0.0, 0.05, (size, size)).astype(np.float32)
    x = np.clip(x, 0.0, 1.0)
    return DetData(torch.from_numpy(x), boxes, labels, [str(d) for d in range(10)])


def coco_json(data: DetData) -> dict[str, Any]:
    """`data`'s annotations as a COCO dict (image ids 1..N, boxes xywh)."""
    height, width = (int(s) for s in data.x.shape[-2:])
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(len(data)):
        images.append({"id": i + 1, "file_name": data.files[i], "width": width, "height": height})
        for box, label in zip(data.boxes[i].tolist(), data.labels[i].tolist(), strict=True):
            x0, y0, x1, y1 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": data.category_ids[int(label)],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": c, "name": n} for c, n in zip(data.category_ids, data.classes, strict=True)
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_zip(data: DetData, path: Path) -> Path:
    """`data` as a detection .zip: images/<file> (PNG, grey or RGB) and annotations.json."""
    from PIL import Image

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(len(data)):
            image = data.x[i].float().numpy()
            if data.x.dtype != torch.uint8:
                image = image * 255.0
            pixels = np.clip(image + 0.5, 0, 255).astype(np.uint8)
            array = pixels[:3].transpose(1, 2, 0).copy() if pixels.shape[0] >= 3 else pixels[0]
            out = io.BytesIO()
            Image.fromarray(array, "RGB" if array.ndim == 3 else "L").save(out, format="PNG")
            zf.writestr(f"images/{data.files[i]}", out.getvalue())
        zf.writestr(ANNOTATIONS, json.dumps(coco_json(data)))
    return Path(path)
