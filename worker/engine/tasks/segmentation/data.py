"""The segmentation task's datasets: images with one class index per pixel, read, split, described.

Formats (`load_dataset`, `describe_dataset`):

- `.npz`: `x` [N, C, H, W] (or [N, H, W], [N, H, W, C]) float or uint8 images (uint8 / 255),
  `masks` [N, H, W] integer class indices, `IGNORE_INDEX` (255) for pixels no loss or metric
  counts, optional `classes` (one name per class);
- `.zip`: `images/<stem>.png` and `masks/<stem>.png` (same stems; any image format for the
  images, single-channel PNG masks of class indices: mode L, P or I), optionally under one top
  folder, optional `classes.txt` (one name per line).

Checked, each refusal naming the file (or sample) and the reason: what `datasets` checks for
every upload (path traversal, symbolic links, zip bombs, image and decoded sizes read from the
headers before anything is decoded), a mask whose size differs from its image's, a class index
out of range (negative, above the class names given, or above 254 other than the ignore index),
an image without its mask and a mask without its image, masks that are not single-channel.

`synthetic_digits` composes a dataset from scikit-learn's bundled 8x8 digits placed at random
positions and scales on larger canvases (mask = digit class + 1, background 0, the soft rim of a
digit ignored), for the demo and the tests.
"""

from __future__ import annotations

import base64
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch import Tensor

from worker.engine.datasets import (
    IMAGE_SUFFIXES,
    DatasetError,
    GiB,
    Limits,
    check_decoded,
    check_zip_entries,
    decode_image,
    decoding_bytes,
    float32_rows,
    image_header,
    npy_header,
    open_image,
    read_npy,
    size_text,
    split_indices,
    target_mode,
    to_nchw,
)

IGNORE_INDEX = 255  # a mask pixel that no loss or metric counts
MASK_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")


@dataclass
class SegData:
    """Images `x` float32 [N, C, H, W] (uint8 while scanning), `masks` int64 [N, H, W] of class
    indices (IGNORE_INDEX: not counted) and the class names."""

    x: Tensor
    masks: Tensor
    classes: list[str]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, idx: Tensor | np.ndarray | list[int]) -> SegData:
        index = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return SegData(self.x[index], self.masks[index], list(self.classes))


# ----------------------------------------------------------------------------------------------
# masks


def _class_names(masks: np.ndarray, names: list[str] | None, where: str, what: Any) -> list[str]:
    """The class names: `names` when given (every index must be below their count), else
    "0".."max"; `what(i)` names sample i in an error."""
    valid = masks[masks != IGNORE_INDEX]
    if masks.size and masks.min() < 0:
        i = int(np.flatnonzero((masks < 0).reshape(len(masks), -1).any(1))[0])
        raise DatasetError(
            f"{where}: {what(i)} has the class index {int(masks.min())}; class indices are "
            f"0..classes-1, with {IGNORE_INDEX} for pixels to ignore"
        )
    top = int(valid.max()) if valid.size else -1
    if names is not None:
        limit = len(names)
    else:
        limit = IGNORE_INDEX
    if top >= limit:
        bad = (masks >= limit) & (masks != IGNORE_INDEX)
        i = int(np.flatnonzero(bad.reshape(len(masks), -1).any(1))[0])
        value = int(masks[i][bad[i]].max())
        given = f"{len(names)} class names are given" if names is not None else "it is not"
        raise DatasetError(
            f"{where}: {what(i)} has the class index {value}, out of range ({given}); class "
            f"indices are 0..classes-1, with {IGNORE_INDEX} for pixels to ignore"
        )
    classes = [str(n) for n in names] if names is not None else [str(c) for c in range(top + 1)]
    if len(classes) < 2:
        raise DatasetError(
            f"{where}: the masks hold only {len(classes)} class; need at least 2 (e.g. "
            "background and object)"
        )
    return classes


# ----------------------------------------------------------------------------------------------
# .npz


