"""The one catalog: every loss, student architecture, training scheme and task, declared once.

One module per kind: `params` (typed parameters, the entry base, the lazy `load`), `losses`,
`students`, `schemes`, `tasks`, and `training` (optimizers, schedules, settings' ranges). Each
entry names its implementation as a `"module:Attribute"` string that the engine imports when a
run needs it, so this package imports nothing heavy (no torch). The backend validates run
configs against it, the UI builds its forms from it (`GET /api/v1/catalog`, which serves
`as_json()`), and `tests/unit/test_catalog.py` checks that the catalog, the engine and the API
agree.
"""

from __future__ import annotations

from typing import Any

from core.catalog.augment import AUGMENT
from core.catalog.augment import as_json as augment_json
from core.catalog.losses import LOSSES, LossEntry, LossKind
from core.catalog.params import Entry, Param, ParamType, load, nearest, param
from core.catalog.schemes import SCHEMES, SchemeEntry
from core.catalog.students import (
    NEEDS_ZOO_TEACHER,
    RESNET_DEPTHS,
    STUDENTS,
    VGG_NAMED,
    WRN_NAMED,
    StudentEntry,
    derived_architecture,
    same_architecture,
    student_problems,
)
from core.catalog.tasks import TASKS, TaskEntry
from core.catalog.training import DEVICES, OPTIMIZERS, SCHEDULES, TRAINING, Setting
from core.catalog.training import as_json as training_json


def as_json() -> dict[str, Any]:
    """The catalog as plain JSON, served at `GET /api/v1/catalog`: every entry in the same shape
    (`Entry.as_json`), plus the optimizers and schedules a run may name and the type, default,
    range and help of every training setting (`core.catalog.training`) and augmentation setting
    (`core.catalog.augment`)."""
    return {
        "losses": [e.as_json() for e in LOSSES.values()],
        "students": [e.as_json() for e in STUDENTS.values()],
        "schemes": [e.as_json() for e in SCHEMES.values()],
        "tasks": [e.as_json() for e in TASKS.values()],
        "optimizers": list(OPTIMIZERS),
        "schedules": list(SCHEDULES),
        "training": training_json(),
        "augment": augment_json(),
    }


__all__ = [
    "AUGMENT",
    "DEVICES",
    "LOSSES",
    "NEEDS_ZOO_TEACHER",
    "OPTIMIZERS",
    "RESNET_DEPTHS",
    "SCHEDULES",
    "SCHEMES",
    "STUDENTS",
    "TASKS",
    "TRAINING",
    "VGG_NAMED",
    "WRN_NAMED",
    "Entry",
    "LossEntry",
    "LossKind",
    "Param",
    "ParamType",
    "SchemeEntry",
    "Setting",
    "StudentEntry",
    "TaskEntry",
    "as_json",
    "derived_architecture",
    "load",
    "nearest",
    "param",
    "same_architecture",
    "student_problems",
]
