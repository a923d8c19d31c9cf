"""The teacher top-k logit cache for language models (`worker/engine/teacher_cache.py`, token
rows): with k = vocab size the cached losses equal the live teacher's to 1e-6, a run that
replays never calls the teacher, rows are kept for counted positions only (bounded size), and
the file round-trips. Real tiny GPT-2 models built here with transformers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from worker.engine.losses import LossContext
from worker.engine.losses.base import StepOutputs
from worker.engine.losses.divergence import TVD, GeneralizedJSD, ReverseKL
from worker.engine.losses.kd import KD
from worker.engine.teacher_cache import TeacherCache
from worker.engine.trainer import Callbacks, train

from .lm_support import VOCAB, gpt2_student, lm_config, lm_run

pytestmark = pytest.mark.usefixtures("one_thread")


def token_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-like logits [3, 7, V] and shifted targets with padding and a prompt (-100)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 7, VOCAB, generator=gen) * 4
    targets = torch.randint(0, VOCAB, (3, 7), generator=gen)
    targets[0, 5:] = -100  # padding
    targets[1, :3] = -100  # an instruction prompt
    targets[:, -1] = -100  # the last position predicts nothing
    return logits, targets


LOSSES = [
    lambda ctx: KD(ctx, temperature=1.0),
    lambda ctx: KD(ctx, temperature=2.0),
    lambda ctx: ReverseKL(ctx),
    lambda ctx: GeneralizedJSD(ctx, beta=0.5),
    lambda ctx: TVD(ctx),
]


@pytest.mark.parametrize("make", LOSSES)
def test_with_k_the_vocabulary_size_the_cached_loss_is_the_live_teachers(make: object) -> None:
    logits, targets = token_batch()
    student = torch.randn(3, 7, VOCAB, generator=torch.Generator().manual_seed(1))
    idx = torch.tensor([4, 0, 2])
    for top_k in (0, VOCAB):
        cache = TeacherCache("k", top_k, 5, per_epoch=False)
        recorded = cache.record(0, 0, idx, -1, logits, targets)
        replayed = cache.lookup(0, 0, idx, -1, torch.device("cpu"), targets)
        assert replayed is not None and torch.equal(recorded, replayed)
        loss = make(LossContext(VOCAB, [], 5, 1))  # type: ignore[operator]
        live = loss(StepOutputs(student, logits, targets, [], [], 0))
        cached = loss(StepOutputs(student, replayed, targets, [], [], 0))
        assert abs(float(live) - float(cached)) <= 1e-6
        keep = targets >= 0
        assert torch.equal(replayed[keep], logits[keep])  # counted positions exactly


def test_top_k_rows_keep_the_top_tokens_and_spread_the_tail() -> None:
    logits, targets = token_batch()
    cache = TeacherCache("k", 8, 3, per_epoch=False)
    replayed = cache.record(0, 0, torch.arange(3), -1, logits, targets)
    keep = targets >= 0
    p, q = logits[keep].softmax(-1), replayed[keep].softmax(-1)
    top = logits[keep].topk(8, dim=-1).indices
    assert torch.allclose(q.gather(1, top), p.gather(1, top), atol=2e-3)  # float16 values
    tail = 1 - p.gather(1, top).sum(1)
    assert torch.allclose(q.scatter(1, top, 0.0).sum(1), tail, atol=2e-3)  # the mass kept
    assert torch.equal(replayed[keep].argmax(-1), logits[keep].argmax(-1))


def test_rows_are_kept_for_counted_positions_only_and_the_size_is_bounded() -> None:
    """k = 8 of 300 tokens: 8 float16 values, 8 int16 indices and one float32 rest per counted
    position (36 bytes), plus 16 bytes a sample (its id and offset): about 1/33 of float32
    logits at the counted positions, and nothing for padding or prompts."""
    logits, targets = token_batch()
    cache = TeacherCache("k", 8, 3, per_epoch=False)
    cache.record(0, 0, torch.arange(3), -1, logits, targets)
    counted = int((targets >= 0).sum())
    assert counted < targets.numel()
    assert cache.size_bytes() == counted * (8 * 2 + 8 * 2 + 4) + 3 * 16 + 8
    assert cache.size_bytes() < 0.1 * counted * VOCAB * 4


def test_the_file_round_trips_and_a_missing_sample_is_not_replayed(tmp_path: Path) -> None:
    logits, targets = token_batch()
    cache = TeacherCache("k", 8, 5, per_epoch=False)
    recorded = cache.record(0, 0, torch.tensor([1, 3, 4]), -1, logits, targets)
    size = cache.save(tmp_path / "cache.npz")
    assert size == (tmp_path / "cache.npz").stat().st_size
    again = TeacherCache.open(tmp_path / "cache.npz", "k", 8, 5, False)
    assert again.tokens and again.classes == VOCAB
    replayed = again.lookup(0, 0, torch.tensor([1, 3, 4]), -1, torch.device("cpu"), targets)
    assert replayed is not None and torch.equal(replayed, recorded)
    assert again.lookup(0, 0, torch.tensor([1, 2, 4]), -1, torch.device("cpu"), targets) is None
    shorter = targets.clone()
    shorter[2, 0] = -100  # another tokenisation: another count of positions
    assert again.lookup(0, 0, torch.tensor([1, 3, 4]), -1, torch.device("cpu"), shorter) is None
    assert TeacherCache.open(tmp_path / "cache.npz", "other", 8, 5, False).rows == {}


# -- through the trainer, on the causal_lm task ---------------------------------------------------


class _Counting(nn.Module):
    """The teacher, counting the training batches it runs on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.batches = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        return self.inner(x)  # type: ignore[no-any-return]


