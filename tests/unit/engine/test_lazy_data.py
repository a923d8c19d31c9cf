"""Datasets larger than memory: an uncompressed .npz whose x stays on disk (`LazyArray`).

The lazy reader gives the same float32 values as the eager one, batch for batch (through the
task's `batch`, a split, normalisation and a DataLoader's worker processes), keeps refusing what
the eager one refuses, and training on a dataset whose float32 size is 4 GiB stays under a
stated peak memory (measured in a subprocess)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from worker.engine.augment import normalize
from worker.engine.datasets import DatasetError
from worker.engine.lazy import LazyArray
from worker.engine.tasks.classification import ClassificationTask
from worker.engine.tasks.classification.data import describe_dataset, load_dataset, split

REPO = Path(__file__).resolve().parents[3]


def _images(path: Path, n: int = 200, nhwc: bool = True, compressed: bool = False) -> Path:
    rng = np.random.default_rng(0)
    shape = (n, 12, 10, 3) if nhwc else (n, 3, 12, 10)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    y = np.arange(n) % 4
    (np.savez_compressed if compressed else np.savez)(path, x=x, y=y)
    return path


def _pair(path: Path) -> tuple[object, object]:
    return load_dataset(path, lazy=False), load_dataset(path, lazy=True)


def test_lazy_reads_the_same_values_as_eager(tmp_path: Path) -> None:
    for nhwc in (True, False):
        eager, lazy = _pair(_images(tmp_path / f"img{nhwc}.npz", nhwc=nhwc))
        assert isinstance(lazy.x, LazyArray) and isinstance(eager.x, torch.Tensor)
        assert lazy.x.shape == eager.x.shape and lazy.x.dim() == 4 and len(lazy) == len(eager)
        assert torch.equal(lazy.y, eager.y) and lazy.classes == eager.classes
        idx = torch.tensor([5, 3, 3, 199, 0, 42, 41, 40])  # unsorted, repeated, runs
        assert torch.equal(lazy.x[idx], eager.x[idx])
        assert torch.equal(lazy.x[10:20], eager.x[10:20]) and torch.equal(lazy.x[-1], eager.x[-1])
        task, cpu = ClassificationTask(), torch.device("cpu")
        for (lt, lv), (et, ev) in [(split(lazy, 0.25, 3), split(eager, 0.25, 3))]:
            assert isinstance(lt.x, LazyArray)
            for a, b in ((lt, et), (lv, ev)):
                for i in torch.randperm(len(a), generator=torch.Generator().manual_seed(1)).split(
                    16
                ):
                    la, ea = task.batch(a, i, cpu), task.batch(b, i, cpu)
                    assert torch.equal(la.inputs, ea.inputs)
                    assert torch.equal(la.targets, ea.targets)
        mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.3, 0.25])
        assert torch.equal(normalize(lazy.x, mean, std)[idx], normalize(eager.x, mean, std)[idx])  # type: ignore[arg-type]


def test_tabular_float_and_automatic_choice(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(300, 7)).astype(np.float64)
    np.savez(tmp_path / "t.npz", x=x, y=np.arange(300) % 3)
    eager, lazy = _pair(tmp_path / "t.npz")
    assert torch.equal(lazy.x[:], eager.x)
    assert isinstance(load_dataset(tmp_path / "t.npz").x, torch.Tensor)  # small: eager
    # compressed members cannot be read in place: eager even when asked
    c = load_dataset(_images(tmp_path / "c.npz", compressed=True), lazy=True)
    assert isinstance(c.x, torch.Tensor)
    bad = x.copy()
    bad[17, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad, y=np.arange(300) % 3)
    with pytest.raises(DatasetError, match="NaN or infinite"):
        load_dataset(tmp_path / "nan.npz", lazy=True)


def test_describe_is_the_same_and_limits_still_hold(tmp_path: Path) -> None:
    path = _images(tmp_path / "img.npz")
    # lazy: the decoded limit counts the labels and a batch; eager: x's float32 copy
    lazy = load_dataset(path, lazy=True, max_decoded_bytes=300_000)
    assert isinstance(lazy.x, LazyArray)
    with pytest.raises(DatasetError, match="decodes to"):
        load_dataset(path, lazy=False, max_decoded_bytes=300_000)
    with pytest.raises(DatasetError, match="unpacks to"):  # the zip checks run first
        load_dataset(path, lazy=True, max_uncompressed_bytes=1000)
    described = describe_dataset(path)
    assert described["input_shape"] == [3, 12, 10] and described["num_samples"] == 200
    preview = describe_dataset(path)["preview"]
    assert len(preview["samples"]) == 16


def test_a_dataloader_with_two_workers_gives_the_same_batches(tmp_path: Path) -> None:
    eager, lazy = _pair(_images(tmp_path / "img.npz"))
    train, _ = split(lazy, 0.25, 0)
    train_eager, _ = split(eager, 0.25, 0)
    batches = list(torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).split(32))
    loader = DataLoader(
        _Batches(train.x, batches), batch_size=None, num_workers=2, shuffle=False
    )  # the LazyArray is pickled into each worker and reopens the file there
    got = list(loader)
    assert len(got) == len(batches)
    for x, idx in zip(got, batches, strict=True):
        assert torch.equal(x, train_eager.x[idx])


class _Batches(torch.utils.data.Dataset[torch.Tensor]):
    def __init__(self, x: LazyArray, batches: list[torch.Tensor]) -> None:
        self.x, self.batches = x, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[self.batches[i]]


# ----------------------------------------------------------------------------------------------
# memory: a dataset whose float32 size is 4 GiB, trained on in a subprocess

N_BIG, SIDE = 262_144, 64  # uint8 1 x 64 x 64: 1 GiB on disk, 4 GiB as float32
PEAK_BOUND = 1536 << 20  # bytes of peak RSS


def write_big_npz(path: Path, n: int = N_BIG, side: int = SIDE) -> None:
    """An uncompressed .npz of n uint8 images, written in chunks (never held in memory)."""
    header = {"descr": "|u1", "fortran_order": False, "shape": (n, 1, side, side)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            chunk = 8192
            pattern = (np.arange(chunk * side * side, dtype=np.uint32) * 2654435761 >> 24).astype(
                np.uint8
            )
            for start in range(0, n, chunk):
                rows = min(chunk, n - start)
                f.write(pattern[: rows * side * side].tobytes())
        with zf.open("y.npy", "w") as f:
            np.lib.format.write_array(f, (np.arange(n) % 10).astype(np.int64))


_TRAIN = """
import sys, torch
from torch import nn
sys.path.insert(0, {tests!r})
from tests.unit.engine.support import scheme_config
from worker.engine.lazy import LazyArray
from worker.engine.tasks.classification.data import describe_dataset, load_dataset, split
from worker.engine.trainer import train

