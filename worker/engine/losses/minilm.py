"""MiniLM's self-attention relation distillation: query-query, key-key and value-value
relations of paired blocks, split into relation heads independent of the models' heads."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from worker.engine.losses.attention import Heads, heads_kl, key_mask, token_mask
from worker.engine.losses.attention_kl import _readers
from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


class MiniLMRelations(DistillLoss):
    """L = sum_i sum_{A in Q, K, V} mean_{n, r, real q} KL(R_t^A[n, r, q, :] || R_s^A[n, r, q, :]).

    R^A = softmax(A_r A_r^T / sqrt(d_r) + mask): the relation between the tokens' A vectors (the
    attention's query, key or value projection, [N, L, D] before the rotary embedding) split into
    `relation_heads` R heads of d_r = D / R channels, so teacher and student may differ in hidden
    size and head count. Keys at padding (token id -1) are masked, later keys too when the model
    is causal; only real queries count.

    Wang et al. MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
    Pre-Trained Transformers. NeurIPS 2020 (value relation); Wang et al. MiniLMv2: Multi-Head
    Self-Attention Relation Distillation for Compressing Pretrained Transformers. Findings of
    ACL 2021 (Q-Q, K-K and V-V relations with relation heads). MiniLM pairs the student's last
    block with the teacher's last (v1) or an upper-middle block (v2, for large teachers).
    """

    def __init__(self, ctx: LossContext, relation_heads: int = 8) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError(
                "minilm_relations needs at least one layer pair (a student block and a teacher "
                "block)"
            )
        self.relation_heads = int(relation_heads)
        self.readers = _readers(ctx)

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        for student, teacher in self.readers:
            s_qkv, t_qkv = student.projections(), teacher.projections()
            student.clear()
            teacher.clear()
            causal = student.causal or teacher.causal
            for s, t in zip(s_qkv, t_qkv, strict=True):
                total = total + self._relation_kl(s, t, out.inputs, causal)
        return total

    def _relation_kl(self, s: Tensor, t: Tensor, inputs: Tensor | None, causal: bool) -> Tensor:
        if s.shape[1] != t.shape[1]:
            raise ValueError(
                f"minilm_relations: the student has {s.shape[1]} tokens and the teacher "
                f"{t.shape[1]}; both must read the same token ids (the same tokenizer)"
            )
        real = token_mask(inputs, s.shape[0], s.shape[1], s.device)
        valid = key_mask(real, causal)
        return heads_kl(self._relations(t), self._relations(s), valid, real)

    def _relations(self, a: Tensor) -> Heads:
        """[N, L, D] -> the relation heads [N, R, L, D / R] as queries and keys, and the scale
        1 / sqrt(D / R): relation logits A_r A_r^T / sqrt(D / R) (`attention.heads_kl`)."""
        n, length, width = a.shape
        r = self.relation_heads
        if width % r:
            raise ValueError(
                f"minilm_relations: relation_heads {r} does not divide a projection's width "
                f"{width}; pick a relation_heads that divides every paired width"
            )
        heads = a.float().reshape(n, length, r, width // r).transpose(1, 2)
        return heads, heads, 1.0 / math.sqrt(width // r)