class _Losses(Callbacks):
    def __init__(self) -> None:
        self.losses: list[dict[str, float]] = []

    def on_step(self, report: Any) -> None:
        self.losses.append(report.metrics)


def _run(
    tmp_path: Path, mode: str, top_k: int, cache: TeacherCache | None
) -> tuple[list[dict[str, float]], int]:
    """The step losses of a 2-epoch kd + gkd_jsd run and the teacher's training forwards."""
    task, teacher, train_data, val_data = lm_run(tmp_path)
    losses = [{"name": "kd", "params": {"temperature": 1.0}},
              {"name": "gkd_jsd", "params": {"beta": 0.5}}]  # fmt: skip
    config = lm_config(losses=losses, teacher_cache=mode, teacher_cache_top_k=top_k)
    counting, seen = _Counting(teacher.module), _Losses()
    train(
        config, counting, train_data, val_data, student=gpt2_student(), task=task,
        callbacks=seen, teacher_cache=cache,
    )  # fmt: skip
    return seen.losses, counting.batches


def test_a_run_from_the_cache_never_runs_the_teacher_and_has_the_live_losses(
    tmp_path: Path,
) -> None:
    live, live_forwards = _run(tmp_path, "off", 0, None)
    recording = TeacherCache.open(None, "k" * 64, VOCAB, 18, per_epoch=False)
    recorded, forwards = _run(tmp_path, "on", VOCAB, recording)
    assert live_forwards == 6 and forwards == 3  # the second epoch replays the first's
    recording.save(tmp_path / "cache.npz")
    replaying = TeacherCache.open(tmp_path / "cache.npz", "k" * 64, VOCAB, 18, per_epoch=False)
    replayed, none = _run(tmp_path, "on", VOCAB, replaying)
    assert none == 0 and replaying.stats.as_json() == {"replayed_batches": 6,
                                                        "recorded_batches": 0}  # fmt: skip
    for runs in zip(live, recorded, replayed, strict=True):
        for key in ("loss", "loss/kd", "loss/gkd_jsd"):
            assert abs(runs[0][key] - runs[1][key]) <= 1e-6
            assert abs(runs[0][key] - runs[2][key]) <= 1e-6


def test_the_pipeline_keys_a_language_model_run_by_its_tokenisation(tmp_path: Path) -> None:
    from core.teacher_cache import cache_key, cache_problem

    config = lm_config(teacher_cache="on", teacher_cache_top_k=16)
    assert cache_problem(config) is None
    longer = lm_config(teacher_cache="on", teacher_cache_top_k=16)
    longer.task_params["max_length"] = 20
    assert cache_key(config, "t" * 64, "d" * 64) != cache_key(longer, "t" * 64, "d" * 64)
    on_policy = lm_config("on_policy", {"lmbda": 0.5}, teacher_cache="auto")
    assert "use scheme 'offline'" in str(cache_problem(on_policy))


