"""Peak memory of a run on a .tar image dataset larger than memory allows in float32.

    python -m benchmarks.lazy_tar_peak [--images 40000] [--side 96] [--layout folder|webdataset]
        [--workers 2] [--dir /tmp]

Writes a tar of `images` RGB JPEGs (side x side, quality 90; 10 classes) under `dir`, streamed, so the writer
never holds it; then a fresh Python process loads it (`load_dataset`, the automatic lazy choice,
with `max_decoded_bytes` = 64 MiB, which the eager reader's float32 copy would exceed many times
over), scans it (`describe_dataset` with its preview), splits every sample and trains a few
steps (offline scheme, MLP student, 512 training samples drawn across the whole file, decoded in
`workers` DataLoader worker processes), and prints its own peak RSS (VmHWM).
The tar is deleted afterwards. Figures in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import os, sys, torch
from torch import nn
sys.path.insert(0, {root!r})
from core.config import RunConfig
from worker.engine.lazy import LazyTarImages
from worker.engine.tasks.classification.data import describe_dataset, load_dataset, split
from worker.engine.trainer import train

data = load_dataset({path!r}, max_decoded_bytes=64 << 20)
assert isinstance(data.x, LazyTarImages), type(data.x)
info = describe_dataset({path!r}, max_decoded_bytes=64 << 20)
train_data, val_data = split(data, 0.01, 0)
pick = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(0))
train_data, val_data = train_data.subset(pick[:512]), val_data.subset(torch.arange(min(64, len(val_data))))
torch.manual_seed(0)
teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * {side} * {side}, 10))
config = RunConfig.model_validate({{
    "teacher": {{"path": "unused.pt2"}}, "dataset": {{"path": "unused.tar"}},
    "student": {{"architecture": "mlp", "kwargs": {{"hidden": 16, "depth": 1}}}},
    "losses": [{{"name": "ce"}}, {{"name": "kd"}}], "scheme": {{"name": "offline"}},
    "training": {{"epochs": 1, "batch_size": 64, "device": "cpu", "export_onnx": False,
                 "data_workers": {workers}}},
}})
result = train(config, teacher, train_data, val_data)
status = open("/proc/self/status").read().split()
print("steps", result.steps, "samples", len(data), "classes", info["num_classes"],
      "peak_kib", status[status.index("VmHWM:") + 1])
"""


def write_tar(path: Path, images: int, side: int, layout: str) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, side, dtype=np.float32)
    with tarfile.open(path, "w") as tf:
        for i in range(images):
            label = i % 10
            tint = rng.integers(0, 256, 3).astype(np.float32)
            pixels = base[None, :, None] * 0.5 + tint * 0.5 + rng.integers(0, 16, (side, side, 1))
            jpeg = io.BytesIO()
            image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
            image.save(jpeg, format="JPEG", quality=90)
            if layout == "folder":
                members = [(f"class{label}/{i:06d}.jpg", jpeg.getvalue())]
            else:
                members = [(f"{i:06d}.jpg", jpeg.getvalue()), (f"{i:06d}.cls", b"%d" % label)]
            for name, blob in members:
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tf.addfile(info, io.BytesIO(blob))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40_000)
    parser.add_argument("--side", type=int, default=96)
    parser.add_argument("--layout", choices=("folder", "webdataset"), default="folder")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "big.tar"
        started = time.perf_counter()
        write_tar(path, args.images, args.side, args.layout)
        written = time.perf_counter() - started
        float32 = args.images * 3 * args.side * args.side * 4
        print(
            f"tar: {args.images} images {args.side}x{args.side} RGB ({args.layout}), "
            f"{path.stat().st_size / 2**20:.0f} MiB on disk, {float32 / 2**30:.2f} GiB as "
            f"float32, written in {written:.0f} s"
        )
        script = _CHILD.format(root=str(ROOT), path=str(path), side=args.side, workers=args.workers)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            sys.exit(done.stderr[-4000:])
        words = done.stdout.split()
        peak = int(words[words.index("peak_kib") + 1]) / 1024
        print(
            f"run: {words[words.index('steps') + 1]} steps on {words[words.index('samples') + 1]} "
            f"samples, {time.perf_counter() - started:.0f} s; peak RSS (VmHWM) {peak:.0f} MiB"
        )


if __name__ == "__main__":
    main()
