"""Gradient matching: the student's input-gradient of its task loss follows the teacher's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs

DISTANCES = ("cosine", "l2")


def input_gradient(logits: Tensor, labels: Tensor, inputs: Tensor, create_graph: bool) -> Tensor:
    """d CE_sum(logits, labels) / d inputs: per-sample gradients, independent of the batch size."""
    ce = F.cross_entropy(logits.float(), labels, reduction="sum")
    return torch.autograd.grad(ce, inputs, create_graph=create_graph)[0]


class GradMatch(DistillLoss):
    """L = mean_b (1 - cos(g_s^b, g_t^b))  (`cosine`)  or  mean (g_s - g_t)^2  (`l2`),
    g = d CE(f(x), y) / dx, the gradient of the per-sample cross-entropy w.r.t. the input.

    Srinivas & Fleuret. Knowledge Transfer with Jacobian Matching. ICML 2018 (input-gradient
    matching; their normalised L2 equals 2 * the cosine form); also Czarnecki et al. Sobolev
    Training for Neural Networks. NeurIPS 2017. The student's gradient is taken with
    create_graph=True through the step's own forward (the trainer makes the input require grad,
    `needs_input_grad`), so the loss trains the student by double backpropagation. The teacher's
    gradient comes from one extra teacher forward on a detached copy of the input under
    `torch.enable_grad()`; its weights stay frozen and receive nothing. The inputs must be
    floating point (images, tabular), not token ids.
    """

    needs_input_grad = True

    def __init__(self, ctx: LossContext, distance: str = "cosine") -> None:
        super().__init__(ctx)
        if distance not in DISTANCES:
            raise ValueError(
                f"grad_match: distance must be one of {list(DISTANCES)}, got {distance!r}"
            )
        self.distance = distance

    def forward(self, out: StepOutputs) -> Tensor:
        x = out.inputs
        if x is None or out.teacher is None or not x.requires_grad:
            raise ValueError(
                "grad_match needs the step's floating-point inputs with requires_grad (the "
                "student's logits computed from them) and the teacher; integer inputs such as "
                "token ids have no input gradient, use another loss for them"
            )
        g_s = input_gradient(out.student_logits, out.labels, x, create_graph=True)
        x_t = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            t_logits = out.teacher(x_t)
            if not t_logits.requires_grad:
                raise ValueError(
                    "grad_match: the teacher's output does not depend differentiably on its "
                    "input (e.g. an ONNX teacher run by onnxruntime); use a .pt2 or safetensors "
                    "teacher, or another loss"
                )
            g_t = input_gradient(t_logits, out.labels, x_t, create_graph=False)
        g_s, g_t = g_s.float().flatten(1), g_t.float().flatten(1)
        if self.distance == "l2":
            return F.mse_loss(g_s, g_t)
        return (1 - F.cosine_similarity(g_s, g_t, dim=1, eps=1e-12)).mean()
