"""TinyBERT's attention-based distillation, as a KL between the attention distributions of
paired blocks."""

from __future__ import annotations

import torch
from torch import Tensor

from worker.engine.losses.attention import (
    AttentionReader,
    Heads,
    heads_kl,
    key_mask,
    masked_kl,
    mean_map_log,
    token_mask,
)
from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


class AttentionKL(DistillLoss):
    """L = sum_i mean_{n, h, real q} KL(A_t^i[n, h, q, :] || A_s^i[n, h, q, :]).

    A = softmax(Q K^T / sqrt(d) + mask) per head: the attention distribution of the i-th pair's
    attention (the pair names a block or its attention module; `attention.AttentionReader` reads
    its Q and K, rotary embeddings and grouped keys included). Keys at padding (token id -1) are
    masked, and later keys too when the model is causal (GPT-2, Llama family); only real queries
    count. When the two attentions have different head counts, each side's distributions are
    averaged over its heads first and the KL is taken between the averages. Long sequences take
    the maps a chunk of heads at a time, recomputed in the backward pass (`attention.heads_kl`).

    Jiao et al. TinyBERT: Distilling BERT for Natural Language Understanding. Findings of EMNLP
    2020 match the attention matrices of uniformly mapped layers (their eq. 7 uses MSE on the
    unnormalised scores); the KL between the normalised distributions is MiniLM's form (Wang et
    al. 2020), which needs no projection between teacher and student.
    """

    def __init__(self, ctx: LossContext) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError(
                "attention_kl needs at least one layer pair (a student block and a teacher block)"
            )
        self.readers = _readers(ctx)

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        for student, teacher in self.readers:
            s, t = student.heads(), teacher.heads()
            student.clear()
            teacher.clear()
            total = total + _pair_kl(s, t, out.inputs, teacher.causal or student.causal)
        return total


def _pair_kl(s: Heads, t: Heads, inputs: Tensor | None, causal: bool) -> Tensor:
    """The pair's KL; long sequences a chunk of heads at a time (`attention.heads_kl`)."""
    (n, s_heads, length, _), (t_heads, t_length) = s[0].shape, t[0].shape[1:3]
    if length != t_length:
        raise ValueError(
            f"attention_kl: the student attends over {length} tokens and the teacher over "
            f"{t_length}; both must read the same token ids (the same tokenizer)"
        )
    real = token_mask(inputs, n, length, s[0].device)
    valid = key_mask(real, causal)
    if s_heads != t_heads:  # different head counts: compare the head-averaged maps
        return masked_kl(mean_map_log(t, valid), mean_map_log(s, valid), valid, real)
    return heads_kl(t, s, valid, real)


def _readers(ctx: LossContext) -> list[tuple[AttentionReader, AttentionReader]]:
    """One (student, teacher) reader per pair. A paired module without attention is refused
    here, before training starts, naming the layer; a pair without modules (a loss built
    outside a run) fails when the loss first runs."""
    readers = []
    for i in range(len(ctx.pairs)):
        s_path, t_path = ctx.pair_paths[i] if i < len(ctx.pair_paths) else ("?", "?")
        s_mod = ctx.student_modules[i] if i < len(ctx.student_modules) else None
        t_mod = ctx.teacher_modules[i] if i < len(ctx.teacher_modules) else None
        pair = (
            AttentionReader(s_mod, f"student layer '{s_path}'"),
            AttentionReader(t_mod, f"teacher layer '{t_path}'"),
        )
        for reader, module in zip(pair, (s_mod, t_mod), strict=True):
            if module is not None:
                reader.check()
        readers.append(pair)
    return readers
