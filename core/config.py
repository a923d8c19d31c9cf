"""The run config: one JSON/YAML document that describes a distillation run completely.

It is validated here (pydantic, no torch), stored with the run, exported as YAML, and runs the
same from the CLI (`distill-studio train run.yaml`) as through the API.

Models and datasets are referenced either by id (a model/dataset registered in the studio) or by
a local `path` (standalone CLI use). The worker resolves ids to files before calling the engine.
"""

from __future__ import annotations

import math
import operator
import os
import typing
from typing import Annotated, Any, ClassVar, Literal

import annotated_types
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core import catalog
from core.catalog.augment import AUGMENT, Policy, config_problem
from core.catalog.schemes import RUN_CHECKS, SCHEMES
from core.catalog.tasks import TASKS, task_losses, task_students
from core.catalog.training import (
    LOG_POINTS,
    LOSS_WEIGHT,
    SEED,
    TRAINING,
    VAL_FRACTION,
    ChannelsLast,
    Device,
    Optimizer,
    QatBackend,
    Schedule,
    Setting,
    TeacherCache,
)
from core.teacher_cache import cache_problem

# Limits of a run config. The studio's settings (core/settings.py) declare the same DS_*
# variables; the engine reads them from the environment, as it does not import the backend.
LIMITS = {"DS_MAX_LAYER_PAIRS": 64, "DS_MAX_LOSSES": 16, "DS_MAX_JSON_DEPTH": 32}


def limit(name: str) -> int:
    """The limit `name` (a key of LIMITS) from the environment, else its default."""
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else LIMITS[name]
    except ValueError:
        return LIMITS[name]


def _range_text(metadata: list[Any]) -> str | None:
    """`[lo, hi]`, `(lo, hi]`, ... from a field's ge/gt/le/lt constraints; None when unbounded."""
    lo, hi, lo_open, hi_open = "-inf", "inf", True, True
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            lo, lo_open = str(item.ge), False
        elif isinstance(item, annotated_types.Gt):
            lo = str(item.gt)
        elif isinstance(item, annotated_types.Le):
            hi, hi_open = str(item.le), False
        elif isinstance(item, annotated_types.Lt):
            hi = str(item.lt)
    if (lo, hi) == ("-inf", "inf"):
        return None
    return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _float_problem(value: Any, metadata: list[Any]) -> str | None:
    """Why a number does not fit a float field (not finite, or out of its range), naming both."""
    if not _is_number(value):
        return None  # pydantic says what type it wants
    bounds = _range_text(metadata)
    where = f" in {bounds}" if bounds else ""
    if not math.isfinite(value):
        return f"must be a finite number{where}, got {value}"
    for item in metadata:
        for name, outside in (
            ("ge", operator.lt),
            ("gt", operator.le),
            ("le", operator.gt),
            ("lt", operator.ge),
        ):
            bound = getattr(item, name, None)
            if bound is not None and outside(value, bound):
                return f"must be{where}, got {value}"
    return None


