"""The teacher-output cache (`worker/engine/teacher_cache.py`, `core/teacher_cache.py`): a run
that records and a run that replays compute the same losses, full logits give the losses of a
run without the cache, the key follows what the outputs depend on, and top-k rows are small."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor, nn

from core.config import RunConfig
from core.teacher_cache import cache_key, cache_problem, per_epoch
from worker.engine.teacher_cache import TeacherCache
from worker.engine.trainer import Callbacks, train

from .support import scheme_config, small_digits, tiny_teacher

AUGMENT = {"flip": True, "pad_crop": 1, "policy": "trivial", "mixup": 0.4, "cutmix": 1.0,
           "mean": [0.3], "std": [0.4]}  # fmt: skip


class _Counting(nn.Module):
    """A teacher that counts the batches it runs on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.batches = inner, 0

    def forward(self, x: Tensor) -> Tensor:
        self.batches += 1
        return self.inner(x)


class _Losses(Callbacks):
    def __init__(self) -> None:
        self.losses: list[dict[str, float]] = []

    def on_step(self, report: Any) -> None:
        self.losses.append(report.metrics)


def _config(augment: dict[str, Any], top_k: int, mode: str = "on", **training: Any) -> RunConfig:
    config = scheme_config("offline", {}, epochs=2, checkpoint_every=100)
    data = config.model_dump()
    data["training"].update(teacher_cache=mode, teacher_cache_top_k=top_k, log_every=1, **training)
    data["augment"] = augment
    data["losses"] = [{"name": "ce"}, {"name": "kd", "params": {"temperature": 4.0}}]
    data["student"] = {"architecture": "mlp", "kwargs": {"hidden": 16, "depth": 1}}
    return RunConfig.model_validate(data)


def _run(config: RunConfig, cache: TeacherCache | None) -> tuple[list[dict[str, float]], int]:
    """The step losses of a run and the training batches its teacher ran on."""
    train_data, val_data = small_digits(120)
    teacher, seen = _Counting(tiny_teacher()), _Losses()
    train(config, teacher, train_data, val_data, callbacks=seen, teacher_cache=cache)
    return seen.losses, teacher.batches


def _cache(config: RunConfig, path: Path | None = None) -> TeacherCache:
    top_k = config.training.teacher_cache_top_k
    return TeacherCache.open(path, "k" * 64, top_k, 91, per_epoch(config))


def test_a_run_that_replays_the_cache_computes_the_losses_of_the_run_that_recorded_it(
    tmp_path: Path,
) -> None:
    config = _config(AUGMENT, top_k=3)  # random augmentation: a slot per epoch
    recording = _cache(config)
    live, forwards = _run(config, recording)
    assert forwards == 8 and recording.stats.as_json() == {  # 91 samples: 4 batches an epoch
        "replayed_batches": 0,
        "recorded_batches": 8,
    }
    size = recording.save(tmp_path / "cache.npz")
    assert size == (tmp_path / "cache.npz").stat().st_size
    replaying = _cache(config, tmp_path / "cache.npz")
    replayed, forwards = _run(config, replaying)
    assert forwards == 0  # no teacher forward on a training batch
    assert replaying.stats.replayed == 8 and replaying.stats.recorded == 0
    assert replayed == live  # every step's loss and kd term, exactly
    # top-k differs from the teacher's own logits: the kd term is not that of a plain run
    plain, _ = _run(_config(AUGMENT, top_k=3, mode="off"), None)
    assert plain[0]["loss/ce"] == live[0]["loss/ce"]
    assert plain[0]["loss/kd"] != live[0]["loss/kd"]
    # another key (a file of another run) is not replayed
    other = TeacherCache.open(tmp_path / "cache.npz", "o" * 64, 3, 91, True)
    assert other.slots == {}
    # nor is a float32 recording into a run whose teacher runs in bf16 (autocast on a GPU)
    assert TeacherCache.open(tmp_path / "cache.npz", "k" * 64, 3, 91, True).slots
    assert TeacherCache.open(tmp_path / "cache.npz", "k" * 64, 3, 91, True, "bf16").slots == {}


def test_full_logits_give_the_losses_of_a_run_without_the_cache_and_later_epochs_replay() -> None:
    config = _config({}, top_k=0)  # no random augmentation: one row per sample for all epochs
    cache = _cache(config)
    cached, forwards = _run(config, cache)
    plain, plain_forwards = _run(_config({}, top_k=0, mode="off"), None)
    assert plain_forwards == 8 and forwards == 4  # epoch 1 replays epoch 0's rows
    assert cache.stats.as_json() == {"replayed_batches": 4, "recorded_batches": 4}
    assert len(cached) == len(plain) == 8
    for a, b in zip(cached, plain, strict=True):
        for key in ("loss", "loss/ce", "loss/kd"):
            assert a[key] == pytest.approx(b[key], abs=1e-6)


