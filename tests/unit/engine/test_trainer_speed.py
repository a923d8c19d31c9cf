"""The training loop's speed paths, run on CPU: metrics read once per log interval (no host sync
in a step), gradient accumulation, channels-last, bf16 autocast, torch.compile (and its
fallback), fused optimizers on CUDA only."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import torch
from torch import nn

from core.config import RunConfig, TrainSettings
from tests.unit.engine import test_trainer as base
from tests.unit.engine.test_trainer import Recorder, _config, _run, _same
from worker.engine import trainer
from worker.engine.students import build_student
from worker.engine.trainer import Cancelled, train

# the fixtures of test_trainer: the digits split, its conv teacher, one intra-op thread
digits, teacher, one_thread = base.digits, base.teacher, base.one_thread


def _logits_config(**training: object) -> RunConfig:
    """ce + kd, no layer pairs, an MLP without dropout: every term averages over samples."""
    config = _config(**training)
    config.layer_pairs = []
    config.losses = config.losses[:2]
    config.student.kwargs["dropout"] = 0.0
    return config


@pytest.mark.parametrize("parts", [2, 3])
def test_grad_accumulation_equals_one_batch(teacher, digits, parts) -> None:
    """N micro-batches give the gradients (so the weights) and the loss of the whole batch."""
    ref, acc = Recorder(), Recorder()
    one = _run(_logits_config(epochs=1, momentum=0.0), teacher, digits, ref)
    many = _run(
        _logits_config(epochs=1, momentum=0.0, grad_accumulation=parts), teacher, digits, acc
    )
    assert not _same(one, many)  # a different summation order, so not bit-equal ...
    for k in one:  # ... but equal to rounding
        torch.testing.assert_close(many[k], one[k], rtol=1e-5, atol=1e-6)
    assert [r.step for r in acc.reports] == [r.step for r in ref.reports]  # the same steps
    for a, b in zip(acc.reports, ref.reports, strict=True):
        assert a.metrics.keys() == b.metrics.keys()
        for k in a.metrics:  # rounding over an epoch differs with the CPU's vector width:
            # 3e-5 on an AVX-512 host; a wrong micro-batch share would be off by 1/N or more
            assert a.metrics[k] == pytest.approx(b.metrics[k], rel=1e-4, abs=1e-7)


def test_grad_accumulation_gradients_match(teacher, digits) -> None:
    """One step's gradients, compared directly (before the optimizer touches them)."""
    grads: dict[int, list[torch.Tensor]] = {}

    class Capture(torch.optim.SGD):
        def step(self, closure: Any = None) -> Any:  # type: ignore[override]
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            grads.setdefault(len(grads_order), [p.grad.clone() for p in params])
            raise _Stop

    class _Stop(Exception):
        pass

    grads_order: list[int] = []
    original = trainer._optimizer
    for parts in (1, 2):
        config = _logits_config(epochs=1, grad_accumulation=parts)
        trainer._optimizer = lambda ts, p, d=None: Capture(p, lr=ts.lr)  # type: ignore[assignment]
        try:
            with pytest.raises(_Stop):
                train(config, teacher, *digits)
        finally:
            trainer._optimizer = original
        grads_order.append(parts)
    assert len(grads) == 2 and len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("stop_at", [5, 9])
def test_resume_with_accumulation_is_bit_identical(teacher, digits, tmp_path, stop_at) -> None:
    full = _run(_config(grad_accumulation=2), teacher, digits)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Cancelled):
        _run(_config(grad_accumulation=2), teacher, digits, Recorder(stop_at=stop_at), ckpt)
    rec = Recorder()
    resumed = _run(_config(grad_accumulation=2), teacher, digits, rec, ckpt)
    assert rec.starts == [(18, stop_at)]
    assert _same(full, resumed)


def test_micro_batches_keep_two_samples_under_batchnorm() -> None:
    loop = object.__new__(trainer._Loop)
    loop.ts = TrainSettings(grad_accumulation=8)
    loop.skip_single = True
    assert [loop.micro_batches(n) for n in (1, 2, 5, 16, 64)] == [1, 1, 2, 8, 8]
    loop.skip_single = False
    assert [loop.micro_batches(n) for n in (1, 5, 64)] == [1, 5, 8]


