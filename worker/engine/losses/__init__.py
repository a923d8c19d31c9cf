"""Loss implementations, registered under their catalog names (`core.catalog.LOSSES`)."""

from __future__ import annotations

from core.config import LossSpec
from worker.engine.losses.ab import ActivationBoundaries
from worker.engine.losses.at import AttentionTransfer
from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs
from worker.engine.losses.cc import CorrelationCongruence
from worker.engine.losses.ce import CrossEntropy
from worker.engine.losses.crd import CRD
from worker.engine.losses.dist import DIST
from worker.engine.losses.dkd import DKD
from worker.engine.losses.feature_l2 import FeatureL2
from worker.engine.losses.fitnets import FitNets
from worker.engine.losses.fsp import FSP
from worker.engine.losses.ft import FactorTransfer
from worker.engine.losses.grad_match import GradMatch
from worker.engine.losses.ickd import ICKD
from worker.engine.losses.ka import KnowledgeAdaptation
from worker.engine.losses.kd import KD
from worker.engine.losses.logit_std import LogitStandardization
from worker.engine.losses.nst import MMD, NST
from worker.engine.losses.pad import PAD
from worker.engine.losses.pkt import PKT
from worker.engine.losses.reviewkd import ReviewKD
from worker.engine.losses.rkd import RKD
from worker.engine.losses.sp import SimilarityPreserving
from worker.engine.losses.vid import VID
from worker.engine.losses.weight_match import WeightMatch

LOSSES: dict[str, type[DistillLoss]] = {
    cls.name: cls for cls in (CrossEntropy, KD, FitNets, AttentionTransfer)
}
# response-based and relation-based losses (issue 3)
LOSSES.update({
    cls.name: cls
    for cls in (
        DKD, DIST, LogitStandardization, PAD, RKD, SimilarityPreserving, CorrelationCongruence,
        PKT, CRD,
    )
})

# feature-based losses and the "other tensors" (issue 3)
LOSSES.update({
    cls.name: cls
    for cls in (
        FeatureL2, ActivationBoundaries, NST, MMD, FactorTransfer, VID, ICKD, ReviewKD,
        KnowledgeAdaptation, FSP, GradMatch, WeightMatch,
    )
})


def build_loss(spec: LossSpec, ctx: LossContext) -> DistillLoss:
    """The loss module for one `LossSpec`, with the catalog defaults filled in."""
    cls = LOSSES.get(spec.name)
    if cls is None:
        raise ValueError(
            f"loss '{spec.name}' is in the catalog but has no engine implementation yet; "
            f"available: {', '.join(sorted(LOSSES))}"
        )
    return cls(ctx, **spec.resolved_params())


__all__ = [
    "KD",
    "LOSSES",
    "AttentionTransfer",
    "CrossEntropy",
    "DistillLoss",
    "FitNets",
    "LossContext",
    "StepOutputs",
    "build_loss",
]