def _load_npz(path: Path, limits: Limits, compact: bool) -> SegData:
    where = path.name
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DatasetError(
            f"{where}: not a valid .npz file ({exc}); save it with numpy.savez"
        ) from exc
    with zf:
        check_zip_entries(zf, where, limits.entries, limits.unpacked)
        members = {PurePosixPath(n).stem: n for n in zf.namelist() if n.endswith(".npy")}
        missing = [k for k in ("x", "masks") if k not in members]
        if missing:
            raise DatasetError(
                f"{where}: missing array(s) {missing}; a segmentation .npz holds x [N, C, H, W] "
                f"and masks [N, H, W] (class indices, {IGNORE_INDEX} = ignore), optionally classes"
            )
        hx = npy_header(zf, members["x"], "x", where)
        hm = npy_header(zf, members["masks"], "masks", where)
        for h, key in ((hx, "x"), (hm, "masks")):
            if h.nbytes > h.held:
                raise DatasetError(
                    f"{where}: '{key}' claims {size_text(h.nbytes)} but holds "
                    f"{size_text(h.held)}; the file is truncated or forged"
                )
        if hm.dtype.kind not in "iu" or len(hm.shape) != 3:
            raise DatasetError(
                f"{where}: masks must be integers [N, H, W] (class indices), got "
                f"{hm.dtype} {list(hm.shape)}"
            )
        n = hx.shape[0] if hx.shape else 0
        floats = int(np.prod(hx.shape, dtype=np.int64)) * (1 if compact else 4)
        decoded = floats + hx.nbytes + int(np.prod(hm.shape, dtype=np.int64)) * 8
        check_decoded(
            where,
            decoded,
            f"{n} images and masks",
            limits.decoded,
            "upload fewer or smaller images",
        )
        names: list[str] | None = None
        if "classes" in members:
            given = read_npy(zf, npy_header(zf, members["classes"], "classes", where), where)
            names = [str(n) for n in given.astype(str).reshape(-1).tolist()]
        masks = read_npy(zf, hm, where)
        x = read_npy(zf, hx, where)
    if x.dtype.kind not in "iufb":
        raise DatasetError(f"{where}: x must hold numbers, got dtype {x.dtype}")
    if x.ndim not in (3, 4):
        raise DatasetError(f"{where}: x must be images [N, C, H, W], got shape {list(x.shape)}")
    x = to_nchw(x, where)
    if x.shape[0] != masks.shape[0]:
        raise DatasetError(
            f"{where}: x has {x.shape[0]} images but masks has {masks.shape[0]}; give one mask "
            "per image"
        )
    if tuple(x.shape[2:]) != tuple(masks.shape[1:]):
        raise DatasetError(
            f"{where}: the masks are {masks.shape[1]}x{masks.shape[2]} (HxW) but the images are "
            f"{x.shape[2]}x{x.shape[3]}; each mask must have its image's size"
        )
    classes = _class_names(masks, names, where, lambda i: f"mask {i}")
    data = float32_rows(x, where, compact)
    return SegData(torch.from_numpy(data), torch.from_numpy(masks.astype(np.int64)), classes)


# ----------------------------------------------------------------------------------------------
# .zip of images/ and masks/


def _visible(name: str) -> bool:
    return not any(p.startswith((".", "__MACOSX")) for p in PurePosixPath(name).parts)