class _NoSync:
    """Fails any read of a tensor's value on the host while a step runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inside = False
        self.reads = 0
        for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
            monkeypatch.setattr(torch.Tensor, name, self._guard(getattr(torch.Tensor, name)))
        for owner, name in ((trainer._Loop, "step"), (trainer._Window, "add")):
            monkeypatch.setattr(owner, name, self._inside(getattr(owner, name)))
        flush = trainer._Window.flush

        def counted(window: Any, state: Any) -> None:
            self.reads += bool(window.pending)
            flush(window, state)

        monkeypatch.setattr(trainer._Window, "flush", counted)

    def _guard(self, method: Any) -> Any:
        def guarded(t: torch.Tensor, *a: Any, **k: Any) -> Any:
            if self.inside:
                raise AssertionError(f"a host read (Tensor.{method.__name__}) inside a step")
            return method(t, *a, **k)

        return guarded

    def _inside(self, method: Any) -> Any:
        def wrapped(*a: Any, **k: Any) -> Any:
            self.inside = True
            try:
                return method(*a, **k)
            finally:
                self.inside = False

        return wrapped


def test_metrics_are_read_once_per_log_interval(teacher, digits, monkeypatch) -> None:
    """No value goes to the host inside a step; each report, checkpoint or epoch end reads
    the steps since the last read at once, and the numbers are those of reading every step."""
    expected = Recorder()
    _run(_logits_config(log_every=4, checkpoint_every=100), teacher, digits, expected)
    guard = _NoSync(monkeypatch)
    rec = Recorder()
    _run(_logits_config(log_every=4, checkpoint_every=100), teacher, digits, rec)
    assert [r.step for r in rec.reports] == [4, 8, 12, 16, 18]
    assert guard.reads == 6  # the reports and the end of epoch 0 (step 9)
    assert [r.metrics for r in rec.reports] == [r.metrics for r in expected.reports]
    assert [e["train/loss"] for e in rec.epochs] == [e["train/loss"] for e in expected.epochs]


def test_a_non_finite_loss_is_caught_at_the_read(digits) -> None:
    broken = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    nn.init.constant_(broken[1].weight, math.nan)  # kd against NaN logits from step 1 on
    with pytest.raises(FloatingPointError, match="the loss became nan at step 3"):
        train(_logits_config(log_every=3), broken, *digits)


def test_bf16_autocast_runs_on_cpu(teacher, digits, monkeypatch) -> None:
    """`training.amp` is for GPUs; forced on here, the CPU runs the same bf16 autocast path."""
    monkeypatch.setattr(trainer, "_amp_on", lambda device, ts: ts.amp)
    student = build_student("mlp", (1, 8, 8), 10, hidden=32, depth=1, dropout=0.0)
    dtypes: list[torch.dtype] = []
    student.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    rec = Recorder()
    train(_config(epochs=1), teacher, *digits, student=student, callbacks=rec)
    assert torch.bfloat16 in dtypes
    assert all(math.isfinite(r.metrics["loss"]) for r in rec.reports)
    assert 0.0 <= rec.epochs[0]["val/top1"] <= 1.0


class _TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.conv1(x).relu()).relu().flatten(1))


def _channels_last_run(teacher: nn.Module, digits: Any, setting: str) -> tuple[bool, bool]:
    """(every conv2 input was channels-last, conv2's weight is) after one epoch."""
    student, seen = _TwoConvs(), []
    student.conv2.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last))
    )
    train(_logits_config(epochs=1, channels_last=setting), teacher, *digits, student=student)
    assert seen
    return all(seen), student.conv2.weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_converts_images_and_models(teacher, digits) -> None:
    assert _channels_last_run(teacher, digits, "on") == (True, True)
    assert _channels_last_run(teacher, digits, "auto") == (False, False)  # auto: GPU only
    assert _channels_last_run(teacher, digits, "off") == (False, False)


def test_fused_optimizers_on_cuda_only() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert trainer._fused(torch.optim.SGD, cuda) == {"fused": True}
    assert trainer._fused(torch.optim.AdamW, cuda) == {"fused": True}
    assert trainer._fused(torch.optim.SGD, cpu) == {} == trainer._fused(torch.optim.SGD, None)
    params = [{"params": [nn.Parameter(torch.zeros(2))]}]
    assert not trainer._optimizer(TrainSettings(), params, cpu).defaults.get("fused")
    assert trainer._channels_last_on(cuda, TrainSettings())
    assert not trainer._channels_last_on(cpu, TrainSettings())
    assert not trainer._channels_last_on(cuda, TrainSettings(channels_last="off"))


def test_settings_are_declared_with_defaults_that_keep_cpu_runs_as_they_were() -> None:
    ts = TrainSettings()
    assert (ts.grad_accumulation, ts.compile, ts.channels_last) == (1, False, "auto")
    with pytest.raises(ValueError, match="grad_accumulation"):
        TrainSettings(grad_accumulation=0)
    with pytest.raises(ValueError, match="channels_last"):
        TrainSettings(channels_last="yes")  # type: ignore[arg-type]


def test_compile_falls_back_with_a_warning(teacher, digits, monkeypatch, caplog) -> None:
    def broken(gm: Any, example_inputs: Any) -> Any:
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(trainer, "COMPILE_BACKEND", broken)
    eager = _run(_config(epochs=1), teacher, digits)
    with caplog.at_level(logging.WARNING, logger="worker.engine.trainer"):
        result = train(_config(epochs=1, compile=True), teacher, *digits)
    assert "the teacher could not be compiled" in caplog.text
    assert "the student could not be compiled" in caplog.text and "no compiler here" in caplog.text
    assert _same(eager, result.student.state_dict())
    assert result.student._compiled_call_impl is None


@pytest.mark.slow
def test_compile_trains_with_taps_and_gives_plain_modules_back(teacher, digits, caplog) -> None:
    """inductor on CPU: the taps' hooks still fire in compiled models (fitnets reads them) and
    the result is the eager one to rounding; the models come back uncompiled."""
    torch._dynamo.reset()

    def config(**training: object) -> RunConfig:
        c = _config(epochs=1, **training)
        c.student.kwargs["dropout"] = 0.0  # compiled dropout draws other random numbers
        return c

    eager = _run(config(), teacher, digits)
    rec = Recorder()
    with caplog.at_level(logging.WARNING, logger="worker.engine.trainer"):
        result = train(config(compile=True), teacher, *digits, callbacks=rec)
    assert "could not be compiled" not in caplog.text
    assert "loss/fitnets" in rec.reports[0].metrics
    compiled = result.student.state_dict()
    assert compiled.keys() == eager.keys()
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-3, atol=1e-4)
    assert result.student._compiled_call_impl is None and teacher._compiled_call_impl is None
