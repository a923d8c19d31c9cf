"""Contrastive representation distillation with a fixed-size queue of teacher negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.losses.base import DistillLoss, LossContext, Shape, StepOutputs


class _Embed(nn.Module):
    """Flatten, Linear(dim_in, feat_dim), L2-normalise (RepDistiller `Embed`)."""

    def __init__(self, shape: Shape, feat_dim: int) -> None:
        super().__init__()
        dim_in = 1
        for n in shape:
            dim_in *= int(n)
        self.linear = nn.Linear(dim_in, feat_dim)

    def forward(self, f: Tensor) -> Tensor:
        return F.normalize(self.linear(f.float().flatten(1)), p=2, dim=1)


class CRD(DistillLoss):
    """L = sum_i mean_b -log( exp(s_b.t_b / tau) / (exp(s_b.t_b / tau) + sum_k exp(s_b.q_k / tau)) ).

    Tian, Krishnan, Isola. Contrastive Representation Distillation. ICLR 2020. Student and
    teacher features of each pair are embedded by linear heads to `feat_dim` and L2-normalised
    (s, t; both heads are trained with the student). The positive of the student anchor s_b is
    the teacher embedding t_b of the same sample; the negatives q_k are teacher embeddings of
    earlier batches kept in a FIFO queue (InfoNCE, the softmax form of CRD's objective, tau =
    `nce_t`). After each training step the batch's detached t_b replace the oldest entries; there
    is no momentum encoder (the teacher is frozen; only its small head moves).

    Difference from RepDistiller: its memory bank holds one momentum-updated embedding per
    training sample (two banks of N x feat_dim) and needs each sample's dataset index. The queue
    needs no indices (our steps do not carry them), has a size independent of the dataset (memory
    does not grow with N) and lives in registered buffers, so checkpoints save and resume it. The
    queue holds min(queue_size, number of training samples) entries, so on a small dataset it does
    not fill with stale copies of the same samples (which would be false negatives). RepDistiller's
    CIFAR weight is 0.8 with ce 1, feat_dim 128, tau 0.07, on the penultimate (pooled) features.
    """

    queue_ptr: Tensor  # buffer: the next write position of each pair's queue

    def __init__(
        self, ctx: LossContext, feat_dim: int = 128, queue_size: int = 4096, nce_t: float = 0.07
    ) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError("crd needs at least one layer pair (teacher/student modules)")
        if nce_t <= 0:
            raise ValueError(f"crd: nce_t must be > 0, got {nce_t}")
        size = min(int(queue_size), ctx.num_train_samples) if ctx.num_train_samples else queue_size
        self.nce_t, self.queue_size = float(nce_t), max(int(size), 1)
        self.embed_s = nn.ModuleList(_Embed(s, feat_dim) for s, _ in ctx.pairs)
        self.embed_t = nn.ModuleList(_Embed(t, feat_dim) for _, t in ctx.pairs)
        gen = torch.Generator().manual_seed(0)  # the random start of the queue is reproducible
        for i in range(len(ctx.pairs)):
            queue = F.normalize(torch.randn(self.queue_size, feat_dim, generator=gen), dim=1)
            self.register_buffer(f"queue_{i}", queue)
        self.register_buffer("queue_ptr", torch.zeros(len(ctx.pairs), dtype=torch.long))

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        for i, (f_s, f_t) in enumerate(zip(out.student_feats, out.teacher_feats, strict=True)):
            s, t = self.embed_s[i](f_s), self.embed_t[i](f_t.detach())
            queue = getattr(self, f"queue_{i}").clone()  # enqueueing below must not touch it
            logits = torch.cat([(s * t).sum(1, keepdim=True), s @ queue.t()], 1) / self.nce_t
            target = torch.zeros(len(s), dtype=torch.long, device=s.device)
            total = total + F.cross_entropy(logits, target)
            if self.training:
                self._enqueue(i, t.detach())
        return total

    @torch.no_grad()
    def _enqueue(self, i: int, keys: Tensor) -> None:
        """Write `keys` over the oldest entries of queue i (FIFO, wrapping around)."""
        queue: Tensor = getattr(self, f"queue_{i}")
        keys = keys[-self.queue_size :].to(queue.dtype)
        ptr = int(self.queue_ptr[i])
        idx = (ptr + torch.arange(len(keys), device=queue.device)) % self.queue_size
        queue[idx] = keys
        self.queue_ptr[i] = (ptr + len(keys)) % self.queue_size
