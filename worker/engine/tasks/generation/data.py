"""The generation (image-to-image) task's datasets: input images, with or without target images
of the same spatial size; read, split, described.

Formats (`load_dataset`, `describe_dataset`):

- `.npz`: `x` [N, C, H, W] (or [N, H, W], [N, H, W, C]) float or uint8 inputs (uint8 / 255),
  optional `y` the targets, images of the same N, H and W (any channel count);
- `.zip`: `inputs/<stem>.png` and, optionally, `targets/<stem>.png` with the same stems (any
  image format), optionally under one top folder. Without a targets/ folder the data holds
  inputs only: the student then learns from the teacher's outputs alone and is measured
  against them.

Checked, each refusal naming the file (or sample) and the reason: what `datasets` checks for
every upload (path traversal, symbolic links, zip bombs, image and decoded sizes read from the
headers before anything is decoded, unreadable images), an input whose size differs from the
first input's, a target whose size differs from its input's, an input without its target (when
there are targets) and a target without its input.

`synthetic_digits` composes a denoising dataset from scikit-learn's bundled 8x8 digits on
larger canvases (input: the canvas with noise and blotches, target: the clean canvas), for the
demo and the tests.
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
    read_npy,
    size_text,
    split_indices,
    target_mode,
    to_nchw,
)


@dataclass
class GenData:
    """Inputs `x` float32 [N, C, H, W] (uint8 while scanning), targets `y` [N, C', H, W] or
    None (inputs only), `out_channels`: the channels a model's output has (the targets',
    else the inputs' until `fit_to_teacher` reads the teacher's), and `teacher`: the teacher's
    outputs [N, C', H, W] once `fit_to_teacher` recorded them (the validation reference)."""

    x: Tensor
    y: Tensor | None
    out_channels: int
    teacher: Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def has_targets(self) -> bool:
        return self.y is not None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, idx: Tensor | np.ndarray | list[int]) -> GenData:
        index = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        y = self.y[index] if self.y is not None else None
        t = self.teacher[index] if self.teacher is not None else None
        return GenData(self.x[index], y, self.out_channels, t)


def _make(x: np.ndarray, y: np.ndarray | None, where: str, compact: bool) -> GenData:
    xs = torch.from_numpy(float32_rows(x, where, compact))
    ys = torch.from_numpy(float32_rows(y, where, compact)) if y is not None else None
    return GenData(xs, ys, int(y.shape[1] if y is not None else x.shape[1]))


# ----------------------------------------------------------------------------------------------
# .npz


def _load_npz(path: Path, limits: Limits, compact: bool) -> GenData:
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
        if "x" not in members:
            raise DatasetError(
                f"{where}: missing array 'x'; an image-to-image .npz holds x [N, C, H, W] "
                "(inputs) and optionally y [N, C', H, W] (targets of the same size)"
            )
        headers = {k: npy_header(zf, members[k], k, where) for k in ("x", "y") if k in members}
        for key, h in headers.items():
            if h.nbytes > h.held:
                raise DatasetError(
                    f"{where}: '{key}' claims {size_text(h.nbytes)} but holds "
                    f"{size_text(h.held)}; the file is truncated or forged"
                )
        elements = sum(int(np.prod(h.shape, dtype=np.int64)) for h in headers.values())
        decoded = elements * (1 if compact else 4) + sum(h.nbytes for h in headers.values())
        check_decoded(
            where,
            decoded,
            f"{headers['x'].shape[0] if headers['x'].shape else 0} input and target images",
            limits.decoded,
            "upload fewer or smaller images",
        )
        arrays = {k: read_npy(zf, h, where) for k, h in headers.items()}
    for key, a in arrays.items():
        if a.dtype.kind not in "iufb":
            raise DatasetError(f"{where}: {key} must hold numbers, got dtype {a.dtype}")
        if a.ndim not in (3, 4):
            raise DatasetError(
                f"{where}: {key} must be images [N, C, H, W], got shape {list(a.shape)}"
            )
    x = to_nchw(arrays["x"], where)
    y = to_nchw(arrays["y"], where) if "y" in arrays else None
    if y is not None:
        if y.shape[0] != x.shape[0]:
            raise DatasetError(
                f"{where}: x has {x.shape[0]} images but y has {y.shape[0]}; give one target "
                "per input"
            )
        if tuple(y.shape[2:]) != tuple(x.shape[2:]):
            raise DatasetError(
                f"{where}: the targets are {y.shape[2]}x{y.shape[3]} (HxW) but the inputs are "
                f"{x.shape[2]}x{x.shape[3]}; each target must have its input's size"
            )
    return _make(x, y, where, compact)