def json_problem(value: Any, max_depth: int, path: str = "", *, finite: bool = True) -> str | None:
    """Why a JSON-like value is refused: nested deeper than `max_depth`, or (with `finite`)
    holding a NaN or an infinite number, named by its path; None when it is fine."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth >= max_depth:
                return (
                    f"nested deeper than {max_depth} levels at '{where or '.'}'; flatten it "
                    "(the limit is the DS_MAX_JSON_DEPTH setting)"
                )
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in pairs)
        elif finite and isinstance(item, float) and not math.isfinite(item):
            return f"'{where}' must be a finite number, got {item}"
    return None


def setting(spec: Setting) -> Any:
    """The pydantic field of a training setting declared in `core.catalog.training`: its
    default, range (`ge`/`gt`/`le`/`lt`), item count and help, declared once there."""
    if spec.type == "floats":
        default = list(spec.default)
        return Field(
            default_factory=lambda: list(default), max_length=spec.max_items, description=spec.help
        )
    return Field(
        spec.default, ge=spec.ge, gt=spec.gt, le=spec.le, lt=spec.lt, description=spec.help
    )


def _items(spec: Setting) -> Any:
    """The pydantic constraints of each item of a list setting ("floats")."""
    return Field(ge=spec.ge, gt=spec.gt, le=spec.le, lt=spec.lt)


class _Strict(BaseModel):
    """Unknown fields are refused; every float is finite and in its range, and every free-form
    dict is finite and shallow, before anything else is checked (JSON may carry NaN and
    Infinity; the answer names the field, the value and the range)."""

    model_config = ConfigDict(extra="forbid")
    # dict fields whose values the catalog checks (it names each parameter's range)
    _catalog_checked: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _finite_and_in_range(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        annotation = field.annotation
        if annotation is float:
            problem = _float_problem(value, field.metadata)
        elif isinstance(value, list) and (items := _float_items(annotation)) is not None:
            problem = _list_problem(value, items)
        elif annotation == dict[str, Any] and isinstance(value, dict):
            # the catalog checks its parameters' values itself (naming each one's range)
            problem = json_problem(
                value,
                limit("DS_MAX_JSON_DEPTH"),
                finite=info.field_name not in cls._catalog_checked,
            )
        else:
            problem = None
        if problem is not None:
            raise ValueError(problem)
        return value


def _float_items(annotation: Any) -> list[Any] | None:
    """For a `list[float]` annotation (its items maybe `Annotated` with a range), the items'
    constraints; None for any other annotation."""
    if typing.get_origin(annotation) is not list:
        return None
    [item] = typing.get_args(annotation) or [None]
    if item is float:
        return []
    if typing.get_origin(item) is Annotated and typing.get_args(item)[0] is float:
        return [m for info in typing.get_args(item)[1:] for m in getattr(info, "metadata", [info])]
    return None


def _list_problem(values: list[Any], metadata: list[Any]) -> str | None:
    """The first item of a list of floats that is not finite or out of the items' range."""
    for i, value in enumerate(values):
        problem = _float_problem(value, metadata)
        if problem is not None:
            return f"item {i} {problem}"
    return None