data = load_dataset({path!r}, max_decoded_bytes=64 << 20)  # the old loader needs 4 GiB
assert isinstance(data.x, LazyArray), type(data.x)
info = describe_dataset({path!r})
train_data, val_data = split(data, 0.01, 0)
pick = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(0))
train_data, val_data = train_data.subset(pick[:256]), val_data.subset(torch.arange(64))
torch.manual_seed(0)
teacher = nn.Sequential(nn.Flatten(), nn.Linear({side} * {side}, 10))
config = scheme_config("offline", {{}}, student={{"architecture": "mlp",
                       "kwargs": {{"hidden": 16, "depth": 1}}}})
result = train(config, teacher, train_data, val_data)
# VmHWM: this process's own peak. Not ru_maxrss, which Linux carries over exec from the
# forked parent's memory (the pytest process, over 1 GiB late in the suite).
status = open("/proc/self/status").read().split()
print("steps", result.steps, "samples", len(data), "peak_kib", status[status.index("VmHWM:") + 1])
"""


@pytest.mark.slow
def test_training_on_a_dataset_larger_than_memory_allows_in_float32(tmp_path: Path) -> None:
    path = tmp_path / "big.npz"
    write_big_npz(path)
    assert N_BIG * SIDE * SIDE * 4 >= 4 << 30  # what the eager loader would hold
    script = _TRAIN.format(tests=str(REPO), path=str(path), side=SIDE)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    words = done.stdout.split()
    peak = int(words[words.index("peak_kib") + 1]) * 1024  # the child's own peak (VmHWM)
    print(done.stdout)
    assert int(words[words.index("samples") + 1]) == N_BIG
    assert peak < PEAK_BOUND, f"peak RSS {peak / 2**20:.0f} MiB, bound {PEAK_BOUND >> 20} MiB"


def test_training_with_data_workers_gives_the_same_student(tmp_path: Path) -> None:
    """training.data_workers = 2 reads the batches in worker processes: the same run."""
    from tests.unit.engine.support import TINY_MLP, scheme_config, tiny_teacher
    from worker.engine.trainer import train

    rng = np.random.default_rng(2)
    np.savez(
        tmp_path / "d.npz", x=rng.integers(0, 256, (120, 8, 8), np.uint8), y=np.arange(120) % 10
    )
    data = load_dataset(tmp_path / "d.npz", lazy=True)
    train_data, val_data = split(data, 0.25, 0)
    states = []
    for workers in (0, 2):
        config = scheme_config("offline", {}, student=TINY_MLP)
        training = config.training.model_copy(update={"data_workers": workers, "batch_size": 16})
        config = config.model_copy(update={"training": training})
        torch.manual_seed(0)
        result = train(config, tiny_teacher(), train_data, val_data)
        states.append(result.student.state_dict())
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


@pytest.mark.slow
def test_a_whole_run_on_data_left_on_disk_equals_the_run_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_distillation (train, validate, evaluate, export) on data read lazily gives the
    evaluation of the same run on the data in memory."""
    from core.config import RunConfig
    from tests.unit.engine.support import tiny_teacher
    from worker.engine.export import export_pt2
    from worker.engine.pipeline import run_distillation
    from worker.engine.tasks.classification import data as data_module

    teacher, data = tmp_path / "teacher.pt2", tmp_path / "digits.npz"
    export_pt2(tiny_teacher().eval(), (1, 8, 8), teacher)
    rng = np.random.default_rng(3)
    np.savez(data, x=rng.integers(0, 256, (400, 1, 8, 8), np.uint8), y=np.arange(400) % 10)
    config = RunConfig.model_validate(
        {
            "teacher": {"path": str(teacher)},
            "dataset": {"path": str(data)},
            "student": {"architecture": "mlp", "kwargs": {"hidden": 16, "depth": 1}},
            "losses": [{"name": "ce"}, {"name": "kd"}],
            "training": {"epochs": 1, "batch_size": 64, "device": "cpu", "export_onnx": False},
        }
    )
    eager = run_distillation(config, teacher, data, tmp_path / "eager")
    monkeypatch.setattr(data_module, "LAZY_BYTES", 0)  # every uncompressed x stays on disk
    assert isinstance(load_dataset(data).x, LazyArray)
    lazy = run_distillation(config, teacher, data, tmp_path / "lazy")
    for key in ("student_top1", "teacher_top1", "train_steps"):
        assert lazy[key] == eager[key], key