# ----------------------------------------------------------------------------------------------
# .zip of inputs/ and targets/


def _visible(name: str) -> bool:
    return not any(p.startswith((".", "__MACOSX")) for p in PurePosixPath(name).parts)


def _zip_pairs(zf: zipfile.ZipFile, where: str) -> list[tuple[str, str | None]]:
    """(input entry, target entry or None) per stem, sorted by stem."""
    files = [i.filename for i in zf.infolist() if not i.is_dir() and _visible(i.filename)]
    parts = [PurePosixPath(f).parts for f in files]
    tops = {p[0] for p in parts if len(p) > 1}
    strip = (
        len(tops) == 1 and all(len(p) > 1 for p in parts) and tops.isdisjoint({"inputs", "targets"})
    )
    folders: dict[str, dict[str, str]] = {"inputs": {}, "targets": {}}
    for f, p in zip(files, parts, strict=True):
        r = PurePosixPath(*p[1:]) if strip else PurePosixPath(*p)
        folder = folders.get(r.parts[0]) if len(r.parts) == 2 else None
        if folder is not None and r.suffix.lower() in IMAGE_SUFFIXES:
            if r.stem in folder:
                raise DatasetError(f"{where}: two files with the stem '{r.stem}' in {r.parts[0]}/")
            folder[r.stem] = f
    inputs, targets = folders["inputs"], folders["targets"]
    if not inputs:
        raise DatasetError(
            f"{where}: no images found; zip inputs/<name>.png, optionally with "
            "targets/<name>.png (same names, same sizes)"
        )
    no_input = sorted(set(targets) - set(inputs))
    if no_input:
        raise DatasetError(
            f"{where}: the target '{targets[no_input[0]]}' has no input; add "
            f"inputs/{no_input[0]}.png or remove the target"
        )
    no_target = sorted(set(inputs) - set(targets))
    if targets and no_target:
        raise DatasetError(
            f"{where}: the input '{inputs[no_target[0]]}' has no target ({len(no_target)} "
            f"input(s) without one); add targets/{no_target[0]}.png, or leave out targets/ "
            "entirely to distil from the teacher's outputs alone"
        )
    return [(inputs[s], targets.get(s)) for s in sorted(inputs)]


def _decode_all(
    zf: zipfile.ZipFile,
    names: list[str],
    heads: list[tuple[str, tuple[int, int]]],
    size: tuple[int, int],
    where: str,
) -> np.ndarray:
    mode = "RGB" if any(target_mode(m) == "RGB" for m, _ in heads) else "L"
    out = np.empty((len(names), 3 if mode == "RGB" else 1, size[1], size[0]), np.uint8)
    for k, name in enumerate(names):
        pixels = decode_image(zf, name, mode, size, where)
        out[k] = pixels.transpose(2, 0, 1) if pixels.ndim == 3 else pixels[None]
    return out


def _load_zip(path: Path, limits: Limits, compact: bool) -> GenData:
    where = path.name
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{where}: not a valid .zip file ({exc})") from exc
    with zf:
        check_zip_entries(zf, where, limits.entries, limits.unpacked)
        pairs = _zip_pairs(zf, where)
        x_heads = [image_header(zf, i, where) for i, _ in pairs]
        y_heads = [image_header(zf, t, where) for _, t in pairs if t is not None]
        size = x_heads[0][1]
        for (image, _), (_, isize) in zip(pairs, x_heads, strict=True):
            if isize != size:
                raise DatasetError(
                    f"{where}: '{image}' is {isize[0]}x{isize[1]} but '{pairs[0][0]}' is "
                    f"{size[0]}x{size[1]}; give every input the same size"
                )
        for (image, target), (_, tsize), (_, isize) in zip(pairs, y_heads, x_heads, strict=False):
            if tsize != isize:
                raise DatasetError(
                    f"{where}: the target '{target}' is {tsize[0]}x{tsize[1]} but its input "
                    f"'{image}' is {isize[0]}x{isize[1]}; each target must have its input's size"
                )
        heads = x_heads + y_heads
        channels = 3 if any(target_mode(m) == "RGB" for m, _ in heads) else 1
        samples = len(heads) * channels * size[0] * size[1] * (1 if compact else 4)
        worst = max(decoding_bytes(m, s, "RGB" if channels == 3 else "L", size) for m, s in heads)
        check_decoded(
            where,
            samples + worst,
            f"{len(pairs)} inputs{' and targets' if y_heads else ''} of {size[0]}x{size[1]}",
            limits.decoded,
            "resize the images smaller or upload fewer",
        )
        x = _decode_all(zf, [i for i, _ in pairs], x_heads, size, where)
        y = _decode_all(zf, [t for _, t in pairs if t], y_heads, size, where) if y_heads else None
    return _make(x, y, where, compact)