def _zip_pairs(zf: zipfile.ZipFile, where: str) -> tuple[list[tuple[str, str]], str | None]:
    """(image entry, mask entry) per stem, sorted by stem, and the classes.txt entry if any."""
    files = [i.filename for i in zf.infolist() if not i.is_dir() and _visible(i.filename)]
    parts = [PurePosixPath(f).parts for f in files]
    tops = {p[0] for p in parts if len(p) > 1}
    strip = (
        len(tops) == 1 and all(len(p) > 1 for p in parts) and tops.isdisjoint({"images", "masks"})
    )
    rel = {
        f: PurePosixPath(*p[1:]) if strip else PurePosixPath(*p)
        for f, p in zip(files, parts, strict=True)
    }
    images: dict[str, str] = {}
    masks: dict[str, str] = {}
    classes_txt = None
    for f, r in rel.items():
        if str(r) == "classes.txt":
            classes_txt = f
        elif len(r.parts) == 2 and r.suffix.lower() in IMAGE_SUFFIXES:
            folder = {"images": images, "masks": masks}.get(r.parts[0])
            if folder is not None:
                if r.stem in folder:
                    raise DatasetError(
                        f"{where}: two files with the stem '{r.stem}' in {r.parts[0]}/"
                    )
                folder[r.stem] = f
    if not images:
        raise DatasetError(
            f"{where}: no images found; zip images/<name>.png with masks/<name>.png (same "
            "names; one class index per mask pixel)"
        )
    no_mask = sorted(set(images) - set(masks))
    if no_mask:
        raise DatasetError(
            f"{where}: the image '{images[no_mask[0]]}' has no mask ({len(no_mask)} image(s) "
            f"without one); add masks/{no_mask[0]}.png"
        )
    no_image = sorted(set(masks) - set(images))
    if no_image:
        raise DatasetError(
            f"{where}: the mask '{masks[no_image[0]]}' has no image; add images/{no_image[0]}.png "
            "or remove the mask"
        )
    return [(images[s], masks[s]) for s in sorted(images)], classes_txt


def _load_zip(path: Path, limits: Limits, compact: bool) -> SegData:
    where = path.name
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{where}: not a valid .zip file ({exc})") from exc
    with zf:
        check_zip_entries(zf, where, limits.entries, limits.unpacked)
        pairs, classes_txt = _zip_pairs(zf, where)
        heads = [(image_header(zf, i, where), image_header(zf, m, where)) for i, m in pairs]
        size = heads[0][0][1]
        for (image, mask), ((_, isize), (mmode, msize)) in zip(pairs, heads, strict=True):
            if isize != size:
                raise DatasetError(
                    f"{where}: '{image}' is {isize[0]}x{isize[1]} but '{pairs[0][0]}' is "
                    f"{size[0]}x{size[1]}; give every image the same size"
                )
            if msize != isize:
                raise DatasetError(
                    f"{where}: the mask '{mask}' is {msize[0]}x{msize[1]} but its image "
                    f"'{image}' is {isize[0]}x{isize[1]}; each mask must have its image's size"
                )
            if mmode not in MASK_MODES:
                raise DatasetError(
                    f"{where}: the mask '{mask}' is a {mmode} image; masks are single-channel "
                    "PNGs of class indices (mode L, P or I)"
                )
        mode = "RGB" if any(target_mode(h[0][0]) == "RGB" for h in heads) else "L"
        channels = 3 if mode == "RGB" else 1
        n, pixels = len(pairs), size[0] * size[1]
        samples = n * channels * pixels * (1 if compact else 4) + n * pixels * 8
        worst = max(decoding_bytes(h[0][0], h[0][1], mode, size) for h in heads)
        check_decoded(
            where,
            samples + worst,
            f"{n} images of {size[0]}x{size[1]} {mode} with their masks",
            limits.decoded,
            "resize the images smaller or upload fewer",
        )
        x = np.empty((n, channels, size[1], size[0]), np.uint8)
        masks = np.empty((n, size[1], size[0]), np.int64)
        for k, (image, mask) in enumerate(pairs):
            pixels_k = decode_image(zf, image, mode, size, where)
            x[k] = pixels_k.transpose(2, 0, 1) if pixels_k.ndim == 3 else pixels_k[None]
            with zf.open(mask) as fp, open_image(fp, mask, where) as img:
                masks[k] = np.asarray(img, dtype=np.int64)
        names = None
        if classes_txt is not None:
            text = zf.read(classes_txt).decode("utf-8", errors="replace")
            names = [line.strip() for line in text.splitlines() if line.strip()]
    classes = _class_names(masks, names, where, lambda i: f"the mask '{pairs[i][1]}'")
    data = float32_rows(x, where, compact)
    return SegData(torch.from_numpy(data), torch.from_numpy(masks), classes)


# ----------------------------------------------------------------------------------------------
# public API


