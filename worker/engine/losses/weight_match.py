"""Weight matching: learnable (low-rank) projections carry teacher weights to the student's shape."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


def layer_weight(module: nn.Module, side: str, path: str) -> Tensor:
    """The weight [out, in, *kernel] of `module`, else of its last conv/linear submodule."""
    for mod in [module, *reversed(list(module.modules()))]:
        w = getattr(mod, "weight", None)
        if isinstance(w, Tensor) and w.dim() >= 2:
            return w
    raise ValueError(
        f"weight_match: {side} layer '{path}' ({type(module).__name__}) has no conv or linear "
        "weight; pair conv/linear modules (or blocks that contain one)"
    )


def pool_kernel(w: Tensor, kernel: tuple[int, ...]) -> Tensor:
    """Adaptive-average-pool the kernel dims of w [O, I, *k] to `kernel` (a mean when it is ())."""
    if tuple(w.shape[2:]) == kernel:
        return w
    if not kernel:
        return w.flatten(2).mean(2)
    if len(kernel) != w.dim() - 2 or len(kernel) > 2:
        raise ValueError(
            f"weight_match: cannot pool a kernel {list(w.shape[2:])} to {list(kernel)}"
        )
    o, i = w.shape[:2]
    flat = w.reshape(o * i, 1, *w.shape[2:])
    if len(kernel) == 1:
        return F.adaptive_avg_pool1d(flat, kernel).reshape(o, i, *kernel)
    h, k = kernel
    return F.adaptive_avg_pool2d(flat, (h, k)).reshape(o, i, *kernel)


class Projection(nn.Module):
    """P [n_s, n_t] = U V with U [n_s, r], V [r, n_t] (rank r), or one full matrix (r = 0 or
    r >= min(n_s, n_t)); initialised to the rectangular identity eye(n_s, n_t)."""

    v: nn.Parameter | None

    def __init__(self, n_s: int, n_t: int, rank: int) -> None:
        super().__init__()
        if 0 < rank < min(n_s, n_t):
            self.u = nn.Parameter(torch.eye(n_s, rank))
            self.v = nn.Parameter(torch.eye(rank, n_t))
        else:
            self.u, self.v = nn.Parameter(torch.eye(n_s, n_t)), None

    def forward(self) -> Tensor:
        return self.u if self.v is None else self.u @ self.v


class WeightMatch(DistillLoss):
    """L = sum_i d(W_s^i, P_out^i pool(W_t^i) P_in^iT), over the out and in channel dims.

    The weights W [out, in, *kernel] of the paired conv/linear layers (the module at the pair's
    path, else its last conv/linear submodule); the teacher's kernel is average-pooled to the
    student's kernel size; P_out [O_s, O_t] and P_in [I_s, I_t] are learnable projections of rank
    `rank` (0: full), initialised to the rectangular identity and trained with the student. With
    `normalize`, d = ||W_s / ||W_s||_F - W' / ||W'||_F||^2 (= 2 - 2 cos, so shrinking the
    projections cannot cheat), else the mean squared difference. Weight transfer across
    dimension differences as in Lin et al. Weight Distillation: Transferring the Knowledge in
    Neural Network Parameters. ACL 2021 (a learned parameter generator from teacher to student
    weights); the lecture notes' "match low-rank projected weights".
    """

    def __init__(self, ctx: LossContext, rank: int = 0, normalize: bool = True) -> None:
        super().__init__(ctx)
        n = len(ctx.pairs)
        if n == 0 or len(ctx.student_modules) != n or len(ctx.teacher_modules) != n:
            raise ValueError(
                "weight_match needs layer pairs and their modules (built by the trainer)"
            )
        paths = ctx.pair_paths or [("student", "teacher")] * n
        # plain references (a list is not registered): the models' weights stay out of this
        # loss's parameters and state dict
        self._pair_modules = list(zip(ctx.student_modules, ctx.teacher_modules, paths, strict=True))
        shapes = [(w_s.shape, w_t.shape) for w_s, w_t in self._weights()]
        self.normalize = bool(normalize)
        self.p_out = nn.ModuleList(Projection(s[0], t[0], rank) for s, t in shapes)
        self.p_in = nn.ModuleList(Projection(s[1], t[1], rank) for s, t in shapes)

    def _weights(self) -> list[tuple[Tensor, Tensor]]:
        return [
            (layer_weight(s, "student", ps), layer_weight(t, "teacher", pt))
            for s, t, (ps, pt) in self._pair_modules
        ]

    def forward(self, out: StepOutputs) -> Tensor:
        total = torch.zeros((), device=out.student_logits.device)
        for (w_s, w_t), p_out, p_in in zip(self._weights(), self.p_out, self.p_in, strict=True):
            w_t = pool_kernel(w_t.detach().float(), tuple(w_s.shape[2:]))
            proj = torch.einsum("so,oi...,ji->sj...", p_out(), w_t, p_in())
            w = w_s.float()
            if self.normalize:
                w, proj = w / w.norm().clamp_min(1e-12), proj / proj.norm().clamp_min(1e-12)
                total = total + (w - proj).pow(2).sum()
            else:
                total = total + F.mse_loss(w, proj)
        return total
