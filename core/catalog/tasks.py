"""Tasks, declared once (torch-free): name, help, parameters, dataset formats, metrics, stage
rule and implementation.

A task decides what a batch is (inputs, targets), how the dataset formats it accepts are read,
the validation metrics, the evaluation report, the example input for export and the layer-stage
rule (`worker.engine.tasks.base.Task`). The engine builds the one a run config names
(`RunConfig.task`) from `implementation`, a "module:Class" string imported only when a run needs
it (`Entry.load`), so this module stays torch-free.

`stage_rule` names the rule that groups an inspection's layers into stages
(`worker.engine.taps.STAGE_RULES`) and pairs them (`core.pairing.STAGE_RULES`): "spatial" groups
layers by the resolution of their 4-D maps ([C, H, W] without the batch) and pairs the ends of
those stages and, when either network has none (MLPs), the penultimate features. `stage_hint`
says, in a pairing error, which student layers the rule's stages are made of.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from core.catalog.params import Entry

DEFAULT = "classification"
StageRule = Literal["spatial"]


@dataclass(frozen=True)
class TaskEntry(Entry):
    """One task: what the UI shows and where the engine finds its class."""

    kind: str = "task"
    formats: tuple[str, ...] = ()  # dataset upload formats the task reads
    metrics: tuple[str, ...] = ()  # validation metrics, reported per epoch as val/<name>
    stage_rule: StageRule = "spatial"
    stage_hint: str = ""  # "pick a student layer <hint>" in a pairing error

    def extra_json(self) -> dict[str, Any]:
        return {
            "formats": list(self.formats),
            "metrics": list(self.metrics),
            "stage_rule": self.stage_rule,
        }


TASKS: dict[str, TaskEntry] = {
    e.name: e
    for e in [
        TaskEntry(
            "classification",
            "Classification",
            "One class per sample: targets are class indices and the teacher outputs class "
            "scores [N, classes]; validated by top-1 accuracy and cross-entropy, evaluated by "
            "top-1/top-5, agreement and calibration (ECE).",
            implementation="worker.engine.tasks.classification:ClassificationTask",
            formats=("npz", "zip", "csv"),
            metrics=("top1", "loss"),
            stage_rule="spatial",
            stage_hint="with a 4D output",
        ),
    ]
}