def _read(path: Path, format: str | None, limits: Limits, compact: bool) -> SegData:
    path = Path(path)
    fmt = format or path.suffix.lower().lstrip(".")
    if not path.is_file():
        raise DatasetError(f"dataset file '{path}' does not exist")
    if fmt == "npz":
        return _load_npz(path, limits, compact)
    if fmt == "zip":
        return _load_zip(path, limits, compact)
    raise DatasetError(
        f"'{path.name}': segmentation reads .npz (x, masks) or .zip (images/, masks/), not '{fmt}'"
    )


def load_dataset(
    path: Path,
    format: str | None = None,
    *,
    max_entries: int = 100_000,
    max_uncompressed_bytes: int = 2 * GiB,
    max_decoded_bytes: int | None = None,
) -> SegData:
    """Read a segmentation upload (see the module docstring) into float32 / int64 tensors."""
    limits = Limits(max_entries, max_uncompressed_bytes, max_decoded_bytes)
    return _read(path, format, limits, compact=False)


def is_segmentation(path: Path, format: str | None) -> bool:
    """Whether an upload is laid out as segmentation data (an .npz with `masks`, a .zip with
    a masks/ folder), read from its member names only."""
    fmt = format or Path(path).suffix.lower().lstrip(".")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    if fmt == "npz":
        return any(PurePosixPath(n).name == "masks.npy" for n in names)
    if fmt == "zip":
        return any("masks" in PurePosixPath(n).parts[:-1] for n in names) and any(
            "images" in PurePosixPath(n).parts[:-1] for n in names
        )
    return False


def split(data: SegData, val_fraction: float, seed: int) -> tuple[SegData, SegData]:
    """Deterministic split: round(N * val_fraction) images (at least 1, at most N - 1) chosen by
    a permutation seeded with `seed` go to validation; indices stay in dataset order."""
    train_idx, val_idx = split_indices(len(data), val_fraction, seed)
    return data.subset(train_idx), data.subset(val_idx)


def pixel_counts(data: SegData) -> dict[str, int]:
    """Pixels per class name (ignored pixels left out)."""
    m = data.masks.reshape(-1)
    counts = torch.bincount(m[m != IGNORE_INDEX], minlength=data.num_classes).tolist()
    return {c: int(k) for c, k in zip(data.classes, counts, strict=False)}


