"""The training batches of one epoch, read (and augmented) in DataLoader worker processes when
asked.

`batch_stream(task, data, batches, start, device, workers, augment, epoch)` yields
`augment(task.batch(data, idx), epoch, i)` for each index batch i of `batches[start:]`, in that
order (the trainer's seeded permutation decides the order, never the loader). With `workers` =
0 (`training.data_workers`' default) each batch is read and augmented in the training process,
on `device`. With `workers` > 0 a torch DataLoader reads them in that many worker processes (a
dataset on disk, `worker.engine.lazy.LazyArray`, is reopened in each), two batches ahead per
worker. Where the augmentation runs then depends on the device (issue 14, item 2): on a GPU the
workers only read, into pinned memory so the copy does not wait, and the batch is augmented on
the GPU; on the CPU the workers augment too, so the training process only trains. Either way the
batches are the same: reading is deterministic and every random draw of an augmentation is
seeded by its epoch and batch index (`augment.augment_seed`), not by the process that makes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from worker.engine.tasks.base import Batch, Task

_PREFETCH = 2  # batches read ahead per worker


class Augment(Protocol):
    """Batch `index` of epoch `epoch`, augmented (`augment.Augmenter`; the identity when none)."""

    def __call__(self, batch: Batch, epoch: int, index: int) -> Batch: ...


def _unchanged(batch: Batch, epoch: int, index: int) -> Batch:
    return batch


class _IndexBatches(Dataset[tuple[Tensor, Tensor]]):
    """Item i: the (inputs, targets) of index batch i on the CPU, augmented as batch `start + i`
    of the epoch when `augment` is given."""

    def __init__(
        self, task: Task, data: Any, batches: list[Tensor], start: int, augment: Augment, epoch: int
    ) -> None:
        self.task, self.data, self.batches = task, data, batches
        self.start, self.augment, self.epoch = start, augment, epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        batch = self.task.batch(self.data, self.batches[i], torch.device("cpu"))
        batch = self.augment(batch, self.epoch, self.start + i)
        return batch.inputs, batch.targets


def batch_stream(
    task: Task,
    data: Any,
    batches: list[Tensor],
    start: int,
    device: torch.device,
    workers: int,
    augment: Augment = _unchanged,
    epoch: int = 0,
) -> Iterator[Batch]:
    """The batches `batches[start:]` of `data` on `device`, in order, augmented as batches
    `start`, `start + 1`, ... of epoch `epoch`; see the module docstring."""
    todo = batches[start:]
    if workers <= 0 or not todo:
        return (
            augment(task.batch(data, idx, device), epoch, start + i) for i, idx in enumerate(todo)
        )
    on_gpu = device.type == "cuda"
    loader = DataLoader(
        _IndexBatches(task, data, todo, start, _unchanged if on_gpu else augment, epoch),
        batch_size=None,
        shuffle=False,
        num_workers=min(workers, len(todo)),
        pin_memory=on_gpu,
        prefetch_factor=_PREFETCH,
    )
    if not on_gpu:
        return (Batch(x.to(device), y.to(device)) for x, y in loader)
    return (
        augment(Batch(x.to(device, non_blocking=True), y.to(device, non_blocking=True)), epoch, i)
        for i, (x, y) in enumerate(loader, start)
    )
