"""Augmentation (`worker/engine/augment.py`): each operation's shapes, identities and
determinism, mixed targets that sum to one, and training with augmentation: both models see the
same batch, a resumed run is bit-identical, validation sees no random operation."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from core.config import AugmentSettings
from worker.engine.augment import (
    Augmenter,
    augment_seed,
    cutmix,
    cutmix_box,
    flip,
    generator,
    mixup,
    normalize,
    one_hot,
    pad_crop,
    policy_round,
    resized_crop,
)
from worker.engine.loader import batch_stream
from worker.engine.tasks.base import Batch
from worker.engine.tasks.classification import ClassificationTask
from worker.engine.tasks.classification.data import TensorData
from worker.engine.trainer import Cancelled, train

from .support import Epochs, scheme_config, small_digits, tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


def _images(n: int = 6, c: int = 3, h: int = 10, w: int = 12) -> Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(0))


def _gen(seed: int = 1) -> torch.Generator:
    return generator(seed, CPU)


def test_flip_twice_is_the_identity_and_flips_about_half() -> None:
    x = _images(64)
    once = flip(x, _gen())
    assert once.shape == x.shape
    mirrored = [not torch.equal(a, b) for a, b in zip(once, x, strict=True)]
    assert 16 < sum(mirrored) < 48
    assert torch.equal(flip(once, _gen()), x)  # the same draws mirror the same images back
    for a, b, m in zip(once, x, mirrored, strict=True):
        assert torch.equal(a, b.flip(-1) if m else b)


def test_pad_crop_with_zero_shift_is_the_identity_and_shifts_otherwise() -> None:
    x = _images()
    p = 3
    assert torch.equal(pad_crop(x, p, offsets=torch.full((6, 2), p)), x)
    shifted = pad_crop(x, p, offsets=torch.tensor([[p + 1, p - 2]] * 6))
    assert torch.equal(shifted[:, :, :-1, 2:], x[:, :, 1:, :-2])  # content moved up 1, right 2
    assert torch.equal(shifted[:, :, -1], torch.zeros_like(shifted[:, :, -1]))  # zero padding
    drawn = pad_crop(x, p, _gen())
    assert drawn.shape == x.shape and torch.equal(drawn, pad_crop(x, p, _gen()))
    # one channel: plain strides (a permuted result passed as contiguous, and CPU convolutions
    # on it corrupted the heap in torch 2.13)
    assert pad_crop(x[:, :1], p, _gen()).stride() == (10 * 12, 10 * 12, 12, 1)


def test_resized_crop_keeps_the_size_and_is_the_identity_at_full_scale() -> None:
    x = _images()
    out = resized_crop(x, 0.2, _gen())
    assert out.shape == x.shape and torch.equal(out, resized_crop(x, 0.2, _gen()))
    assert not torch.allclose(out, x)
    flat = torch.ones(4, 2, 8, 8) * torch.tensor([0.25, 0.75]).view(1, 2, 1, 1)
    assert torch.allclose(resized_crop(flat, 0.1, _gen()), flat)  # no black edges: inside
    ramp = torch.arange(8.0).expand(1, 1, 8, 8)  # a crop of a left-to-right ramp stays one
    out = resized_crop(ramp, 0.3, _gen())
    assert (out[..., 1:] >= out[..., :-1]).all()


@pytest.mark.parametrize("magnitude", [None, 0.3])
def test_policy_rounds_keep_shapes_and_are_deterministic(magnitude: float | None) -> None:
    x = _images(32)
    out = policy_round(x, _gen(), magnitude)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, policy_round(x, _gen(), magnitude))
    assert not torch.equal(out, policy_round(x, _gen(2), magnitude))
    zero = policy_round(x, _gen(), 0.0)  # no strength: every operation is the identity
    assert torch.allclose(zero, x, atol=1e-5)


def test_mixup_targets_are_the_same_mix_and_sum_to_one() -> None:
    x, y = _images(), torch.tensor([0, 1, 2, 3, 4, 0])
    q = one_hot(y, 5)
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    xm, qm = mixup(x, q, 0.7, perm)
    assert torch.allclose(xm, 0.7 * x + 0.3 * x[perm])
    assert torch.allclose(qm.sum(1), torch.ones(6))
    assert torch.allclose(qm[1], torch.tensor([0.0, 0.7, 0.0, 0.0, 0.3]))


def test_cutmix_targets_follow_the_pasted_area_and_sum_to_one() -> None:
    x, y = _images(6, 3, 10, 10), torch.tensor([0, 1, 2, 3, 4, 0])
    perm = torch.tensor([1, 0, 3, 2, 5, 4])
    box = (2, 7, 1, 5)  # 5 x 4 pixels of 100
    xc, qc = cutmix(x, one_hot(y, 5), box, perm)
    assert torch.equal(xc[:, :, 2:7, 1:5], x[perm][:, :, 2:7, 1:5])
    assert torch.equal(xc[:, :, :2], x[:, :, :2])
    assert torch.allclose(qc.sum(1), torch.ones(6))
    assert torch.allclose(qc[0], torch.tensor([0.8, 0.2, 0.0, 0.0, 0.0]))
    y1, y2, x1, x2 = cutmix_box(10, 10, 0.75, random.Random(0))
    assert 0 <= y1 <= y2 <= 10 and 0 <= x1 <= x2 <= 10


def test_normalize_per_channel_and_per_feature() -> None:
    x = _images()
    mean, std = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 2.0, 4.0])
    out = normalize(x, mean, std)
    assert torch.allclose(out[:, 1], (x[:, 1] - 0.2) / 2.0)
    table = torch.rand(5, 4)
    assert torch.allclose(
        normalize(table, torch.tensor([1.0]), torch.tensor([2.0])), (table - 1) / 2
    )


def _aug(**spec: Any) -> Augmenter:
    return Augmenter(AugmentSettings(**spec), seed=3, num_classes=5)


def test_the_augmenter_draws_from_seed_epoch_and_batch() -> None:
    x, y = _images(8), torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(0))
    aug = _aug(
        flip=True, pad_crop=2, policy="trivial", mixup=0.4, cutmix=1.0, mean=[0.5], std=[0.25]
    )
    a = aug.train_batch(x, y, epoch=1, batch=2)
    b = aug.train_batch(x, y, epoch=1, batch=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    other = aug.train_batch(x, y, epoch=1, batch=3)
    assert not torch.equal(a[0], other[0])
    assert a[1].shape == (8, 5) and torch.allclose(a[1].sum(1), torch.ones(8))
    assert len({augment_seed(0, e, b) for e in range(5) for b in range(5)}) == 25
    assert torch.equal(aug.eval_inputs(x), (x - 0.5) / 0.25)  # validation: nothing random
    plain = _aug()
    assert plain.train_batch(x, y, 0, 0)[0] is x and not plain.active


def test_image_operations_on_tables_and_a_mean_of_the_wrong_width_are_refused() -> None:
    table = torch.rand(4, 7)
    with pytest.raises(ValueError, match=r"flip, pad_crop need images \[C, H, W\].*\[7\]"):
        _aug(flip=True, pad_crop=2).check(table)
    _aug(mixup=0.2, mean=[0.0] * 7, std=[1.0] * 7).check(table)  # fine on tables
    with pytest.raises(ValueError, match="augment.mean has 2 values but the samples have 3"):
        _aug(mean=[0.0, 0.0], std=[1.0, 1.0]).check(_images())


def _digits_config(augment: dict[str, Any], **training: Any) -> Any:
    config = scheme_config("offline", {}, epochs=2, checkpoint_every=3)
    data = config.model_dump()
    data["training"].update(training)
    data["augment"] = augment
    data["losses"] = [{"name": "ce"}, {"name": "kd"}]
    return type(config).model_validate(data)


AUGMENT = {"flip": True, "pad_crop": 1, "policy": "trivial", "mixup": 0.4, "cutmix": 1.0,
           "mean": [0.3], "std": [0.4]}  # fmt: skip


class _Recorder(nn.Module):
    """A teacher that records every batch it sees (then behaves as `inner`)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, list[Tensor]()

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        return self.inner(x)