# a fixed palette for the masks in previews: background black-ish, then distinct colours
_PALETTE = np.array(
    [
        [0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
        [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
    ],
    np.uint8,
)  # fmt: skip


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An RGB uint8 [H, W, 3] of `image` (float [C, H, W] in [0, 1]) with `mask`'s classes
    painted over it (class 0 and ignored pixels left unpainted)."""
    grey = np.clip(image[:3].mean(0) if image.shape[0] < 3 else image[:3].transpose(1, 2, 0), 0, 1)
    rgb = (np.repeat(grey[..., None], 3, -1) if grey.ndim == 2 else grey) * 255.0
    paint = (mask > 0) & (mask != IGNORE_INDEX)
    colours = _PALETTE[np.where(paint, mask, 0) % len(_PALETTE)].astype(np.float32)
    rgb[paint] = (1 - alpha) * rgb[paint] + alpha * colours[paint]
    return rgb.astype(np.uint8)


def _png(rgb: np.ndarray, scale: int) -> str:
    from PIL import Image

    img = Image.fromarray(rgb, "RGB")
    img = img.resize((img.size[0] * scale, img.size[1] * scale), Image.Resampling.NEAREST)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return base64.b64encode(out.getvalue()).decode("ascii")


def dataset_preview(data: SegData, n: int = 8) -> dict[str, Any]:
    """The first `n` images with their masks painted over them, as PNG thumbnails; each
    sample's label lists the classes its mask holds."""
    samples = []
    side = max(data.x.shape[-2:])
    scale = max(1, 64 // max(int(side), 1))
    for i in range(min(n, len(data))):
        image = data.x[i].float().numpy()
        if data.x.dtype == torch.uint8:
            image = image / 255.0
        mask = data.masks[i].numpy()
        present = sorted(int(c) for c in np.unique(mask) if c != IGNORE_INDEX)
        label = ", ".join(data.classes[c] for c in present if c < data.num_classes)
        samples.append(
            {
                "index": i,
                "label": label,
                "mime": "image/png",
                "data": _png(overlay(image, mask), scale),
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
    """What the scan of an upload records: size, classes, pixels per class (`class_counts`,
    ignored pixels counted apart), input shape and a preview with the masks drawn over."""
    limits = Limits(max_entries, max_uncompressed_bytes, max_decoded_bytes)
    data = _read(path, format, limits, compact=True)
    ignored = int((data.masks == IGNORE_INDEX).sum())
    return {
        "task": "segmentation",
        "num_samples": len(data),
        "num_classes": data.num_classes,
        "classes": list(data.classes),
        "class_counts": pixel_counts(data),
        "ignored_pixels": ignored,
        "ignore_index": IGNORE_INDEX,
        "input_shape": list(data.input_shape),
        "kind": "image",
        "preview": dataset_preview(data),
    }


# ----------------------------------------------------------------------------------------------
# synthetic data from scikit-learn's digits


def synthetic_digits(
    n: int = 600,
    size: int = 32,
    seed: int = 0,
    digits_per_image: tuple[int, int] = (1, 2),
    scale: tuple[int, int] = (10, 18),
) -> SegData:
    """`n` canvases of size x size with 1-2 of sklearn's 8x8 digits each, resized to a random
    side in `scale` and placed at random; mask = digit class + 1 where the digit's ink is
    above 0.4, background 0, IGNORE_INDEX on its soft rim (ink in (0.1, 0.4]); classes
    "background", "0".."9". Deterministic in `seed`."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    glyphs = digits.images.astype(np.float32) / 16.0
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, size, size), np.float32)
    masks = np.zeros((n, size, size), np.int64)
    for k in range(n):
        for _ in range(int(rng.integers(digits_per_image[0], digits_per_image[1] + 1))):
            g = int(rng.integers(len(glyphs)))
            side = int(rng.integers(scale[0], min(scale[1], size) + 1))
            img = Image.fromarray(glyphs[g], "F").resize((side, side), Image.Resampling.BILINEAR)
            ink = np.clip(np.asarray(img, np.float32), 0.0, 1.0)
            top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            window = (slice(top, top + side), slice(left, left + side))
            x[k, 0][window] = np.maximum(x[k, 0][window], ink)
            region = masks[k][window]
            region[ink > 0.1] = IGNORE_INDEX
            region[ink > 0.4] = int(digits.target[g]) + 1
        x[k, 0] += rng.normal(0.0, 0.05, (size, size)).astype(np.float32)
    x = np.clip(x, 0.0, 1.0)
    classes = ["background", *(str(d) for d in range(10))]
    return SegData(torch.from_numpy(x), torch.from_numpy(masks), classes)


def write_npz(data: SegData, path: Path) -> Path:
    """`data` as a segmentation .npz (x float32, masks uint8, classes)."""
    np.savez(
        path,
        x=data.x.numpy(),
        masks=data.masks.numpy().astype(np.uint8),
        classes=np.array(data.classes),
    )
    return Path(path)


def write_zip(data: SegData, path: Path) -> Path:
    """`data` as a segmentation .zip: images/<i>.png (grey or RGB), masks/<i>.png (mode L),
    classes.txt."""
    from PIL import Image

    def png(array: np.ndarray, mode: str) -> bytes:
        out = io.BytesIO()
        Image.fromarray(array, mode).save(out, format="PNG")
        return out.getvalue()

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(len(data)):
            image = data.x[i].float().numpy()
            pixels = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
            if pixels.shape[0] >= 3:
                zf.writestr(f"images/{i:05d}.png", png(pixels[:3].transpose(1, 2, 0).copy(), "RGB"))
            else:
                zf.writestr(f"images/{i:05d}.png", png(pixels[0].copy(), "L"))
            zf.writestr(f"masks/{i:05d}.png", png(data.masks[i].numpy().astype(np.uint8), "L"))
        zf.writestr("classes.txt", "\n".join(data.classes) + "\n")
    return Path(path)
