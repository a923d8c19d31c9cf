"""Offline distillation: a frozen, pre-trained teacher guides the student.

The teacher's parameters never require grad and it runs in eval mode, its forward under
`torch.inference_mode` (skipped when no active loss reads it); the optimizer updates the student
and the losses' own modules (connectors, regressors) in one parameter group; a checkpoint holds
the student and the losses' states, never the teacher's (it is the uploaded file).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from worker.engine.loading import set_mode
from worker.engine.schemes.base import Autocast, Scheme


def freeze(module: nn.Module) -> None:
    """No gradient for any parameter, eval mode (some exported graphs refuse .eval())."""
    for p in module.parameters():
        p.requires_grad_(False)
    set_mode(module, False)


class _StopForward(Exception):
    """Every tapped teacher layer has run: the rest of the teacher's forward is not needed."""


class OfflineScheme(Scheme):
    """One student distilled from one frozen teacher."""

    def setup(self, teacher: nn.Module, student: nn.Module, losses: nn.ModuleList) -> None:
        super().setup(teacher, student, losses)
        freeze(teacher)

    def trained_modules(self) -> list[nn.Module]:
        return [self.student, self.losses]

    def teacher_outputs(
        self, x: Tensor, taps: Any, needed: bool, autocast: Autocast
    ) -> tuple[Tensor, list[Tensor]]:
        if not needed:
            return x.new_empty(0), []
        with torch.inference_mode(), autocast():
            logits = self.teacher(x)
            feats = list(taps.features) if taps is not None else []
        # clone outside inference mode: inference tensors cannot be saved for backward
        return logits.clone(), [f.clone() for f in feats]

    def teacher_features(self, x: Tensor, taps: Any, autocast: Autocast) -> list[Tensor]:
        """The teacher's tapped features without its logits: the forward stops once every
        tapped layer has run (a hook after the taps' own, on each tapped module, raises
        `_StopForward` when `taps.complete`), so the layers after the last tapped one and the
        head do not run. Eager modules only (plain or unflattened `.pt2` teachers): under
        `torch.compile` or in onnxruntime the trainer runs the whole forward instead."""

        def stop(_module: nn.Module, _args: Any, _output: Any) -> None:
            if taps.complete:
                raise _StopForward

        handles = [m.register_forward_hook(stop) for m in taps.tapped_modules]
        try:
            with torch.inference_mode(), autocast():
                try:
                    self.teacher(x)
                except _StopForward:
                    pass
                feats = list(taps.features)
        finally:
            for handle in handles:
                handle.remove()
        return [f.clone() for f in feats]

    def state_dict(self) -> dict[str, Any]:
        return {"student": self.student.state_dict(), "losses": self.losses.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.losses.load_state_dict(state["losses"])
