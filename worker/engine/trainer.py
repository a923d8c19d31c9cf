"""The training loop, generic over a `Scheme` and a `Task` (the run config names both).

The scheme (`schemes/`, default `offline`: one student from one frozen teacher) decides which
models train, the teacher's grad mode and forward, the optimizer's parameter groups, what a step
combines and what a checkpoint holds of the models; the task (`tasks/`, default
`classification`) decides what a batch is, the student's input and output sizes and the
validation metrics. The loop itself knows neither. A scheme may train several students
(`Scheme.students()`, e.g. `online`'s peers): each step runs them all on the batch, the
configured logit losses apply to each (`p{k}/<loss>` for student k > 0) and each is validated
(`val/p{k}/...`); `TrainResult.students` returns them, the configured student first. A scheme
may also train in `rounds()` of `training.epochs` each (`self`'s born-again generations): epochs
are numbered across rounds, and before each later round's first batch the loop calls
`start_round`, clears the optimizer's state and the LR schedule restarts;
`TrainResult.earlier` holds the models of the rounds before the last. A scheme may also put other
inputs and targets in a batch's place before the step (`Scheme.step_inputs`, a function of the
batch, the step and the seed: `on_policy`'s student-generated continuations).

Deterministic on CPU: the same config gives bit-identical weights, and a run interrupted (cancel,
crash) and resumed from its checkpoint ends exactly where an uninterrupted run would. The order
of samples in epoch e is a permutation from `torch.Generator().manual_seed(seed * 1_000_003 + e)`,
cut into batches in order (the last one may be smaller), so a resume at batch b of epoch e just
re-creates that permutation and continues at b.

A checkpoint holds the scheme's model states (offline: the student and the loss modules'
states: connectors, pre-trained auxiliary modules and their `prepared` flags), optimizer,
scheduler, the position (step, epoch, batch), the CPU/CUDA RNG states and the history so far; it
is written atomically (tmp file + `os.replace`) and read with `torch.load(weights_only=True)`.

Speed (issue 14): a step never waits for the device. Its metrics stay there (`_Window`) and are
read once per report, checkpoint and epoch end, where the finite check runs; the numbers are
those of reading every step. `training.grad_accumulation` N runs each batch as N micro-batches
whose gradients add up before the one optimizer step (same steps, schedule and checkpoints;
activation memory of batch_size / N; exact to rounding for losses that average over samples).
On CUDA: batches copied from pinned memory without blocking (`tasks.base.to_device`), fused
optimizers, bf16 autocast (`training.amp`) and channels-last images and models
(`training.channels_last` auto; `on` applies it on CPU too). `training.compile` compiles the
teacher's and the students' forward in place (`nn.Module.compile`, so state dicts, taps and
checkpoints are unchanged) and hands them back uncompiled; a model that does not compile runs
eagerly with a warning. The teacher forward does only what the active losses need: none when no
active loss needs the teacher; in the offline scheme, when every active loss that needs it is a
feature or relation loss (catalog kind: none reads the teacher's logits), it stops after the last
tapped layer (`OfflineScheme.teacher_features`: a hook raises once every tap has its tensor), for
eager teachers (plain modules and unflattened `.pt2` archives; a compiled or ONNX teacher runs
whole); with `training.teacher_cache` the logits of a batch the cache holds are replayed instead
(`teacher_cache.py`).

Losses declare what they need through class flags, never by name: `needs_teacher` (else the
teacher forward is skipped), `needs_input_grad` (the input batch requires grad), `needs_prepare`
(`prepare_once` runs after any checkpoint is restored and before the first step, on the teacher
features of the loss's pairs over the training data in a fixed order; a resumed run whose
checkpoint says `prepared` skips it). Every step a loss gets the logits, labels, its pairs'
features, the input batch and both models (`StepOutputs`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core import catalog
from core.config import RunConfig, TrainSettings
from worker.engine import distributed
from worker.engine.augment import Augmenter, augment_seed
from worker.engine.loader import batch_stream
from worker.engine.loading import is_shell, set_mode
from worker.engine.losses import DistillLoss, LossContext, StepOutputs, build_loss
from worker.engine.onnx_teacher import OnnxTeacher
from worker.engine.schemes import Scheme, StepView, build_scheme
from worker.engine.schemes.offline import OfflineScheme
from worker.engine.tasks import Task, build_task
from worker.engine.teacher_cache import TeacherCache

PERMUTATION_STRIDE = 1_000_003
COMPILE_BACKEND: Any = "inductor"  # `training.compile`'s torch.compile backend

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised by `train` when `Callbacks.should_stop()` said so; a checkpoint was saved first."""


