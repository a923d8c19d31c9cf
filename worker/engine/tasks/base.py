"""The `Task` seam: what a batch is, how datasets are read, what is validated and evaluated,
the example input for export, what a model inspection says of a model's output, and the
layer-stage rule.

    load(path, ref)                       read an upload in a format the task accepts
    describe(path, ref)                   what the worker's scan of an upload records
    fit_to_teacher(teacher, data)         check the data fits the teacher; explain when not
    split(data, val_fraction, seed)       train / validation split
    input_shape(data), output_size(data)  what a student is built for
    batch(data, idx, device)              the (inputs, targets) of the samples `idx`
    validate(student, data, ...)          per-epoch metrics, reported as val/<name>
    evaluate(teacher, student, val, ...)  its part of evaluation.json (quality metrics)
    example_input(input_shape)            a batch for torch.export / ONNX tracing
    native_inputs(model, example)         the model and its inputs for cost and latency (a text
                                          student with its own tokenizer: its own token ids)
    export_module(student, input_shape)   what the student's .pt2 and ONNX exports hold: the
                                          student itself (default), or the student with its
                                          post-processing (detection: boxes, scores, classes)
    inspect_output(output_shape)          the task's keys in a model inspection (num_classes)
    adapt_model(module, loaded)           the module a run takes for a loaded model (text
                                          tasks: a transformers model behind `TokenModel`)
    build_student(arch, kwargs, teacher, data)
                                          a student the task builds from its teacher (text:
                                          fewer layers, pruned); None: the zoo builds it
    student_reads_teacher(spec)           whether building that student reads the teacher's
                                          weights (else a replaying run need not load them)
    teacher_record(), replay_teacher(...) what validation and evaluation read of the teacher,
                                          kept in the teacher-output cache and replayed by a
                                          later run that does not load the teacher
    stage_rule                            the catalog's name of the rule that groups an
                                          inspection's layers into stages (`taps.STAGE_RULES`)
                                          and pairs them (`core.pairing.STAGE_RULES`)
    demo(out_dir, seed)                   a small real teacher and dataset (quick start, tests)

A new task is one package, `worker/engine/tasks/<name>/`, holding its `Task` subclass and its
dataset readers, plus its entry in `core/catalog/tasks.py`; what every task's readers share
(`DatasetError`, bounded decoding) is `worker/engine/datasets.py`. Nothing outside a task's
package knows what its targets are.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    import numpy as np

    from core.config import DatasetRef, StudentSpec
    from worker.engine.loading import LoadedModel

Autocast = Callable[[], contextlib.AbstractContextManager[Any]]


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """`t` on `device`; onto a GPU through pinned memory, without waiting for the copy (the
    kernels that read it queue behind it on the same stream)."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class IncompatibleDataError(ValueError):
    """The dataset does not fit the teacher (input shape, outputs)."""


@dataclass
class Batch:
    """One training or validation batch: the models' inputs and the task's targets."""

    inputs: Tensor
    targets: Tensor


