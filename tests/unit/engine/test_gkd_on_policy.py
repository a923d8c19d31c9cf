"""On-policy GKD (`worker/engine/schemes/on_policy.py`, scheme `on_policy`): the student's own
continuations replace a batch with probability lambda, the targets count the generated tokens
only, the draws are a function of (seed, step), and lambda = 0 is the offline scheme bit for
bit. Real tiny GPT-2 models built here with transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from pydantic import ValidationError
from torch import nn

from worker.engine.schemes import build_scheme
from worker.engine.schemes.on_policy import (
    OnPolicyScheme,
    prompt_lengths,
    sequences,
    step_draw,
)
from worker.engine.tasks.text.models import PAD, TokenModel
from worker.engine.trainer import Callbacks, Cancelled, train

from .lm_support import gpt2_student, lm_config, lm_run
from .support import scheme_config

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, POSITIONS = 120, 32


def tiny_gpt2(seed: int) -> TokenModel:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=POSITIONS,
        bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
    )  # fmt: skip
    return TokenModel(transformers.GPT2LMHeadModel(config))


def scheme(lmbda: float, max_new_tokens: int = 6) -> OnPolicyScheme:
    on = OnPolicyScheme(lmbda=lmbda, temperature=1.0, max_new_tokens=max_new_tokens)
    on.setup(tiny_gpt2(1), tiny_gpt2(2).train(), nn.ModuleList())
    return on


def lm_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two plain-text rows (6 and 8 tokens, right-padded) and their shifted targets (position t
    predicts token t + 1), and one instruction row whose prompt is its first 5 tokens."""
    ids = torch.tensor(
        [
            [5, 6, 7, 8, 9, 10, PAD, PAD],
            [11, 12, 13, 14, 15, 16, 17, 18],
            [3, 4, 5, 6, 7, 8, 9, PAD],
        ]
    )
    targets = torch.full_like(ids, -100)
    targets[0, :5], targets[1, :7] = ids[0, 1:6], ids[1, 1:]
    targets[2, 4:6] = ids[2, 5:7]  # the completion: tokens 5 and 6
    return ids, targets


def test_the_prompt_is_the_instruction_prompt_or_the_first_half_of_plain_text() -> None:
    ids, targets = lm_batch()
    assert prompt_lengths(ids, targets).tolist() == [3, 4, 5]


def test_sequences_count_the_continuation_only_and_stop_after_the_first_eos() -> None:
    ids, targets = lm_batch()
    new = torch.tensor([[40, 41, 42], [50, 99, 51], [60, 61, 62]])
    seq, tgt = sequences(ids, torch.tensor([3, 4, 5]), new, eos={99})
    assert seq.tolist() == [
        [5, 6, 7, 40, 41, 42, PAD, PAD],
        [11, 12, 13, 14, 50, 99, PAD, PAD],
        [3, 4, 5, 6, 7, 60, 61, 62],
    ]
    assert tgt.tolist() == [
        [-100, -100, 40, 41, 42, -100, -100, -100],
        [-100, -100, -100, 50, 99, -100, -100, -100],
        [-100, -100, -100, -100, 60, 61, 62, -100],
    ]


def test_lambda_one_replaces_every_batch_with_the_students_continuations() -> None:
    on = scheme(1.0)
    ids, targets = lm_batch()
    seq, tgt = on.step_inputs(ids, targets, step=3, seed=0)
    prompts = prompt_lengths(ids, targets)
    real = (seq != PAD).sum(1)
    for b in range(len(ids)):
        p, n = int(prompts[b]), int(real[b])
        assert torch.equal(seq[b, :p], ids[b, :p])  # the prompt is kept
        assert 1 <= n - p <= 6  # at most max_new_tokens sampled
        counted = (tgt[b] >= 0).nonzero().flatten().tolist()
        assert counted == list(range(p - 1, n - 1))  # the generated tokens only
        assert torch.equal(tgt[b, p - 1 : n - 1], seq[b, p:n])
    assert on.on_policy_steps == 1
    assert on.student.training  # back in training mode after sampling in eval mode


def test_draws_follow_seed_and_step_and_leave_the_runs_random_stream_alone() -> None:
    on = scheme(1.0)
    ids, targets = lm_batch()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = on.step_inputs(ids, targets, step=5, seed=0)
    assert torch.equal(torch.get_rng_state(), before)  # dropout etc. draw as without it
    again = on.step_inputs(ids, targets, step=5, seed=0)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other = on.step_inputs(ids, targets, step=6, seed=0)
    assert not torch.equal(first[0], other[0])
    # lambda: the fraction of steps drawn on-policy; 0 never, 1 always
    drawn = [step_draw(0.3, seed=0, step=s)[0] for s in range(2000)]
    assert 0.27 < sum(drawn) / len(drawn) < 0.33
    assert not any(step_draw(0.0, 0, s)[0] for s in range(200))
    assert all(step_draw(1.0, 0, s)[0] for s in range(200))
    assert drawn == [step_draw(0.3, seed=0, step=s)[0] for s in range(2000)]


