"""The CIFAR-style benchmark's data maker (`benchmarks/cifar_style.py`): shapes, classes and the
upload round trip through the studio's loader; no training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.cifar_style import cifar_style, write_upload
from worker.engine.tasks.classification.data import load_dataset


def test_images_have_cifar_shape_every_class_and_distinct_digits() -> None:
    x, y = cifar_style(40, 32, seed=0)
    assert x.shape == (40, 3, 32, 32) and x.dtype == np.float32
    assert y.dtype == np.int64 and np.bincount(y, minlength=10).tolist() == [4] * 10
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert len({img.tobytes() for img in x}) == 40
    again, _ = cifar_style(40, 32, seed=0)
    assert np.array_equal(x, again)  # deterministic for a seed


def test_the_upload_reads_back_through_the_studio_loader(tmp_path: Path) -> None:
    path = write_upload(tmp_path / "cifar_style.npz", 20, 16)
    data = load_dataset(path, lazy=False)
    x, y = cifar_style(20, 16)
    assert data.input_shape == (3, 16, 16) and data.num_classes == 10
    assert np.array_equal(data.x.numpy(), x) and np.array_equal(data.y.numpy(), y)


@pytest.mark.parametrize(("samples", "size"), [(5, 32), (2000, 32), (40, 12), (40, 20)])
def test_bad_sizes_are_refused(samples: int, size: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        cifar_style(samples, size)
