"""The classification task's datasets: labelled samples read from an upload, split, described.

`load_dataset` reads what a run trains on and `split` divides it (`ClassificationTask.load`,
`.split`); `describe_dataset` is what the worker's scan records (`ClassificationTask.describe`);
`digits_data` is scikit-learn's bundled 8x8 digits, the demo's data.

Five upload formats, all read without executing or extracting anything:
- `.npz` with arrays `x` (features or images) and `y` (labels); optional `classes` (names); a
  `.zip` holding `x.npy` and `y.npy` is read as one;
- `.zip` image folder, one sub-folder per class (optionally under one top folder), decoded in
  memory with PIL after checks against path traversal, symlinks and zip bombs; or a `.zip` of
  WebDataset-style `.tar` shards stored uncompressed;
- `.tar` image folder (the same layout), or WebDataset-style shards (the tar itself, or the
  `.tar` shards in it): `<key>.jpg`/`.png`/... with `<key>.cls` holding the class index or name
  (`worker.engine.tars`: an index of member offsets, hostile members refused);
- `.csv` and `.parquet` with numeric feature columns and a label column.

Bounded memory, whatever the compression (the checks are `worker.engine.datasets`'): the decoded
size is worked out from headers before anything is decoded (each .npy member's shape and dtype;
each image's width, height and mode; a CSV's columns, rows and longest line) and refused over
`max_decoded_bytes` (DS_MAX_DECODED_MB on a studio server). Images are then decoded one at a
time into one preallocated array, and conversion to float32 works a batch of rows at a time, so
the peak stays near the decoded size (images: the float32 samples plus decoding the costliest
single image). `describe_dataset` keeps images as uint8: a quarter of that.

Datasets larger than memory: an `.npz` whose `x` is stored uncompressed (`numpy.savez`, not
`savez_compressed`), in C order, stays on disk when its float32 size is LAZY_BYTES or more
(`load_dataset(lazy=None)`; True: whenever it can, False: never): `x` is then a
`worker.engine.lazy.LazyArray`, read a batch at a time with the same float32 values, and the
decoded limit counts only the labels (the zip checks all still run). A split or subset copies
nothing, and a scan's preview reads only the samples it shows. The decoded limit then counts
the labels and LAZY_BATCH samples as float32 (a batch). A zip image folder of more than
LAZY_BATCH images whose float32 size is LAZY_BYTES or more is a `LazyImages`: every header is
checked up front as below, and each image is decoded when a batch asks for it (a corrupt one
then fails the run naming it). A tar's images are the same (`LazyTarImages`), each read with
one positioned read at the offset its index holds. A CSV whose features take LAZY_BYTES or more
as float32 keeps them on disk (`LazyCsvRows`: a byte offset per row, a batch read in runs of
lines and parsed as the eager reader parses them; a file that is not one row a line, e.g. with
quoted line breaks, is read into memory), and a Parquet file a row group at a time
(`LazyParquetRows`); both read every row once up front (numeric, finite, the labels). Compressed
zip members are decoded into memory.

Images come out as float32 NCHW in [0, 1] (uint8 / 255); tabular data as float32 [N, D].
Integer labels keep their value as the class index (class names "0".."K-1", K = max label + 1),
so a teacher's output units line up with them; other labels map to their sorted names.

Inputs: teacher and student both receive these raw tensors. The teacher was trained by its owner
on this raw format and is treated as a black box.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from worker.engine.datasets import (
    IMAGE_SUFFIXES,
    Archive,
    DatasetError,
    GiB,
    Limits,
    NpyHeader,
    check_decoded,
    check_images_decoded,
    check_zip_entries,
    csv_lines,
    csv_row_starts,
    decode_image,
    decoding_bytes,
    float32_rows,
    image_header,
    npy_header,
    read_npy,
    size_text,
    target_mode,
    to_nchw,
)
from worker.engine.lazy import (
    LazyArray,
    LazyCsvRows,
    LazyImages,
    LazyParquetRows,
    LazyTarImages,
    member_data_offset,
    parquet_float32,
)
from worker.engine.tars import (
    TarIndex,
    has_shards,
    is_webdataset,
    tar_index,
    webdataset_samples,
    zip_shards,
)

Format = Literal["npz", "zip", "tar", "csv", "parquet"]
MAX_CSV_COLUMNS = 100_000
_CSV_HEADER_BYTES = 64 * MAX_CSV_COLUMNS  # the header line is read from at most this many bytes
_CSV_LINE_BYTES = 64 * 1024  # a line may take this many bytes plus 64 per column
_CSV_BYTES_PER_COLUMN = 64
_CSV_CHUNK_FIELDS = 1 << 20  # pandas parses about this many fields at a time
# data taking at least this much as float32 stays on disk (`LazyArray`, `LazyImages`)
LAZY_BYTES = 256 << 20
# a lazy dataset is held to the decoded limit for this many samples at a time (a batch), and a
# zip image folder of fewer images stays in memory
LAZY_BATCH = 256


@dataclass
class TensorData:
    """A labelled dataset in memory: `x` float32 [N, ...], `y` int64 [N], class names.

    `x` may also be uint8 (images kept compact while scanning; the values are x / 255)."""

    x: Tensor | LazyArray
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
        x = self.x.subset(index.numpy()) if isinstance(self.x, LazyArray) else self.x[index]
        return TensorData(x, self.y[index], list(self.classes))


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


# ----------------------------------------------------------------------------------------------
# decoded size: checked before anything is decoded, against the server's limit


# ----------------------------------------------------------------------------------------------
# npz: every array's header (shape, dtype) is read from its member before any data


def _npz_needs_copy(header: NpyHeader) -> bool:
    """Whether x is converted into a float32 copy (not float32 already, or channels-last)."""
    shape = header.shape
    nhwc = len(shape) == 4 and shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4)
    return header.dtype != np.float32 or nhwc


def _npz_headers(
    zf: zipfile.ZipFile, where: str, limit: int | None, lazy: bool | None = False
) -> dict[str, NpyHeader]:
    """The headers of x, y (and classes); refuses missing arrays and a decoded size over
    `limit`: the arrays as stored, plus x's float32 copy when it needs one. With `lazy`
    (x stays on disk, `_lazy_x`) x counts for nothing; None: decide it here (`_lazy_x`)."""
    members = {(n[:-4] if n.endswith(".npy") else n): n for n in zf.namelist()}
    missing = [k for k in ("x", "y") if k not in members]
    if missing:
        raise DatasetError(
            f"{where}: missing array(s) {missing}; it has {list(members)}. "
            "Save with numpy.savez(path, x=features, y=labels)"
        )
    keys = [k for k in ("x", "y", "classes") if k in members]
    headers: dict[str, NpyHeader] = {k: npy_header(zf, members[k], k, where) for k in keys}
    x = headers["x"]
    copy = math.prod(x.shape) * 4 if _npz_needs_copy(x) else 0
    decoded = sum(h.nbytes for h in headers.values()) + copy
    detail = f"x: {x.shape} {x.dtype}" + (" and its float32 copy" if copy else "")
    if lazy:
        rows = min(x.shape[0], LAZY_BATCH) if x.shape else 0
        sample = math.prod(x.shape[1:]) * 4
        decoded = sum(h.nbytes for k, h in headers.items() if k != "x") + rows * sample
        detail = f"the labels and {rows} samples as float32; x is read from disk when used"
    check_decoded(where, decoded, detail, limit, "save fewer or smaller samples")
    for key, h in headers.items():
        if h.nbytes > h.held:
            raise DatasetError(
                f"{where}: '{key}' claims shape {h.shape} {h.dtype} ({h.nbytes} bytes) but the "
                f"member holds only {h.held} bytes; save the arrays again with numpy.savez"
            )
    return headers


def _lazy_x(path: Path, zf: zipfile.ZipFile, where: str, lazy: bool | None) -> LazyArray | None:
    """x as a `LazyArray` when it is read in place: its member stored uncompressed
    (`numpy.savez`, not `savez_compressed`), in C order, numeric, [N, D] or images, and
    `lazy` is True, or None (automatic) and its float32 size is at least LAZY_BYTES."""
    if lazy is False:
        return None
    members = {(n[:-4] if n.endswith(".npy") else n): n for n in zf.namelist()}
    if "x" not in members:
        return None
    start = member_data_offset(path, zf, members["x"])
    if start is None:
        return None
    fmt = np.lib.format
    try:
        with zf.open(members["x"]) as fp:
            version = fmt.read_magic(fp)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(fp)
            offset = start + fp.tell()
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error):
        return None  # the eager reader says what is wrong
    if fortran or dtype.kind not in "iufb" or dtype.hasobject or len(shape) not in (2, 3, 4):
        return None
    if lazy is None and math.prod(shape) * 4 < LAZY_BYTES:
        return None
    nhwc = len(shape) == 4 and shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4)
    x = LazyArray(str(path), offset, tuple(shape[1:]), dtype.str, nhwc, rows=int(shape[0]))
    if path.stat().st_size < offset + len(x) * x._row_bytes:
        return None  # the eager reader refuses it
    return x


def _load_npz(path: Path, limits: Limits, compact: bool, lazy: bool | None = None) -> TensorData:
    where = path.name
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DatasetError(
            f"{where}: not a valid .npz file ({exc}); save it with numpy.savez"
        ) from exc
    with zf:
        check_zip_entries(zf, where, limits.entries, limits.unpacked)
        lazy_x = _lazy_x(path, zf, where, lazy)
        headers = _npz_headers(zf, where, limits.decoded, lazy=lazy_x is not None)
        if lazy_x is not None:
            y = read_npy(zf, headers["y"], where)
            labels, classes = _encode_labels(y, where)
            if "classes" in headers:
                names = read_npy(zf, headers["classes"], where).astype(str).tolist()
                classes = _apply_names(classes, names, y, where)
            if not lazy_x.all_finite():
                raise DatasetError(
                    f"{where}: x contains NaN or infinite values; clean or impute them first"
                )
            return TensorData(lazy_x, torch.from_numpy(labels), classes)
        y = read_npy(zf, headers["y"], where)
        names = None
        if "classes" in headers:
            names = read_npy(zf, headers["classes"], where).astype(str).tolist()
        labels, classes = _encode_labels(y, where)
        if names is not None:
            classes = _apply_names(classes, names, y, where)
        x = read_npy(zf, headers["x"], where)
    if x.dtype.kind not in "iufb":
        raise DatasetError(f"{where}: x must hold numbers, got dtype {x.dtype}")
    data = float32_rows(to_nchw(x, where), where, compact)
    del x
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
# zip image folder: sizes from the headers first, then one image at a time into one array


def _image_entries(names: list[str], where: str) -> list[tuple[str, str]]:
    """(entry name, class name) of every image, class = the folder right above the file."""
    files = [
        n
        for n in names
        if not n.endswith("/")
        and PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES
        and not any(p.startswith((".", "__MACOSX")) for p in PurePosixPath(n).parts)
    ]
    if not files:
        raise DatasetError(
            f"{where}: no images found; put one folder per class in the archive, e.g. "
            "cat/1.png, dog/2.png"
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


def _is_npy_pair(names: list[str]) -> bool:
    """A .zip holding the arrays x.npy and y.npy (an .npz by another name)."""
    return {"x.npy", "y.npy"} <= set(names) and not any(
        PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES for n in names
    )


def _load_zip(path: Path, limits: Limits, compact: bool, lazy: bool | None = None) -> TensorData:
    where = path.name
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{where}: not a valid zip file ({exc})") from exc
    with zf:
        check_zip_entries(zf, where, limits.entries, limits.unpacked)
        names = zf.namelist()
        if has_shards(names):  # WebDataset-style shards, read in place from the zip
            index = zip_shards(path, zf, where, limits)
            try:
                return _tar_images(path, index, where, limits, compact, lazy)
            finally:
                index.close()
        if _is_npy_pair(names):
            return _load_npz(path, limits, compact, lazy)
        entries = _image_entries(names, where)
        labels = np.array([c for _, c in entries])
        return _images(path, zf, None, entries, labels, where, limits, compact, lazy)


def _load_tar(path: Path, limits: Limits, compact: bool, lazy: bool | None = None) -> TensorData:
    where = path.name
    index = tar_index(path, where, limits)
    try:
        return _tar_images(path, index, where, limits, compact, lazy)
    finally:
        index.close()


def _tar_images(
    path: Path, index: TarIndex, where: str, limits: Limits, compact: bool, lazy: bool | None
) -> TensorData:
    """A tar's images: WebDataset samples (`<key>.png` + `<key>.cls`) when there are .cls
    files, else an image folder (class sub-folders), as in a .zip."""
    if is_webdataset(index):
        entries = webdataset_samples(index, where)
        texts = [label for _, label in entries]
        numeric = all(t.isdecimal() for t in texts)
        labels = np.array([int(t) for t in texts]) if numeric else np.array(texts)
    else:
        entries = _image_entries(index.names, where)
        labels = np.array([c for _, c in entries])
    return _images(path, index, index, entries, labels, where, limits, compact, lazy)


def _images(
    path: Path,
    archive: Archive,
    index: TarIndex | None,
    entries: list[tuple[str, str]],
    labels: np.ndarray,
    where: str,
    limits: Limits,
    compact: bool,
    lazy: bool | None,
) -> TensorData:
    """Images from `archive` (a zip, or a tar's `index`) as float32 NCHW (uint8 with `compact`),
    decoded into memory, or left in the archive (`LazyImages`, `LazyTarImages`) when `lazy`, or
    when None and there are many (see the module docstring)."""
    headers = [image_header(archive, name, where) for name, _ in entries]
    mode = Counter(target_mode(m) for m, _ in headers).most_common(1)[0][0]
    size = Counter(s for _, s in headers).most_common(1)[0][0]
    channels = 3 if mode == "RGB" else 1
    samples = len(entries) * channels * size[0] * size[1] * 4
    many = len(entries) > LAZY_BATCH and samples >= LAZY_BYTES
    codes, classes = _encode_labels(labels, where)
    if lazy or (lazy is None and many):  # decoded a batch at a time
        costs = [decoding_bytes(m, s, mode, size) for m, s in headers]
        k = max(range(len(costs)), key=costs.__getitem__)
        some = [k, *[i for i in range(len(entries)) if i != k][: LAZY_BATCH - 1]]
        check_images_decoded(
            [entries[i] for i in some], [headers[i] for i in some], mode, size, where,
            limits.decoded,
        )  # fmt: skip
        names = tuple(name for name, _ in entries)
        shape = (channels, size[1], size[0])
        lazy_x: LazyImages
        if index is None:
            lazy_x = LazyImages(str(path), 0, shape, "|u1", rows=len(entries), names=names,
                                mode=mode, where=where)  # fmt: skip
        else:
            rows = np.array([index.position(name) for name in names], np.int64)
            lazy_x = LazyTarImages(str(path), 0, shape, "|u1", rows=len(entries), names=names,
                                   mode=mode, where=where, offsets=index.offsets[rows],
                                   sizes=index.sizes[rows])  # fmt: skip
        return TensorData(lazy_x, torch.from_numpy(codes), classes)
    check_images_decoded(entries, headers, mode, size, where, limits.decoded)
    x = np.empty((len(entries), channels, size[1], size[0]), np.uint8 if compact else np.float32)
    for i, (name, _) in enumerate(entries):
        pixels = decode_image(archive, name, mode, size, where)
        chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        if compact:
            x[i] = chw
        else:  # the same float32 values as uint8 / 255 of the whole stack
            np.divide(chw, 255.0, out=x[i], dtype=np.float32)
    return TensorData(torch.from_numpy(x), torch.from_numpy(codes), classes)


# ----------------------------------------------------------------------------------------------
# csv: columns from a bounded header, rows and line lengths counted, then parsed in chunks


def _csv_columns(path: Path, where: str) -> list[str]:
    """The header's column names, read from at most `_CSV_HEADER_BYTES` bytes."""
    import pandas as pd

    with path.open("rb") as f:
        first = f.readline(_CSV_HEADER_BYTES + 1)
    if len(first) > _CSV_HEADER_BYTES:
        raise DatasetError(
            f"{where}: the header line is longer than {size_text(_CSV_HEADER_BYTES)}; a table may "
            f"have at most {MAX_CSV_COLUMNS} columns (use an .npz file for wider data)"
        )
    # counted as pandas splits it, before pandas parses it: that takes seconds over 100,000s of names
    text = first.decode("utf-8", errors="replace")
    counted = len(next(csv.reader([text], skipinitialspace=True), []))
    if counted > MAX_CSV_COLUMNS:
        raise DatasetError(
            f"{where}: {counted} columns, more than the limit of {MAX_CSV_COLUMNS}; "
            "keep fewer features or use an .npz file"
        )
    try:
        columns = pd.read_csv(io.BytesIO(first), nrows=0, skipinitialspace=True).columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{where}: not a readable CSV file ({exc})") from exc
    return [str(c).strip() for c in columns]


def _csv_rows_bound(
    path: Path, columns: list[str], where: str, limit: int | None, lazy: bool | None
) -> tuple[int, bool]:
    """An upper bound of the data rows, and whether the features stay on disk (`lazy`, or None
    and their float32 size is LAZY_BYTES or more); refuses over-long lines and a decoded size
    (float32 features, or a batch of them and the row index, and int64 labels) over `limit`,
    before pandas parses anything."""
    lines, longest, longest_at = csv_lines(path)
    allowed = _CSV_LINE_BYTES + _CSV_BYTES_PER_COLUMN * len(columns)
    if longest > allowed:
        raise DatasetError(
            f"{where}: line {longest_at} is {longest} bytes long, more than the {allowed} bytes a "
            f"row of {len(columns)} columns may take; check the delimiters and line ends"
        )
    rows, features = max(lines - 1, 0), max(len(columns) - 1, 1)
    on_disk = bool(lazy) or (lazy is None and rows * features * 4 >= LAZY_BYTES)
    decoded = rows * (features * 4 + 8)
    detail = f"{rows} rows x {features} feature columns as float32, and their labels"
    if on_disk:
        decoded = rows * 16 + min(rows, LAZY_BATCH) * features * 4
        detail = f"the labels and row index of {rows} rows; the features are read from disk"
    check_decoded(where, decoded, detail, limit, "keep fewer rows or columns")
    return rows, on_disk


def _load_csv(
    path: Path, label_column: str, limits: Limits, lazy: bool | None = None
) -> TensorData:
    import pandas as pd

    where = path.name
    if path.stat().st_size > limits.unpacked:
        raise DatasetError(f"{where}: larger than the limit of {limits.unpacked / GiB:.2f} GiB")
    columns = _csv_columns(path, where)
    rows, on_disk = _csv_rows_bound(path, columns, where, limits.decoded, lazy)
    if label_column not in columns:
        raise DatasetError(
            f"{where}: no label column '{label_column}'; the columns are {columns}. "
            "Set dataset.label_column to the one holding the labels"
        )
    features = [c for c in columns if c != label_column]
    if not features:
        raise DatasetError(f"{where}: no feature columns besides '{label_column}'")
    x = None if on_disk else np.empty((rows, len(features)), np.float32)
    nonfinite = np.zeros(len(features), dtype=bool)
    labels: list[pd.Series] = []
    done = 0
    chunk_rows = max(1, _CSV_CHUNK_FIELDS // len(columns))
    try:
        for chunk in pd.read_csv(path, skipinitialspace=True, chunksize=chunk_rows):
            chunk.columns = columns
            bad = [c for c in features if not pd.api.types.is_numeric_dtype(chunk[c])]
            if bad:
                raise DatasetError(
                    f"{where}: feature column(s) {bad} are not numeric; encode "
                    "them as numbers or drop them"
                )
            if done + len(chunk) > rows:
                raise DatasetError(f"{where}: more rows than lines; check the line ends")
            values = chunk[features].to_numpy(dtype=np.float32)
            nonfinite |= ~np.isfinite(values).all(axis=0)
            if x is not None:
                x[done : done + len(chunk)] = values
            labels.append(chunk[label_column])
            done += len(chunk)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{where}: not a readable CSV file ({exc})") from exc
    nan_cols = [features[j] for j in np.flatnonzero(nonfinite)]
    if nan_cols:
        raise DatasetError(f"{where}: column(s) {nan_cols} have empty or NaN values; fill them in")
    label = pd.concat(labels, ignore_index=True) if labels else pd.Series([], dtype=np.float64)
    if label.isna().any():
        raise DatasetError(f"{where}: column '{label_column}' has empty labels; fill them in")
    numeric = pd.api.types.is_numeric_dtype(label)
    values = label.to_numpy() if numeric else label.astype(str).to_numpy()
    codes, classes = _encode_labels(values, where)
    if x is not None:
        return TensorData(torch.from_numpy(x[:done]), torch.from_numpy(codes), classes)
    starts = csv_row_starts(path)
    if len(starts) - 1 != done:  # quoted line breaks, or lines pandas skips: not one row a line
        return _load_csv(path, label_column, limits, lazy=False)
    positions = tuple(columns.index(c) for c in features)
    lazy_x = LazyCsvRows(str(path), 0, (len(features),), "<f4", rows=done, starts=starts,
                         features=positions)  # fmt: skip
    return TensorData(lazy_x, torch.from_numpy(codes), classes)


# ----------------------------------------------------------------------------------------------
# parquet: the schema and row counts from the footer, then a row group at a time


def _parquet_columns(path: Path, label_column: str, where: str) -> tuple[Any, list[str]]:
    """The open file and its feature columns (all numeric) besides `label_column`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{where}: not a readable Parquet file ({exc})") from exc
    schema = pf.schema_arrow
    columns = [str(c) for c in schema.names]
    if len(columns) > MAX_CSV_COLUMNS:
        pf.close()
        raise DatasetError(
            f"{where}: {len(columns)} columns, more than the limit of {MAX_CSV_COLUMNS}; "
            "keep fewer features or use an .npz file"
        )
    if label_column not in columns:
        pf.close()
        raise DatasetError(
            f"{where}: no label column '{label_column}'; the columns are {columns}. "
            "Set dataset.label_column to the one holding the labels"
        )
    features = [c for c in columns if c != label_column]
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
    bad = [c for c in features if not any(t(schema.field(c).type) for t in numeric)]
    if not features or bad:
        pf.close()
        raise DatasetError(
            f"{where}: feature column(s) {bad} are not numeric; encode them as numbers or drop them"
            if bad
            else f"{where}: no feature columns besides '{label_column}'"
        )
    return pf, features


def _load_parquet(
    path: Path, label_column: str, limits: Limits, lazy: bool | None = None
) -> TensorData:
    where = path.name
    pf, features = _parquet_columns(path, label_column, where)
    with pf:
        meta = pf.metadata
        rows, groups = int(meta.num_rows), int(meta.num_row_groups)
        starts = np.cumsum([0, *(meta.row_group(g).num_rows for g in range(groups))])
        widest = max((meta.row_group(g).num_rows for g in range(groups)), default=0)
        on_disk = bool(lazy) or (lazy is None and rows * len(features) * 4 >= LAZY_BYTES)
        # a row group is read as stored (up to 8 bytes a value) and converted to float32
        group = widest * len(features) * 12
        decoded = rows * (len(features) * 4 + 8) + group
        detail = f"{rows} rows x {len(features)} feature columns as float32, and their labels"
        if on_disk:
            decoded = rows * 8 + group + min(rows, LAZY_BATCH) * len(features) * 4
            detail = f"the labels of {rows} rows and a row group of {widest} rows at a time"
        check_decoded(where, decoded, detail, limits.decoded, "keep fewer rows or columns")
        column = pf.read(columns=[label_column]).column(0)
        if column.null_count:
            raise DatasetError(f"{where}: column '{label_column}' has empty labels; fill them in")
        raw = column.to_numpy(zero_copy_only=False)
        codes, classes = _encode_labels(raw if raw.dtype.kind in "iufb" else raw.astype(str), where)
        x = None if on_disk else np.empty((rows, len(features)), np.float32)
        nonfinite = np.zeros(len(features), dtype=bool)
        for g in range(groups):
            values = parquet_float32(pf.read_row_group(g, columns=features))
            nonfinite |= ~np.isfinite(values).all(axis=0)
            if x is not None:
                x[starts[g] : starts[g + 1]] = values
    nan_cols = [features[j] for j in np.flatnonzero(nonfinite)]
    if nan_cols:
        raise DatasetError(f"{where}: column(s) {nan_cols} have empty or NaN values; fill them in")
    if x is not None:
        return TensorData(torch.from_numpy(x), torch.from_numpy(codes), classes)
    lazy_x = LazyParquetRows(str(path), 0, (len(features),), "<f4", rows=rows,
                             group_starts=starts.astype(np.int64),
                             features=tuple(features))  # fmt: skip
    return TensorData(lazy_x, torch.from_numpy(codes), classes)


def parquet_feature_names(path: Path, label_column: str = "label") -> list[str]:
    """The feature column names of a Parquet upload (its columns without the label column)."""
    import pyarrow.parquet as pq

    return [str(c) for c in pq.read_schema(path).names if c != label_column]


# ----------------------------------------------------------------------------------------------
# public API


def _read(
    path: Path,
    format: Format | str | None,
    label_column: str,
    limits: Limits,
    compact: bool,
    lazy: bool | None = None,
) -> TensorData:
    path = Path(path)
    fmt = format or path.suffix.lower().lstrip(".")
    if not path.is_file():
        raise DatasetError(f"dataset file '{path}' does not exist")
    if fmt == "npz":
        data = _load_npz(path, limits, compact, lazy)
    elif fmt == "zip":
        data = _load_zip(path, limits, compact, lazy)
    elif fmt == "tar":
        data = _load_tar(path, limits, compact, lazy)
    elif fmt == "csv":
        data = _load_csv(path, label_column, limits, lazy)
    elif fmt == "parquet":
        data = _load_parquet(path, label_column, limits, lazy)
    else:
        raise DatasetError(
            f"'{path.name}': unknown dataset format '{fmt}'; use .npz, .zip or .tar (image "
            "folders, WebDataset shards), .csv or .parquet"
        )
    if data.num_classes < 2:
        raise DatasetError(f"'{path.name}': found only {data.num_classes} class; need at least 2")
    return data


def load_dataset(
    path: Path,
    format: Format | str | None = None,
    label_column: str = "label",
    *,
    max_entries: int = 100_000,
    max_uncompressed_bytes: int = 2 * GiB,
    max_decoded_bytes: int | None = None,
    lazy: bool | None = None,
) -> TensorData:
    """Read an uploaded dataset (npz, zip image folder or csv) into float32/int64 tensors.

    `max_decoded_bytes` (a studio server passes DS_MAX_DECODED_MB) bounds what the data takes
    once decoded, read from the headers before anything is decoded; None: no bound. Images are
    decoded one at a time into one preallocated float32 array, so the peak stays near that size.

    `lazy`: an .npz whose x is stored uncompressed (`numpy.savez`) can stay on disk, x a
    `LazyArray` read a batch at a time (the same float32 values), so its size is bounded by the
    disk, not memory; None (the default) does so when x takes LAZY_BYTES or more as float32,
    True whenever it can, False never.
    """
    limits = Limits(max_entries, max_uncompressed_bytes, max_decoded_bytes)
    return _read(path, format, label_column, limits, compact=False, lazy=lazy)


def describe_dataset(
    path: Path,
    format: Format | str | None = None,
    label_column: str = "label",
    *,
    max_entries: int = 100_000,
    max_uncompressed_bytes: int = 2 * GiB,
    max_decoded_bytes: int | None = None,
) -> dict[str, Any]:
    """What the scan of an upload records: `dataset_info` plus its `preview`, equal to those of
    `load_dataset`'s data, under the same checks and limits. Images stay uint8 (a quarter of
    float32), so scanning needs less memory than the limit training is held to."""
    limits = Limits(max_entries, max_uncompressed_bytes, max_decoded_bytes)
    data = _read(path, format, label_column, limits, compact=True)
    fmt = format or Path(path).suffix.lower().lstrip(".")
    names = None
    if fmt == "csv":
        names = csv_feature_names(Path(path), label_column)
    elif fmt == "parquet":
        names = parquet_feature_names(Path(path), label_column)
    return {**dataset_info(data), "preview": dataset_preview(data, feature_names=names)}


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


def default_split(data: TensorData) -> tuple[TensorData, TensorData]:
    """The split a run makes with the default seed and val_fraction (what the demo teacher
    trains on, so a default run evaluates on samples it never saw)."""
    from core.config import DatasetRef, RunConfig

    seed = RunConfig.model_fields["seed"].default
    val_fraction = DatasetRef.model_fields["val_fraction"].default
    return split(data, val_fraction, seed)


def digits_data() -> TensorData:
    """scikit-learn's bundled 8x8 digits: x [1797, 1, 8, 8] float32 in [0, 1], 10 classes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    return TensorData(x, torch.tensor(digits.target, dtype=torch.long), [str(i) for i in range(10)])


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
    return [c for c in _csv_columns(path, path.name) if c != label_column]


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


def _preview_image(data: TensorData, i: int) -> np.ndarray:
    """Sample `i` as a float32 [C, H, W] array (uint8 images / 255, as `load_dataset` gives)."""
    x = data.x[i].float().reshape(data.x.shape[1], *data.x.shape[-2:])
    if data.x.dtype == torch.uint8:
        x = x / 255.0
    return x.numpy()


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
        lo, hi = 0.0, 1.0  # one image at a time: a preview of big images stays small
        for i in picks:
            image = _preview_image(data, i)
            lo, hi = min(lo, float(image.min())), max(hi, float(image.max()))
        samples = []
        for i in picks:
            image = _preview_image(data, i)
            if lo < 0.0 or hi > 1.0:
                image = (image - lo) / max(hi - lo, 1e-12)
            mime, encoded = _thumbnail(image)
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
