"""Training schemes, declared once (torch-free): name, help, parameters, implementation.

A scheme decides which models train, the teachers' grad mode, the optimizer's parameter groups,
what a step combines and what a checkpoint holds (`worker.engine.schemes.base.Scheme`). The
engine builds the one a run config names (`RunConfig.scheme`) from `implementation`, a
"module:Class" string imported only when a run needs it (`Entry.load`), so this module stays
torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.catalog.params import Entry, param

DEFAULT = "offline"


@dataclass(frozen=True)
class SchemeEntry(Entry):
    """One training scheme: what the UI shows and where the engine finds its class."""

    kind: str = "scheme"
    feature_losses: bool = True  # whether it runs losses on layer pairs (else logit losses only)

    def extra_json(self) -> dict[str, Any]:
        return {"feature_losses": self.feature_losses}


SCHEMES: dict[str, SchemeEntry] = {
    e.name: e
    for e in [
        SchemeEntry(
            "offline",
            "Offline",
            "A frozen, pre-trained teacher guides the student (the default).",
            implementation="worker.engine.schemes.offline:OfflineScheme",
        ),
        SchemeEntry(
            "online",
            "Online (deep mutual learning)",
            "2 to 8 peers, copies of the student initialised independently, train together: "
            "each with the configured losses (its task loss, and the teacher's terms when a "
            "loss reads the teacher; losses: [ce] for no teacher) plus a KL term towards every "
            "other peer's current, detached prediction. Logit losses only for now.",
            (
                param("peers", "int", 2, "How many students train together.", 2, 8),
                param(
                    "weight",
                    "float",
                    1.0,
                    "Weight of each peer's mutual term (the mean KL towards the other peers).",
                    0.0,
                    100.0,
                ),
                param(
                    "temperature",
                    "float",
                    1.0,
                    "Softmax temperature of the mutual KL (scaled by T^2); the paper uses 1.",
                    0.1,
                    20.0,
                ),
            ),
            paper="Zhang, Xiang, Hospedales, Lu. Deep Mutual Learning. CVPR 2018",
            implementation="worker.engine.schemes.online:OnlineScheme",
            feature_losses=False,
        ),
    ]
}
