"""Dataset loading (npz, zip image folders, csv), refusal of unsafe zips, splitting."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from worker.engine.data import (
    DatasetError,
    NormalizedModel,
    Normalizer,
    TensorData,
    dataset_info,
    load_dataset,
    split,
)


def _png(color: int | tuple[int, int, int], size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_npz_images_nhwc_uint8(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (6, 5, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2]))
    data = load_dataset(tmp_path / "d.npz")
    assert data.input_shape == (3, 5, 7) and data.x.dtype == torch.float32
    assert data.classes == ["0", "1", "2"] and data.y.dtype == torch.long
    assert torch.allclose(data.x[1, 2], torch.from_numpy(x[1, :, :, 2]).float() / 255)
    assert dataset_info(data)["kind"] == "image"


def test_npz_grey_and_tabular_and_named_labels(tmp_path: Path) -> None:
    np.savez(tmp_path / "g.npz", x=np.zeros((4, 8, 8), np.float32), y=np.array([1, 0, 1, 0]))
    assert load_dataset(tmp_path / "g.npz").input_shape == (1, 8, 8)
    names = np.array(["zero", "one"])
    np.savez(tmp_path / "n.npz", x=np.ones((2, 3)), y=np.array([1, 0]), classes=names)
    assert load_dataset(tmp_path / "n.npz").classes == ["zero", "one"]
    np.savez(tmp_path / "t.npz", x=np.ones((3, 5)), y=np.array(["cat", "dog", "cat"]))
    data = load_dataset(tmp_path / "t.npz")
    assert data.input_shape == (5,) and data.classes == ["cat", "dog"]
    assert data.y.tolist() == [0, 1, 0]
    info = dataset_info(data)
    assert info["kind"] == "tabular" and info["class_counts"] == {"cat": 2, "dog": 1}


def test_npz_missing_array_and_objects_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", features=np.zeros((2, 2)), y=np.array([0, 1]))
    with pytest.raises(DatasetError, match=r"missing array\(s\) \['x'\]"):
        load_dataset(tmp_path / "a.npz")
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DatasetError, match="no objects"):
        load_dataset(tmp_path / "o.npz")


def _image_zip(path: Path, top: str = "") -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(3):
            zf.writestr(f"{top}cat/{i}.png", _png((200, 10, 10), (8, 6)))
            zf.writestr(f"{top}dog/{i}.png", _png((10, 10, 200), (8, 6)))
        zf.writestr(f"{top}dog/odd.png", _png(128, (16, 12), mode="L"))  # resized, converted
        zf.writestr(f"{top}README.txt", "not an image")
        zf.writestr("__MACOSX/._junk.png", b"junk")


@pytest.mark.parametrize("top", ["", "pets/"])
def test_zip_image_folder(tmp_path: Path, top: str) -> None:
    _image_zip(tmp_path / "imgs.zip", top)
    data = load_dataset(tmp_path / "imgs.zip")
    assert data.classes == ["cat", "dog"]
    assert data.input_shape == (3, 6, 8)  # majority mode RGB, majority size 8x6 (W x H)
    assert data.y.tolist().count(1) == 4
    cat = data.x[data.y == 0][0]
    assert cat[0, 0, 0].item() == pytest.approx(200 / 255)
    assert not (tmp_path / "cat").exists(), "nothing may be extracted"


def _zip_with(path: Path, name: str, data: bytes = b"x", *, symlink: bool = False) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/0.png", _png(0, (4, 4), "L"))
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, data)


def test_zip_refuses_traversal_absolute_and_symlink(tmp_path: Path) -> None:
    _zip_with(tmp_path / "a.zip", "../evil/1.png")
    with pytest.raises(DatasetError, match=r"contains '\.\.'"):
        load_dataset(tmp_path / "a.zip")
    _zip_with(tmp_path / "b.zip", "/etc/b/1.png")
    with pytest.raises(DatasetError, match="absolute path"):
        load_dataset(tmp_path / "b.zip")
    _zip_with(tmp_path / "c.zip", "b/link.png", b"/etc/passwd", symlink=True)
    with pytest.raises(DatasetError, match="symbolic link"):
        load_dataset(tmp_path / "c.zip")


def test_zip_bomb_and_too_many_entries_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/0.png", b"\0" * (4 << 20))  # 4 MiB of zeros compress to a few KiB
        zf.writestr("b/0.png", b"\0" * (4 << 20))
    assert (tmp_path / "bomb.zip").stat().st_size < 100_000
    with pytest.raises(DatasetError, match="zip bomb"):
        load_dataset(tmp_path / "bomb.zip", max_uncompressed_bytes=1 << 20)
    with pytest.raises(DatasetError, match="2 entries, more than the limit of 1;"):
        load_dataset(tmp_path / "bomb.zip", max_entries=1)


def test_csv_features_and_labels(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b,species\n1,2.5,setosa\n3,4,virginica\n5,6,setosa\n")
    data = load_dataset(tmp_path / "d.csv", label_column="species")
    assert data.classes == ["setosa", "virginica"] and data.y.tolist() == [0, 1, 0]
    assert data.x.tolist() == [[1.0, 2.5], [3.0, 4.0], [5.0, 6.0]]
    (tmp_path / "i.csv").write_text("a,label\n1,2\n2,0\n")  # integer labels are class indices
    data = load_dataset(tmp_path / "i.csv")
    assert data.classes == ["0", "1", "2"] and data.y.tolist() == [2, 0]


def test_csv_missing_label_column_and_text_feature(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b,target\n1,2,0\n3,4,1\n")
    expected = r"no label column 'label'; the columns are \['a', 'b', 'target'\]"
    with pytest.raises(DatasetError, match=expected):
        load_dataset(tmp_path / "d.csv")
    (tmp_path / "e.csv").write_text("a,color,label\n1,red,0\n3,blue,1\n")
    with pytest.raises(DatasetError, match=r"\['color'\] are not numeric"):
        load_dataset(tmp_path / "e.csv")


def test_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "d.parquet").write_bytes(b"x")
    with pytest.raises(DatasetError, match="use .npz"):
        load_dataset(tmp_path / "d.parquet")


def test_split_is_stratified_and_deterministic() -> None:
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    data = TensorData(torch.arange(100, dtype=torch.float32)[:, None], y, ["a", "b", "c"])
    train, val = split(data, 0.2, seed=3)
    assert torch.bincount(val.y).tolist() == [10, 6, 4]
    assert len(train) == 80
    assert set(train.x[:, 0].tolist()).isdisjoint(val.x[:, 0].tolist())
    again = split(data, 0.2, seed=3)[1]
    assert torch.equal(again.x, val.x)
    assert not torch.equal(split(data, 0.2, seed=4)[1].x, val.x)


def test_normalizer_per_channel_inside_model() -> None:
    x = torch.randn(64, 3, 4, 4) * torch.tensor([1.0, 5.0, 0.1])[None, :, None, None] + 7
    norm = Normalizer.fit(x)
    z = norm(x)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    model = NormalizedModel(norm, torch.nn.Flatten())
    assert torch.allclose(model(x), z.flatten(1))
    assert set(model.state_dict()) == {"normalizer.mean", "normalizer.std"}
