"""On-policy distillation of language models (GKD): a fraction of the steps train on the
student's own continuations, scored by the teacher.

Agarwal, Vieillard, Zhou, Stanczyk, Ramos, Geist, Bachem. On-Policy Distillation of Language
Models: Learning from Self-Generated Mistakes (GKD). ICLR 2024, Algorithm 1; TRL's GKDTrainer
(`training_step`, `generate_on_policy_outputs`). With probability lambda (`lmbda`) a step's
batch is replaced: the student samples a continuation of each row's prompt (temperature
`temperature`, at most `max_new_tokens` tokens, top_k 0 and top_p 1 as TRL, stopped after its
first end-of-sequence token), and the step trains on prompt + continuation with the targets
counting the generated tokens only; the teacher then scores that sequence as any other batch,
so the configured token divergence (gkd_jsd with beta, kd, reverse_kl, ...) applies on the
generated tokens: L = D(p_T(. | y_<t, x) || p_S(. | y_<t, x)) averaged over generated t. The
other steps are ordinary (off-policy) distillation on the dataset's sequences; lmbda = 0 is the
offline scheme exactly (no random number is drawn from the run's stream).

The prompt of a row: instruction data (prompt/completion) marks its prompt with -100 targets,
and the prompt is every token before the completion; plain text counts every token from the
second on, and its prompt is the first half of the row (at least one token).

Determinism: whether step s goes on-policy and the sampling's random numbers come from
numpy's SeedSequence of (run seed, step), the sampling under `torch.random.fork_rng`, so the
run's own random stream (dropout, later steps) is the same as without it and a resumed run
makes the same draws. The student samples in eval mode under no_grad and is put back in
training mode.

Targets follow the causal LM's convention (`divergence.counted`): position t's target is the
token at t + 1 (-100 where it does not count), since the logits at t predict token t + 1.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from worker.engine.schemes.offline import OfflineScheme
from worker.engine.tasks.text.models import PAD, unwrap

log = logging.getLogger(__name__)
IGNORE = -100
_SALT = 0x6B4D  # keeps these draws apart from the run's other seeded streams


def step_draw(lmbda: float, seed: int, step: int) -> tuple[bool, int]:
    """(whether step `step` of a run seeded `seed` trains on-policy, the seed of its
    sampling): u < lmbda for u uniform in [0, 1), so lmbda 0 never and 1 always."""
    rng = np.random.default_rng([seed, step, _SALT])
    u, sample_seed = rng.random(), int(rng.integers(0, 2**62))
    return bool(u < lmbda), sample_seed


def prompt_lengths(ids: Tensor, targets: Tensor) -> Tensor:
    """The prompt's length of each row [N] of token ids `ids` [N, L] (right-padded with `PAD`)
    and its shifted targets: the tokens before the first counted one (instruction data), or,
    when the target of the first position counts (plain text), the first half of the row."""
    lengths = (ids != PAD).sum(1)
    counted = targets >= 0
    first = torch.where(counted.any(1), counted.int().argmax(1), lengths - 1)
    half = (lengths // 2).clamp(min=1)
    return torch.where(first == 0, half, first + 1).clamp(max=lengths).clamp(min=1)


def positions_of(model: nn.Module) -> int | None:
    """The longest sequence a transformers model takes (None when its config does not say)."""
    config = getattr(unwrap(model), "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def sequences(ids: Tensor, prompts: Tensor, new: Tensor, eos: set[int]) -> tuple[Tensor, Tensor]:
    """Each row's prompt (`prompts` [N] tokens of `ids`) followed by its continuation `new`
    [N, G] cut after the first end-of-sequence token: token ids [N, L'] right-padded with PAD,
    and the shifted targets counting the continuation's tokens only."""
    rows, kept = [], []
    for b in range(len(ids)):
        gen = new[b].tolist()
        stop = next((j for j, t in enumerate(gen) if t in eos), len(gen) - 1)
        gen = gen[: stop + 1]
        rows.append(ids[b, : int(prompts[b])].tolist() + gen)
        kept.append(len(gen))
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), PAD, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for b, (row, g) in enumerate(zip(rows, kept, strict=True)):
        seq = torch.tensor(row, dtype=torch.long)
        out[b, : len(row)] = seq
        p = len(row) - g
        targets[b, p - 1 : len(row) - 1] = seq[p:]  # position t predicts token t + 1
    return out.to(ids.device), targets.to(ids.device)


