"""Arrays read from disk a batch at a time: datasets larger than memory.

`LazyArray` stands in for a dataset's float32 input tensor `x` when the samples stay on disk (an
.npz whose `x` is stored uncompressed, as `numpy.savez` writes it): indexing it (an int, a
slice, or an index tensor / array / list, as `task.batch` and validation do) reads just those
rows with positioned reads (`os.pread`, no memory map, so nothing but the batch counts in the
process's memory) and converts them exactly as the eager reader does (uint8 / 255 to float32,
other numbers cast; channels-last turned to NCHW). `subset` composes an index map (a split
copies nothing), and `x - t` / `x / t` (what normalising with a broadcastable tensor does) are
recorded and applied to each batch read. It pickles as its path, offset and index (the file is
reopened in each process), so a DataLoader's worker processes can read from it.

Memory: the row index (8 bytes a sample) and one batch; independent of the dataset's size.

The same interface over other stored forms, each overriding how rows are read (`_float_rows`):
`LazyImages` (a zip image folder, each image decoded when asked), `LazyTarImages` (images of a
tar, or of WebDataset shards, at the offsets of `worker.engine.tars.TarIndex`), `LazyCsvRows`
(a CSV's lines at a byte offset per row) and `LazyParquetRows` (a Parquet file's row groups).
"""

from __future__ import annotations

import io
import math
import os
import struct
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # a zip member's local file header (30 bytes)
_SCAN_BYTES = 16 << 20  # the finite-values scan reads this much at a time


