"""The jobs `worker.sandbox` runs in its limited child process: pure engine work on local files.

Each job takes plain JSON arguments and a `channel` to its parent, and returns a JSON-able
result. No database, broker or artifact store here: training callbacks go to the parent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.sandbox import Channel


def preload() -> None:
    """Import torch and the engine while the child waits for its job (the spare child)."""
    import warnings

    # torch 2.13 warns whenever it copies one of its own tree specs (a `LeafSpec`, built by
    # `copy` when torch.export copies a program): torch's deprecation, not the job's, and it
    # came into the worker's log at every model's inspection
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
    import worker.engine.loading  # noqa: F401
    import worker.engine.pipeline  # noqa: F401
    import worker.engine.taps  # noqa: F401
    from worker.sandbox import use_torch_threads

    use_torch_threads()
    warm_up()


def warm_up() -> None:
    """Pay the first-use costs a job would otherwise pay before its first step: loading a
    `.pt2` imports most of torch.export's deserialiser and sympy lazily (about a second), and
    the first forward and backward start autograd. Done on a tiny model of our own, in a
    temporary folder, before the job arrives and its limits apply. Never fails the child."""
    import tempfile

    import torch

    from worker.engine.export import export_pt2
    from worker.engine.loading import load_model
    from worker.engine.students import build_student

    try:
        with tempfile.TemporaryDirectory(prefix="ds-warm-") as tmp:
            path = Path(tmp) / "warm.pt2"
            export_pt2(build_student("mlp", (4,), 2, hidden=4, depth=1), (4,), path)
            loaded = load_model(path, "pt2", None, {})
            student = build_student("mlp", (4,), 2, hidden=4, depth=1)
            optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
            x = torch.zeros(2, 4)
            with torch.no_grad():
                target = loaded.module(x).softmax(-1)
            loss = torch.nn.functional.kl_div(
                student(x).log_softmax(-1), target, reduction="batchmean"
            )
            loss.backward()
            optimizer.step()
    except Exception:  # noqa: BLE001 - a warm-up only: the job reports its own errors
        pass


def inspect_upload(
    *, channel: Channel, path: str, format: str, architecture: str | None, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Load an uploaded model safely and run one dummy forward: its layer table and card."""
    from worker.engine.loading import load_model
    from worker.engine.taps import inspect_model

    if format == "hf":  # a Hugging Face checkpoint: token ids in, blocks and tokenizer facts
        from worker.engine.hf_teacher import inspect_hf

        found = inspect_hf(Path(path))
        keys = ("model_type", "architecture", "params", "num_layers", "hidden_size")
        return {"inspection": found, "card": {key: found.get(key) for key in keys}}
    loaded = load_model(Path(path), format, architecture, kwargs)  # type: ignore[arg-type]
    inspection = inspect_model(loaded.module, loaded.input_shape)
    card = {key: inspection.get(key) for key in ("input_shape", "num_classes", "params", "flops")}
    return {"inspection": inspection, "card": card}


class _ParentCallbacks:
    """The engine's `Callbacks`, forwarded to the parent's reporter over the channel."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def on_start(self, total_steps: int, start_step: int) -> None:
        self.channel.call("on_start", [total_steps, start_step])

    def on_step(self, report: Any) -> None:
        self.channel.notify(
            "on_step",
            {
                "step": report.step,
                "epoch": report.epoch,
                "total_steps": report.total_steps,
                "metrics": {k: float(v) for k, v in report.metrics.items()},
                "throughput": float(report.throughput),
                "eta_seconds": float(report.eta_seconds),
            },
        )

    def on_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.channel.call("on_epoch", [epoch, step, {k: float(v) for k, v in metrics.items()}])

    def on_samples(self, epoch: int, samples: list[dict[str, Any]]) -> None:
        self.channel.call("on_samples", [epoch, samples])

    def on_checkpoint(self, path: Path, step: int) -> None:
        self.channel.call("on_checkpoint", [str(path), step])  # uploaded before training goes on

    def should_stop(self) -> bool:
        return bool(self.channel.call("should_stop"))


def train(
    *,
    channel: Channel,
    config: dict[str, Any],
    teacher_path: str,
    dataset_path: str,
    out_dir: str,
    checkpoint_path: str,
    student_path: str | None,
    teacher_paths: list[str] | None = None,
    teacher_cache: str | None = None,
    teacher_cache_key: str | None = None,
) -> dict[str, Any]:
    """One distillation run end to end (`pipeline.run_distillation`); returns its summary."""
    import torch

    from core.config import RunConfig
    from worker.engine.pipeline import run_distillation
    from worker.engine.trainer import Callbacks

    class Forwarded(_ParentCallbacks, Callbacks):
        pass

    summary = run_distillation(
        RunConfig.model_validate(config),
        Path(teacher_path),
        Path(dataset_path),
        Path(out_dir),
        callbacks=Forwarded(channel),
        checkpoint_path=Path(checkpoint_path),
        student_path=Path(student_path) if student_path else None,
        teacher_paths=[Path(p) for p in teacher_paths] if teacher_paths else None,
        teacher_cache=Path(teacher_cache) if teacher_cache else None,
        teacher_cache_key=teacher_cache_key,
    )
    if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        summary["cuda_visible_devices"] = visible  # the GPUs leased to this run (worker/gpus.py)
    summary["torch_threads"] = torch.get_num_threads()  # its share of the worker's cores
    summary["nice"] = os.getpriority(os.PRIO_PROCESS, 0)  # its CPU priority (DS_WORKER_NICE)
    return summary


JOBS = {"inspect": inspect_upload, "train": train}