def test_replayed_top_k_logits_keep_the_top_probabilities_and_spread_the_rest() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 100) * 3
    cache = TeacherCache("k", 10, 5, per_epoch=False)
    replayed = cache.record(0, 0, torch.arange(5), 0, logits)
    p, q = logits.softmax(1), replayed.softmax(1)
    top = logits.topk(10, dim=1).indices
    assert torch.allclose(q.gather(1, top), p.gather(1, top), atol=2e-3)  # float16 values
    rest = q.scatter(1, top, 0.0)
    expected = (1 - p.gather(1, top).sum(1, keepdim=True)) / 90
    assert torch.allclose(rest.sum(1), 90 * expected.squeeze(1), atol=2e-3)
    others = rest[rest > 0].view(5, 90)
    assert torch.allclose(others, others[:, :1].expand(5, 90))  # evenly
    assert torch.equal(replayed.argmax(1), logits.argmax(1))


def test_top_k_rows_are_small() -> None:
    """1,000 samples of 1,000 classes: top-10 rows (float16 values, int16 indices, the rest,
    the batch's augmentation seed) take 53 bytes a sample, 1.3% of float32 logits."""
    n, classes = 1000, 1000
    top = TeacherCache("k", 10, n, per_epoch=True)
    whole = TeacherCache("k", 0, n, per_epoch=True)
    logits = torch.randn(n, classes)
    top.record(0, 0, torch.arange(n), 1, logits)
    whole.record(0, 0, torch.arange(n), 1, logits)
    assert top.size_bytes() == n * (10 * 2 + 10 * 2 + 4 + 1 + 8)
    assert whole.size_bytes() == n * (classes * 4 + 4 + 1 + 8)
    assert top.size_bytes() < 0.015 * whole.size_bytes()


def test_the_key_follows_teacher_data_seed_recipe_and_top_k() -> None:
    config = _config(AUGMENT, top_k=3)
    key = cache_key(config, "t" * 64, "d" * 64)
    assert len(key) == 64 and key == cache_key(config, "t" * 64, "d" * 64)

    def changed(**edit: Any) -> RunConfig:
        data = config.model_dump()
        for section, values in edit.items():
            if isinstance(data[section], dict):
                data[section] = {**data[section], **values}
            else:
                data[section] = values
        return RunConfig.model_validate(data)

    others = [
        cache_key(config, "u" * 64, "d" * 64),  # another teacher file
        cache_key(config, "t" * 64, "e" * 64),  # another dataset file
        cache_key(changed(seed=1), "t" * 64, "d" * 64),
        cache_key(changed(augment={"flip": False}), "t" * 64, "d" * 64),
        cache_key(changed(training={"teacher_cache_top_k": 5}), "t" * 64, "d" * 64),
        cache_key(changed(training={"batch_size": 20}), "t" * 64, "d" * 64),
        cache_key(changed(dataset={"val_fraction": 0.3}), "t" * 64, "d" * 64),
    ]
    assert len({key, *others}) == len(others) + 1
    # a longer run (or another learning rate) extends the same cache
    assert cache_key(changed(training={"epochs": 9, "lr": 0.01}), "t" * 64, "d" * 64) == key


def test_only_logit_losses_of_the_offline_scheme_use_the_cache() -> None:
    pairs = [{"teacher": "1", "student": "fc1"}]
    with pytest.raises(ValidationError, match="'fitnets' is a feature loss"):
        scheme_config(
            "offline", {}, losses=[{"name": "fitnets"}], layer_pairs=pairs,
            training={"teacher_cache": "on"},
        )  # fmt: skip
    auto = scheme_config(
        "offline", {}, losses=[{"name": "fitnets"}], layer_pairs=pairs,
        training={"teacher_cache": "auto"},
    )  # fmt: skip
    assert "feature loss" in str(cache_problem(auto))
    online = scheme_config("online", {}, losses=[{"name": "ce"}, {"name": "kd"}])
    assert "use scheme 'offline'" in str(cache_problem(online))
    assert cache_problem(_config({}, 0)) is None


def test_the_pipeline_says_why_auto_left_the_cache_off_and_keys_by_the_files(
    tmp_path: Path,
) -> None:
    from worker.engine.pipeline import _cache_key, _teacher_cache, file_sha256

    teacher, data = tmp_path / "t.pt2", tmp_path / "d.npz"
    teacher.write_bytes(b"teacher"), data.write_bytes(b"data")
    pairs = [{"teacher": "1", "student": "fc1"}]
    auto = scheme_config(
        "offline", {}, losses=[{"name": "fitnets"}], layer_pairs=pairs,
        training={"teacher_cache": "auto"},
    )  # fmt: skip
    assert _cache_key(auto, teacher, data, None) is None
    cache, note = _teacher_cache(auto, None, None, 91)
    assert cache is None and note["used"] is False and "feature loss" in note["why"]
    off = _config({}, 0, mode="off")
    assert _teacher_cache(off, None, None, 91) == (None, {})
    on = _config(AUGMENT, 3)
    cache, note = _teacher_cache(on, None, _cache_key(on, teacher, data, None), 91)
    assert cache is not None and cache.per_epoch and note["top_k"] == 3
    assert note["key"] == cache_key(on, file_sha256(teacher), file_sha256(data))
