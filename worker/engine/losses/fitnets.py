"""FitNets hints: a regressor maps student features onto the teacher's, L2 between them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.connectors import build_connector
from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


class FitNets(DistillLoss):
    """L = sum_i mean((r_i(f_s^i) - f_t^i)^2) over the layer pairs i.

    Romero et al. FitNets: Hints for Thin Deep Nets. ICLR 2015. r_i is a connector (1x1 conv + BN
    or linear, pooling on spatial mismatch) from `build_connector`, trained with the student
    (RepDistiller `HintLoss` + `ConvReg`). With `hint_epochs` > 0 the run starts with a hint-only
    stage: during those epochs this is the only active loss (see `DistillLoss.exclusive`).
    """

    def __init__(self, ctx: LossContext, hint_epochs: int = 0) -> None:
        super().__init__(ctx)
        if not ctx.pairs:
            raise ValueError("fitnets needs at least one layer pair (teacher/student modules)")
        self.hint_epochs = int(hint_epochs)
        self.connectors = nn.ModuleList(build_connector(s, t) for s, t in ctx.pairs)

    def exclusive(self, epoch: int) -> bool:
        """True in the hint-only first stage, when every other loss is switched off."""
        return epoch < self.hint_epochs

    def forward(self, out: StepOutputs) -> Tensor:
        self._check_pairs(out)
        total = torch.zeros((), device=out.student_logits.device)
        pairs = zip(self.connectors, out.student_feats, out.teacher_feats, strict=True)
        for reg, f_s, f_t in pairs:
            total = total + F.mse_loss(reg(f_s).float(), f_t.float())
        return total