class ModelRef(_Strict):
    """A model file: a registered model (`model_id`) or a local file (`path`)."""

    model_id: int | None = None
    path: str | None = None
    format: Literal["pt2", "safetensors", "onnx", "hf"] | None = None
    architecture: str | None = Field(None, description="Zoo architecture, for safetensors weights.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Zoo architecture arguments.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelRef:
        if (self.model_id is None) == (self.path is None):
            raise ValueError(
                "give exactly one of 'model_id' (a registered model) or 'path' (a file)"
            )
        return self


class StudentSpec(_Strict):
    """The student: a zoo architecture, derived from the teacher, the teacher's own, or a model.

    - "zoo": `architecture` with `kwargs` from the catalog (the default);
    - "derived": a shallower/narrower version of a zoo teacher: its depth times `depth_factor`
      and its width times `width_factor` (`catalog.derived_architecture` gives the result);
    - "teacher": self-distillation, the teacher's own architecture with fresh weights;
    - "model": a registered model (safetensors) to start from.
    "derived" and "teacher" need a teacher whose architecture is in the zoo (safetensors
    weights with an architecture), not a .pt2 graph.
    """

    _catalog_checked: ClassVar[frozenset[str]] = frozenset({"kwargs"})

    source: Literal["zoo", "derived", "teacher", "model"] = "zoo"
    architecture: str = Field("resnet8", description="Catalog name of the student architecture.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Architecture parameters.")
    model: ModelRef | None = Field(
        None, description="With source='model': the model to start from."
    )
    depth_factor: float = Field(
        0.5, gt=0.0, le=1.0, description="With source='derived': the teacher's depth times this."
    )
    width_factor: float = Field(
        0.5, gt=0.0, le=1.0, description="With source='derived': the teacher's width times this."
    )

    @model_validator(mode="after")
    def _check(self) -> StudentSpec:
        depth = limit("DS_MAX_JSON_DEPTH")
        if self.source != "zoo" and (problem := json_problem(self.kwargs, depth, "kwargs")):
            raise ValueError(problem)  # only a zoo student's kwargs are checked by the catalog
        if self.source == "model":
            if self.model is None:
                raise ValueError("student.source='model' needs student.model")
            return self
        if self.source in ("derived", "teacher"):
            return self  # resolved against the teacher: see `zoo_architecture`
        entry = catalog.STUDENTS.get(self.architecture)
        if entry is None:
            raise ValueError(
                f"unknown student architecture '{self.architecture}'; "
                f"nearest: {', '.join(catalog.nearest(self.architecture, list(catalog.STUDENTS)))}"
            )
        errors = catalog.student_problems(self.architecture, self.kwargs)
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def zoo_architecture(
        self, teacher_arch: str | None = None, teacher_kwargs: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """The catalog name and parameters of the student to build (torch-free).

        `teacher_arch` / `teacher_kwargs` describe the teacher (its zoo architecture, None for a
        .pt2 graph); they matter for "derived" and "teacher". Raises ValueError saying what is
        needed when the teacher has no zoo architecture, and for source "model" (loaded, not
        built).
        """
        if self.source == "derived":
            return catalog.derived_architecture(
                teacher_arch, teacher_kwargs, self.depth_factor, self.width_factor
            )
        if self.source == "teacher":
            return catalog.same_architecture(teacher_arch, teacher_kwargs)
        if self.source == "model":
            raise ValueError(
                "student.source='model' loads student.model; there is nothing to build"
            )
        return self.architecture, dict(self.kwargs)


class DatasetRef(_Strict):
    dataset_id: int | None = None
    path: str | None = None
    format: Literal["npz", "zip", "tar", "csv", "parquet", "jsonl", "txt"] | None = None
    label_column: str = "label"
    text_column: str = Field("text", description="Text tasks: the column holding the text.")
    val_fraction: float = setting(VAL_FRACTION)

    @model_validator(mode="after")
    def _one_source(self) -> DatasetRef:
        if (self.dataset_id is None) == (self.path is None):
            raise ValueError("give exactly one of 'dataset_id' (a registered dataset) or 'path'")
        return self


class LayerPair(_Strict):
    """A teacher module and a student module (by dotted path) whose features are matched."""

    teacher: str
    student: str
    tap: Literal["output", "input"] = "output"


class TeacherSpec(ModelRef):
    """Another teacher of a `multi_teacher` run: a model, its weight and its own layer pairs.

    `weight`: its share when the scheme's weighting is fixed (all weights normalised to sum 1);
    `pairs`: student/teacher layers whose features the scheme matches (a hint, MSE through a
    connector), like `layer_pairs` for the run's `teacher`.
    """

    weight: float = Field(1.0, ge=0.0, le=100.0, description="Fixed weight (normalised).")
    pairs: list[LayerPair] = Field(default_factory=list, description="This teacher's pairs.")


class LossSpec(_Strict):
    _catalog_checked: ClassVar[frozenset[str]] = frozenset({"params"})

    name: str
    weight: float = setting(LOSS_WEIGHT)
    params: dict[str, Any] = Field(default_factory=dict)
    pairs: list[int] | None = Field(
        None, description="Indices into layer_pairs this loss uses; default: all pairs."
    )

    @field_validator("pairs", mode="before")
    @classmethod
    def _few_pairs(cls, value: Any) -> Any:
        cap = limit("DS_MAX_LAYER_PAIRS")
        if isinstance(value, list) and len(value) > cap:
            raise ValueError(
                f"{len(value)} pair indices given; a loss uses at most {cap} (the studio's "
                "DS_MAX_LAYER_PAIRS setting)"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> LossSpec:
        entry = catalog.LOSSES.get(self.name)
        if entry is None:
            raise ValueError(
                f"unknown loss '{self.name}'; the catalog has: {', '.join(sorted(catalog.LOSSES))}"
            )
        errors = entry.check_params(self.params)
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def resolved_params(self) -> dict[str, Any]:
        return {**catalog.LOSSES[self.name].defaults(), **self.params}


class TrainSettings(_Strict):
    """Optimizer, schedule, length and device of a run: each field's type, default, range and
    help come from `core.catalog.training.TRAINING` (the New run form reads the same)."""

    epochs: int = setting(TRAINING["epochs"])
    batch_size: int = setting(TRAINING["batch_size"])
    optimizer: Optimizer = setting(TRAINING["optimizer"])
    lr: float = setting(TRAINING["lr"])
    momentum: float = setting(TRAINING["momentum"])
    weight_decay: float = setting(TRAINING["weight_decay"])
    schedule: Schedule = setting(TRAINING["schedule"])
    step_milestones: list[Annotated[float, _items(TRAINING["step_milestones"])]] = setting(
        TRAINING["step_milestones"]
    )
    step_gamma: float = setting(TRAINING["step_gamma"])
    device: Device = setting(TRAINING["device"])
    amp: bool = setting(TRAINING["amp"])
    grad_accumulation: int = setting(TRAINING["grad_accumulation"])
    gpus: int = setting(TRAINING["gpus"])
    compile: bool = setting(TRAINING["compile"])
    channels_last: ChannelsLast = setting(TRAINING["channels_last"])
    checkpoint_every: int = setting(TRAINING["checkpoint_every"])
    log_every: int = setting(TRAINING["log_every"])
    export_onnx: bool = setting(TRAINING["export_onnx"])
    qat: QatBackend = setting(TRAINING["qat"])
    data_workers: int = setting(TRAINING["data_workers"])
    teacher_cache: TeacherCache = setting(TRAINING["teacher_cache"])
    teacher_cache_top_k: int = setting(TRAINING["teacher_cache_top_k"])

    @model_validator(mode="after")
    def _batch_per_gpu(self) -> TrainSettings:
        if self.batch_size % self.gpus:
            raise ValueError(
                f"training.batch_size {self.batch_size} does not divide among training.gpus "
                f"{self.gpus}: each GPU takes batch_size / gpus samples; use a batch size that "
                f"is a multiple of {self.gpus}"
            )
        return self

    def log_interval(self, total_steps: int) -> int:
        """Steps between reported metrics: `log_every`, or when that is 0, the fewest that
        give at most `LOG_POINTS` reports over `total_steps` (1 for a run of fewer steps)."""
        return self.log_every or max(1, math.ceil(total_steps / LOG_POINTS))


class AugmentSettings(_Strict):
    """Data augmentation of the training batches and normalisation of every input: each field's
    type, default, range and help come from `core.catalog.augment.AUGMENT` (the New run form
    reads the same); the engine's `worker/engine/augment.py` applies them."""

    flip: bool = setting(AUGMENT["flip"])
    pad_crop: int = setting(AUGMENT["pad_crop"])
    resized_crop: float = setting(AUGMENT["resized_crop"])
    policy: Policy = setting(AUGMENT["policy"])
    rand_ops: int = setting(AUGMENT["rand_ops"])
    rand_magnitude: int = setting(AUGMENT["rand_magnitude"])
    mixup: float = setting(AUGMENT["mixup"])
    cutmix: float = setting(AUGMENT["cutmix"])
    mean: list[Annotated[float, _items(AUGMENT["mean"])]] = setting(AUGMENT["mean"])
    std: list[Annotated[float, _items(AUGMENT["std"])]] = setting(AUGMENT["std"])

    @model_validator(mode="after")
    def _mean_with_std(self) -> AugmentSettings:
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"augment.mean has {len(self.mean)} values and augment.std {len(self.std)}; "
                "give both with as many values (one per channel or feature, or one for all), "
                "or neither"
            )
        return self

    def is_default(self) -> bool:
        """True when nothing is augmented or normalised."""
        return self == AugmentSettings()


class RunConfig(_Strict):
    _catalog_checked: ClassVar[frozenset[str]] = frozenset({"scheme_params", "task_params"})

    name: str = Field("run", min_length=1, max_length=200)
    teacher: ModelRef
    student: StudentSpec = Field(default_factory=StudentSpec)
    dataset: DatasetRef
    layer_pairs: list[LayerPair] = Field(default_factory=list)
    teachers: list[TeacherSpec] = Field(
        default_factory=list,
        description="scheme multi_teacher: the teachers besides `teacher` (1 to 7).",
    )
    losses: list[LossSpec] = Field(
        default_factory=lambda: [LossSpec(name="ce", weight=1.0), LossSpec(name="kd", weight=1.0)]
    )
    scheme: str = Field(
        "offline",
        description="Training scheme (catalog `schemes`); also written "
        "`scheme: {name: online, params: {peers: 3}}`.",
    )
    scheme_params: dict[str, Any] = Field(
        default_factory=dict, description="The scheme's parameters (catalog `schemes`)."
    )
    task: str = Field("classification", description="Task (catalog `tasks`).")
    task_params: dict[str, Any] = Field(
        default_factory=dict,
        description="The task's parameters (catalog `tasks`: e.g. a text task's max_length).",
    )
    training: TrainSettings = Field(default_factory=TrainSettings)
    augment: AugmentSettings = Field(default_factory=AugmentSettings)
    seed: int = setting(SEED)

    @field_validator("layer_pairs", "losses", mode="before")
    @classmethod
    def _capped(cls, value: Any, info: ValidationInfo) -> Any:
        """At most DS_MAX_LAYER_PAIRS layer pairs and DS_MAX_LOSSES losses (each pair and loss
        costs the worker memory: taps, connectors, optimiser state)."""
        setting = "DS_MAX_LAYER_PAIRS" if info.field_name == "layer_pairs" else "DS_MAX_LOSSES"
        cap = limit(setting)
        if isinstance(value, list) and len(value) > cap:
            what = "layer pairs" if info.field_name == "layer_pairs" else "losses"
            raise ValueError(
                f"{len(value)} {what} given; a run takes at most {cap} (the studio's {setting} "
                "setting)"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _scheme_with_params(cls, data: Any) -> Any:
        """`scheme: {name: online, params: {...}}` is `scheme: online` plus `scheme_params`."""
        if not isinstance(data, dict) or not isinstance(data.get("scheme"), dict):
            return data
        spec = dict(data["scheme"])
        extra = sorted(set(spec) - {"name", "params"})
        if extra or "name" not in spec:
            raise ValueError(
                "scheme: give a name, or {name: ..., params: {...}}"
                + (f"; unknown keys {extra}" if extra else "")
            )
        if "params" in spec and "scheme_params" in data:
            raise ValueError("give the scheme's parameters once: scheme.params or scheme_params")
        return {**data, "scheme": spec["name"], "scheme_params": spec.get("params") or {}}

    @field_validator("scheme")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if value not in SCHEMES:
            raise ValueError(f"unknown scheme '{value}'; the catalog has: {', '.join(SCHEMES)}")
        return value

    @model_validator(mode="after")
    def _scheme_fits(self) -> RunConfig:
        """The scheme's parameters are its catalog's, in range; its losses ones it can run."""
        entry = SCHEMES[self.scheme]
        errors = entry.check_params(self.scheme_params)
        if errors:
            raise ValueError("scheme_params: " + "; ".join(errors))
        if self.teachers and self.scheme != "multi_teacher":
            raise ValueError(
                f"teachers: {len(self.teachers)} more teachers given, but scheme "
                f"'{self.scheme}' uses one; use scheme 'multi_teacher' or drop teachers"
            )
        if entry.run_check and (problem := RUN_CHECKS[entry.run_check](self)):
            raise ValueError(problem)
        if not entry.feature_losses:
            for i, loss in enumerate(self.losses):
                if catalog.LOSSES[loss.name].needs_pairs:
                    raise ValueError(
                        f"losses[{i}] '{loss.name}' matches features, which scheme "
                        f"'{self.scheme}' does not support yet; use logit losses (ce, kd, ...)"
                    )
        return self

    @model_validator(mode="after")
    def _qat_fits(self) -> RunConfig:
        """Quantization-aware training runs the offline scheme on logit losses."""
        if self.training.qat == "none":
            return self
        if self.scheme != "offline":
            raise ValueError(
                f"training.qat trains one quantized student; scheme '{self.scheme}' trains "
                "several models: use scheme 'offline' or set training.qat to 'none'"
            )
        if self.layer_pairs:
            raise ValueError(
                "training.qat fuses the student's layers, so layer_pairs cannot tap them; "
                "use logit losses (ce, kd, ...) without layer_pairs, or set training.qat to 'none'"
            )
        return self

    @model_validator(mode="after")
    def _teacher_cache_fits(self) -> RunConfig:
        """`training.teacher_cache: on` only where the cache applies (logit losses, ...)."""
        if self.training.teacher_cache == "on" and (problem := cache_problem(self)) is not None:
            raise ValueError(
                f"training.teacher_cache is 'on' but {problem}; or set it to 'auto' or 'off'"
            )
        return self

    @model_validator(mode="after")
    def _gpus_fit(self) -> RunConfig:
        """Several GPUs (`training.gpus` > 1) train the offline scheme's one student."""
        if self.training.gpus == 1:
            return self
        if self.scheme != "offline":
            raise ValueError(
                f"training.gpus {self.training.gpus}: several GPUs train scheme 'offline' only "
                f"(one student); scheme '{self.scheme}' runs on one GPU, set training.gpus to 1"
            )
        if self.training.qat != "none":
            raise ValueError(
                "training.gpus > 1 does not run quantization-aware training; set training.qat "
                "to 'none' or training.gpus to 1"
            )
        return self

    @model_validator(mode="after")
    def _augment_fits(self) -> RunConfig:
        """Random augmentation only where targets follow (classification); mixup/cutmix's
        soft targets only for losses and schemes that can read them."""
        if (problem := config_problem(self)) is not None:
            raise ValueError(problem)
        return self

    def resolved_task_params(self) -> dict[str, Any]:
        """The task's parameters with the catalog's defaults filled in."""
        return {**TASKS[self.task].defaults(), **self.task_params}

    def resolved_scheme_params(self) -> dict[str, Any]:
        """The scheme's parameters with the catalog's defaults filled in."""
        return {**SCHEMES[self.scheme].defaults(), **self.scheme_params}

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if value not in TASKS:
            raise ValueError(f"unknown task '{value}'; the catalog has: {', '.join(TASKS)}")
        return value

    @model_validator(mode="after")
    def _fits_task(self) -> RunConfig:
        """The losses and the zoo student are ones the task offers (`task_losses`,
        `task_students`): per-pixel losses and students for segmentation, and so on; a loss's
        parameters the task sets (`TaskEntry.loss_params`) fill those the run leaves out."""
        if errors := TASKS[self.task].check_params(self.task_params):
            raise ValueError("task_params: " + "; ".join(errors))
        losses, task_params = task_losses(self.task), TASKS[self.task].loss_params
        for i, loss in enumerate(self.losses):
            if loss.name in task_params:  # the task's value where the run gives none
                loss.params = {**task_params[loss.name], **loss.params}
            if loss.name not in losses:
                raise ValueError(
                    f"losses[{i}] '{loss.name}' does not work with task '{self.task}'; "
                    f"its losses: {', '.join(losses)}"
                )
        students = task_students(self.task)
        if self.student.source == "zoo" and self.student.architecture not in students:
            raise ValueError(
                f"student '{self.student.architecture}' is not a {self.task} student "
                f"(its output does not fit the task); use one of: {', '.join(students)}"
            )
        return self

    @model_validator(mode="after")
    def _losses_fit_pairs(self) -> RunConfig:
        if not self.losses:
            raise ValueError(
                "losses: give at least one loss, e.g. [{'name': 'ce'}, {'name': 'kd'}]"
            )
        for i, loss in enumerate(self.losses):
            entry = catalog.LOSSES[loss.name]
            if entry.needs_pairs and not self.layer_pairs:
                raise ValueError(
                    f"losses[{i}] '{loss.name}' matches features and needs layer_pairs "
                    "(teacher/student module paths); see GET /api/v1/models/{id} for the layers"
                )
            used = len(loss.pairs) if loss.pairs is not None else len(self.layer_pairs)
            need = entry.fewest_pairs()
            if used < need:
                raise ValueError(
                    f"losses[{i}] '{loss.name}' needs at least {need} layer pairs "
                    f"(it relates consecutive layers); it has {used}"
                )
            for j in loss.pairs or []:
                if not 0 <= j < len(self.layer_pairs):
                    raise ValueError(
                        f"losses[{i}].pairs: index {j} out of range; there are "
                        f"{len(self.layer_pairs)} layer_pairs"
                    )
        return self

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_none=True)
        if not data.get("teachers"):
            data.pop("teachers", None)  # only multi_teacher runs have them
        if self.augment.is_default():
            data.pop("augment", None)  # a run without augmentation leaves the section out
        params = data.pop("scheme_params", None)
        if params:  # `scheme: {name, params}`; a scheme without parameters stays one word
            data["scheme"] = {"name": data["scheme"], "params": params}
        return yaml.safe_dump(data, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> RunConfig:
        return cls.model_validate(yaml.safe_load(text))