def test_a_zip_image_folder_is_decoded_per_batch_with_the_same_values(tmp_path: Path) -> None:
    """A zip image folder read lazily (LazyImages) decodes only the images asked for, to the
    values the eager reader gives (mixed sizes and modes resized and converted alike)."""
    import io

    from PIL import Image

    from worker.engine.lazy import LazyImages

    rng = np.random.default_rng(4)
    path = tmp_path / "imgs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(30):
            side = 10 if i % 7 else 13  # a few of another size: resized
            mode = "RGB" if i % 5 else "L"  # a few grey ones: converted
            pixels = rng.integers(0, 256, (side, side, 3), np.uint8)
            img = Image.fromarray(pixels, "RGB").convert(mode)
            out = io.BytesIO()
            img.save(out, format="PNG")
            zf.writestr(f"top/{['cat', 'dog', 'eel'][i % 3]}/{i}.png", out.getvalue())
    eager, lazy = load_dataset(path, lazy=False), load_dataset(path, lazy=True)
    assert isinstance(lazy.x, LazyImages) and lazy.x.shape == eager.x.shape
    assert torch.equal(lazy.y, eager.y) and lazy.classes == eager.classes
    idx = torch.tensor([29, 0, 7, 7, 14, 3])
    assert torch.equal(lazy.x[idx], eager.x[idx])
    (lt, lv), (et, ev) = split(lazy, 0.25, 0), split(eager, 0.25, 0)
    assert torch.equal(lv.x[:], ev.x) and torch.equal(lt.x[:5], et.x[:5])
    batches = list(torch.arange(len(lt)).flip(0).split(4))
    loader = DataLoader(_Batches(lt.x, batches), batch_size=None, num_workers=2)
    for x, idx in zip(loader, batches, strict=True):  # decoded in the worker processes
        assert torch.equal(x, et.x[idx])
    # the decoded limit counts a batch (all 30 here) and the costliest image, lazy or not
    for how in (True, False):
        with pytest.raises(DatasetError, match="decodes to"):
            load_dataset(path, lazy=how, max_decoded_bytes=20_000)
    assert isinstance(load_dataset(path).x, torch.Tensor)  # few images: in memory