# ----------------------------------------------------------------------------------------------
# public API


def _read(path: Path, format: str | None, limits: Limits, compact: bool) -> GenData:
    path = Path(path)
    fmt = format or path.suffix.lower().lstrip(".")
    if not path.is_file():
        raise DatasetError(f"dataset file '{path}' does not exist")
    if fmt == "npz":
        return _load_npz(path, limits, compact)
    if fmt == "zip":
        return _load_zip(path, limits, compact)
    raise DatasetError(
        f"'{path.name}': image-to-image reads .npz (x, optional y) or .zip (inputs/, optional "
        f"targets/), not '{fmt}'"
    )


def load_dataset(
    path: Path,
    format: str | None = None,
    *,
    max_entries: int = 100_000,
    max_uncompressed_bytes: int = 2 * GiB,
    max_decoded_bytes: int | None = None,
) -> GenData:
    """Read an image-to-image upload (see the module docstring) into float32 tensors."""
    limits = Limits(max_entries, max_uncompressed_bytes, max_decoded_bytes)
    return _read(path, format, limits, compact=False)


def is_generation(path: Path, format: str | None) -> bool:
    """Whether an upload is laid out as image-to-image data, read from member names and .npy
    headers only: a .zip with an inputs/ folder; an .npz with image inputs `x` and either no
    `y` or a `y` of images (a classifier's `y` holds one label per sample), and no `masks`."""
    fmt = format or Path(path).suffix.lower().lstrip(".")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if fmt == "zip":
                return any("inputs" in PurePosixPath(n).parts[:-1] for n in names)
            if fmt != "npz":
                return False
            members = {PurePosixPath(n).stem: n for n in names if n.endswith(".npy")}
            if "x" not in members or "masks" in members:
                return False
            if npy_header(zf, members["x"], "x", path.name).shape.__len__() not in (3, 4):
                return False
            return "y" not in members or len(
                npy_header(zf, members["y"], "y", path.name).shape
            ) in (3, 4)
    except (OSError, zipfile.BadZipFile, DatasetError):
        return False


def split(data: GenData, val_fraction: float, seed: int) -> tuple[GenData, GenData]:
    """Deterministic split: round(N * val_fraction) images (at least 1, at most N - 1) chosen by
    a permutation seeded with `seed` go to validation; indices stay in dataset order."""
    train_idx, val_idx = split_indices(len(data), val_fraction, seed)
    return data.subset(train_idx), data.subset(val_idx)


# ----------------------------------------------------------------------------------------------
# drawing


def to_rgb(image: Tensor | np.ndarray) -> np.ndarray:
    """An RGB uint8 [H, W, 3] of an image [C, H, W] in [0, 1] (uint8 read as / 255): one
    channel as grey, three as colour, others as the mean of the first three."""
    raw = image.numpy() if isinstance(image, Tensor) else np.asarray(image)
    a = raw.astype(np.float32) / (255.0 if raw.dtype == np.uint8 else 1.0)
    grey = a[0] if a.shape[0] != 3 else None
    rgb = np.repeat(grey[..., None], 3, -1) if grey is not None else a.transpose(1, 2, 0)
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def png(rgb: np.ndarray, scale: int) -> str:
    """A base64 PNG of `rgb`, enlarged `scale` times (nearest neighbour)."""
    from PIL import Image

    img = Image.fromarray(rgb, "RGB")
    img = img.resize((img.size[0] * scale, img.size[1] * scale), Image.Resampling.NEAREST)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return base64.b64encode(out.getvalue()).decode("ascii")