@dataclass
class StepReport:
    step: int
    epoch: int
    total_steps: int
    metrics: dict[str, float]
    throughput: float  # training samples per second over the reported window
    eta_seconds: float


class Callbacks:
    """Hooks the caller overrides to follow (and stop) training; every method is a no-op here."""

    def on_start(self, total_steps: int, start_step: int) -> None:
        """Before the first step; `start_step` > 0 when resuming from a checkpoint."""

    def on_step(self, report: StepReport) -> None:
        """Every `training.log_interval(total)` steps, with metrics averaged over those steps."""

    def on_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        """After each epoch (0-based): the task's val/* metrics (classification: val/top1,
        val/loss) and train/loss."""

    def on_samples(self, epoch: int, samples: list[dict[str, Any]]) -> None:
        """After `on_epoch`, when the task shows something of the student as it trains
        (`Task.live_samples`: a language model's continuations next to the teacher's)."""

    def on_checkpoint(self, path: Path, step: int) -> None:
        """After a checkpoint was written."""

    def should_stop(self) -> bool:
        """Checked before every step; True saves a checkpoint and raises `Cancelled`.

        Also checked before every batch of a loss's pre-training (`needs_prepare`), which runs
        before the first step: True there raises `Cancelled` with nothing saved yet.
        """
        return False


@dataclass
class TrainResult:
    student: nn.Module
    steps: int
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)
    students: list[nn.Module] = field(default_factory=list)  # all trained, `student` first
    earlier: list[nn.Module] = field(default_factory=list)  # `Scheme.earlier_students()`


@dataclass
class _Term:
    """One configured loss: its module, weight, metric key and which layer pairs it reads."""

    key: str
    loss: DistillLoss
    weight: float
    pairs: list[int]
    reads_logits: bool = True  # the teacher's logits (feature and relation losses do not)


@dataclass
class _State:
    """Where the loop is, plus what a resume needs to carry on exactly."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# setup


def resolve_device(name: str) -> torch.device:
    if distributed.world() > 1:  # `training.gpus` > 1: this rank's GPU, or the CPU
        return distributed.device_for(name, distributed.rank(), distributed.world())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no GPU is visible; use 'auto' or 'cpu'")
    return torch.device(name)


def _build_student(config: RunConfig, task: Task, data: Any) -> nn.Module:
    if config.student.source != "zoo":
        raise ValueError(
            "student.source='model' needs the loaded student module passed as train(student=...)"
        )
    from worker.engine.students import build_student

    return build_student(
        config.student.architecture,
        task.input_shape(data),
        task.output_size(data),
        **config.student.kwargs,
    )


def _pair_shapes(
    config: RunConfig, teacher: nn.Module, student: nn.Module, x: Tensor
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(student_shape, teacher_shape) of each layer pair, from one dummy forward of each model."""
    if not config.layer_pairs:
        return []
    s_feats, t_feats = _tap_once(config, teacher, student, x)
    return [(tuple(s.shape[1:]), tuple(t.shape[1:])) for s, t in zip(s_feats, t_feats, strict=True)]


def _tap_once(
    config: RunConfig, teacher: nn.Module, student: nn.Module, x: Tensor
) -> tuple[list[Tensor], list[Tensor]]:
    was_training = student.training
    student.eval()
    with _taps(config, teacher, student) as (t_taps, s_taps), torch.inference_mode():
        teacher(x)
        student(x)
        result = list(s_taps.features), list(t_taps.features)
    student.train(was_training)
    return result


@contextlib.contextmanager
def _taps(config: RunConfig, teacher: nn.Module, student: nn.Module) -> Iterator[tuple[Any, Any]]:
    """FeatureTaps on both models for the configured layer pairs (None when there are none)."""
    if not config.layer_pairs:
        yield None, None
        return
    from worker.engine.taps import FeatureTaps

    t_taps = FeatureTaps(teacher, [(p.teacher, p.tap) for p in config.layer_pairs], side="teacher")
    s_taps = FeatureTaps(student, [(p.student, p.tap) for p in config.layer_pairs], side="student")
    with t_taps, s_taps:
        yield t_taps, s_taps


