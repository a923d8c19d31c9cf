"""The artifact store: uploaded models and datasets, checkpoints and run outputs.

A local folder (`file://...`, the embedded default) or any fsspec filesystem such as S3/MinIO
(`s3://bucket/prefix`, with the `s3` extra). Keys are always made by the studio
(`team-1/models/<uuid>/model.pt2`), never taken from a user, and are checked before use.
Writes go to a temporary key first and are renamed into place, so a failed write never leaves a
half-written object under its final key.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import fsspec

from core.settings import get_settings

CHUNK = 1024 * 1024
_KEY = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-][A-Za-z0-9_.\-]*)*$")


class StorageError(RuntimeError):
    pass


class TooLarge(StorageError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload is larger than the limit of {limit // (1024 * 1024)} MiB")
        self.limit = limit


@dataclass(frozen=True)
class Stored:
    key: str
    size: int
    sha256: str


def new_key(team_id: int, kind: str, filename: str) -> str:
    """A fresh key for a new object; only the file's extension is kept from the user's name."""
    ext = "".join(Path(filename).suffixes[-2:]).lower()
    ext = re.sub(r"[^a-z0-9.]", "", ext)[:16]
    return f"team-{team_id}/{kind}/{uuid.uuid4().hex}/file{ext}"


def check_key(key: str) -> str:
    if not _KEY.match(key) or ".." in key:
        raise StorageError(f"invalid storage key {key!r}")
    return key


class Store:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        if self.fs.protocol in ("file", ("file", "local")) or "file" in self.fs.protocol:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def write_stream(self, key: str, chunks: Iterator[bytes], limit: int | None = None) -> Stored:
        """Write chunks under `key`, hashing as it goes; over `limit` bytes raises TooLarge."""
        final = self._path(key)
        tmp = f"{final}.part-{uuid.uuid4().hex[:8]}"
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        digest, size = hashlib.sha256(), 0
        try:
            with self.fs.open(tmp, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise TooLarge(limit)
                    digest.update(chunk)
                    out.write(chunk)
            if self.fs.isdir(final):  # mv would move the file *into* it, under another name
                raise StorageError(f"cannot write {key}: a folder stands at that key")
            self.fs.mv(tmp, final)
        except BaseException as exc:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            if isinstance(exc, OSError):  # a full disk, a refused write: say what was written
                raise StorageError(f"the artifact store could not write {key}: {exc}") from exc
            raise
        return Stored(key, size, digest.hexdigest())

    def put_file(self, key: str, local: Path) -> Stored:
        with open(local, "rb") as fh:
            return self.write_stream(key, iter(lambda: fh.read(CHUNK), b""))

    def put_bytes(self, key: str, data: bytes) -> Stored:
        return self.write_stream(key, iter([data]))

    def get_file(self, key: str, local: Path) -> Path:
        local.parent.mkdir(parents=True, exist_ok=True)
        with self.fs.open(self._path(key), "rb") as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        return local

    def open(self, key: str) -> BinaryIO:
        return self.fs.open(self._path(key), "rb")

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        with self.open(key) as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path)


@lru_cache
def get_store() -> Store:
    return Store(get_settings().artifacts_url)
