"""The training batches of one epoch, read in DataLoader worker processes when asked.

`batch_stream(task, data, batches, start, device, workers)` yields `task.batch(data, idx)` for
each index batch of `batches[start:]`, in that order (the trainer's seeded permutation decides
the order, never the loader). With `workers` = 0 (`training.data_workers`' default) each batch
is read in the training process, as before. With `workers` > 0 a torch DataLoader reads them in
that many worker processes (a dataset on disk, `worker.engine.lazy.LazyArray`, is reopened in
each), two batches ahead per worker, into pinned memory when the device is a GPU, so the copy
to it does not wait; the batches are the same, bit for bit: reading is deterministic and the
augmentation, the only randomness, runs after, in the training process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from worker.engine.tasks.base import Batch, Task

_PREFETCH = 2  # batches read ahead per worker


class _IndexBatches(Dataset[tuple[Tensor, Tensor]]):
    """Item i: the (inputs, targets) of index batch i, on the CPU."""

    def __init__(self, task: Task, data: Any, batches: list[Tensor]) -> None:
        self.task, self.data, self.batches = task, data, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        batch = self.task.batch(self.data, self.batches[i], torch.device("cpu"))
        return batch.inputs, batch.targets


def batch_stream(
    task: Task, data: Any, batches: list[Tensor], start: int, device: torch.device, workers: int
) -> Iterator[Batch]:
    """The batches `batches[start:]` of `data` on `device`, in order; see the module docstring."""
    todo = batches[start:]
    if workers <= 0 or not todo:
        return (task.batch(data, idx, device) for idx in todo)
    loader = DataLoader(
        _IndexBatches(task, data, todo),
        batch_size=None,
        shuffle=False,
        num_workers=min(workers, len(todo)),
        pin_memory=device.type == "cuda",
        prefetch_factor=_PREFETCH,
    )
    blocking = device.type != "cuda"
    return (
        Batch(x.to(device, non_blocking=not blocking), y.to(device, non_blocking=not blocking))
        for x, y in loader
    )