@dataclass
class LazyArray:
    """Rows [N, *stored] of `dtype` at `offset` in `path` (C order), read when indexed."""

    path: str
    offset: int
    stored: tuple[int, ...]  # the shape of one row as stored (NHWC images: H, W, C)
    stored_dtype: str
    nhwc: bool = False  # rows are channels-last: transposed to CHW when read
    index: np.ndarray | None = None  # the stored rows this array's rows are; None: all
    rows: int = 0  # stored rows in the file
    ops: list[tuple[str, Tensor]] = field(default_factory=list)

    # -- what the trainer and the task read of a tensor

    @property
    def shape(self) -> torch.Size:
        sample = self.stored
        if self.nhwc:
            sample = (sample[2], sample[0], sample[1])
        elif len(sample) == 2:  # [N, H, W] images gain a channel, as the eager reader does
            sample = (1, *sample)
        return torch.Size((len(self), *sample))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def dim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.rows if self.index is None else len(self.index)

    def __getitem__(self, key: Any) -> Tensor:
        if isinstance(key, int | np.integer):
            return self._read(np.array([int(key) % max(len(self), 1)]))[0]
        if isinstance(key, slice):
            return self._read(np.arange(len(self))[key])
        idx = np.asarray(key.cpu() if isinstance(key, Tensor) else key, dtype=np.int64)
        return self._read(idx.reshape(-1))

    def subset(self, idx: Tensor | np.ndarray | list[int]) -> LazyArray:
        rows = np.asarray(idx, dtype=np.int64).reshape(-1)
        return replace(self, index=rows if self.index is None else self.index[rows])

    def __sub__(self, other: Tensor) -> LazyArray:
        return replace(self, ops=[*self.ops, ("sub", other.detach().cpu())])

    def __truediv__(self, other: Tensor) -> LazyArray:
        return replace(self, ops=[*self.ops, ("div", other.detach().cpu())])

    def numpy(self) -> np.ndarray:
        """Every row, read into memory (small data only)."""
        return self[:].numpy()

    # -- reading

    @property
    def _row_bytes(self) -> int:
        return math.prod(self.stored) * np.dtype(self.stored_dtype).itemsize

    def _raw(self, stored_rows: np.ndarray) -> np.ndarray:
        """The stored rows (any order, repeats allowed), read in runs of consecutive rows."""
        dtype, size = np.dtype(self.stored_dtype), self._row_bytes
        out = np.empty((len(stored_rows), *self.stored), dtype)
        if len(stored_rows) == 0:
            return out
        order = np.argsort(stored_rows, kind="stable")
        wanted = stored_rows[order]
        unique, first = np.unique(wanted, return_inverse=True)
        buf = np.empty((len(unique), *self.stored), dtype)
        flat = buf.reshape(len(unique), -1).view(np.uint8)
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for run in np.split(np.arange(len(unique)), breaks):
                start, n = int(unique[run[0]]), len(run)
                view = flat[run[0] : run[0] + n].reshape(-1).data
                got = os.preadv(fd, [view], self.offset + start * size)
                if got != n * size:
                    raise OSError(f"{self.path}: the file ends early (read {got} bytes)")
        finally:
            os.close(fd)
        out[order] = buf[first]
        return out

    def _read(self, idx: np.ndarray) -> Tensor:
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} samples")
        idx = np.where(idx < 0, idx + len(self), idx)
        out = torch.from_numpy(self._float_rows(idx if self.index is None else self.index[idx]))
        view = (1, -1) + (1,) * (out.dim() - 2)
        for op, t in self.ops:
            t = t.to(out.dtype)
            out = out - t.view(view) if op == "sub" else out / t.view(view)
        return out

    def _float_rows(self, rows: np.ndarray) -> np.ndarray:
        """Stored rows as float32 NCHW (or [N, D]), as the eager reader converts them."""
        raw = self._raw(rows)
        if self.nhwc:
            raw = raw.transpose(0, 3, 1, 2)
        elif raw.ndim == 3:
            raw = raw[:, None]
        x = np.empty(raw.shape, np.float32)
        if raw.dtype == np.uint8:  # the same values as the eager reader's float32_rows
            np.divide(raw, 255.0, out=x, dtype=np.float32)
        else:
            x[...] = raw
        return x

    def all_finite(self) -> bool:
        """Whether every stored value is finite, read `_SCAN_BYTES` at a time."""
        if np.dtype(self.stored_dtype).kind != "f":
            return True
        step = max(1, _SCAN_BYTES // max(self._row_bytes, 1))
        for start in range(0, self.rows, step):
            rows = np.arange(start, min(start + step, self.rows))
            if not np.isfinite(self._raw(rows)).all():
                return False
        return True


def member_data_offset(path: Path, zf: zipfile.ZipFile, member: str) -> int | None:
    """Where a zip member's bytes start in the file, or None when it is compressed (or
    encrypted): only a stored member can be read in place."""
    info = zf.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return None
    with path.open("rb") as f:
        f.seek(info.header_offset)
        head = f.read(_LOCAL_HEADER.size)
    if len(head) != _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
        return None
    fields = _LOCAL_HEADER.unpack(head)
    name_len, extra_len = fields[9], fields[10]
    return int(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)


@dataclass
class LazyImages(LazyArray):
    """A zip image folder's images (`names`, in sample order), decoded when indexed: each to
    `mode` at `size` as the eager reader does (`datasets.decode_image`), then uint8 / 255.
    `stored` is (C, H, W); `path` the zip file, reopened in each process."""

    names: tuple[str, ...] = ()
    mode: str = "L"
    where: str = ""

    def _float_rows(self, rows: np.ndarray) -> np.ndarray:
        from worker.engine.datasets import decode_image

        c, h, w = self.stored
        x = np.empty((len(rows), c, h, w), np.float32)
        zf = _open_zip(self.path)
        for i, row in enumerate(rows.tolist()):
            pixels = decode_image(zf, self.names[row], self.mode, (w, h), self.where)
            chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
            np.divide(chw, 255.0, out=x[i], dtype=np.float32)
        return x

    def all_finite(self) -> bool:
        return True


@dataclass
class LazyTarImages(LazyImages):
    """Images of a tar read in place (an image folder or WebDataset shards, `tars.TarIndex`):
    image `i` is bytes [offsets[i], offsets[i] + sizes[i]) of `path`, read with one positioned
    read and decoded as `LazyImages` does."""

    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def _float_rows(self, rows: np.ndarray) -> np.ndarray:
        from worker.engine.datasets import decode_image
        from worker.engine.tars import open_index

        c, h, w = self.stored
        x = np.empty((len(rows), c, h, w), np.float32)
        index = open_index(self.path, self.offsets, self.sizes)  # the file opened once a batch
        try:
            for i, row in enumerate(rows.tolist()):
                member = _Span(index, row)
                pixels = decode_image(member, self.names[row], self.mode, (w, h), self.where)
                chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
                np.divide(chw, 255.0, out=x[i], dtype=np.float32)
        finally:
            index.close()
        return x


@dataclass
class _Span:
    """Member `row` of an index, opened whatever name it is asked for."""

    index: Any
    row: int

    def open(self, name: str) -> Any:
        return self.index.open_span(
            int(self.index.offsets[self.row]), int(self.index.sizes[self.row])
        )


_ZIPS: dict[tuple[str, int], zipfile.ZipFile] = {}  # per process: a fork opens its own


def _open_zip(path: str) -> zipfile.ZipFile:
    """The zip at `path`, opened once per process (its directory is read once, not per batch)."""
    key = (path, os.getpid())
    if key not in _ZIPS:
        for stale in [k for k in _ZIPS if k[1] != key[1]]:
            del _ZIPS[stale]  # inherited from the parent: never read here (a shared offset)
        _ZIPS[key] = zipfile.ZipFile(path)
    return _ZIPS[key]


@dataclass
class LazyCsvRows(LazyArray):
    """A CSV table's feature columns, its rows read in place: stored row i is the text
    [starts[i], starts[i + 1]) of `path` (its line and any blank lines after it), a batch read
    in runs of consecutive rows and parsed by pandas as the eager reader parses the file.
    `stored` is (D,); `features` the positions of the columns read."""

    starts: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    features: tuple[int, ...] = ()

    def _float_rows(self, rows: np.ndarray) -> np.ndarray:
        import pandas as pd

        out = np.empty((len(rows), *self.stored), np.float32)
        if len(rows) == 0:
            return out
        unique, inverse = np.unique(rows, return_inverse=True)
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        parts: list[bytes] = []
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for run in np.split(unique, breaks):
                start, end = int(self.starts[run[0]]), int(self.starts[run[-1] + 1])
                text = os.pread(fd, end - start, start)
                parts.append(text if text.endswith((b"\n", b"\r")) else text + b"\n")
        finally:
            os.close(fd)
        table = pd.read_csv(
            io.BytesIO(b"".join(parts)),
            header=None,
            skipinitialspace=True,
            usecols=list(self.features),
        )
        if len(table) != len(unique):
            raise OSError(f"{self.path}: the file changed since it was read")
        values = table[list(self.features)].to_numpy(dtype=np.float32)
        out[...] = values[inverse.reshape(-1)]
        return out

    def all_finite(self) -> bool:
        return True  # checked while the labels were read


@dataclass
class LazyParquetRows(LazyArray):
    """A Parquet table's feature columns read a row group at a time: the row groups a batch's
    rows fall in are read (the last one kept per process), as the eager reader converts them
    (`parquet_float32`). `group_starts` [G + 1]: each row group's first row, then the total."""

    group_starts: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    features: tuple[str, ...] = ()

    def _float_rows(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.stored), np.float32)
        groups = np.searchsorted(self.group_starts, rows, side="right") - 1
        for g in np.unique(groups).tolist():
            take = np.flatnonzero(groups == g)
            block = _row_group(self.path, g, self.features)
            out[take] = block[rows[take] - int(self.group_starts[g])]
        return out

    def all_finite(self) -> bool:
        return True  # checked while the labels were read


def parquet_float32(table: Any) -> np.ndarray:
    """A pyarrow table of numeric columns as float32 [rows, columns] (nulls become NaN)."""
    out = np.empty((table.num_rows, table.num_columns), np.float32)
    for j, column in enumerate(table.columns):
        out[:, j] = column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return out


_GROUP: dict[str, Any] = {}  # per process: the row group read last


def _row_group(path: str, group: int, features: tuple[str, ...]) -> np.ndarray:
    key = (path, os.getpid(), group, features)
    if _GROUP.get("key") != key:
        import pyarrow.parquet as pq

        _GROUP.clear()
        with pq.ParquetFile(path) as pf:
            _GROUP.update(key=key, block=parquet_float32(pf.read_row_group(group, list(features))))
    block: np.ndarray = _GROUP["block"]
    return block
