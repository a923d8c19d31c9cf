"""Datasets read in place in the formats besides .npz and .zip folders: .tar image folders,
WebDataset-style shards (a .tar, a .tar of shard .tars, a .zip of stored shard .tars), a .zip
of x.npy and y.npy, and tables (.csv, .parquet) read a chunk at a time.

Lazy reading gives the samples eager reading gives; the lazy readers read what a batch needs,
not the file (counted in bytes, or by the index they keep); hostile tar members are refused
naming the member and the reason, and nothing is ever extracted."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from worker.engine.datasets import DatasetError, Limits
from worker.engine.lazy import LazyArray, LazyTarImages
from worker.engine.tars import tar_index
from worker.engine.tasks.classification.data import describe_dataset, load_dataset, split

LIMITS = Limits(100_000, 1 << 30, None)


def _png(i: int, size: tuple[int, int] = (10, 8)) -> bytes:
    rng = np.random.default_rng(i)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG")
    return out.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _folder_members(n: int = 30) -> list[tuple[str, bytes]]:
    return [(f"top/{['cat', 'dog', 'owl'][i % 3]}/{i:03d}.png", _png(i)) for i in range(n)]


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            _add(tf, name, data)
    return path


def _shard_members(n: int, start: int = 0) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for i in range(start, start + n):
        out += [(f"{i:06d}.png", _png(i)), (f"{i:06d}.cls", f"{i % 4}\n".encode())]
        out.append((f"{i:06d}.json", b'{"source": "test"}'))
    return out


def _same(a: object, b: object) -> None:
    assert torch.equal(a.y, b.y) and a.classes == b.classes  # type: ignore[attr-defined]
    idx = torch.tensor([4, 0, 0, 7, 6, 5, len(a) - 1])  # type: ignore[arg-type]
    assert torch.equal(a.x[idx], b.x[idx])  # type: ignore[attr-defined]


def test_a_tar_image_folder_reads_as_its_zip_lazily_or_not(tmp_path: Path) -> None:
    members = _folder_members()
    tar = _tar(tmp_path / "folder.tar", members)
    with zipfile.ZipFile(tmp_path / "folder.zip", "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    from_zip = load_dataset(tmp_path / "folder.zip", lazy=False)
    eager, lazy = load_dataset(tar, lazy=False), load_dataset(tar, lazy=True)
    assert isinstance(lazy.x, LazyTarImages) and isinstance(eager.x, torch.Tensor)
    assert eager.classes == ["cat", "dog", "owl"] and lazy.x.shape == eager.x.shape
    _same(eager, from_zip)
    _same(lazy, eager)
    (lt, lv), (et, ev) = split(lazy, 0.3, 1), split(eager, 0.3, 1)
    assert torch.equal(lt.x[:], et.x[:]) and torch.equal(lv.x[:], ev.x[:])
    info = describe_dataset(tar)
    assert info["num_samples"] == 30 and info["kind"] == "image" and len(info["preview"]["samples"])


def test_webdataset_shards_in_a_tar_a_tar_of_shards_and_a_zip_of_shards(tmp_path: Path) -> None:
    one = _tar(tmp_path / "one.tar", _shard_members(24))
    a = _tar(tmp_path / "shard-000.tar", _shard_members(12))
    b = _tar(tmp_path / "shard-001.tar", _shard_members(12, start=12))
    outer = _tar(tmp_path / "outer.tar", [(p.name, p.read_bytes()) for p in (a, b)])
    with zipfile.ZipFile(tmp_path / "shards.zip", "w", zipfile.ZIP_STORED) as zf:
        for p in (a, b):
            zf.write(p, p.name)
    base = load_dataset(one, lazy=False)
    assert base.classes == ["0", "1", "2", "3"] and base.y.tolist() == [i % 4 for i in range(24)]
    for path in (one, outer, tmp_path / "shards.zip"):
        for lazy in (False, True):
            _same(load_dataset(path, lazy=lazy), base)
    with zipfile.ZipFile(tmp_path / "deflated.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(a, a.name)
    with pytest.raises(DatasetError, match="shard 'shard-000.tar' is compressed in the zip"):
        load_dataset(tmp_path / "deflated.zip")


def test_webdataset_samples_missing_a_part_are_refused_by_name(tmp_path: Path) -> None:
    members = _shard_members(3)
    no_cls = _tar(tmp_path / "no_cls.tar", [m for m in members if m[0] != "000001.cls"])
    with pytest.raises(DatasetError, match="sample '000001' .* has no .cls file"):
        load_dataset(no_cls)
    no_image = _tar(tmp_path / "no_img.tar", [m for m in members if m[0] != "000002.png"])
    with pytest.raises(DatasetError, match="sample '000002' needs one image"):
        load_dataset(no_image)


def test_reading_a_sample_reads_that_member_not_the_tar(tmp_path: Path) -> None:
    big = [(f"c{i % 2}/{i:03d}.png", _png(i, (64, 64))) for i in range(40)]
    tar = _tar(tmp_path / "big.tar", big)
    index = tar_index(tar, "big.tar", LIMITS)
    assert index.bytes_read == 0  # the headers are walked by tarfile, no member read
    name = index.names[17]
    assert index.read(name) == big[17][1]
    assert index.bytes_read == len(big[17][1]) < tar.stat().st_size // 20
    assert index.offsets.nbytes + index.sizes.nbytes == 16 * 40  # 16 bytes a member
    index.close()
    fds = len(list(Path("/proc/self/fd").iterdir()))
    data = load_dataset(tar, lazy=True)
    data.x[torch.arange(5)]
    assert len(list(Path("/proc/self/fd").iterdir())) == fds  # nothing left open on the upload


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("symlink", "is a symbolic link"),
        ("hardlink", "is a hard link"),
        ("device", "is a device file"),
        ("fifo", "is a FIFO"),
        ("absolute", "has an absolute path"),
        ("parent", "contains '..'"),
        ("shard_symlink", "is a symbolic link"),
        ("gzip", "gzip-compressed tar cannot be read in place"),
        ("garbage", "not an uncompressed tar file"),
    ],
)
def test_hostile_tar_members_are_refused_and_never_extracted(
    tmp_path: Path, case: str, reason: str
) -> None:
    path = tmp_path / f"{case}.tar"
    good = _folder_members(6)

    def hostile(tf: tarfile.TarFile, kind: str) -> None:
        info = tarfile.TarInfo({"absolute": "/etc/cron.d/x.png", "parent": "../../x.png"}.get(
            kind, "top/cat/evil.png"))  # fmt: skip
        if kind in ("symlink", "shard_symlink"):
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "top/cat/000.png"
        elif kind == "device":
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        elif kind == "fifo":
            info.type = tarfile.FIFOTYPE
        data = b"" if info.type != tarfile.REGTYPE else _png(99)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data) if data else None)

    if case == "gzip":
        with tarfile.open(path, "w:gz") as tf:
            for name, data in good:
                _add(tf, name, data)
    elif case == "garbage":
        path.write_bytes(b"not a tar at all" * 100)
    elif case == "shard_symlink":
        inner = tmp_path / "inner.tar"
        with tarfile.open(inner, "w") as tf:
            for name, data in _shard_members(2):
                _add(tf, name, data)
            hostile(tf, "symlink")
        _tar(path, [("inner.tar", inner.read_bytes())])
    else:
        with tarfile.open(path, "w") as tf:
            for name, data in good:
                _add(tf, name, data)
            hostile(tf, case)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DatasetError, match=reason) as err:
        load_dataset(path)
    assert str(err.value).startswith(f"{case}.tar: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing extracted


def test_tar_limits_count_entries_and_bytes(tmp_path: Path) -> None:
    tar = _tar(tmp_path / "folder.tar", _folder_members(12))
    with pytest.raises(DatasetError, match="more than the limit of 5 entries"):
        load_dataset(tar, max_entries=5)
    with pytest.raises(DatasetError, match="unpacks to more than the limit"):
        load_dataset(tar, max_uncompressed_bytes=1000)


def test_a_zip_of_x_npy_and_y_npy_is_an_npz_read_in_place(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 7)).astype(np.float32), np.arange(50) % 3
    path = tmp_path / "arrays.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for key, arr in (("x", x), ("y", y)):
            buf = io.BytesIO()
            np.save(buf, arr)
            zf.writestr(f"{key}.npy", buf.getvalue())
    lazy, eager = load_dataset(path, lazy=True), load_dataset(path, lazy=False)
    assert isinstance(lazy.x, LazyArray) and torch.equal(lazy.x[:], torch.from_numpy(x))
    _same(lazy, eager)


def _table(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=(n, 5)), 5).astype(np.float32)
    x[:, 2] = rng.integers(0, 9, n)  # an integer column
    return x, np.array(["ant", "bee", "cow"])[np.arange(n) % 3]


def _csv(path: Path, x: np.ndarray, y: np.ndarray, crlf: bool = False) -> Path:
    end = "\r\n" if crlf else "\n"
    lines = ["a, b,c,label,d"]  # the label column among the features
    lines += [f"{r[0]},{r[1]},{int(r[2])},{c},{r[3]}" for r, c in zip(x, y, strict=True)]
    lines.insert(40, "")  # a blank line pandas skips
    path.write_text(end.join(lines) + end, newline="")
    return path


def test_a_csv_read_in_place_gives_the_rows_read_into_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.engine.lazy as lazy_module

    x, y = _table()
    for crlf in (False, True):
        path = _csv(tmp_path / f"t{crlf}.csv", x, y, crlf)
        eager, lazy = load_dataset(path, lazy=False), load_dataset(path, lazy=True)
        assert type(lazy.x).__name__ == "LazyCsvRows" and lazy.x.shape == (300, 4)
        assert torch.equal(eager.x[:], torch.from_numpy(x[:, :4]))
        _same(lazy, eager)
        assert torch.equal(lazy.x[:], eager.x[:])
        (lt, _), (et, _) = split(lazy, 0.2, 0), split(eager, 0.2, 0)
        assert torch.equal(lt.x[torch.tensor([9, 1, 2, 3])], et.x[torch.tensor([9, 1, 2, 3])])
    read: list[int] = []
    real = lazy_module.os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        read.append(n)
        return real(fd, n, offset)

    monkeypatch.setattr(lazy_module.os, "pread", pread)
    lazy.x[torch.tensor([5, 6, 7, 100])]
    assert len(read) == 2 and sum(read) < path.stat().st_size // 50  # two runs of lines
    info = describe_dataset(path)
    assert info["preview"]["columns"] == ["a", "b", "c", "d"] and info["num_samples"] == 300


def test_a_csv_with_line_breaks_in_quotes_is_read_into_memory(tmp_path: Path) -> None:
    path = tmp_path / "quoted.csv"
    rows = [f'{i},{i * 2},"class\n{i % 2}"' for i in range(20)]
    path.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    data = load_dataset(path, lazy=True)  # not one row a line: read into memory instead
    assert isinstance(data.x, torch.Tensor) and data.x.shape == (20, 2) and len(data.classes) == 2


def test_parquet_is_read_a_row_group_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    import worker.engine.lazy as lazy_module

    x, y = _table()
    path = tmp_path / "t.parquet"
    columns = {"a": x[:, 0], "b": x[:, 1].astype(np.float64), "c": x[:, 2].astype(np.int64)}
    table = pa.table({**columns, "label": y, "d": x[:, 3]})
    pq.write_table(table, path, row_group_size=50)
    eager, lazy = load_dataset(path, lazy=False), load_dataset(path, lazy=True)
    assert type(lazy.x).__name__ == "LazyParquetRows" and lazy.classes == ["ant", "bee", "cow"]
    assert torch.equal(eager.x[:], torch.from_numpy(x[:, :4]))
    _same(lazy, eager)
    converted: list[int] = []
    real = lazy_module.parquet_float32

    def counted(table: object) -> np.ndarray:
        converted.append(table.num_rows)  # type: ignore[attr-defined]
        return real(table)

    monkeypatch.setattr(lazy_module, "parquet_float32", counted)
    lazy.x[torch.tensor([120, 101, 149])]  # all in the third row group of six
    assert converted == [50]
    info = describe_dataset(path)
    assert info["preview"]["columns"] == ["a", "b", "c", "d"] and info["kind"] == "tabular"
    pq.write_table(table.set_column(1, "b", pa.array(["z"] * 300)), tmp_path / "text.parquet")
    with pytest.raises(DatasetError, match=r"feature column\(s\) \['b'\] are not numeric"):
        load_dataset(tmp_path / "text.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        load_dataset(tmp_path / "bad.parquet")


def test_lazy_tables_and_tars_read_the_same_batches_in_two_loader_workers(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from worker.engine.loader import batch_stream
    from worker.engine.tasks.classification import ClassificationTask

    x, y = _table(120)
    pq.write_table(pa.table({"a": x[:, 0], "label": y, "b": x[:, 1]}), tmp_path / "t.parquet",
                   row_group_size=25)  # fmt: skip
    paths = [
        _tar(tmp_path / "wds.tar", _shard_members(40)),
        _csv(tmp_path / "t.csv", x, y),
        tmp_path / "t.parquet",
    ]
    task, cpu = ClassificationTask(), torch.device("cpu")
    batches = list(torch.randperm(40, generator=torch.Generator().manual_seed(2)).split(8))
    for path in paths:
        data = load_dataset(path, lazy=True)
        assert isinstance(data.x, LazyArray)
        here = [b.inputs for b in batch_stream(task, data, batches, 0, cpu, workers=0)]
        there = [b.inputs for b in batch_stream(task, data, batches, 1, cpu, workers=2)]
        assert len(there) == len(batches) - 1
        assert all(torch.equal(a, b) for a, b in zip(here[1:], there, strict=True)), path.name


def test_every_door_takes_the_formats_the_reader_reads() -> None:
    from backend.datasets.service import FORMATS, pick_format
    from client.datasets import DATASET_SUFFIXES
    from core.catalog.tasks import TASKS
    from core.config import DatasetRef

    formats = ["npz", "zip", "tar", "csv", "parquet"]
    assert list(TASKS["classification"].formats) == formats
    # the upload doors take every format some task reads (the text tasks add jsonl and txt)
    every = {f for task in TASKS.values() for f in task.formats}
    assert set(FORMATS) == every and set(DATASET_SUFFIXES.values()) == every
    assert [pick_format(f"data.{f}", None) for f in sorted(every)] == sorted(every)
    assert DatasetRef(path="shards.tar", format="tar").format == "tar"