def _build_terms(
    config: RunConfig,
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]],
    sizes: tuple[int, int],
    teacher: nn.Module,
    student: nn.Module,
) -> list[_Term]:
    """The configured losses; `sizes` is (the task's output size, training samples)."""
    specs, epochs = config.losses, config.training.epochs
    paths = [(p.student, p.teacher) for p in config.layer_pairs]
    s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
    terms, names = [], [s.name for s in specs]
    for i, spec in enumerate(specs):
        needs = catalog.LOSSES[spec.name].needs_pairs
        idx = list(range(len(shapes))) if spec.pairs is None else list(spec.pairs)
        idx = idx if needs else []
        ctx = LossContext(
            sizes[0],
            [shapes[j] for j in idx],
            sizes[1],
            epochs,
            pair_paths=[paths[j] for j in idx],
            student_modules=[s_mods[paths[j][0]] for j in idx],
            teacher_modules=[t_mods[paths[j][1]] for j in idx],
        )
        key = spec.name if names.count(spec.name) == 1 else f"{spec.name}_{i}"
        reads = catalog.LOSSES[spec.name].kind not in ("feature", "relation")
        terms.append(_Term(key, build_loss(spec, ctx), spec.weight, idx, reads))
    return terms


def _optimizer(
    ts: TrainSettings, params: list[dict[str, Any]], device: torch.device | None = None
) -> torch.optim.Optimizer:
    """The configured optimizer over the scheme's parameter groups; on a GPU its fused kernels
    (one launch for every parameter) when this torch has them."""
    if ts.optimizer == "adamw":
        fast = _fused(torch.optim.AdamW, device)
        return torch.optim.AdamW(params, lr=ts.lr, weight_decay=ts.weight_decay, **fast)
    fast = _fused(torch.optim.SGD, device)
    return torch.optim.SGD(
        params, lr=ts.lr, momentum=ts.momentum, weight_decay=ts.weight_decay, **fast
    )


def _fused(optimizer: type, device: torch.device | None) -> dict[str, Any]:
    """`fused=True` on CUDA where the optimizer takes it; nothing (torch's default) elsewhere,
    which keeps CPU runs bit-identical to earlier ones."""
    if device is None or device.type != "cuda":
        return {}
    return {"fused": True} if "fused" in inspect.signature(optimizer).parameters else {}


def _amp_on(device: torch.device, ts: TrainSettings) -> bool:
    """bf16 autocast: `training.amp` on a GPU; a CPU run ignores it."""
    return device.type == "cuda" and ts.amp


def _channels_last_on(device: torch.device, ts: TrainSettings) -> bool:
    """`training.channels_last`: on, off, or auto (on a GPU only)."""
    return ts.channels_last == "on" or (ts.channels_last == "auto" and device.type == "cuda")


def _compile(module: nn.Module, probe: Tensor, what: str) -> bool:
    """Compile `module`'s forward in place (`nn.Module.compile`: its state dict keeps its keys)
    and check it compiles with one forward of `probe` in eval mode without gradient (nothing
    changes: no BatchNorm statistics, no random numbers); when it does not, it runs as before
    and the log says why. The training forward compiles again at the first step."""
    module.compile(backend=COMPILE_BACKEND)
    was_training = module.training
    try:
        set_mode(module, False)
        with torch.no_grad():
            module(probe)
    except Exception as exc:  # noqa: BLE001 - any compiler failure: run eagerly instead
        _uncompile(module)
        cause = getattr(exc, "inner_exception", None) or exc  # dynamo wraps the backend's
        lines = str(cause).strip().splitlines() or [""]
        log.warning(
            "training.compile: the %s could not be compiled, it runs uncompiled (%s: %s)",
            what,
            type(cause).__name__,
            lines[0][:300],
        )
        return False
    finally:
        set_mode(module, was_training)
    return True


def _uncompile(module: nn.Module) -> None:
    module._compiled_call_impl = None


