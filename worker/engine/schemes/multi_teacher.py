"""Multi-teacher distillation with fixed or confidence-aware weights.

Teachers k = 0..K-1 (K in [2, 8]) are frozen; teacher 0 is the run's `teacher` (its layer pairs
are the run's `layer_pairs`, read by the configured feature losses as in `offline`), teachers
1..K-1 are the run config's `teachers`, each with its own `pairs`. Every step the scheme adds

    mkd       = kd_weight * T^2 * 1/B sum_i sum_k w_ik KL(softmax(z_k,i / T) || softmax(s_i / T))
    hint/t{k} = feature_weight * 1/B sum_i w_ik * mean_d (r_k,j(f^s_i) - f^k_i)^2   (each pair j)

where s is the student's logits, z_k teacher k's, f^s / f^k the tapped features of teacher k's
pairs and r_k,j a connector (`connectors.build_connector`, identity when shapes agree). The
per-sample weights w_i sum to 1 over the teachers:

- `weighting: fixed`: w_ik = a_k / sum_l a_l, a the teachers' weights (`teacher_weight` for
  teacher 0, `teachers[k-1].weight` for the others);
- `weighting: confidence`: CA-MKD (Zhang, Chen, Wang, "Confidence-Aware Multi-Teacher Knowledge
  Distillation", ICASSP 2022, eq. 2): w_ik = softmax_k(-CE(z_k,i, y_i)), the teacher whose
  prediction is closer to the ground truth weighs more on that sample. (CA-MKD also weights its
  intermediate-feature term by confidences computed from the features; here the hint terms reuse
  the logit weights.)

The optimizer updates the student, the losses' modules and the connectors; a checkpoint holds
them, never the teachers (they are the uploaded files). `bind` gives the scheme its extra
teachers, their weights and pairs and a probe batch (for the connectors' shapes) before `setup`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.connectors import build_connector
from worker.engine.schemes.base import Autocast, StepView
from worker.engine.schemes.offline import OfflineScheme, freeze
from worker.engine.taps import FeatureTaps

Tap = Literal["output", "input"]
Pair = tuple[str, str, Tap]  # (student path, teacher path, tap)


def teacher_weights(
    logits: Sequence[Tensor], targets: Tensor, fixed: Tensor | None = None
) -> Tensor:
    """(B, K) weights, each row summing to 1: `fixed` (K,) normalised, or CA-MKD's
    softmax over teachers of minus each teacher's per-sample cross-entropy."""
    batch, count = targets.shape[0], len(logits)
    if fixed is not None:
        share = fixed.float() / fixed.float().sum()
        return share.to(targets.device).expand(batch, count)
    ce = torch.stack(
        [F.cross_entropy(z.detach().float(), targets.long(), reduction="none") for z in logits], 1
    )
    return torch.softmax(-ce, dim=1)


def weighted_kd(student: Tensor, teachers: Sequence[Tensor], weights: Tensor, t: float) -> Tensor:
    """T^2 * mean over samples of sum_k w_ik KL(softmax(z_k,i/T) || softmax(s_i/T))."""
    log_q = F.log_softmax(student.float() / t, dim=1)
    kls = torch.stack(
        [
            F.kl_div(log_q, F.log_softmax(z.detach().float() / t, 1), reduction="none",
                     log_target=True).sum(1)
            for z in teachers
        ],
        1,
    )  # fmt: skip
    return (weights * kls).sum(1).mean() * t * t


