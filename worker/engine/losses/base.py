"""The contract every distillation loss implements.

A loss is an `nn.Module` built once per run from a `LossContext` (class count, the shapes of the
layer pairs it reads, the run length, the paired modules) and its catalog parameters. Each
training step it receives the `StepOutputs` (logits of both models, labels, tapped features, the
input batch and both models) and returns a scalar. Auxiliary modules (connectors, regressors,
auto-encoders) live inside the loss so that the optimizer trains them and checkpoints save them.

Two optional capabilities, declared as class flags so the trainer needs no special cases:

- `needs_input_grad`: the trainer makes the (floating-point) input batch require grad before the
  student forward, so the loss can differentiate through `StepOutputs.inputs` (`grad_match`).
- `needs_prepare`: the trainer calls `prepare_once(teacher_features, device)` once before the
  first step; `prepare` pre-trains auxiliary modules on teacher features (`ft`'s paraphraser,
  `ka`'s auto-encoder). Completion is recorded in the `prepared` buffer, which is part of the
  loss's state dict and so of every checkpoint: a resumed run does not pre-train again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

Shape = tuple[int, ...]


@dataclass
class LossContext:
    """What a loss needs to know to build itself.

    `pairs` holds (student_shape, teacher_shape), both without the batch dimension, for the layer
    pairs this loss uses, in the order their features appear in `StepOutputs`. `pair_paths`
    holds the (student_path, teacher_path) of the same pairs and `student_modules` /
    `teacher_modules` the modules at those paths (empty when the loss is built outside a run);
    losses keep them only as plain references, never as registered submodules. `name` is the
    catalog name the loss is built under (`build_loss` sets it), for its error messages.
    """

    num_classes: int
    pairs: list[tuple[Shape, Shape]] = field(default_factory=list)
    num_train_samples: int = 0
    epochs: int = 1
    pair_paths: list[tuple[str, str]] = field(default_factory=list)
    student_modules: list[nn.Module] = field(default_factory=list)
    teacher_modules: list[nn.Module] = field(default_factory=list)
    name: str = ""


@dataclass
class StepOutputs:
    """Everything one training step produced that a loss may read.

    `student_feats[i]` and `teacher_feats[i]` are the tensors of the loss's i-th layer pair.
    Teacher tensors carry no gradient. `inputs` is the batch both models saw (it requires grad
    when the loss declares `needs_input_grad`); `student` and `teacher` are the models, for
    losses that read weights or run extra forwards (the teacher's weights are frozen).
    """

    student_logits: Tensor
    teacher_logits: Tensor
    labels: Tensor
    student_feats: list[Tensor] = field(default_factory=list)
    teacher_feats: list[Tensor] = field(default_factory=list)
    epoch: int = 0
    inputs: Tensor | None = None
    student: nn.Module | None = None
    teacher: nn.Module | None = None


class DistillLoss(nn.Module):
    """Base class: `forward(out) -> scalar`; `active(epoch)` says whether it counts this epoch."""

    name: str = ""  # the catalog name it was built under (from `LossContext.name`)
    needs_teacher: ClassVar[bool] = True  # False lets the trainer skip the teacher forward
    needs_input_grad: ClassVar[bool] = False  # True: `out.inputs` requires grad (float inputs)
    needs_prepare: ClassVar[bool] = False  # True: the trainer calls `prepare_once` before training
    prepared: Tensor  # bool buffer, registered only when `needs_prepare`

    def __init__(self, ctx: LossContext, **params: Any) -> None:
        super().__init__()
        self.name = ctx.name or type(self).__name__
        if params:
            raise TypeError(f"loss '{self.name}' takes no parameters {sorted(params)}")
        self.ctx = ctx
        if self.needs_prepare:
            self.register_buffer("prepared", torch.zeros((), dtype=torch.bool))

    def prepare(
        self, teacher_features: Callable[[], Iterable[list[Tensor]]], device: torch.device
    ) -> None:
        """Pre-train auxiliary modules before distillation; a no-op unless overridden.

        Each call of `teacher_features()` iterates once over the training data (a fixed order),
        yielding per batch the teacher features of this loss's pairs, without gradient.
        """

    def prepare_once(
        self, teacher_features: Callable[[], Iterable[list[Tensor]]], device: torch.device
    ) -> bool:
        """Run `prepare` unless the `prepared` buffer says it ran (e.g. before a resume).

        Returns True when it ran now.
        """
        if not self.needs_prepare or bool(self.prepared):
            return False
        self.prepare(teacher_features, device)
        self.prepared.fill_(True)
        return True

    def active(self, epoch: int) -> bool:
        """Whether this term counts in `epoch` (0-based)."""
        return True

    def exclusive(self, epoch: int) -> bool:
        """True when this term must be the only kind active in `epoch` (FitNets' hint stage).

        The trainer then drops every term that does not claim exclusivity for that epoch.
        """
        return False

    def forward(self, out: StepOutputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_pairs(self, out: StepOutputs) -> None:
        """Fail clearly when the step delivered a different number of features than configured."""
        n = len(self.ctx.pairs)
        if len(out.student_feats) != n or len(out.teacher_feats) != n:
            raise ValueError(
                f"loss '{self.name}' was built for {n} layer pair(s) but got "
                f"{len(out.student_feats)} student / {len(out.teacher_feats)} teacher features"
            )
