"""`/api/v1/catalog`: every loss, student, scheme and task with its parameters (the UI builds
forms from it)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from backend.deps import CurrentUser
from backend.errors import responses
from core import catalog
from core.catalog.schemes import SCHEMES
from core.catalog.tasks import TASKS

router = APIRouter(prefix="/catalog", tags=["catalog"])


class ParamOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    type: str = Field(description="float | int | bool | str | choice")
    default: Any = None
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: list[str] | None = None


class EntryOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    title: str = ""
    help: str = ""
    params: list[ParamOut] = Field(default_factory=list)
    paper: str = ""
    kind: str = ""
    needs_pairs: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)


class CatalogOut(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "losses": [
                        {
                            "name": "kd",
                            "title": "Knowledge distillation (Hinton)",
                            "help": "KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch.",
                            "params": [
                                {
                                    "name": "temperature",
                                    "type": "float",
                                    "default": 4.0,
                                    "help": "Softmax temperature T; higher gives softer targets.",
                                    "min": 0.1,
                                    "max": 100,
                                    "choices": None,
                                }
                            ],
                            "paper": "Hinton, Vinyals, Dean. Distilling the Knowledge in a Neural "
                            "Network. 2015",
                            "kind": "logits",
                            "needs_pairs": False,
                            "extra": {},
                        }
                    ],
                    "students": [
                        {
                            "name": "resnet8",
                            "title": "ResNet-8 (CIFAR-style)",
                            "help": "Three stages of basic blocks, depth 8, channels 16/32/64 times width.",
                            "params": [
                                {
                                    "name": "width",
                                    "type": "float",
                                    "default": 1.0,
                                    "help": "Width multiplier of every layer's channels.",
                                    "min": 0.125,
                                    "max": 8.0,
                                    "choices": None,
                                }
                            ],
                            "paper": "He et al. Deep Residual Learning. CVPR 2016",
                            "kind": "cnn",
                            "needs_pairs": False,
                            "extra": {"family": "resnet", "depth": 8},
                        }
                    ],
                    "schemes": [
                        {
                            "name": "offline",
                            "title": "Offline",
                            "help": "A frozen, pre-trained teacher guides the student (the default).",
                            "params": [],
                            "paper": "",
                            "kind": "scheme",
                            "needs_pairs": False,
                            "extra": {},
                        }
                    ],
                    "tasks": [
                        {
                            "name": "classification",
                            "title": "Classification",
                            "help": "One class per sample: targets are class indices and the teacher "
                            "outputs class scores [N, classes]; ...",
                            "params": [],
                            "paper": "",
                            "kind": "task",
                            "needs_pairs": False,
                            "extra": {
                                "formats": ["npz", "zip", "tar", "csv", "parquet"],
                                "metrics": ["top1", "loss"],
                                "stage_rule": "spatial",
                            },
                        }
                    ],
                    "optimizers": ["sgd", "adamw"],
                    "schedules": ["cosine", "step", "constant"],
                }
            ]
        },
    )

    losses: list[EntryOut]
    students: list[EntryOut]
    schemes: list[EntryOut]
    tasks: list[EntryOut]
    optimizers: list[str]
    schedules: list[str]


@router.get(
    "",
    response_model=CatalogOut,
    responses=responses(401, 403, 503),
    summary="Losses, students, schemes, tasks, optimizers and schedules",
)
def get_catalog(_principal: CurrentUser) -> dict[str, Any]:
    served = catalog.as_json()
    served.setdefault("schemes", [e.as_json() for e in SCHEMES.values()])
    served.setdefault("tasks", [e.as_json() for e in TASKS.values()])
    return served