def test_teacher_and_student_see_the_same_augmented_batch() -> None:
    train_data, val_data = small_digits(120)
    config = _digits_config(AUGMENT, epochs=1)
    teacher = _Recorder(tiny_teacher())
    student_seen: list[Tensor] = []
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    student.register_forward_pre_hook(
        lambda _m, args: student_seen.append(args[0].detach().clone())
    )
    train(config, teacher, train_data, val_data, student=student)
    seen_t = [x for x in teacher.seen if len(x) == 30]  # the steps' batches (not a probe)
    seen_s = [x for x in student_seen if len(x) == 30]
    assert len(seen_t) == len(seen_s) == 3  # 90 samples in batches of 30
    for t, s in zip(seen_t, seen_s, strict=True):
        assert torch.equal(t, s)
    raw = torch.cat(seen_t)
    assert not torch.allclose(raw.mean(), train_data.x.mean(), atol=1e-3)  # normalised
    # validation sees the normalised held-out split, nothing random
    val_batch = student_seen[-1]
    assert len(val_batch) == len(val_data)
    assert torch.equal(val_batch, (val_data.x - 0.3) / 0.4)


def test_a_resumed_run_with_augmentation_is_bit_identical(tmp_path: Path) -> None:
    train_data, val_data = small_digits(120)
    config = _digits_config(AUGMENT)
    full = train(config, tiny_teacher(), train_data, val_data)
    with pytest.raises(Cancelled):
        train(config, tiny_teacher(), train_data, val_data, callbacks=Epochs(stop_at=4),
              checkpoint_path=tmp_path / "c.ckpt")  # fmt: skip
    resumed = train(
        config, tiny_teacher(), train_data, val_data, checkpoint_path=tmp_path / "c.ckpt"
    )
    a, b = full.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.history == resumed.history
    plain = train(_digits_config({}), tiny_teacher(), train_data, val_data)
    assert not torch.equal(plain.student.state_dict()["fc.weight"], a["fc.weight"])


