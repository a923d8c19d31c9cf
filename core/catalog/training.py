"""Training options, declared once: the optimizers, schedules and devices a run may name, and the
type, default, range and help of every training setting.

`core.config` builds the run config's fields from these (so the API validates with them), and
the New run form builds its inputs from them (`ui/app_pages/new_run.py`). A bound is inclusive
(`ge`, `le`) or exclusive (`gt`, `lt`); `margin` is how far inside an exclusive bound the form's
(inclusive) limit sits, and `step` the form's increment.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

Optimizer = Literal["sgd", "adamw"]
Schedule = Literal["cosine", "step", "constant"]
Device = Literal["auto", "cpu", "cuda"]
QatBackend = Literal["none", "x86", "qnnpack"]
ChannelsLast = Literal["auto", "on", "off"]
TeacherCache = Literal["off", "auto", "on"]

OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)
SCHEDULES: tuple[str, ...] = typing.get_args(Schedule)
DEVICES: tuple[str, ...] = typing.get_args(Device)
QAT_BACKENDS: tuple[str, ...] = typing.get_args(QatBackend)
CHANNELS_LAST: tuple[str, ...] = typing.get_args(ChannelsLast)
TEACHER_CACHE: tuple[str, ...] = typing.get_args(TeacherCache)

SettingType = Literal["int", "float", "bool", "choice", "floats"]
LOG_POINTS = 1000  # log_every 0: about this many points per series over a run


@dataclass(frozen=True)
class Setting:
    """One training setting: what the config accepts and how the form offers it."""

    name: str
    type: SettingType
    default: Any
    title: str
    help: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] | None = None
    step: float | None = None
    margin: float = 0.0
    max_items: int | None = None  # for "floats": the most values a list may hold

    def bounds(self) -> dict[str, float]:
        """The pydantic constraints (`ge`, `gt`, `le`, `lt`) that are set."""
        found = {"ge": self.ge, "gt": self.gt, "le": self.le, "lt": self.lt}
        return {k: v for k, v in found.items() if v is not None}

    def form_range(self) -> tuple[float | None, float | None]:
        """The inclusive (min, max) the form offers: an exclusive bound moved in by `margin`."""
        lo = (
            self.ge if self.ge is not None else (None if self.gt is None else self.gt + self.margin)
        )
        hi = (
            self.le if self.le is not None else (None if self.lt is None else self.lt - self.margin)
        )
        if self.type == "int":
            return (None if lo is None else int(lo)), (None if hi is None else int(hi))
        return lo, hi

    def as_json(self) -> dict[str, Any]:
        """Plain JSON of the setting (name, type, default, range, choices, help)."""
        return {
            "name": self.name,
            "type": self.type,
            "default": self.default,
            "title": self.title,
            "help": self.help,
            **self.bounds(),
            "choices": list(self.choices) if self.choices else None,
        }


def _choice(name: str, literal: Any, default: str, title: str, help_: str = "") -> Setting:
    return Setting(name, "choice", default, title, help_, choices=typing.get_args(literal))


TRAINING: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("epochs", "int", 10, "Epochs", "Passes over the training data.", ge=1, le=10_000),
        Setting("batch_size", "int", 64, "Batch size", "Samples per step.", ge=1, le=65_536),
        _choice("optimizer", Optimizer, "sgd", "Optimizer", "SGD with momentum, or AdamW."),
        Setting(
            "lr",
            "float",
            0.05,
            "Learning rate",
            "Initial learning rate.",
            gt=0.0,
            le=10.0,
            step=0.01,
            margin=1e-6,
        ),
        Setting(
            "momentum",
            "float",
            0.9,
            "Momentum",
            "SGD only.",
            ge=0.0,
            lt=1.0,
            step=0.01,
            margin=0.001,
        ),
        Setting(
            "weight_decay",
            "float",
            5e-4,
            "Weight decay",
            "L2 penalty on the weights.",
            ge=0.0,
            le=1.0,
            step=1e-4,
        ),
        _choice(
            "schedule",
            Schedule,
            "cosine",
            "LR schedule",
            "cosine to 0, step decay at the milestones, or constant.",
        ),
        Setting(
            "step_milestones",
            "floats",
            (0.5, 0.75),
            "Milestones",
            "With schedule='step': fractions of the training, each in [0, 1], where the LR "
            "drops, e.g. 0.5,0.75.",
            ge=0.0,
            le=1.0,
            max_items=32,
        ),
        Setting(
            "step_gamma",
            "float",
            0.1,
            "Gamma",
            "With schedule='step': the LR is multiplied by this at each milestone.",
            gt=0.0,
            le=1.0,
            step=0.05,
            margin=0.001,
        ),
        _choice("device", Device, "auto", "Device", "auto: a GPU worker when one is available."),
        Setting(
            "amp", "bool", True, "Mixed precision (GPU)", "Autocast (bf16) on GPU; ignored on CPU."
        ),
        Setting(
            "grad_accumulation",
            "int",
            1,
            "Gradient accumulation",
            "Run each step's batch as this many micro-batches whose gradients add up before the "
            "one optimizer step: the same steps, schedule and result (to rounding) with the "
            "activation memory of batch_size / N. Exact for losses that average over samples; "
            "BatchNorm statistics and batch-level losses (relations, contrastive) see the "
            "micro-batches.",
            ge=1,
            le=1024,
        ),
        Setting(
            "gpus",
            "int",
            1,
            "GPUs",
            "Train on this many GPUs of one worker with torch.distributed (one process per "
            "GPU, DDP): each takes batch_size / N samples of every batch (batch_size must "
            "divide), gradients are averaged, so the result is that of one GPU with the same "
            "batch (BatchNorm statistics are per GPU). The worker must have N GPUs; on CPU N "
            "processes train the same way. Offline scheme.",
            ge=1,
            le=16,
        ),
        Setting(
            "compile",
            "bool",
            False,
            "Compile (torch.compile)",
            "Compile the student's and the teacher's forward with torch.compile (inductor): "
            "faster steps after a first step that takes seconds to minutes; a model that "
            "cannot be compiled runs as is, with a warning in the log.",
        ),
        _choice(
            "channels_last",
            ChannelsLast,
            "auto",
            "Channels-last",
            "Images (4-D inputs) and the models in channels-last memory format, faster for "
            "convolutions on GPU: auto (on GPU only), on, off.",
        ),
        Setting(
            "checkpoint_every",
            "int",
            200,
            "Checkpoint every (steps)",
            "Steps between checkpoints.",
            ge=1,
        ),
        Setting(
            "log_every",
            "int",
            0,
            "Log every (steps)",
            "Steps between reported metrics (mean over them); 0: as many as give about "
            f"{LOG_POINTS:,} points per series over the run (every step of a shorter run).",
            ge=0,
        ),
        Setting(
            "export_onnx",
            "bool",
            True,
            "Export ONNX",
            "Also write the student as ONNX (student.onnx) next to safetensors and .pt2; the "
            "exporter takes a few seconds (about 5 s the first time in a process, 2 s "
            "after).",
        ),
        _choice(
            "qat",
            QatBackend,
            "none",
            "Quantization-aware training (int8)",
            "Train the student through int8 fake quantization (torch.ao; the distillation "
            "losses apply as usual) and also export it as an int8 ONNX model in QDQ form "
            "(student_int8.onnx; TorchScript student_int8.pt when ONNX cannot express it) "
            "for this backend: x86 (servers, per-channel weights) or qnnpack (ARM/mobile); "
            "evaluation.json then shows fp32 and int8 accuracy, size and CPU latency side by "
            "side. Offline scheme, logit losses and a zoo or derived student.",
        ),
        Setting(
            "data_workers",
            "int",
            0,
            "Data loader workers",
            "Read and decode the training batches in this many worker processes, a few batches "
            "ahead (into pinned memory on a GPU), so the device does not wait for the data; "
            "the same batches in the same order. 0 reads them in the training process, enough "
            "for data in memory; 2-8 help a dataset read from disk (an uncompressed .npz "
            "larger than memory) on a GPU.",
            ge=0,
            le=32,
        ),
        _choice(
            "teacher_cache",
            TeacherCache,
            "off",
            "Teacher-output cache",
            "Keep the teacher's outputs of every training batch (its top-k logits, with the "
            "seed and augmentation that produced them) as a team artifact, so later epochs "
            "(without random augmentation) and later runs with the same teacher, data, seed, "
            "batch size and augmentation replay them without the teacher forward (FKD, Shen & "
            "Xing 2022). Offline scheme, logit losses only, on classification (class logits) "
            "or causal_lm (token logits, kept at the counted positions: DistillKit's offline "
            "mode). A causal_lm run that finds every batch and the teacher's evaluation in "
            "the cache does not load the teacher at all (its weights are read only when the "
            "student is built from them, as hf_layers does). on: required (the config is "
            "refused otherwise); auto: where it applies; off: never.",
        ),
        Setting(
            "teacher_cache_top_k",
            "int",
            10,
            "Cached top-k",
            "The teacher logits kept per sample (a language model: per counted token): the k "
            "largest, the other classes (tokens) sharing the rest of the probability mass "
            "evenly (at temperature 1); 0 keeps every logit (float32, the same losses as "
            "without the cache).",
            ge=0,
            le=100_000,
        ),
    ]
}

# settings of a run outside `training`
SEED = Setting(
    "seed",
    "int",
    0,
    "Seed",
    "Seeds the split, the initialisation and the batches.",
    ge=0,
    le=2**31 - 1,
)
VAL_FRACTION = Setting(
    "val_fraction",
    "float",
    0.2,
    "Validation share",
    "Held-out share for evaluation.",
    gt=0.0,
    lt=0.9,
    step=0.05,
    margin=0.01,
)
# up to 1e5: RepDistiller weights SP 3000 and PKT 30000 (their values are tiny)
LOSS_WEIGHT = Setting(
    "weight",
    "float",
    1.0,
    "weight",
    "The term's weight in the training loss.",
    ge=0.0,
    le=100_000.0,
    step=0.1,
)


def as_json() -> list[dict[str, Any]]:
    """The training settings as plain JSON."""
    return [s.as_json() for s in TRAINING.values()]
