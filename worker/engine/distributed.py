"""One job on several devices: `training.gpus` N > 1 trains with `torch.distributed`.

`launch(N, device, target, args)` starts ranks 1..N-1 as fresh processes (`spawn`, as
`torchrun` would, so no CUDA state is forked), each running `target(index, N, port, device,
*args)` (rank = index + 1); the calling process is rank 0 and joins the group while the block
runs. Every rank joins one process group at `127.0.0.1:<free port>`, with the `nccl` backend on
CUDA (rank r on `cuda:r` of the devices the process sees) and `gloo` on CPU, where the same code
runs in N CPU processes (how it is tested without a GPU). A rank started here dies with its
parent (`PR_SET_PDEATHSIG`), so a killed job leaves no rank behind; when rank 0 fails, the
others are stopped, and when another rank failed first, its error is raised.

The trainer (`trainer.py`) does the rest: each rank takes its slice of every global batch,
gradients and metrics are summed over the ranks in one `all_reduce`, rank 0 alone reports,
validates and writes checkpoints, and every rank reads the checkpoint to resume.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

TIMEOUT = timedelta(minutes=30)  # a collective waits this long for the other ranks
_PR_SET_PDEATHSIG = 1
_GRACE_S = 30.0  # how long the other ranks get to end when rank 0 failed


def world() -> int:
    """The number of ranks of the current job; 1 outside a process group."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank; 0 outside a process group."""
    return dist.get_rank() if world() > 1 else 0


def device_for(name: str, rank: int, ranks: int) -> torch.device:
    """The device of `rank` for `training.device` `name`: `cuda:rank` on CUDA (ValueError when
    fewer than `ranks` GPUs are visible), else the CPU."""
    cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    if not cuda:
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if count < ranks:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all")
        raise ValueError(
            f"training.gpus is {ranks} but this worker sees {count} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={visible}); lower training.gpus or run it on a worker "
            f"with {ranks} GPUs"
        )
    torch.cuda.set_device(rank)
    return torch.device("cuda", rank)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def joined(
    rank: int, ranks: int, port: int, device_name: str, others: Any = None
) -> Iterator[torch.device]:
    """This process as `rank` of the group while the block runs; yields its device.

    Rank 0 hosts the rendezvous (a `TCPStore` at `port`) and waits for every other rank to
    check in, watching `others` (the `ProcessContext` of the ranks it started): one that ended
    before joining raises its error here instead of leaving rank 0 waiting."""
    device = device_for(device_name, rank, ranks)
    store = dist.TCPStore(
        "127.0.0.1", port, ranks, is_master=rank == 0, timeout=TIMEOUT, wait_for_workers=False
    )
    if rank == 0:
        while not store.check([f"joined/{r}" for r in range(1, ranks)]):
            if others is not None and others.join(timeout=0.1):
                raise RuntimeError("the other training ranks ended before they joined the group")
    else:
        store.set(f"joined/{rank}", "1")
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        store=store,
        rank=rank,
        world_size=ranks,
        timeout=TIMEOUT,
    )
    try:
        yield device
    finally:
        dist.destroy_process_group()


def die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGKILL when its parent ends; exits now if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _rank_main(index: int, parent: int, target: Callable[..., None], *args: Any) -> None:
    die_with_parent(parent)
    target(index, *args)


@contextlib.contextmanager
def launch(
    ranks: int, device_name: str, target: Callable[..., None], args: tuple[Any, ...]
) -> Iterator[torch.device]:
    """Ranks 1..`ranks`-1 run `target(index, ranks, port, device_name, *args)` in new processes
    while this process is rank 0 inside the block (yields its device); see the module docstring.
    `target` must be a module-level function (it is pickled by name)."""
    device_for(device_name, 0, ranks)  # fail here, before starting anything, on too few GPUs
    port = free_port()
    context = mp.start_processes(
        _rank_main,
        args=(os.getpid(), target, ranks, port, device_name, *args),
        nprocs=ranks - 1,
        join=False,
        start_method="spawn",
    )
    try:
        with joined(0, ranks, port, device_name, context) as device:
            yield device
    except BaseException as exc:
        _stop(context, exc)
        raise
    while not context.join():  # the ranks end right after training; raises a rank's error
        pass


def _stop(context: Any, cause: BaseException) -> None:
    """Rank 0 failed: when another rank failed with a different error (it failed first, and
    its closed connection failed rank 0), that error is raised; rank 0's stands when every rank
    failed alike (a bad checkpoint, a loss that is not finite). The others are stopped."""
    deadline = time.monotonic() + _GRACE_S
    try:
        while time.monotonic() < deadline and not context.join(timeout=_GRACE_S):
            pass
    except mp.ProcessRaisedException as exc:
        if not isinstance(cause, (KeyboardInterrupt, SystemExit)) and (
            f"{type(cause).__name__}:" not in str(exc)
        ):
            raise RuntimeError(f"a training rank failed: {str(exc).strip()[-2000:]}") from cause
    except mp.ProcessExitedException:
        pass
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()


def agree(flag: bool) -> bool:
    """Rank 0's `flag` on every rank (a stop request)."""
    if world() == 1:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.broadcast(value, 0)
    return bool(value.item())


def sum_step(params: list[Tensor], values: dict[str, Tensor]) -> dict[str, Tensor]:
    """Sum the gradients of `params` and the step's `values` over the ranks in one
    `all_reduce`; the gradients are set in place, the summed values returned. A parameter
    without a gradient here counts as zeros (every rank runs the same graph, so none has one)."""
    if world() == 1:
        return values
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat(
        [*(g.reshape(-1).float() for g in grads), *(v.reshape(1).float() for v in values.values())]
    )
    dist.all_reduce(flat)
    at = 0
    for grad in grads:
        grad.copy_(flat[at : at + grad.numel()].view_as(grad))
        at += grad.numel()
    return {k: flat[at + i].to(v.dtype) for i, (k, v) in enumerate(values.items())}


def broadcast_modules(modules: list[torch.nn.Module]) -> None:
    """Rank 0's parameters and buffers on every rank (in place)."""
    if world() == 1:
        return
    for module in modules:
        for tensor in module.state_dict(keep_vars=True).values():
            if isinstance(tensor, Tensor):
                dist.broadcast(tensor.data, 0)


def _collective_device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
