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
parameters they had at the start of the step).

The optimizer updates every peer (one parameter group); a checkpoint holds every peer; the
pipeline exports and evaluates every peer (peer 0 under the usual artifact names).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.schemes.base import StepView
from worker.engine.schemes.offline import OfflineScheme

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


class OnlineScheme(OfflineScheme):
    """`peers` students learning from each other (and from a frozen teacher, if a loss asks)."""

    def __init__(self, peers: int = 2, weight: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__(peers=peers, weight=weight, temperature=temperature)
        if not 2 <= int(peers) <= 8:
            raise ValueError(f"online: peers must be in [2, 8], got {peers}")
        self.n_peers, self.weight, self.temperature = int(peers), float(weight), float(temperature)
        self.peers = nn.ModuleList()

    def setup(self, teacher: nn.Module, student: nn.Module, losses: nn.ModuleList) -> None:
        super().setup(teacher, student, losses)
        base = torch.initial_seed()
        self.peers = nn.ModuleList()
        for k in range(1, self.n_peers):
            peer = fresh_copy(student, (base + k * SEED_STRIDE) % 2**63)
            peer.requires_grad_(True)
            self.peers.append(peer.train(student.training))

    def students(self) -> list[nn.Module]:
        return [self.student, *self.peers]

    def extra_modules(self) -> list[nn.Module]:
        return [self.peers]

    def trained_modules(self) -> list[nn.Module]:
        return [self.student, self.losses, self.peers]

    def combine(self, values: dict[str, Tensor], view: StepView) -> dict[str, Tensor]:
        mutual = {}
        for i in range(len(view.peer_logits)):
            key = "mutual" if i == 0 else f"p{i}/mutual"
            mutual[key] = self.weight * mutual_kl(view.peer_logits, i, self.temperature)
        return {**values, **mutual}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "peers": [p.state_dict() for p in self.peers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        peers = state["peers"]
        if len(peers) != len(self.peers):
            raise RuntimeError(
                f"the checkpoint holds {len(peers) + 1} peers; this run trains {len(self.peers) + 1}"
            )
        for peer, sd in zip(self.peers, peers, strict=True):
            peer.load_state_dict(sd)
