"""Training schemes, declared once (torch-free): name, help, parameters, implementation.

A scheme decides which models train, the teachers' grad mode, the optimizer's parameter groups,
what a step combines and what a checkpoint holds (`worker.engine.schemes.base.Scheme`). The
engine builds the one a run config names (`RunConfig.scheme`) from `implementation`, a
"module:Class" string imported only when a run needs it (`Entry.load`), so this module stays
torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.catalog.params import Entry

DEFAULT = "offline"


@dataclass(frozen=True)
class SchemeEntry(Entry):
    """One training scheme: what the UI shows and where the engine finds its class."""

    kind: str = "scheme"


SCHEMES: dict[str, SchemeEntry] = {
    e.name: e
    for e in [
        SchemeEntry(
            "offline",
            "Offline",
            "A frozen, pre-trained teacher guides the student (the default).",
            implementation="worker.engine.schemes.offline:OfflineScheme",
        ),
    ]
}
