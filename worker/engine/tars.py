"""Tar archives read in place: image folders and WebDataset-style shards, stored as uploaded.

`tar_index(path, where, limits)` walks a tar's headers once (nothing is extracted, ever) and
gives a `TarIndex`: each regular file's name, where its bytes start in the upload and how many
there are (`TarInfo.offset_data`, `size`), so reading a member is one positioned read. Members
that would do harm if extracted are refused naming the member and why (symbolic and hard
links, devices, FIFOs, sparse files, absolute paths, '..'); so are more than `limits.entries`
members, more than `limits.unpacked` bytes, and members that end past the file. A member that
is itself a `.tar` (a shard) is indexed in place as well, its members' offsets counted from the
start of the upload and their names prefixed by the shard's (`shard.tar/000123.jpg`); so are
the stored (uncompressed) `.tar` members of a `.zip` (`zip_shards`). A compressed tar
(`.tar.gz`) cannot be read in place and is refused.

`webdataset_samples` groups the files of WebDataset-style shards into samples: files sharing a
key (the path up to the first dot of the file name) are one sample, `000123.jpg` (or another
image type) with `000123.cls` (its class index, or name, as text); other files of a sample
(`.json` metadata and the like) are ignored.

An index holds its own descriptor, opened at the first read and closed with `close` (or when
the index is collected): nothing stays open on an upload once it is read, and a lazy dataset
(`lazy.LazyTarImages`, which keeps only the offsets) opens the file once a batch, in whichever
process reads it (a DataLoader's worker never shares its parent's descriptor).
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

import numpy as np

from worker.engine.datasets import IMAGE_SUFFIXES, DatasetError, Limits, size_text

_BUFFER = 64 * 1024  # a member is read through a buffer of this size (most images: one read)
_MAX_LABEL_BYTES = 256  # a .cls file holds one short text
_HIDDEN = (".", "__MACOSX")


class _Window(io.RawIOBase):
    """Bytes [start, start + size) of an open file, read with positioned reads; `counter`
    (a one-element list) adds up the bytes read."""

    def __init__(self, fd: int, start: int, size: int, counter: list[int]) -> None:
        super().__init__()
        self.fd, self.start, self.size, self.pos, self.counter = fd, start, size, 0, counter

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        n = max(0, min(len(buffer), self.size - self.pos))
        if n == 0:
            return 0
        got = os.preadv(self.fd, [memoryview(buffer)[:n]], self.start + self.pos)
        self.pos += got
        self.counter[0] += got
        return got


@dataclass
class TarIndex:
    """The regular files of a tar (or of the shards in it) as names and byte ranges of `path`."""

    path: str
    names: list[str]
    offsets: np.ndarray  # int64: where each member's bytes start in `path`
    sizes: np.ndarray  # int64
    counter: list[int] = field(default_factory=lambda: [0])  # bytes read through this index
    _at: dict[str, int] = field(default_factory=dict, repr=False)
    _fd: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._at = {name: i for i, name in enumerate(self.names)}

    def fileno(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    def position(self, name: str) -> int:
        """Where member `name` is in `names`."""
        return self._at[name]

    @property
    def bytes_read(self) -> int:
        return self.counter[0]

    def open(self, name: str) -> IO[bytes]:
        """Member `name` as a buffered file, read from the upload where it lies."""
        i = self._at[name]
        return self.open_span(int(self.offsets[i]), int(self.sizes[i]))

    def open_span(self, offset: int, size: int) -> IO[bytes]:
        raw = _Window(self.fileno(), offset, size, self.counter)
        return io.BufferedReader(raw, buffer_size=min(_BUFFER, max(size, 1)))

    def read(self, name: str) -> bytes:
        with self.open(name) as fp:
            return fp.read()


def open_index(path: str, offsets: np.ndarray, sizes: np.ndarray) -> TarIndex:
    """An index without names over `path` (what a lazy dataset keeps: its samples' spans);
    close it when done."""
    return TarIndex(path, [], offsets, sizes)


# ----------------------------------------------------------------------------------------------
# walking the headers


def _refusal(info: tarfile.TarInfo) -> str | None:
    """Why a member is refused, or None when it is a plain file or a folder."""
    name = info.name
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path; tar relative paths only"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "contains '..'; tar without parent references"
    if info.issym():
        return f"is a symbolic link (to '{info.linkname}'); tar plain files only"
    if info.islnk():
        return f"is a hard link (to '{info.linkname}'); tar plain files only"
    if info.ischr() or info.isblk():
        return "is a device file; tar plain files only"
    if info.isfifo():
        return "is a FIFO; tar plain files only"
    if info.issparse():
        return "is a sparse file; tar plain files only"
    if not (info.isreg() or info.isdir()):
        return f"is not a plain file (tar type {info.type!r}); tar plain files only"
    return None


@dataclass
class _Walk:
    path: str
    fd: int
    where: str
    limits: Limits
    total: int  # the upload's size in bytes
    names: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    entries: int = 0
    unpacked: int = 0

    def member(self, name: str, offset: int, size: int) -> None:
        self.entries += 1
        self.unpacked += size
        if self.entries > self.limits.entries:
            raise DatasetError(
                f"{self.where}: more than the limit of {self.limits.entries} entries; split the "
                "upload or store the samples as arrays (.npz)"
            )
        if self.unpacked > self.limits.unpacked:
            raise DatasetError(
                f"{self.where}: unpacks to more than the limit of "
                f"{size_text(self.limits.unpacked)}; upload a smaller one"
            )
        if offset + size > self.total:
            raise DatasetError(f"{self.where}: entry '{name}' ends past the end of the file")
        self.names.append(name)
        self.offsets.append(offset)
        self.sizes.append(size)

    def tar(self, fp: IO[bytes], base: int, prefix: str, label: str) -> None:
        """Index the tar read from `fp`, which starts at byte `base` of the upload."""
        try:
            tf = tarfile.open(fileobj=fp, mode="r:")
        except tarfile.TarError as exc:
            raise DatasetError(
                f"{self.where}: {label} is not an uncompressed tar file ({exc}); upload a plain "
                ".tar (a .tar.gz cannot be read in place)"
            ) from exc
        with tf:
            while True:
                try:
                    info = tf.next()
                except tarfile.TarError as exc:
                    raise DatasetError(f"{self.where}: {label} is damaged ({exc})") from exc
                if info is None:
                    return
                cast(Any, tf).members.clear()  # the index below is all that is kept
                why = _refusal(info)
                if why is not None:
                    raise DatasetError(f"{self.where}: entry '{prefix}{info.name}' {why}")
                if info.isdir():
                    self.entries += 1
                    continue
                name, offset = prefix + info.name, base + info.offset_data
                if not prefix and info.name.lower().endswith(".tar") and not _hidden(info.name):
                    self.entries += 1
                    window = _Window(self.fd, offset, info.size, [0])
                    with io.BufferedReader(window, buffer_size=_BUFFER) as shard:
                        self.tar(shard, offset, f"{info.name}/", f"shard '{info.name}'")
                    continue
                self.member(name, offset, info.size)

    def index(self) -> TarIndex:
        return TarIndex(
            self.path,
            self.names,
            np.asarray(self.offsets, np.int64),
            np.asarray(self.sizes, np.int64),
        )


def _hidden(name: str) -> bool:
    return any(part.startswith(_HIDDEN) for part in PurePosixPath(name).parts)


def tar_index(path: Path, where: str, limits: Limits) -> TarIndex:
    """The checked index of the tar at `path` (and of the shard tars in it)."""
    with path.open("rb") as fp:
        walk = _Walk(str(path), fp.fileno(), where, limits, path.stat().st_size)
        if fp.read(2) == b"\x1f\x8b":
            raise DatasetError(
                f"{where}: a gzip-compressed tar cannot be read in place; upload the plain .tar "
                "(gunzip it first)"
            )
        fp.seek(0)
        walk.tar(fp, 0, "", "the file")
        return walk.index()


def zip_shards(path: Path, zf: zipfile.ZipFile, where: str, limits: Limits) -> TarIndex:
    """The checked index of the `.tar` shards stored (uncompressed) in the zip at `path`."""

    with path.open("rb") as fp:
        walk = _Walk(str(path), fp.fileno(), where, limits, path.stat().st_size)
        for info in zf.infolist():
            _zip_shard(walk, path, zf, info)
        return walk.index()


def _zip_shard(walk: _Walk, path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Index the zip member `info` when it is a .tar shard (stored: read in place)."""
    from worker.engine.lazy import member_data_offset

    name = info.filename
    if info.is_dir() or _hidden(name) or not name.lower().endswith(".tar"):
        return
    start = member_data_offset(path, zf, name)
    if start is None:
        raise DatasetError(
            f"{walk.where}: shard '{name}' is compressed in the zip; zip the shards without "
            "compression (zip -0) or upload them in a .tar"
        )
    window = _Window(walk.fd, start, info.file_size, [0])
    with io.BufferedReader(window, buffer_size=_BUFFER) as shard:
        walk.tar(shard, start, f"{name}/", f"shard '{name}'")


def has_shards(names: list[str]) -> bool:
    return any(n.lower().endswith(".tar") and not _hidden(n) for n in names)


# ----------------------------------------------------------------------------------------------
# WebDataset samples


def is_webdataset(index: TarIndex) -> bool:
    return any(n.lower().endswith(".cls") and not _hidden(n) for n in index.names)


def webdataset_samples(index: TarIndex, where: str) -> list[tuple[str, str]]:
    """(image member, label text) of each sample, in the order the samples first appear."""
    groups: dict[str, dict[str, str]] = {}
    for name in index.names:
        if _hidden(name):
            continue
        p = PurePosixPath(name)
        stem, _, ext = p.name.partition(".")
        groups.setdefault(str(p.parent / stem), {})[ext.lower()] = name
    samples: list[tuple[str, str]] = []
    for key, files in groups.items():
        images = sorted(files[e] for e in files if f".{e}" in IMAGE_SUFFIXES)
        if "cls" not in files:
            raise DatasetError(
                f"{where}: sample '{key}' ({', '.join(sorted(files.values()))}) has no .cls "
                f"file; give each sample its class as text in {key}.cls"
            )
        if len(images) != 1:
            found = ", ".join(images) if images else "none"
            raise DatasetError(
                f"{where}: sample '{key}' needs one image (.png, .jpg, ...), found {found}"
            )
        member = files["cls"]
        if int(index.sizes[index.position(member)]) > _MAX_LABEL_BYTES:
            raise DatasetError(
                f"{where}: '{member}' is over {_MAX_LABEL_BYTES} bytes; a .cls file holds one "
                "class index or name"
            )
        try:
            label = index.read(member).decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{where}: '{member}' is not UTF-8 text ({exc})") from exc
        if not label:
            raise DatasetError(f"{where}: '{member}' is empty; write the sample's class in it")
        samples.append((images[0], label))
    if not samples:
        raise DatasetError(f"{where}: no samples found")
    return samples
