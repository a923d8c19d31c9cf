"""Online distillation: deep mutual learning (Zhang, Xiang, Hospedales, Lu, CVPR 2018).

`peers` students train together. Peer 0 is the run's configured student; peers 1..N-1 are
fresh students of the same architecture, each under its own seed derived from the run's: a zoo
student is rebuilt from its zoo entry (so a peer gets the zoo's own initialisation, e.g.
Kaiming-normal convolutions), any other module is copied and re-initialised through every
submodule's `reset_parameters`. Every peer gets the configured losses (its task
loss; a frozen teacher's terms too when a configured loss reads the teacher, e.g. kd, so
`losses: [ce]` is the paper's teacher-free cohort) plus its mutual term:

    weight * T^2 * mean over j != i of KL(softmax(z_j / T) || softmax(z_i / T))

where z_j is peer j's logits of this same step, detached: each peer learns from the others'
current predictions, as in the paper (which updates the peers in turn within a step; here all
peers take one joint step on the sum, so every peer sees the others' predictions of the
parameters they had at the start of the step). `mutual_loss` other than `kl` replaces that KL by
a catalog logit loss (kd, dkd, dist, logit_std) with peer j's detached logits in the teacher's
place, its catalog defaults and the scheme's temperature where it has one (kd at temperature T
is the KL above); the mean over j is kept.

Feature terms between peers (`peer_layers`, e.g. "layer2,layer3": student layer paths, the same
in every peer since they share the architecture): every peer's output at those layers is tapped
during its forward of the step, and peer i adds

    peer_weight * mean over j != i of L_i(f_i, f_j.detach())

with L_i peer i's own instance of the catalog feature loss `peer_loss` (its catalog defaults;
its auxiliary modules, e.g. feature_l2's identity-initialised projectors, train with the peers
and are checkpointed), its layer pairs being (layer, layer): the shapes match, so no connector.
The taps are attached only within a training step (`teacher_outputs`, called just before the
students' forward) and removed in `combine`, so validation and export see plain models.

The optimizer updates every peer (one parameter group); a checkpoint holds every peer; the
pipeline exports and evaluates every peer (peer 0 under the usual artifact names).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.catalog.losses import LOSSES
from core.catalog.schemes import peer_layers as peer_layers_of
from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs
from worker.engine.schemes.base import Autocast, StepView
from worker.engine.schemes.offline import OfflineScheme
from worker.engine.taps import FeatureTaps

SEED_STRIDE = 7_919


def reinitialise(module: nn.Module, seed: int) -> int:
    """Reset every submodule that has `reset_parameters` under `seed`; returns how many."""
    count = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
                count += 1
    return count


def fresh_copy(student: nn.Module, seed: int) -> nn.Module:
    """A student of `student`'s architecture with new weights drawn under `seed`: rebuilt from
    the zoo when it is a zoo student, else a copy re-initialised by `reinitialise`.

    Raises ValueError when neither can give it new weights (no layer has `reset_parameters`).
    """
    arch = getattr(student, "arch", None)
    shape, classes = getattr(student, "input_shape", None), getattr(student, "num_classes", None)
    if arch and shape is not None and classes is not None:
        from worker.engine.students import build_student

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            peer = build_student(arch, shape, classes, **getattr(student, "arch_kwargs", {}))
        theirs, ours = peer.state_dict(), student.state_dict()
        if theirs.keys() == ours.keys() and all(
            theirs[k].shape == v.shape for k, v in ours.items()
        ):
            return peer
    peer = copy.deepcopy(student)
    if reinitialise(peer, seed) == 0:
        raise ValueError(
            "online: the student has no layers that can be re-initialised "
            "(reset_parameters), so its peers would all start the same; use a zoo or "
            "derived student"
        )
    return peer


def mutual_kl(logits: list[Tensor], i: int, temperature: float) -> Tensor:
    """Peer i's mean KL towards every other peer's detached prediction, times T^2."""
    t = temperature
    log_p = F.log_softmax(logits[i].float() / t, dim=1)
    terms = [
        F.kl_div(log_p, F.log_softmax(z.detach().float() / t, dim=1), reduction="batchmean",
                 log_target=True)
        for j, z in enumerate(logits)
        if j != i
    ]  # fmt: skip
    return torch.stack(terms).mean() * t * t


def _loss(name: str, ctx: LossContext, temperature: float | None = None) -> DistillLoss:
    """The catalog loss `name` with its catalog defaults (and `temperature`, when given and it
    takes one)."""
    from worker.engine.losses import loss_class

    params = LOSSES[name].defaults()
    if temperature is not None and "temperature" in params:
        params["temperature"] = temperature
    return loss_class(name)(dataclasses.replace(ctx, name=name), **params)


class OnlineScheme(OfflineScheme):
    """`peers` students learning from each other (and from a frozen teacher, if a loss asks)."""

    def __init__(
        self,
        peers: int = 2,
        weight: float = 1.0,
        temperature: float = 1.0,
        mutual_loss: str = "kl",
        peer_layers: str = "",
        peer_loss: str = "feature_l2",
        peer_weight: float = 1.0,
    ) -> None:
        super().__init__(
            peers=peers,
            weight=weight,
            temperature=temperature,
            mutual_loss=mutual_loss,
            peer_layers=peer_layers,
            peer_loss=peer_loss,
            peer_weight=peer_weight,
        )
        if not 2 <= int(peers) <= 8:
            raise ValueError(f"online: peers must be in [2, 8], got {peers}")
        self.n_peers, self.weight, self.temperature = int(peers), float(weight), float(temperature)
        entry = LOSSES.get(mutual_loss)
        if mutual_loss != "kl" and (entry is None or entry.kind != "logits"):
            raise ValueError(f"online: mutual_loss must be kl or a logit loss, got {mutual_loss!r}")
        self.mutual_loss = mutual_loss
        self.layers = peer_layers_of(peer_layers)
        if self.layers and (peer_loss not in LOSSES or LOSSES[peer_loss].kind != "feature"):
            raise ValueError(f"online: peer_loss must be a feature loss, got {peer_loss!r}")
        self.peer_loss, self.peer_weight = peer_loss, float(peer_weight)
        self.peers = nn.ModuleList()
        self.mutual_losses = nn.ModuleList()  # one per peer when mutual_loss is not kl
        self.feature_losses = nn.ModuleList()  # one per peer when there are peer_layers
        self._taps: list[FeatureTaps] = []

    def setup(self, teacher: nn.Module, student: nn.Module, losses: nn.ModuleList) -> None:
        super().setup(teacher, student, losses)
        base = torch.initial_seed()
        self.peers = nn.ModuleList()
        for k in range(1, self.n_peers):
            peer = fresh_copy(student, (base + k * SEED_STRIDE) % 2**63)
            peer.requires_grad_(True)
            self.peers.append(peer.train(student.training))
        classes = int(getattr(student, "num_classes", 0) or 0)
        if self.mutual_loss != "kl":
            ctx = LossContext(classes)
            self.mutual_losses = nn.ModuleList(
                _loss(self.mutual_loss, ctx, self.temperature) for _ in range(self.n_peers)
            )
        if self.layers:
            shapes = self._layer_shapes(student)
            ctx = LossContext(
                classes,
                [(s, s) for s in shapes],
                pair_paths=[(p, p) for p in self.layers],
            )
            self.feature_losses = nn.ModuleList(
                _loss(self.peer_loss, ctx) for _ in range(self.n_peers)
            )
            first = self.feature_losses[0]
            if getattr(first, "needs_prepare", False) or getattr(first, "needs_input_grad", False):
                raise ValueError(
                    f"online: peer_loss '{self.peer_loss}' needs a preparation the peers do not "
                    "have (a teacher's features or the input's gradient); use e.g. feature_l2 or at"
                )

    def _layer_shapes(self, student: nn.Module) -> list[tuple[int, ...]]:
        """The shapes (no batch) of the student's outputs at `peer_layers`, by one forward."""
        shape = getattr(student, "input_shape", None)
        if shape is None:
            raise ValueError(
                "online: peer_layers needs a student that records its input shape (a zoo or "
                "derived student)"
            )
        probe = next((t for t in [*student.parameters(), *student.buffers()]), None)
        dtype = probe.dtype if probe is not None and probe.is_floating_point() else torch.float32
        was_training = student.training
        student.eval()
        try:
            with (
                FeatureTaps(student, [(p, "output") for p in self.layers], "student") as taps,
                torch.no_grad(),
            ):
                student(torch.zeros(2, *shape, dtype=dtype))
                return [tuple(int(d) for d in f.shape[1:]) for f in taps.features]
        finally:
            student.train(was_training)

    def students(self) -> list[nn.Module]:
        return [self.student, *self.peers]

    def extra_modules(self) -> list[nn.Module]:
        return [self.peers, self.mutual_losses, self.feature_losses]

    def trained_modules(self) -> list[nn.Module]:
        return [self.student, self.losses, self.peers, self.mutual_losses, self.feature_losses]

    def teacher_outputs(
        self, x: Tensor, taps: Any, needed: bool, autocast: Autocast
    ) -> tuple[Tensor, list[Tensor]]:
        with contextlib.suppress(RuntimeError):  # a step that failed before its forward
            self._close_taps()
        self._taps = []
        if self.layers:  # the students' forward, next, fills them
            self._taps = [
                FeatureTaps(m, [(p, "output") for p in self.layers], f"student {k}")
                for k, m in enumerate(self.students())
            ]
            for t in self._taps:
                t.__enter__()
        return super().teacher_outputs(x, taps, needed, autocast)

    def _close_taps(self) -> list[list[Tensor]]:
        """Every peer's tapped features of the last forward (removing the taps)."""
        taps, self._taps = self._taps, []
        for t in taps:
            t.__exit__(None, None, None)
        return [list(t.features) for t in taps]

    def mutual_term(self, view: StepView, i: int) -> Tensor:
        """Peer i's mean logit term towards every other peer's detached logits."""
        logits = view.peer_logits
        if self.mutual_loss == "kl":
            return mutual_kl(logits, i, self.temperature)
        loss = self.mutual_losses[i]
        assert isinstance(loss, DistillLoss)
        terms = [
            loss(StepOutputs(logits[i], z.detach(), view.targets, epoch=view.epoch)).float()
            for j, z in enumerate(logits)
            if j != i
        ]
        return torch.stack(terms).mean()

    def feature_term(self, feats: list[list[Tensor]], view: StepView, i: int) -> Tensor | None:
        """Peer i's mean feature term towards every other peer's detached features."""
        loss = self.feature_losses[i]
        assert isinstance(loss, DistillLoss)
        if not loss.active(view.epoch):
            return None
        logits = view.peer_logits
        with view.autocast():
            terms = [
                loss(StepOutputs(logits[i], logits[j].detach(), view.targets, feats[i],
                                 [f.detach() for f in feats[j]], view.epoch)).float()
                for j in range(len(feats))
                if j != i
            ]  # fmt: skip
        return torch.stack(terms).mean()

    def combine(self, values: dict[str, Tensor], view: StepView) -> dict[str, Tensor]:
        feats = self._close_taps()
        terms = {}
        for i in range(len(view.peer_logits)):
            prefix = "" if i == 0 else f"p{i}/"
            terms[f"{prefix}mutual"] = self.weight * self.mutual_term(view, i)
            if feats:
                term = self.feature_term(feats, view, i)
                if term is not None:
                    terms[f"{prefix}mutual_feat"] = self.peer_weight * term
        return {**values, **terms}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "peers": [p.state_dict() for p in self.peers],
            "peer_losses": self.feature_losses.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        peers = state["peers"]
        if len(peers) != len(self.peers):
            raise RuntimeError(
                f"the checkpoint holds {len(peers) + 1} peers; this run trains {len(self.peers) + 1}"
            )
        for peer, sd in zip(self.peers, peers, strict=True):
            peer.load_state_dict(sd)
        self.feature_losses.load_state_dict(state.get("peer_losses", {}))