def scale_for(data: GenData, side: int) -> int:
    return max(1, side // max(int(max(data.input_shape[1:])), 1))


def dataset_preview(data: GenData, n: int = 8) -> dict[str, Any]:
    """The first `n` inputs beside their targets (when the data has them), as PNG thumbnails."""
    samples = []
    scale = scale_for(data, 64)
    for i in range(min(n, len(data))):
        panels = [to_rgb(data.x[i])]
        if data.y is not None:
            gap = np.full((panels[0].shape[0], 2, 3), 128, np.uint8)
            panels += [gap, to_rgb(data.y[i])]
        label = "input | target" if data.y is not None else "input (no target)"
        rgb = np.concatenate(panels, axis=1)
        samples.append({"index": i, "label": label, "mime": "image/png", "data": png(rgb, scale)})
    return {"kind": "image", "samples": samples}


def describe_dataset(
    path: Path,
    format: str | None = None,
    *,
    max_entries: int = 100_000,
    max_uncompressed_bytes: int = 2 * GiB,
    max_decoded_bytes: int | None = None,
) -> dict[str, Any]:
    """What the scan of an upload records: size, input and target shapes, whether it has
    targets, and a preview of input/target pairs."""
    limits = Limits(max_entries, max_uncompressed_bytes, max_decoded_bytes)
    data = _read(path, format, limits, compact=True)
    return {
        "task": "generation",
        "num_samples": len(data),
        "input_shape": list(data.input_shape),
        "target_shape": list(data.y.shape[1:]) if data.y is not None else None,
        "has_targets": data.has_targets,
        "kind": "image",
        "preview": dataset_preview(data),
    }


# ----------------------------------------------------------------------------------------------
# synthetic data from scikit-learn's digits


def synthetic_digits(
    n: int = 400, size: int = 16, seed: int = 0, noise: float = 0.25, targets: bool = True
) -> GenData:
    """A denoising set: `n` canvases of size x size, each with one of sklearn's 8x8 digits
    resized to a random side in [size/2, size] at a random place (target, clean), and the same
    canvas with Gaussian noise of std `noise` and two random dark blotches (input), clipped to
    [0, 1]. Deterministic in `seed`; `targets=False` keeps the inputs only."""
    from PIL import Image
    from sklearn.datasets import load_digits

    glyphs = load_digits().images.astype(np.float32) / 16.0
    rng = np.random.default_rng(seed)
    clean = np.zeros((n, 1, size, size), np.float32)
    for k in range(n):
        side = int(rng.integers(size // 2, size + 1))
        g = glyphs[int(rng.integers(len(glyphs)))]
        img = Image.fromarray(g, "F").resize((side, side), Image.Resampling.BILINEAR)
        top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        clean[k, 0, top : top + side, left : left + side] = np.clip(np.asarray(img), 0.0, 1.0)
    noisy = clean + rng.normal(0.0, noise, clean.shape).astype(np.float32)
    for k in range(n):
        for _ in range(2):
            r, c = (int(v) for v in rng.integers(0, size - 2, size=2))
            noisy[k, 0, r : r + 3, c : c + 3] *= 0.2
    x = torch.from_numpy(np.clip(noisy, 0.0, 1.0))
    return GenData(x, torch.from_numpy(clean) if targets else None, 1)


def write_npz(data: GenData, path: Path) -> Path:
    """`data` as an image-to-image .npz (x float32, y float32 when it has targets)."""
    arrays = {"x": data.x.numpy()}
    if data.y is not None:
        arrays["y"] = data.y.numpy()
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return Path(path)


def write_zip(data: GenData, path: Path) -> Path:
    """`data` as an image-to-image .zip: inputs/<i>.png and targets/<i>.png (grey or RGB)."""
    from PIL import Image

    def encode(image: Tensor) -> bytes:
        rgb = to_rgb(image)
        out = io.BytesIO()
        pil = Image.fromarray(rgb[..., 0].copy(), "L") if image.shape[0] == 1 else None
        (pil or Image.fromarray(rgb, "RGB")).save(out, format="PNG")
        return out.getvalue()

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(len(data)):
            zf.writestr(f"inputs/{i:05d}.png", encode(data.x[i]))
            if data.y is not None:
                zf.writestr(f"targets/{i:05d}.png", encode(data.y[i]))
    return Path(path)