class Task(ABC):
    """A task; `classification.ClassificationTask` is the first one."""

    stage_rule: str = "spatial"

    def __init__(self, **params: Any) -> None:
        self.params = params

    @abstractmethod
    def load(self, path: Path, ref: DatasetRef, **limits: Any) -> Any:
        """Read the dataset file `path` described by `ref` (format, label column, ...)."""

    @abstractmethod
    def describe(self, path: Path, ref: DatasetRef, **limits: Any) -> dict[str, Any]:
        """What the scan of an upload records (JSON-ready: size, input shape, a preview), under
        the checks and `limits` that `load` applies; a `datasets.DatasetError` says why not."""

    def fit_to_teacher(self, teacher: LoadedModel, data: Any) -> Any:
        """The data, maybe adapted, once checked against the teacher; IncompatibleDataError."""
        return data

    @abstractmethod
    def split(self, data: Any, val_fraction: float, seed: int) -> tuple[Any, Any]:
        """Deterministic train / validation split."""

    @abstractmethod
    def input_shape(self, data: Any) -> tuple[int, ...]:
        """One sample's input shape (no batch dimension)."""

    @abstractmethod
    def output_size(self, data: Any) -> int:
        """The student's output width (classes for a classifier)."""

    @abstractmethod
    def batch(self, data: Any, idx: Tensor, device: torch.device) -> Batch:
        """The inputs and targets of the samples `idx`, on `device`."""

    @abstractmethod
    def validate(
        self,
        student: nn.Module,
        data: Any,
        batch_size: int,
        device: torch.device,
        autocast: Autocast,
    ) -> dict[str, float]:
        """Metrics on the validation split, keys 'val/<name>'; the student comes back in
        train mode."""

    @abstractmethod
    def evaluate(
        self, teacher: nn.Module, student: nn.Module, data: Any, **options: Any
    ) -> dict[str, Any]:
        """The task's part of the evaluation report (quality of the student next to its
        teacher on held-out `data`); `evaluate.evaluate` adds cost and latency."""

    def example_input(self, input_shape: Sequence[int]) -> Tensor:
        """A batch of 2 random float inputs, for tracing an export."""
        return torch.randn(2, *[int(s) for s in input_shape])

    def export_module(self, student: nn.Module, input_shape: Sequence[int]) -> nn.Module:
        """The module whose graph the run exports as `.pt2` and ONNX for `student`; the student
        itself by default. A task whose outputs need decoding wraps it (detection: the decoding
        to boxes, scores and classes); a wrapper may name its outputs in `output_names` (ONNX;
        default "logits"). The safetensors export is always the student's own weights."""
        return student

    def native_inputs(
        self, model: nn.Module, example: Tensor | None
    ) -> tuple[nn.Module, Tensor | None]:
        """The model as it runs deployed and `example` (`example_input`'s rows, the teacher's
        inputs) as its inputs, for its cost and latency: the model and the example themselves
        by default (a text student with a tokenizer of its own: its own token ids)."""
        return model, example

    def export_dims(self, input_shape: Sequence[int]) -> dict[int, Any]:
        """The input dimensions besides the batch that the .pt2 and ONNX exports leave dynamic,
        {dimension: `torch.export.Dim`} (a text task: the sequence length); none by default."""
        return {}

    def live_samples(self, student: nn.Module, data: Any, epoch: int) -> list[dict[str, Any]]:
        """What the run page shows of the student while it trains, after the validation of
        epoch `epoch` (0-based; a resumed run's first is the epoch it resumed at): a language
        model's continuations of the sample prompts next to the teacher's; JSON-ready, a few
        small items; none by default."""
        return []

    def inspect_output(self, output_shape: list[int] | None) -> dict[str, Any]:
        """The task's keys in a model inspection, read from the model's output shape (batch
        excluded); none by default."""
        return {}

    def adapt_model(self, module: nn.Module, loaded: LoadedModel | None = None) -> nn.Module:
        """The module a run trains or distils from for a loaded model (teacher or student; the
        `loaded` model's tokenizer and config at hand): the module itself by default."""
        return module

    def build_student(
        self, architecture: str, kwargs: dict[str, Any], teacher: LoadedModel, data: Any
    ) -> nn.Module | None:
        """A student this task builds from its teacher (`architecture` / `kwargs` as the run
        config resolved them); None (the default): the zoo builds `architecture`."""
        return None

    def student_reads_teacher(self, spec: StudentSpec) -> bool:
        """Whether building the run's student (`spec`) reads the teacher's weights or runs it
        (a student initialised from its layers, or measured on it); True by default."""
        return True

    def teacher_record(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """What this task's `validate`, `live_samples` and `evaluate` read of the run's teacher,
        once `evaluate` ran on it: (JSON-ready values, named numpy arrays), kept in the run's
        teacher-output cache (`worker.engine.teacher_cache`) so that a later run of the same
        teacher and data can do without the teacher's weights (`replay_teacher`). None (the
        default): the task keeps nothing, and such runs load the teacher."""
        return None

    def replay_teacher(self, record: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Take the teacher's side of validation and evaluation from an earlier run's
        `teacher_record` (on the same validation split); the run's teacher is then a model
        without weights (`loading.is_shell`), which these methods must not run."""
        raise NotImplementedError(f"{type(self).__name__} keeps no teacher record")

    def extra_exports(
        self, student: nn.Module, out_dir: Path, teacher: LoadedModel, teacher_path: Path, data: Any
    ) -> dict[str, str]:
        """Artifacts the task writes for its trained `student` beside the weights, ONNX and
        .pt2, as {artifact kind: file name in `out_dir`} (a text task: the Hugging Face
        checkpoint zip, `student_hf`); none by default. The run calls it once for its
        student; a failure is recorded in evaluation.json, not the run's."""
        return {}

    def demo(self, out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
        """Write a small, real teacher and dataset for this task to `out_dir`; returns (teacher
        path, data path)."""
        raise NotImplementedError(f"the task {type(self).__name__} has no demo")