class OnPolicyScheme(OfflineScheme):
    """Offline distillation whose steps go on-policy with probability `lmbda` (see the module
    docstring); everything else (frozen teacher, parameter groups, checkpoints) is offline's."""

    def __init__(
        self,
        lmbda: float = 0.5,
        temperature: float = 0.9,
        max_new_tokens: int = 128,
        **params: Any,
    ) -> None:
        super().__init__(
            lmbda=lmbda, temperature=temperature, max_new_tokens=max_new_tokens, **params
        )
        if not 0.0 <= lmbda <= 1.0:
            raise ValueError(f"on_policy: lmbda must be in [0, 1], got {lmbda}")
        if temperature <= 0:
            raise ValueError(f"on_policy: temperature must be > 0, got {temperature}")
        if max_new_tokens < 1:
            raise ValueError(f"on_policy: max_new_tokens must be >= 1, got {max_new_tokens}")
        self.lmbda, self.temperature = float(lmbda), float(temperature)
        self.max_new_tokens = int(max_new_tokens)
        self.on_policy_steps = 0  # steps of this process that trained on generated tokens

    def step_inputs(
        self, x: Tensor, targets: Tensor, step: int, seed: int
    ) -> tuple[Tensor, Tensor]:
        if self.lmbda <= 0.0:
            return x, targets
        go, sample_seed = step_draw(self.lmbda, seed, step)
        if not go:
            return x, targets
        if x.dim() != 2 or targets.shape != x.shape:
            raise ValueError(
                "scheme 'on_policy' samples continuations of token sequences; this task's "
                f"batches are {list(x.shape)} with targets {list(targets.shape)}: use task "
                "causal_lm"
            )
        prompts = prompt_lengths(x, targets)
        limits = [p for p in (positions_of(self.student), positions_of(self.teacher)) if p]
        longest = int(prompts.max())
        new_tokens = min([self.max_new_tokens, *(p - longest for p in limits)])
        if new_tokens < 1:
            log.warning(
                "on_policy: step %d's prompts (%d tokens) leave no room in the models' %s "
                "positions; the step trains on the dataset's sequences",
                step,
                longest,
                min(limits),
            )
            return x, targets
        new, eos = self.sample(x, prompts, new_tokens, sample_seed)
        self.on_policy_steps += 1
        return sequences(x, prompts, new, eos)

    def sample(
        self, ids: Tensor, prompts: Tensor, new_tokens: int, seed: int
    ) -> tuple[Tensor, set[int]]:
        """The student's sampled continuations [N, G] of the prompts (left-padded for
        `generate`), and its end-of-sequence ids."""
        hf: Any = unwrap(self.student)
        if not callable(getattr(hf, "generate", None)):
            raise ValueError(
                f"scheme 'on_policy' samples continuations with the student's transformers "
                f"generate(); this student ({type(hf).__name__}) has none: use a Hugging Face "
                "causal LM student (hf_layers, hf_config, hf_pruned or a registered checkpoint)"
            )
        width = int(prompts.max())
        left = torch.zeros((len(ids), width), dtype=torch.long, device=ids.device)
        mask = torch.zeros_like(left)
        for b in range(len(ids)):
            p = int(prompts[b])
            left[b, width - p :] = ids[b, :p]
            mask[b, width - p :] = 1
        eos = _eos_ids(hf)
        was_training = self.student.training
        self.student.eval()
        devices = [ids.device] if ids.device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                out = hf.generate(
                    input_ids=left,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=self.temperature,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=new_tokens,
                    min_new_tokens=1,
                    pad_token_id=min(eos) if eos else 0,
                    eos_token_id=sorted(eos) or None,
                )
        finally:
            self.student.train(was_training)
        return out[:, width:], eos


def _eos_ids(hf: Any) -> set[int]:
    """The model's end-of-sequence token ids within its vocabulary (its generation config's,
    else its config's); none when it has none."""
    vocab = int(getattr(hf.config, "vocab_size", 0) or 0)
    found = getattr(getattr(hf, "generation_config", None), "eos_token_id", None)
    if found is None:
        found = getattr(hf.config, "eos_token_id", None)
    ids = found if isinstance(found, list) else [found] if found is not None else []
    return {int(i) for i in ids if 0 <= int(i) < vocab}
