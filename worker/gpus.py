"""The GPUs of a worker, the queues it consumes for them, and the leases that hand them to jobs.

A worker knows its GPUs from `DS_WORKER_GPUS`: a count ("4": devices 0..3) or a list of what
`CUDA_VISIBLE_DEVICES` takes ("0,1,3", or GPU UUIDs; one device by index: "3,"); "0" means none.
Unset, it has the devices torch sees: `torch.cuda.device_count()` counted in a short child
process, so that the worker's own process never imports torch nor starts CUDA (and without
`/dev/nvidiactl` no child at all: 0 GPUs); when the worker's `CUDA_VISIBLE_DEVICES` is set, its
entries name them.

Queues (`core.jobs`): a worker with G GPUs that consumes `gpu` also consumes `gpu-2` ..
`gpu-G`; it never consumes a `gpu-N` with N > G, so a run on N GPUs only reaches a worker that
has them.

Leases: a job that trains on GPUs takes as many as `training.gpus` asks, all at once or none,
as one lock file per device (`flock`, in `<DS_DATA_DIR>/gpu-leases`): two jobs of one worker
(concurrency > 1), or of two workers on one host sharing the data dir, never share a GPU. The
kernel drops a lock when its file closes, however its holder ends: the end of the job's
training process closes it (before the run's outcome is stored), and a pool process that
crashes or is killed drops it with its files. The job's training process sees only its leased devices (`CUDA_VISIBLE_DEVICES` in the
environment it starts with, before CUDA initialises), and a CPU run on a GPU worker sees none.

Pure except for the lock files and the detection child: no torch, no database (tested with fake
device lists in tests/unit/test_gpu_leases.py).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import IO, Any

from core.jobs import gpu_queue, gpu_queues

log = logging.getLogger(__name__)

_DEVICE = re.compile(r"[A-Za-z0-9][\w.:-]*")  # an index, or a GPU / MIG UUID
_GPU_N = re.compile(r"gpu-(\d+)")
VISIBLE = "CUDA_VISIBLE_DEVICES"


class TooFewGpus(ValueError):
    """The run asks for more GPUs than this worker has."""


def parse(value: str) -> list[str]:
    """The devices `DS_WORKER_GPUS` names: a count ("4" -> 0..3) or a comma-separated list."""
    text = value.strip()
    if text.isdigit():
        return [str(i) for i in range(int(text))]
    devices = [part.strip() for part in text.split(",") if part.strip()]
    for device in devices:
        if not _DEVICE.fullmatch(device):
            raise ValueError(
                f"DS_WORKER_GPUS: {device!r} is not a device index or GPU UUID; give a count "
                "('4') or the devices ('0,1,3')"
            )
    if len(set(devices)) < len(devices):
        raise ValueError(f"DS_WORKER_GPUS names a device twice: {value!r}")
    return devices


def detect(configured: str, environ: Mapping[str, str], count: int | None = None) -> list[str]:
    """This worker's devices: `configured` (`DS_WORKER_GPUS`) when set, else the first `count`
    (torch's device count, counted when None) of `CUDA_VISIBLE_DEVICES`' entries when it is
    set, else 0..count-1."""
    if configured.strip():
        return parse(configured)
    count = torch_device_count() if count is None else count
    visible = environ.get(VISIBLE)
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


def torch_device_count(timeout_s: float = 120.0) -> int:
    """`torch.cuda.device_count()` in a child process (this one keeps clear of torch and CUDA);
    0 without an NVIDIA driver, or when the child fails (logged)."""
    if not Path("/dev/nvidiactl").exists():
        return 0
    code = "import torch; print(torch.cuda.device_count())"
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        )
        return int(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as exc:
        log.warning("could not count this worker's GPUs (%s); set DS_WORKER_GPUS", exc)
        return 0


@cache
def worker_devices() -> list[str]:
    """This worker's devices, found once per worker (the pool processes it forks inherit it)."""
    from core.settings import get_settings

    return detect(get_settings().worker_gpus, os.environ)


def worker_queues(selected: Iterable[str], count: int) -> list[str]:
    """The queues a worker that was told to consume `selected` (`-Q`) consumes with `count`
    GPUs: with `gpu`, also `gpu-2` .. `gpu-<count>`; never a `gpu-N` with N > `count`."""
    chosen = list(dict.fromkeys(selected))
    if "gpu" in chosen:
        chosen += [q for q in gpu_queues(count) if q not in chosen]
    return [q for q in chosen if not (m := _GPU_N.fullmatch(q)) or int(m.group(1)) <= count]


def needed(training: Mapping[str, Any], count: int) -> int:
    """How many of a worker's `count` GPUs a run with this `training` section leases: none on a
    worker without GPUs (the run trains as it would anywhere) or for `device: cpu`, else
    `training.gpus` (TooFewGpus when the worker has fewer)."""
    if count == 0 or training.get("device", "auto") == "cpu":
        return 0
    gpus = int(training.get("gpus", 1))
    if gpus > count:
        raise TooFewGpus(
            f"training.gpus is {gpus} but this worker has {count} GPU(s) (DS_WORKER_GPUS); set "
            f"training.device to 'cuda' so that the run waits in queue {gpu_queue(gpus)} for a "
            f"worker with {gpus} GPUs, or lower training.gpus to {count} or less"
        )
    return gpus


def waiting_message(need: int, free: int, total: int, worker: str) -> str:
    """What a run whose worker has too few free GPUs says while it waits."""
    return f"waiting for {need} free GPUs ({free} of {total} free on worker {worker})"


@dataclass
class Lease:
    """Devices held for one job until `release()` (or the holder's end); no devices: the job
    runs on the CPU and sees no GPU."""

    devices: list[str]
    files: list[IO[bytes]] = field(default_factory=list, repr=False)

    @property
    def env(self) -> dict[str, str]:
        """The job's training process environment: only its devices are visible."""
        return {VISIBLE: ",".join(self.devices)}

    def release(self) -> None:
        for handle in self.files:
            handle.close()  # closing the file drops its flock
        self.files.clear()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class Pool:
    """A worker's devices, leased through lock files in `lock_dir`."""

    def __init__(self, devices: Sequence[str], lock_dir: Path) -> None:
        self.devices = list(devices)
        self.lock_dir = lock_dir

    def _lock(self, device: str) -> IO[bytes] | None:
        """The device's lock file, locked by this call; None when someone holds it."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_dir / f"gpu-{device}.lock", "ab")  # noqa: SIM115 - held
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return handle

    def try_lease(self, count: int) -> Lease | None:
        """`count` free devices (the first ones free, in order), or None and nothing held."""
        lease = Lease([])
        for device in self.devices:
            if len(lease.devices) == count:
                break
            if (handle := self._lock(device)) is not None:
                lease.devices.append(device)
                lease.files.append(handle)
        if len(lease.devices) < count:
            lease.release()
            return None
        return lease

    def free(self) -> int:
        """How many devices nobody holds now (for messages: it may change at once)."""
        held = [h for d in self.devices if (h := self._lock(d)) is not None]
        for handle in held:
            handle.close()
        return len(held)


def lock_dir(data_dir: Path) -> Path:
    """Where a worker's lease lock files live: workers sharing the data dir share the GPUs."""
    return data_dir / "gpu-leases"
