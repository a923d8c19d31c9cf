"""Datasets for distillation: load an upload into tensors, split it, describe it, normalise it.

Three upload formats, all read without executing or extracting anything:
- `.npz` with arrays `x` (features or images) and `y` (labels); optional `classes` (names);
- `.zip` image folder, one sub-folder per class (optionally under one top folder), decoded in
  memory with PIL after checks against path traversal, symlinks and zip bombs;
- `.csv` with numeric feature columns and a label column.

Images come out as float32 NCHW in [0, 1] (uint8 / 255); tabular data as float32 [N, D].
Integer labels keep their value as the class index (class names "0".."K-1", K = max label + 1),
so a teacher's output units line up with them; other labels map to their sorted names.

Inputs: teacher and student both receive these raw tensors. The teacher was trained by its owner
on this raw format and is treated as a black box. If the student should see standardised
inputs, `Normalizer` sits *inside* the student module (`NormalizedModel`), so every artifact
exported from it still takes raw inputs.
"""

from __future__ import annotations

import io
import stat
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

Format = Literal["npz", "zip", "csv"]
GiB = 1 << 30
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La"}


class DatasetError(ValueError):
    """A dataset upload that cannot be used; the message says what is wrong and how to fix it."""


@dataclass
class TensorData:
    """A labelled dataset in memory: `x` float32 [N, ...], `y` int64 [N], class names."""

    x: Tensor
    y: Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise DatasetError(
                f"x has {self.x.shape[0]} samples but y has {self.y.shape[0]}; "
                "give one label per sample"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, idx: Tensor | np.ndarray | list[int]) -> TensorData:
        index = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return TensorData(self.x[index], self.y[index], list(self.classes))


# ----------------------------------------------------------------------------------------------
# labels and arrays


def _encode_labels(values: np.ndarray, where: str) -> tuple[np.ndarray, list[str]]:
    """Integer labels keep their value as index; anything else maps to sorted unique names."""
    if values.ndim != 1:
        raise DatasetError(
            f"{where}: labels must be one value per sample, got shape {values.shape}"
        )
    if values.size == 0:
        raise DatasetError(f"{where}: the dataset has no samples")
    integral = values.dtype.kind == "f" and np.all(np.isfinite(values))
    if integral and np.all(values == np.round(values)):
        values = values.astype(np.int64)
    if values.dtype.kind in "iu":
        if values.min() < 0:
            raise DatasetError(f"{where}: labels must be >= 0 class indices, found {values.min()}")
        return values.astype(np.int64), [str(i) for i in range(int(values.max()) + 1)]
    names = values.astype(str)
    classes = sorted(set(names.tolist()))
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[n] for n in names], dtype=np.int64), classes