class MultiTeacherScheme(OfflineScheme):
    """One student distilled from 2 to 8 frozen teachers, weighted per sample."""

    def __init__(
        self,
        weighting: str = "confidence",
        teacher_weight: float = 1.0,
        kd_weight: float = 1.0,
        temperature: float = 4.0,
        feature_weight: float = 1.0,
    ) -> None:
        super().__init__(
            weighting=weighting, teacher_weight=teacher_weight, kd_weight=kd_weight,
            temperature=temperature, feature_weight=feature_weight,
        )  # fmt: skip
        if weighting not in ("fixed", "confidence"):
            raise ValueError(
                f"multi_teacher: weighting must be fixed or confidence, got {weighting}"
            )
        self.weighting, self.teacher_weight = weighting, float(teacher_weight)
        self.kd_weight, self.temperature = float(kd_weight), float(temperature)
        self.feature_weight = float(feature_weight)
        self.others = nn.ModuleList()
        self.weights: list[float] = []
        self.pairs: list[list[Pair]] = []
        self.probe: Tensor | None = None
        self.connectors = nn.ModuleList()  # one ModuleList per extra teacher
        self._t_taps: list[FeatureTaps] = []
        self._s_taps: list[FeatureTaps] = []
        self._step: tuple[list[Tensor], list[list[Tensor]]] | None = None

    def bind(
        self,
        teachers: Sequence[nn.Module],
        weights: Sequence[float],
        pairs: Sequence[Sequence[Pair]],
        probe: Tensor | None = None,
    ) -> MultiTeacherScheme:
        """The teachers besides the run's, their fixed weights and layer pairs; `probe` a
        small input batch (needed when any teacher has pairs: it sizes the connectors)."""
        if not 1 <= len(teachers) <= 7:
            raise ValueError(
                f"multi_teacher: 2 to 8 teachers (the run's and 1 to 7 more), got {len(teachers) + 1}"
            )
        if not len(teachers) == len(weights) == len(pairs):
            raise ValueError("multi_teacher: one weight and one list of pairs per teacher")
        self.others = nn.ModuleList(teachers)
        self.weights = [float(w) for w in weights]
        self.pairs = [list(p) for p in pairs]
        self.probe = probe
        return self

    def setup(self, teacher: nn.Module, student: nn.Module, losses: nn.ModuleList) -> None:
        super().setup(teacher, student, losses)
        if not len(self.others):
            raise ValueError(
                "multi_teacher: no other teachers; give 1 to 7 under the run config's teachers"
            )
        for other in self.others:
            freeze(other)
        self._t_taps = [
            FeatureTaps(t, [(tp, tap) for _, tp, tap in ps], side=f"teacher {k}", detach=True)
            for k, (t, ps) in enumerate(zip(self.others, self.pairs, strict=True), 1)
        ]
        self._s_taps = [
            FeatureTaps(student, [(sp, tap) for sp, _, tap in ps], side="student")
            for ps in self.pairs
        ]
        self.connectors = nn.ModuleList(nn.ModuleList() for _ in self.pairs)
        if any(self.pairs):
            self._build_connectors(student)

    def _build_connectors(self, student: nn.Module) -> None:
        if self.probe is None:
            raise ValueError("multi_teacher: teachers with pairs need a probe batch (bind)")
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                for k, (other, t_taps, s_taps) in enumerate(
                    zip(self.others, self._t_taps, self._s_taps, strict=True)
                ):
                    if not self.pairs[k]:
                        continue
                    with t_taps, s_taps:
                        other(self.probe)
                        student(self.probe)
                        t_feats, s_feats = t_taps.features, s_taps.features
                    for j, (s, t) in enumerate(zip(s_feats, t_feats, strict=True)):
                        try:
                            conns = self.connectors[k]
                            assert isinstance(conns, nn.ModuleList)
                            conns.append(build_connector(s.shape[1:], t.shape[1:]))
                        except ValueError as exc:
                            raise ValueError(f"teachers[{k}].pairs[{j}]: {exc}") from None
        finally:
            student.train(was_training)

    def teacher_count(self) -> int:
        return 1 + len(self.others)

    def extra_modules(self) -> list[nn.Module]:
        return [self.others, self.connectors]

    def trained_modules(self) -> list[nn.Module]:
        return [self.student, self.losses, self.connectors]

    def teacher_outputs(
        self, x: Tensor, taps: Any, needed: bool, autocast: Autocast
    ) -> tuple[Tensor, list[Tensor]]:
        logits, feats = super().teacher_outputs(x, taps, True, autocast)
        all_logits, all_feats = [logits], []
        for other, t_taps in zip(self.others, self._t_taps, strict=True):
            with torch.inference_mode(), autocast(), t_taps:
                z = other(x)
                f = list(t_taps.features) if t_taps.taps else []
            all_logits.append(z.clone())
            all_feats.append([v.clone() for v in f])
        self._step = (all_logits, all_feats)
        for s_taps in self._s_taps:  # the student's forward, next, fills them
            if s_taps.taps and not s_taps._handles:
                s_taps.__enter__()
        return logits, feats

    def _student_features(self) -> list[list[Tensor]]:
        feats = []
        for s_taps in self._s_taps:
            feats.append(list(s_taps.features) if s_taps.taps else [])
            s_taps.__exit__()
        return feats

    def combine(self, values: dict[str, Tensor], view: StepView) -> dict[str, Tensor]:
        if self._step is None:
            raise RuntimeError("multi_teacher: combine before teacher_outputs")
        logits, t_feats = self._step
        self._step = None
        s_feats = self._student_features()
        fixed = None
        if self.weighting == "fixed":
            fixed = torch.tensor([self.teacher_weight, *self.weights])
        w = teacher_weights(logits, view.targets, fixed)
        terms = dict(values)
        terms["mkd"] = self.kd_weight * weighted_kd(
            view.student_logits, logits, w, self.temperature
        )
        for k in range(1, self.teacher_count()):
            if not self.pairs[k - 1]:
                continue
            per_sample = torch.zeros_like(w[:, 0])
            with view.autocast():
                conns = self.connectors[k - 1]
                assert isinstance(conns, nn.ModuleList)
                for conn, s, t in zip(conns, s_feats[k - 1], t_feats[k - 1], strict=True):
                    diff = conn(s).float() - t.float()
                    per_sample = per_sample + diff.pow(2).flatten(1).mean(1)
            terms[f"hint/t{k}"] = self.feature_weight * (w[:, k] * per_sample).mean()
        return terms

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "connectors": self.connectors.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.connectors.load_state_dict(state["connectors"])