def test_lambda_zero_leaves_the_batch_as_it_is() -> None:
    on = scheme(0.0)
    ids, targets = lm_batch()
    seq, tgt = on.step_inputs(ids, targets, step=0, seed=0)
    assert seq is ids and tgt is targets and on.on_policy_steps == 0


def test_continuations_fit_the_models_positions() -> None:
    on = scheme(1.0, max_new_tokens=100)
    ids = torch.arange(1, 29).reshape(1, 28)
    targets = torch.full_like(ids, -100)
    targets[0, 20:27] = ids[0, 21:]  # a 21-token prompt
    seq, _ = on.step_inputs(ids, targets, step=0, seed=0)
    assert seq.shape[1] <= POSITIONS


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({}, "task 'classification' is not a language model"),
        ({"task": "causal_lm", "losses": [{"name": "ce"}]}, "no configured loss reads"),
    ],
)
def test_the_config_refuses_on_policy_where_it_cannot_run(
    fields: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValidationError, match=match):
        scheme_config("on_policy", {"lmbda": 0.5}, **fields)


def test_lambda_is_bounded() -> None:
    with pytest.raises(ValueError, match="lmbda must be in"):
        OnPolicyScheme(lmbda=1.5)


# -- through the trainer, on the causal_lm task ---------------------------------------------------


class _Stop(Callbacks):
    """Stops the run before step `at` (a checkpoint is written first)."""

    def __init__(self, at: int) -> None:
        self.at, self.steps = at, 0

    def on_step(self, report: Any) -> None:
        self.steps = report.step

    def should_stop(self) -> bool:
        return self.steps >= self.at


def _train(
    tmp_path: Path,
    scheme_name: str,
    params: dict[str, Any],
    checkpoint: Path | None = None,
    callbacks: Callbacks | None = None,
) -> tuple[dict[str, torch.Tensor], Any]:
    """The student's weights after a 2-epoch run, and the scheme."""
    task, teacher, train_data, val_data = lm_run(tmp_path)
    config = lm_config(scheme_name, params)
    built = build_scheme(config.scheme, **config.scheme_params)
    result = train(
        config, teacher.module, train_data, val_data, student=gpt2_student(), task=task,
        scheme=built, checkpoint_path=checkpoint, callbacks=callbacks,
    )  # fmt: skip
    return {k: v.clone() for k, v in result.student.state_dict().items()}, built


def test_lambda_zero_trains_as_the_offline_scheme_bit_for_bit(tmp_path: Path) -> None:
    offline, _ = _train(tmp_path, "offline", {})
    on, scheme_used = _train(tmp_path, "on_policy", {"lmbda": 0.0})
    assert scheme_used.on_policy_steps == 0
    assert offline.keys() == on.keys()
    assert all(torch.equal(offline[k], on[k]) for k in offline)


def test_lambda_one_trains_every_step_on_generated_tokens(tmp_path: Path) -> None:
    offline, _ = _train(tmp_path, "offline", {})
    on, scheme_used = _train(tmp_path, "on_policy", {"lmbda": 1.0, "max_new_tokens": 8})
    assert scheme_used.on_policy_steps == 6  # 18 training rows, batches of 6, 2 epochs
    assert any(not torch.equal(offline[k], on[k]) for k in offline)


def test_a_resumed_on_policy_run_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    params = {"lmbda": 0.5, "max_new_tokens": 8}
    whole, _ = _train(tmp_path, "on_policy", params)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Cancelled):
        _train(tmp_path, "on_policy", params, ckpt, _Stop(at=3))
    resumed, _ = _train(tmp_path, "on_policy", params, ckpt)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    drawn = [step_draw(0.5, 0, s)[0] for s in range(6)]
    assert any(drawn) and not all(drawn)  # both kinds of step in this run


def test_a_student_without_generate_is_refused_with_the_reason() -> None:
    on = OnPolicyScheme(lmbda=1.0)
    on.setup(tiny_gpt2(1), nn.Sequential(nn.Embedding(VOCAB, 8)), nn.ModuleList())
    ids, targets = lm_batch()
    with pytest.raises(ValueError, match="has none: use a Hugging Face causal LM student"):
        on.step_inputs(ids, targets, step=0, seed=0)