def test_image_operations_on_a_table_stop_the_run_before_training() -> None:
    x = torch.rand(40, 6)
    data = TensorData(x, torch.arange(40) % 3, ["a", "b", "c"])
    config = _digits_config({"flip": True})
    data_dict = config.model_dump()
    data_dict["student"] = {"architecture": "mlp", "kwargs": {"hidden": 8, "depth": 1}}
    config = type(config).model_validate(data_dict)
    teacher = nn.Sequential(nn.Linear(6, 3))
    with pytest.raises(ValueError, match=r"augment: flip need images"):
        train(config, teacher, data, data)


class _Pid:
    """An augmentation that records which process made the batch (in its targets)."""

    def __call__(self, batch: Batch, epoch: int, index: int) -> Batch:
        return Batch(batch.inputs, torch.full((len(batch.targets),), os.getpid()))


def test_on_the_cpu_loader_workers_augment_and_give_the_same_batches() -> None:
    train_data, _ = small_digits(120)
    task, cpu = ClassificationTask(), torch.device("cpu")
    order = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(4))
    batches = list(order[:120].split(30))
    aug = Augmenter(AugmentSettings(**AUGMENT), seed=3, num_classes=10)
    here = list(batch_stream(task, train_data, batches, 1, cpu, 0, aug, epoch=2))
    there = list(batch_stream(task, train_data, batches, 1, cpu, 2, aug, epoch=2))
    assert len(here) == len(there) == len(batches) - 1
    for i, (a, b) in enumerate(zip(here, there, strict=True), start=1):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
        raw = task.batch(train_data, batches[i], cpu)
        expected = aug.train_batch(raw.inputs, raw.targets, 2, i)  # batch i of epoch 2
        assert torch.equal(a.inputs, expected[0]) and torch.equal(a.targets, expected[1])
    made_by = {
        int(b.targets[0]) for b in batch_stream(task, train_data, batches, 0, cpu, 2, _Pid())
    }
    assert made_by and os.getpid() not in made_by  # the workers augmented, not this process
    made_here = {
        int(b.targets[0]) for b in batch_stream(task, train_data, batches, 0, cpu, 0, _Pid())
    }
    assert made_here == {os.getpid()}