def _schedule(
    ts: TrainSettings, total_steps: int, opt: torch.optim.Optimizer, rounds: int = 1
) -> Any:
    """Per-step LR factor: cosine to 0, step decay at epoch fractions, or constant; restarted
    at each of a scheme's `rounds`."""
    period = total_steps // rounds
    total_steps = period
    milestones = [m * total_steps for m in ts.step_milestones]

    def factor(step: int) -> float:
        step = step % period if rounds > 1 else step
        if ts.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
        if ts.schedule == "step":
            return ts.step_gamma ** sum(step >= m for m in milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, skip_single: bool, ranks: int = 1
) -> list[Tensor]:
    """The index batches of one epoch, in order; a trailing batch of 1 is dropped if asked.
    With `ranks` > 1 (`training.gpus`) a trailing batch too small to give each rank a sample
    (two with `skip_single`) is dropped."""
    gen = torch.Generator().manual_seed(seed * PERMUTATION_STRIDE + epoch)
    batches = list(torch.randperm(n, generator=gen).split(batch_size))
    if batches and len(batches[-1]) < ranks * (2 if skip_single else 1):
        batches.pop()
    return batches


# ----------------------------------------------------------------------------------------------
# checkpoints


def _save_checkpoint(
    path: Path, scheme: Scheme, opt: Any, sched: Any, state: _State, total_steps: int
) -> None:
    payload = {
        **scheme.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "total_steps": total_steps,
        "step": state.step,
        "epoch": state.epoch,
        "batch": state.batch,
        "epoch_loss_sum": state.epoch_loss_sum,
        "epoch_loss_count": state.epoch_loss_count,
        "history": state.history,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, scheme: Scheme, opt: Any, sched: Any, total_steps: int) -> _State:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("total_steps") != total_steps:
        raise ValueError(
            f"checkpoint '{path}' belongs to a run of {ckpt.get('total_steps')} steps but this "
            f"config makes {total_steps} (epochs, batch size or data changed); restore those "
            "settings to resume, or delete the checkpoint to start over"
        )
    try:
        scheme.load_state_dict(ckpt)
    except (RuntimeError, KeyError) as exc:
        raise ValueError(
            f"checkpoint '{path}' does not fit this run's student or losses ({exc}); "
            "delete it to start over"
        ) from exc
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"])
    if ckpt["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
    return _State(
        ckpt["step"],
        ckpt["epoch"],
        ckpt["batch"],
        ckpt["epoch_loss_sum"],
        ckpt["epoch_loss_count"],
        list(ckpt["history"]),
    )


# ----------------------------------------------------------------------------------------------
# the loop


class _Window:
    """Accumulates per-step metrics between two reports without waiting for the device: a
    step's values stay there, stacked into one float64 vector (exact for every float dtype),
    and `flush` copies every pending step's values to the host at once, then adds them up in
    step order as plain floats, exactly as reading each step would (the window's means and the
    epoch's `train/loss`)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.samples = 0
        self.started = time.perf_counter()
        self.pending: list[tuple[list[str], Tensor, int, float]] = []

    def add(self, metrics: dict[str, Tensor], batch: int, lr: float) -> None:
        """One step's detached values ("loss" first) on the device, its batch size and LR."""
        dev = metrics["loss"].device
        values = torch.stack([v.detach().to(dev, torch.float64) for v in metrics.values()])
        self.pending.append((list(metrics), values, batch, lr))
        self.samples += batch

    def flush(self, state: _State) -> None:
        """Read the pending steps (one transfer) into the sums and the epoch's loss."""
        if not self.pending:
            return
        host = torch.cat([values for _, values, _, _ in self.pending]).tolist()
        at = 0
        for keys, _, batch, lr in self.pending:
            step = dict(zip(keys, host[at : at + len(keys)], strict=True))
            at += len(keys)
            for k, v in {**step, "lr": lr}.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
                self.counts[k] = self.counts.get(k, 0) + 1
            state.epoch_loss_sum += step["loss"] * batch
            state.epoch_loss_count += batch
        self.pending.clear()

    def report(self, step: int, epoch: int, total: int) -> StepReport:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        steps = max(self.counts.get("loss", 1), 1)
        metrics = {k: s / self.counts[k] for k, s in self.sums.items()}
        eta = elapsed / steps * (total - step)
        return StepReport(step, epoch, total, metrics, self.samples / elapsed, eta)


class _Loop:
    """The state one `train` call works on; methods are the steps of the loop."""

    def __init__(
        self,
        config: RunConfig,
        scheme: Scheme,
        task: Task,
        terms: list[_Term],
        device: torch.device,
        cb: Callbacks,
    ) -> None:
        self.config, self.ts = config, config.training
        self.scheme, self.task, self.terms = scheme, task, terms
        self.teacher, self.student, self.losses = scheme.teacher, scheme.student, scheme.losses
        self.device, self.cb = device, cb
        self.opt = _optimizer(self.ts, scheme.param_groups(), device)
        self.amp = _amp_on(device, self.ts)
        self.channels_last = _channels_last_on(device, self.ts)
        # a trailing batch of 1 breaks BatchNorm in training mode (student or a connector)
        self.skip_single = any(_has_batchnorm(m) for m in scheme.trained_modules())
        self.augment = Augmenter(config.augment, config.seed)  # `augment.py`
        self.rank, self.ranks = distributed.rank(), distributed.world()  # `training.gpus`
        self.params = [p for group in self.opt.param_groups for p in group["params"]]
        self.cache: TeacherCache | None = None  # `teacher_cache.py`, when the run uses one
        # the teacher's forward may stop after its last tapped layer (`teacher_features`):
        # the offline scheme itself (others read the teacher's logits), an eager teacher
        self.cut_teacher = (
            type(scheme) is OfflineScheme
            and not self.ts.compile
            and not isinstance(scheme.teacher, OnnxTeacher)
        )

    def should_stop(self) -> bool:
        """`Callbacks.should_stop()` of rank 0, on every rank."""
        return distributed.agree(self.cb.should_stop() if self.rank == 0 else False)

    def inputs(self, x: Tensor) -> Tensor:
        """A batch's inputs as the models take them: images channels-last when that is on."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def micro_batches(self, n: int) -> int:
        """How many micro-batches a batch of `n` runs as: `grad_accumulation`, fewer for a
        small batch (each gets a sample, two with BatchNorm)."""
        return max(1, min(self.ts.grad_accumulation, n // 2 if self.skip_single else n))

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def active_terms(self, epoch: int) -> list[_Term]:
        active = [t for t in self.terms if t.loss.active(epoch)]
        exclusive = [t for t in active if t.loss.exclusive(epoch)]
        return exclusive or active

    def cached_logits(
        self, x: Tensor, y: Tensor, epoch: int, batch: int, idx: Tensor
    ) -> Tensor | None:
        """With a teacher-output cache: batch `batch` of epoch `epoch`'s teacher logits,
        replayed, or run once (the whole batch) and recorded; None without a cache or when no
        active loss reads the teacher. `y`: the batch's targets (a language model's token
        logits are kept at the positions whose target counts, `teacher_cache.py`)."""
        if self.cache is None or not any(t.loss.needs_teacher for t in self.active_terms(epoch)):
            return None
        start, seed = batch * self.ts.batch_size, augment_seed(self.config.seed, epoch, batch)
        found = self.cache.lookup(epoch, start, idx, seed, x.device, y)
        if found is not None:
            return found
        if is_shell(self.teacher):
            raise RuntimeError(
                f"batch {batch} of epoch {epoch} is not in the teacher-output cache, and the "
                "teacher was not loaded (its cache was thought to hold every batch)"
            )
        logits, _ = self.scheme.teacher_outputs(x, None, True, self.autocast)
        return self.cache.record(epoch, start, idx, seed, logits, y)

    def step(
        self,
        x: Tensor,
        y: Tensor,
        epoch: int,
        taps: tuple[Any, Any],
        cached: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """One optimisation step; returns the detached weighted terms and the total, on the
        device. With `grad_accumulation` N the batch runs as N micro-batches, each term scaled
        by the micro-batch's share of the samples, so the gradients (and the returned values)
        add up to the whole batch's for losses that average over samples. `cached`: the
        batch's teacher logits from the cache (then the teacher does not run).

        With `training.gpus` N > 1 this rank runs its N-th of the batch the same way (its
        micro-batches scaled by their share of the whole batch) and the gradients and values
        are summed over the ranks: the whole batch's again, on every rank."""
        terms = self.active_terms(epoch)
        if not terms:
            raise ValueError(f"no loss is active in epoch {epoch}; add one that always is (ce)")
        whole = len(x)
        if self.ranks > 1:  # this rank's slice of the batch
            x, y = x.tensor_split(self.ranks)[self.rank], y.tensor_split(self.ranks)[self.rank]
            cached = cached.tensor_split(self.ranks)[self.rank] if cached is not None else None
        parts = self.micro_batches(len(x))
        if parts == 1 and self.ranks == 1:
            out = self.forward_backward(x, y, epoch, taps, terms, None, cached=cached)
        else:
            out = {}
            logits = cached.tensor_split(parts) if cached is not None else [None] * parts
            chunks = zip(x.tensor_split(parts), y.tensor_split(parts), logits, strict=True)
            for i, (xs, ys, ls) in enumerate(chunks):
                share = len(xs) / whole
                part = self.forward_backward(
                    xs, ys, epoch, taps, terms, share, first=i == 0, cached=ls
                )
                out = {k: out[k] + v if k in out else v for k, v in part.items()}
        out = distributed.sum_step(self.params, out)  # over the ranks (gpus > 1)
        self.opt.step()
        return out

    def features_only(self, terms: list[_Term], taps: Any) -> bool:
        """Whether the teacher is needed for its tapped features only (no active loss reads
        its logits), and its forward may stop after the last tapped layer."""
        needed = [t for t in terms if t.loss.needs_teacher]
        return (
            self.cut_teacher
            and taps is not None
            and bool(needed)
            and not any(t.reads_logits for t in needed)
        )

    def forward_backward(
        self,
        x: Tensor,
        y: Tensor,
        epoch: int,
        taps: tuple[Any, Any],
        terms: list[_Term],
        share: float | None,
        first: bool = True,
        cached: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The forward and backward of one (micro-)batch, its terms scaled by `share`; the
        first clears the gradients of the last step just before its backward. `cached`: its
        teacher logits from the cache (logit losses only: no teacher features)."""
        t_feats: list[Tensor] = []
        if cached is not None:
            t_logits = cached
        elif self.features_only(terms, taps[0]):
            assert isinstance(self.scheme, OfflineScheme)
            t_logits = x.new_empty(0)  # no active loss reads them: the head does not run
            t_feats = self.scheme.teacher_features(x, taps[0], self.autocast)
        else:
            needed = any(t.loss.needs_teacher for t in terms)
            t_logits, t_feats = self.scheme.teacher_outputs(x, taps[0], needed, self.autocast)
        if x.is_floating_point() and any(t.loss.needs_input_grad for t in terms):
            x = x.detach().requires_grad_(True)
        peers = self.scheme.students()[1:]
        with self.autocast():
            s_logits = self.student(x)
            p_logits = [peer(x) for peer in peers]
        s_feats = list(taps[1].features) if taps[1] is not None else []
        values: dict[str, Tensor] = {}
        with self.autocast():  # connectors see bf16 features under amp
            for term in terms:
                out = StepOutputs(
                    s_logits,
                    t_logits,
                    y,
                    [s_feats[i] for i in term.pairs],
                    [t_feats[i] for i in term.pairs],
                    epoch,
                    inputs=x,
                    student=self.student,
                    teacher=self.teacher,
                )
                values[term.key] = term.weight * term.loss(out).float()

        def logit_terms(logits: Tensor, model: nn.Module) -> dict[str, Tensor]:
            """The configured losses without layer pairs, weighted, of another model's logits."""
            with self.autocast():
                return {
                    term.key: term.weight * term.loss(StepOutputs(
                        logits, t_logits, y, [], [], epoch, inputs=x, student=model,
                        teacher=self.teacher,
                    )).float()
                    for term in terms
                    if not term.pairs
                }  # fmt: skip

        for k, (peer, logits) in enumerate(zip(peers, p_logits, strict=True), 1):
            for key, value in logit_terms(logits, peer).items():  # the other students' losses
                values[f"p{k}/{key}"] = value
        view = StepView(x, y, s_logits, t_logits, epoch, self.autocast, [s_logits, *p_logits])
        view.logit_terms = logit_terms
        values = self.scheme.combine(values, view)
        if share is not None:
            values = {k: v * share for k, v in values.items()}
        total = torch.stack(list(values.values())).sum()
        if first:
            self.opt.zero_grad(set_to_none=True)
        total.backward()
        return {"loss": total.detach(), **{f"loss/{k}": v.detach() for k, v in values.items()}}

    def prepare(self, data: Any) -> None:
        """Run `prepare_once` of every loss that needs it (after a checkpoint was restored)."""
        todo = [t for t in self.terms if t.loss.needs_prepare and not bool(t.loss.prepared)]
        if not todo:
            return
        with _taps(self.config, self.teacher, self.student) as (t_taps, _):
            for term in todo:
                term.loss.prepare_once(self.teacher_features(data, t_taps, term.pairs), self.device)

    def teacher_features(
        self, data: Any, taps: Any, pairs: list[int]
    ) -> Callable[[], Iterator[list[Tensor]]]:
        """A re-iterable source of the teacher features of `pairs`, batch by batch, in the
        order of epoch 0, without gradient."""

        def batches() -> Iterator[list[Tensor]]:
            order = epoch_batches(
                len(data), self.ts.batch_size, self.config.seed, 0, self.skip_single
            )
            for idx in order:
                if self.should_stop():
                    raise Cancelled("cancelled while pre-training a loss's auxiliary modules")
                with torch.no_grad(), self.autocast():
                    self.teacher(self.inputs(self.task.batch(data, idx, self.device).inputs))
                    feats = taps.features if taps is not None else []
                yield [feats[i].detach() for i in pairs]

        return batches

    def validate(self, data: Any) -> dict[str, float]:
        """The task's validation metrics of the student, and of any other student the scheme
        trains (`val/p{k}/...`)."""
        metrics = self.task.validate(
            self.student, data, self.ts.batch_size, self.device, self.autocast
        )
        for k, peer in enumerate(self.scheme.students()[1:], 1):
            theirs = self.task.validate(peer, data, self.ts.batch_size, self.device, self.autocast)
            metrics.update({_peer_key(name, k): v for name, v in theirs.items()})
        metrics.update(
            self.scheme.validate_extra(
                lambda m: self.task.validate(
                    m, data, self.ts.batch_size, self.device, self.autocast
                )
            )
        )
        return metrics


def _peer_key(name: str, k: int) -> str:
    """`val/top1` -> `val/p1/top1`: the metric of student k."""
    head, sep, tail = name.partition("/")
    return f"{head}/p{k}/{tail}" if sep else f"p{k}/{name}"


def _check_finite(report: StepReport) -> None:
    if not math.isfinite(report.metrics["loss"]):
        raise FloatingPointError(
            f"the loss became {report.metrics['loss']} at step {report.step} "
            f"({report.metrics}); lower training.lr or the loss weights, or turn off amp"
        )


def train(
    config: RunConfig,
    teacher: nn.Module,
    train_data: Any,
    val_data: Any,
    *,
    student: nn.Module | None = None,
    callbacks: Callbacks | None = None,
    checkpoint_path: Path | None = None,
    task: Task | None = None,
    scheme: Scheme | None = None,
    teacher_cache: TeacherCache | None = None,
) -> TrainResult:
    """Distil `teacher` into the configured student on `train_data`; see the module docstring.

    `task` and `scheme` default to the ones the config names (`config.task`, `config.scheme`),
    built from their catalog entries. `teacher_cache`: the run's teacher-output cache
    (`teacher_cache.py`; logit losses only), which replays the batches it holds and records
    the others.
    """
    cb = callbacks or Callbacks()
    ts = config.training
    task = task if task is not None else build_task(config.task, **config.task_params)
    scheme = scheme if scheme is not None else build_scheme(config.scheme, **config.scheme_params)
    if len(train_data) == 0:
        raise ValueError("the training split is empty; upload more samples")
    device = resolve_device(ts.device)
    torch.manual_seed(config.seed)
    student = student if student is not None else _build_student(config, task, train_data)
    scheme.setup(teacher, student, nn.ModuleList())
    student = scheme.student  # a scheme may wrap it (split: head + the teacher's tail)
    if not is_shell(teacher):  # a teacher without weights: the cache replays all it gives
        teacher.to(device)
    student.to(device).train()
    probe = task.batch(train_data, torch.arange(min(2, len(train_data))), device).inputs
    shapes = _pair_shapes(config, teacher, student, probe)
    sizes = (task.output_size(train_data), len(train_data))
    terms = _build_terms(config, shapes, sizes, teacher, student)
    scheme.losses.extend(t.loss for t in terms)
    scheme.losses.to(device)
    scheme.to(device)
    loop = _Loop(config, scheme, task, terms, device, cb)
    loop.cache = teacher_cache
    loop.augment.fit(probe, task.output_size(train_data))  # ValueError if it cannot
    val_data = loop.augment.eval_data(val_data)  # validation: normalised, no random op
    if loop.channels_last:
        for module in (teacher, *scheme.trained_modules()):
            if not is_shell(module):
                module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    per_epoch = len(
        epoch_batches(len(train_data), ts.batch_size, config.seed, 0, loop.skip_single, loop.ranks)
    )
    if per_epoch == 0:
        raise ValueError("the training split has a single sample; BatchNorm needs at least 2")
    total = per_epoch * ts.epochs * scheme.rounds()
    sched = _schedule(ts, total, loop.opt, scheme.rounds())
    state = _State()
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        state = _load_checkpoint(Path(checkpoint_path), scheme, loop.opt, sched, total)
    compiled = []
    if ts.compile:
        models = [("teacher", teacher), *(("student", m) for m in scheme.students())]
        models = [(what, m) for what, m in models if not is_shell(m)]
        compiled = [m for what, m in models if _compile(m, loop.inputs(probe), what)]
    try:
        loop.prepare(loop.augment.eval_data(train_data))
        distributed.broadcast_modules(scheme.trained_modules())  # the same start on every rank
        cb.on_start(total, state.step)
        _run_epochs(loop, sched, state, train_data, val_data, total, checkpoint_path)
    finally:
        for module in compiled:  # the models go back as plain modules (export, evaluation)
            _uncompile(module)
    return TrainResult(
        student, state.step, ts.epochs, state.history, scheme.students(), scheme.earlier_students()
    )


def _run_epochs(
    loop: _Loop,
    sched: Any,
    state: _State,
    train_data: Any,
    val_data: Any,
    total: int,
    ckpt: Path | None,
) -> None:
    ts, seed = loop.ts, loop.config.seed

    def save() -> None:
        if ckpt is not None and loop.rank == 0:  # rank 0 alone writes; every rank reads it
            window.flush(state)  # the epoch's loss so far is part of the checkpoint
            _save_checkpoint(Path(ckpt), loop.scheme, loop.opt, sched, state, total)
            loop.cb.on_checkpoint(Path(ckpt), state.step)

    window = _Window()
    with _taps(loop.config, loop.teacher, loop.student) as taps:
        while state.epoch < ts.epochs * loop.scheme.rounds():
            if state.batch == 0 and state.epoch and state.epoch % ts.epochs == 0:
                loop.scheme.start_round(state.epoch // ts.epochs)  # e.g. the next generation
                loop.opt.state.clear()
            batches = epoch_batches(
                len(train_data), ts.batch_size, seed, state.epoch, loop.skip_single, loop.ranks
            )
            stream = batch_stream(
                loop.task,
                train_data,
                batches,
                state.batch,
                loop.device,
                ts.data_workers,
                loop.augment,
                state.epoch,
            )  # read, and augmented on the CPU, in worker processes when data_workers > 0
            while state.batch < len(batches):
                if loop.should_stop():
                    save()
                    raise Cancelled(f"cancelled at step {state.step}")
                idx = batches[state.batch]
                batch = next(stream)  # augmented: one batch for all models
                x, y = loop.scheme.step_inputs(
                    loop.inputs(batch.inputs), batch.targets, state.step, seed
                )  # the batch itself, or (on_policy) the student's continuations of it
                cached = loop.cached_logits(x, y, state.epoch, state.batch, idx)
                metrics = loop.step(x, y, state.epoch, taps, cached)
                lr = float(torch.tensor(sched.get_last_lr()[0]))  # as float32, on the host
                sched.step()
                state.step, state.batch = state.step + 1, state.batch + 1
                window.add(metrics, len(idx), lr)  # no wait for the device: read below
                if state.step % ts.log_interval(total) == 0 or state.step == total:
                    window.flush(state)
                    report = window.report(state.step, state.epoch, total)
                    _check_finite(report)
                    loop.cb.on_step(report)
                    window = _Window()
                if state.step % ts.checkpoint_every == 0 and state.batch < len(batches):
                    save()  # the epoch-end checkpoint follows right after the last batch
            window.flush(state)
            _end_epoch(loop, state, val_data)
            save()


def _end_epoch(loop: _Loop, state: _State, val_data: Any) -> None:
    metrics = loop.validate(val_data) if len(val_data) and loop.rank == 0 else {}
    metrics["train/loss"] = state.epoch_loss_sum / max(state.epoch_loss_count, 1)
    loop.cb.on_epoch(state.epoch, state.step, metrics)
    if len(val_data) and loop.rank == 0:
        samples = loop.task.live_samples(loop.student, val_data, state.epoch)
        if samples:
            loop.cb.on_samples(state.epoch, samples)
    state.history.append({"epoch": float(state.epoch), "step": float(state.step), **metrics})
    state.epoch, state.batch = state.epoch + 1, 0
    state.epoch_loss_sum, state.epoch_loss_count = 0.0, 0