def test_later_runs_of_the_pair_share_the_key_whatever_their_batch_size_or_recipe() -> None:
    from core.teacher_cache import cache_key

    key = cache_key(lm_config(teacher_cache="on"), "t" * 64, "d" * 64)
    other_recipe = lm_config(
        losses=[{"name": "reverse_kl"}], teacher_cache="on", batch_size=12, epochs=5, lr=0.1
    )
    assert cache_key(other_recipe, "t" * 64, "d" * 64) == key
    assert cache_key(lm_config(teacher_cache="on"), "u" * 64, "d" * 64) != key


# -- a later run of the pair without the teacher (run_distillation) ------------------------------


def _teacher_files(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny GPT-2 checkpoint zip with its tokenizer, and 24 corpus lines as .txt."""
    from tests.hf_helpers import tiny_members, write_zip
    from worker.engine.tasks.text.lm_demo import train_tokenizer

    from .lm_support import GPT2, corpus

    lines = list(corpus())
    tokenizer = train_tokenizer(lines, VOCAB)
    members = {**tiny_members(GPT2), "tokenizer.json": tokenizer.to_str().encode()}
    teacher = write_zip(tmp_path / "teacher.zip", members)
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(lines[:24]) + "\n", encoding="utf-8")
    return teacher, text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("student", "loaded"),
    [
        ({"architecture": "hf_config", "kwargs": {"layers": 1}}, "no"),
        ({"architecture": "hf_layers", "kwargs": {"layers": 1}}, "to build the student"),
    ],
)
def test_a_later_run_of_the_pair_replays_the_teacher_without_its_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, student: dict[str, Any], loaded: str
) -> None:
    """The first run records the teacher's logits and its evaluation (perplexity, tokens/s,
    latency, continuations, argmax tokens); the second replays them: the teacher never runs
    (hf_config: its weights are never read; hf_layers: read to copy the blocks, then dropped),
    the losses and every teacher figure are the first run's, the student is measured anew."""
    from worker.engine import hf_teacher
    from worker.engine.pipeline import CACHE_FILE, run_distillation

    teacher, text = _teacher_files(tmp_path)
    config = lm_config(losses=[{"name": "kd"}], epochs=2, teacher_cache="on",
                       teacher_cache_top_k=16)  # fmt: skip
    config = config.model_copy(
        update={"student": config.student.model_copy(update=student)}
    )  # fmt: skip
    first = run_distillation(config, teacher, text, tmp_path / "run1")
    assert first["teacher_cache"]["teacher_loaded"] == "yes"

    reads: list[str] = []
    real_load = hf_teacher.load_weights
    monkeypatch.setattr(
        hf_teacher, "load_weights", lambda m, f, n: (reads.append(n), real_load(m, f, n))[1]
    )
    forwards: list[int] = []
    monkeypatch.setattr(hf_teacher, "build_model", _counting_forwards(hf_teacher.build_model,
                                                                      forwards))  # fmt: skip
    cached = tmp_path / "run1" / CACHE_FILE
    second = run_distillation(config, teacher, text, tmp_path / "run2", teacher_cache=cached)
    note = second["teacher_cache"]
    assert note["teacher_loaded"] == loaded
    assert note["replayed_batches"] == 6 and note["recorded_batches"] == 0
    assert forwards == []  # the teacher module built by this run never ran
    assert reads == ([] if loaded == "no" else ["GPT2LMHeadModel"])
    teacher_keys = [k for k in first if k.startswith("teacher_") and k != "teacher_cache"]
    assert {"teacher_perplexity", "teacher_tokens_per_s", "teacher_cpu_latency_ms",
            "teacher_params", "teacher_flops"} <= set(teacher_keys)  # fmt: skip
    for key in teacher_keys:
        assert second[key] == first[key], key
    assert second["student_perplexity"] == pytest.approx(first["student_perplexity"], rel=1e-5)
    assert second["next_token_agreement"] == pytest.approx(first["next_token_agreement"])
    samples = [json.loads((tmp_path / r / "predictions.json").read_text()) for r in ("run1",
                                                                                  "run2")]  # fmt: skip
    assert [s["teacher"] for s in samples[1]] == [s["teacher"] for s in samples[0]]
    assert all(s["teacher"] for s in samples[1])


def _counting_forwards(build: Any, calls: list[int]) -> Any:
    """`hf_teacher.build_model` whose models note each forward in `calls`."""

    def built(config: dict[str, Any]) -> nn.Module:
        module = build(config)
        module.register_forward_pre_hook(lambda *_: calls.append(1))
        return module

    return built