def _to_float(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if x.dtype.kind not in "iufb":
        raise DatasetError(f"{where}: x must hold numbers, got dtype {x.dtype}")
    out = x.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise DatasetError(
            f"{where}: x contains NaN or infinite values; clean or impute them first"
        )
    return out


def _to_nchw(x: np.ndarray, where: str) -> np.ndarray:
    """2D stays tabular; [N,H,W] gains a channel; NHWC (last dim 1/3/4, dim 1 not) -> NCHW."""
    if x.ndim == 2:
        return x
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return x
    raise DatasetError(
        f"{where}: x has shape {x.shape}; expected [N, D] (tabular), [N, H, W], [N, C, H, W] "
        "or [N, H, W, C] (images)"
    )


def _check_zip_entries(zf: zipfile.ZipFile, where: str, max_entries: int, max_bytes: int) -> None:
    infos = zf.infolist()
    if len(infos) > max_entries:
        raise DatasetError(
            f"{where}: {len(infos)} entries, more than the limit of {max_entries}; "
            "split the upload or use an .npz file"
        )
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise DatasetError(
            f"{where}: unpacks to {total / GiB:.2f} GiB, more than the limit of "
            f"{max_bytes / GiB:.2f} GiB (a zip bomb or a too-large dataset); upload a smaller one"
        )
    for info in infos:
        name = info.filename
        path = PurePosixPath(name.replace("\\", "/"))
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            raise DatasetError(
                f"{where}: entry '{name}' has an absolute path; zip relative paths only"
            )
        if ".." in path.parts:
            raise DatasetError(
                f"{where}: entry '{name}' contains '..'; zip without parent references"
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetError(f"{where}: entry '{name}' is a symbolic link; zip plain files only")


# ----------------------------------------------------------------------------------------------
# npz


def _load_npz(path: Path, max_entries: int, max_bytes: int) -> TensorData:
    where = path.name
    try:
        with zipfile.ZipFile(path) as zf:
            _check_zip_entries(zf, where, max_entries, max_bytes)
    except zipfile.BadZipFile as exc:
        raise DatasetError(
            f"{where}: not a valid .npz file ({exc}); save it with numpy.savez"
        ) from exc
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise DatasetError(
                    f"{where}: missing array(s) {missing}; it has {npz.files}. "
                    "Save with numpy.savez(path, x=features, y=labels)"
                )
            x, y = npz["x"], npz["y"]
            names = npz["classes"].astype(str).tolist() if "classes" in npz.files else None
    except ValueError as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{where}: {exc}; store plain numeric arrays (no objects)") from exc
    labels, classes = _encode_labels(y, where)
    if names is not None:
        classes = _apply_names(classes, names, y, where)
    data = _to_nchw(_to_float(x, where), where)
    return TensorData(torch.from_numpy(data), torch.from_numpy(labels), classes)


def _apply_names(classes: list[str], names: list[str], raw: np.ndarray, where: str) -> list[str]:
    """Names for integer class indices from the optional `classes` array (text labels name
    themselves)."""
    if raw.dtype.kind in "iuf":
        if len(names) < len(classes):
            raise DatasetError(
                f"{where}: 'classes' has {len(names)} names but labels go up to {len(classes) - 1}"
            )
        return [str(n) for n in names]
    return classes


# ----------------------------------------------------------------------------------------------
# zip image folder


def _image_entries(zf: zipfile.ZipFile, where: str) -> list[tuple[str, str]]:
    """(entry name, class name) of every image, class = the folder right above the file."""
    files = [
        i.filename for i in zf.infolist()
        if not i.is_dir() and PurePosixPath(i.filename).suffix.lower() in IMAGE_SUFFIXES
        and not any(p.startswith((".", "__MACOSX")) for p in PurePosixPath(i.filename).parts)
    ]
    if not files:
        raise DatasetError(
            f"{where}: no images found; zip one folder per class, e.g. cat/1.png, dog/2.png"
        )
    parts = [PurePosixPath(f).parts for f in files]
    tops = {p[0] for p in parts}
    if len(tops) == 1 and all(len(p) == 3 for p in parts):
        parts = [p[1:] for p in parts]
    bad = [f for f, p in zip(files, parts, strict=True) if len(p) != 2]
    if bad:
        raise DatasetError(
            f"{where}: '{bad[0]}' is not inside a class folder; put every image in "
            "<class>/<file> (optionally all under one top folder)"
        )
    return [(f, p[0]) for f, p in zip(files, parts, strict=True)]


def _open_image(zf: zipfile.ZipFile, name: str, where: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(zf.read(name)))
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{where}: '{name}' is not a readable image ({exc})") from exc
    if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
        raise DatasetError(f"{where}: '{name}' is {img.size[0]}x{img.size[1]} pixels; too large")
    return img


def _header(zf: zipfile.ZipFile, name: str, where: str) -> tuple[str, tuple[int, int]]:
    """The target mode ("L" or "RGB") and the size of one image, without decoding its pixels."""
    with _open_image(zf, name, where) as img:
        return ("L" if img.mode in _GREY_MODES else "RGB"), img.size


def _check_decoded_size(n: int, mode: str, size: tuple[int, int], where: str, limit: int) -> None:
    decoded = n * (3 if mode == "RGB" else 1) * size[0] * size[1] * 4
    if decoded > limit:
        raise DatasetError(
            f"{where}: {n} images of {size[0]}x{size[1]} would take {decoded / GiB:.1f} GiB as "
            f"float32 (limit {limit / GiB:.1f} GiB); resize the images smaller or upload fewer"
        )


def _load_zip(path: Path, max_entries: int, max_bytes: int) -> TensorData:
    from PIL import Image

    where = path.name
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{where}: not a valid zip file ({exc})") from exc
    with zf:
        _check_zip_entries(zf, where, max_entries, max_bytes)
        entries = _image_entries(zf, where)
        headers = [_header(zf, name, where) for name, _ in entries]
        mode = Counter(m for m, _ in headers).most_common(1)[0][0]
        size = Counter(s for _, s in headers).most_common(1)[0][0]
        _check_decoded_size(len(entries), mode, size, where, 4 * max_bytes)
        arrays = []
        for name, _ in entries:
            img = _open_image(zf, name, where).convert(mode)
            if img.size != size:
                img = img.resize(size, Image.Resampling.BILINEAR)
            arrays.append(np.asarray(img, dtype=np.uint8))
    stacked = np.stack(arrays)
    x = stacked.transpose(0, 3, 1, 2) if mode == "RGB" else stacked[:, None]
    labels, classes = _encode_labels(np.array([c for _, c in entries]), where)
    x = np.ascontiguousarray(_to_float(x, where))
    return TensorData(torch.from_numpy(x), torch.from_numpy(labels), classes)


# ----------------------------------------------------------------------------------------------
# csv


def _load_csv(path: Path, label_column: str, max_bytes: int) -> TensorData:
    import pandas as pd

    where = path.name
    if path.stat().st_size > max_bytes:
        raise DatasetError(f"{where}: larger than the limit of {max_bytes / GiB:.2f} GiB")
    try:
        df = pd.read_csv(path, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{where}: not a readable CSV file ({exc})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    if label_column not in df.columns:
        raise DatasetError(
            f"{where}: no label column '{label_column}'; the columns are {list(df.columns)}. "
            "Set dataset.label_column to the one holding the labels"
        )
    features = [c for c in df.columns if c != label_column]
    if not features:
        raise DatasetError(f"{where}: no feature columns besides '{label_column}'")
    bad = [c for c in features if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise DatasetError(
            f"{where}: feature column(s) {bad} are not numeric; encode them as numbers or drop them"
        )
    x = np.array(df[features].to_numpy(dtype=np.float32))  # a writable copy
    nan_cols = [features[j] for j in np.flatnonzero(~np.isfinite(x).all(axis=0))]
    if nan_cols:
        raise DatasetError(f"{where}: column(s) {nan_cols} have empty or NaN values; fill them in")
    label = df[label_column]
    if label.isna().any():
        raise DatasetError(f"{where}: column '{label_column}' has empty labels; fill them in")
    numeric = pd.api.types.is_numeric_dtype(label)
    values = label.to_numpy() if numeric else label.astype(str).to_numpy()
    labels, classes = _encode_labels(values, where)
    return TensorData(torch.from_numpy(x), torch.from_numpy(labels), classes)


# ----------------------------------------------------------------------------------------------
# public API


def load_dataset(
    path: Path,
    format: Format | None = None,
    label_column: str = "label",
    *,
    max_entries: int = 100_000,
    max_uncompressed_bytes: int = 2 * GiB,
) -> TensorData:
    """Read an uploaded dataset (npz, zip image folder or csv) into float32/int64 tensors."""
    path = Path(path)
    fmt = format or path.suffix.lower().lstrip(".")
    if not path.is_file():
        raise DatasetError(f"dataset file '{path}' does not exist")
    if fmt == "npz":
        data = _load_npz(path, max_entries, max_uncompressed_bytes)
    elif fmt == "zip":
        data = _load_zip(path, max_entries, max_uncompressed_bytes)
    elif fmt == "csv":
        data = _load_csv(path, label_column, max_uncompressed_bytes)
    else:
        raise DatasetError(
            f"'{path.name}': unknown dataset format '{fmt}'; use .npz, .zip (image folders) or .csv"
        )
    if data.num_classes < 2:
        raise DatasetError(f"'{path.name}': found only {data.num_classes} class; need at least 2")
    return data


def split(data: TensorData, val_fraction: float, seed: int) -> tuple[TensorData, TensorData]:
    """Stratified, deterministic train/validation split.

    Per class, round(n_c * val_fraction) samples (at least 1 and at most n_c - 1 when n_c >= 2)
    go to validation, chosen by a permutation seeded with `seed`. Indices stay in dataset order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    labels = data.y.numpy()
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = round(len(idx) * val_fraction)
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val.append(rng.permutation(idx)[:n_val])
    val_idx = np.sort(np.concatenate(val))
    mask = np.ones(len(labels), dtype=bool)
    mask[val_idx] = False
    return data.subset(np.flatnonzero(mask)), data.subset(val_idx)


def dataset_info(data: TensorData) -> dict[str, Any]:
    """A JSON-ready summary shown in the studio."""
    counts = torch.bincount(data.y, minlength=data.num_classes).tolist()
    return {
        "num_samples": len(data),
        "num_classes": data.num_classes,
        "classes": list(data.classes),
        "class_counts": {c: int(n) for c, n in zip(data.classes, counts, strict=True)},
        "input_shape": list(data.input_shape),
        "kind": "image" if data.x.dim() >= 3 else "tabular",
    }


PREVIEW_THUMB_PX = 64  # small images are enlarged to about this size (nearest neighbour)
PREVIEW_MAX_PX = 80  # larger ones are shrunk to fit this box
PREVIEW_MAX_COLUMNS = 32


def csv_feature_names(path: Path, label_column: str = "label") -> list[str]:
    """The feature column names of a CSV upload (its header without the label column)."""
    import pandas as pd

    columns = [str(c).strip() for c in pd.read_csv(path, nrows=0, skipinitialspace=True).columns]
    return [c for c in columns if c != label_column]


def _spread(labels: Tensor, n: int) -> list[int]:
    """Up to `n` sample indices taking each class in turn (first occurrences first), so a small
    preview shows every class."""
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels[: max(n * 64, 4096)].tolist()):
        by_class.setdefault(int(label), []).append(index)
    queues = [by_class[c] for c in sorted(by_class)]
    picks: list[int] = []
    depth = 0
    while len(picks) < n and any(depth < len(q) for q in queues):
        picks.extend(q[depth] for q in queues if depth < len(q) and len(picks) < n)
        depth += 1
    return picks


def _thumbnail(image: np.ndarray) -> tuple[str, str]:
    """(mime type, base64 data) of a [C, H, W] float image in [0, 1] as a small thumbnail:
    PNG for grey or small images (enlarged pixel-exact), JPEG for larger colour ones."""
    import base64

    from PIL import Image

    pixels = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if pixels.shape[0] >= 3:
        img = Image.fromarray(np.ascontiguousarray(pixels[:3].transpose(1, 2, 0)), "RGB")
    else:
        img = Image.fromarray(np.ascontiguousarray(pixels[0]), "L")
    side = max(img.size)
    if side > PREVIEW_MAX_PX:
        img.thumbnail((PREVIEW_MAX_PX, PREVIEW_MAX_PX), Image.Resampling.LANCZOS)
    elif side < PREVIEW_THUMB_PX:
        factor = max(1, PREVIEW_THUMB_PX // side)
        img = img.resize((img.size[0] * factor, img.size[1] * factor), Image.Resampling.NEAREST)
    out = io.BytesIO()
    if img.mode == "RGB" and side > PREVIEW_THUMB_PX // 2:
        img.save(out, format="JPEG", quality=85)
        mime = "image/jpeg"
    else:
        img.save(out, format="PNG", optimize=True)
        mime = "image/png"
    return mime, base64.b64encode(out.getvalue()).decode("ascii")


def dataset_preview(
    data: TensorData, n: int = 16, feature_names: list[str] | None = None
) -> dict[str, Any]:
    """A small, JSON-ready look at the data for the studio (stored with the dataset's info, so
    the API never opens the upload itself).

    Images: `n` samples spread over the classes, each a base64 PNG or JPEG thumbnail (`mime`,
    `data`) with its label; pixel values outside [0, 1] are rescaled by the samples' min and max
    for display only.
    Tabular: the first `n` rows (at most 32 columns, values to 4 significant digits).
    """
    if data.x.dim() >= 3:
        picks = _spread(data.y, n)
        x = data.x[picks].float().reshape(len(picks), data.x.shape[1], *data.x.shape[-2:])
        images = x.numpy()
        lo, hi = float(images.min(initial=0.0)), float(images.max(initial=1.0))
        if lo < 0.0 or hi > 1.0:
            images = (images - lo) / max(hi - lo, 1e-12)
        samples = []
        for i, img in zip(picks, images, strict=True):
            mime, encoded = _thumbnail(img)
            samples.append(
                {"index": i, "label": data.classes[int(data.y[i])], "mime": mime, "data": encoded}
            )
        return {"kind": "image", "samples": samples}
    rows = data.x[:n].reshape(min(n, len(data)), -1)
    width = rows.shape[1]
    names = list(feature_names or [])[:width]
    names += [f"x{j}" for j in range(len(names), width)]
    shown = min(width, PREVIEW_MAX_COLUMNS)
    return {
        "kind": "tabular",
        "columns": names[:shown],
        "columns_total": width,
        "rows": [
            {
                "index": i,
                "label": data.classes[int(data.y[i])],
                "values": [float(f"{v:.4g}") for v in rows[i, :shown].tolist()],
            }
            for i in range(rows.shape[0])
        ],
    }


class Normalizer(nn.Module):
    """y = (x - mean) / std per channel (images [N,C,...]) or per feature (tabular [N,D]).

    Statistics come from the training split (`Normalizer.fit`); std below `eps` counts as 1 so
    constant channels pass through. Stored as buffers: saved with the model and exported.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float())

    @classmethod
    def fit(cls, x: Tensor, eps: float = 1e-6) -> Normalizer:
        dims = [0, *range(2, x.dim())]
        mean = x.float().mean(dim=dims)
        std = x.float().std(dim=dims, unbiased=False)
        std = torch.where(std < eps, torch.ones_like(std), std)
        view = (-1,) + (1,) * (x.dim() - 2)
        return cls(mean.reshape(view), std.reshape(view))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class NormalizedModel(nn.Module):
    """`model(normalizer(x))`: a student that takes raw inputs and standardises them itself."""

    def __init__(self, normalizer: Normalizer, model: nn.Module) -> None:
        super().__init__()
        self.normalizer = normalizer
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.normalizer(x))
