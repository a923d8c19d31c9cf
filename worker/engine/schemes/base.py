"""The `Scheme` seam: which models train, the teachers' grad mode, the optimizer's parameter
groups, what a step combines and what a checkpoint holds.

The trainer owns the loop (batches, the student forward, the losses, the schedule, checkpoints'
position and RNG); a scheme is asked at each of those points:

    setup(teacher, student, losses)    grad modes; build any extra models; before .to(device)
    students()                         the students the step runs (the configured one first)
    trained_modules()                  what trains (and is checked for BatchNorm)
    param_groups()                     the optimizer's parameter groups, in a fixed order
    teacher_outputs(x, taps, ...)      the teacher's logits and tapped features for a step
    step_inputs(x, targets, step, seed) a batch's inputs and targets as the step trains on them
                                       (on_policy: the student's own continuations)
    combine(values, view)              the step's weighted terms -> the terms to sum
    state_dict() / load_state_dict()   what a checkpoint holds besides optimizer and position
    rounds() / start_round(r)          sequential rounds of `epochs` each (born-again generations)

A new scheme is one module with a subclass plus its entry in `core/catalog/schemes.py`.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

Autocast = Callable[[], contextlib.AbstractContextManager[Any]]


@dataclass
class StepView:
    """What a scheme may read when it combines a step's terms."""

    inputs: Tensor
    targets: Tensor
    student_logits: Tensor
    teacher_logits: Tensor
    epoch: int
    autocast: Autocast
    peer_logits: list[Tensor] = field(default_factory=list)  # every student's, this step's
    # the configured losses without layer pairs, weighted, of another model's logits on this
    # batch (`logit_terms(logits, model) -> {loss key: term}`; netaug's augmented model)
    logit_terms: Callable[[Tensor, nn.Module], dict[str, Tensor]] | None = None


class Scheme(ABC):
    """A training scheme; `offline.OfflineScheme` is the first one."""

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.teacher: nn.Module = nn.Identity()
        self.student: nn.Module = nn.Identity()
        self.losses: nn.ModuleList = nn.ModuleList()

    def setup(self, teacher: nn.Module, student: nn.Module, losses: nn.ModuleList) -> None:
        """Keep the models and set their grad modes; called once, before the first step."""
        self.teacher, self.student, self.losses = teacher, student, losses

    def students(self) -> list[nn.Module]:
        """The students each step runs, the configured one first: every one gets the
        configured losses (a student after the first: its logit losses, metric keys
        `p{k}/<loss>`), is validated each epoch (`val/p{k}/...`) and exported."""
        return [self.student]

    def rounds(self) -> int:
        """Rounds of `training.epochs` epochs each the trainer runs (born-again generations)."""
        return 1

    def start_round(self, index: int) -> None:
        """Before the first step of round `index` > 0 (also when a resume lands there: must be
        idempotent); the trainer then clears the optimizer's state and restarts the schedule."""
        return None

    def validate_extra(self, validate: Callable[[nn.Module], dict[str, float]]) -> dict[str, float]:
        """Extra validation metrics each epoch, `validate(module)` being the task's metrics of a
        module taking the student's inputs (deep supervision: every head's, `val/head{i}/...`)."""
        return {}

    def earlier_students(self) -> list[nn.Module]:
        """Models finished in earlier rounds (born-again generations 1..N-1), exported too."""
        return []

    @abstractmethod
    def trained_modules(self) -> list[nn.Module]:
        """The modules whose parameters the optimizer updates, in a fixed order."""

    def extra_modules(self) -> list[nn.Module]:
        """Models the scheme adds beyond the student and the losses (moved to the device)."""
        return []

    def to(self, device: torch.device) -> None:
        """Move the scheme's own models to `device`."""
        for module in self.extra_modules():
            module.to(device)

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: by default one, every trainable parameter of
        `trained_modules()` in order."""
        params = [p for m in self.trained_modules() for p in m.parameters() if p.requires_grad]
        return [{"params": params}]

    @abstractmethod
    def teacher_outputs(
        self, x: Tensor, taps: Any, needed: bool, autocast: Autocast
    ) -> tuple[Tensor, list[Tensor]]:
        """The teacher's logits and tapped features for this batch (empty when not `needed`)."""

    def step_inputs(
        self, x: Tensor, targets: Tensor, step: int, seed: int
    ) -> tuple[Tensor, Tensor]:
        """The inputs and targets step `step` (0-based, counted across epochs) of a run seeded
        `seed` trains on, for the batch `x`, `targets`; unchanged by default. Called before the
        teacher runs, so a scheme may put other sequences in the batch's place (`on_policy`:
        the student's sampled continuations); it must be a function of (batch, step, seed) and
        the models, so that a resumed run makes the same steps."""
        return x, targets

    def combine(self, values: dict[str, Tensor], view: StepView) -> dict[str, Tensor]:
        """The weighted terms this step sums; the losses' terms unchanged by default."""
        return values

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds of the models (the trainer adds optimizer and position)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`'s keys from a checkpoint; RuntimeError when they do not fit."""
