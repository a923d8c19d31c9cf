"""Text classification (catalog `text_classification`): one class per text, the teacher a
Hugging Face `*ForSequenceClassification` checkpoint whose config.json names its classes
(`id2label`), the student a text student built from it (`students`) or a checkpoint sharing
its tokenizer.

- data: `.csv` or `.jsonl` with a text column (`dataset.text_column`) and a label column
  (`dataset.label_column`), read by `data.read_text_dataset`, tokenised with the teacher's
  tokenizer at `max_length` (`base.TextTask.fit_to_teacher`);
- classes: the dataset's label names are matched to the teacher's `id2label` names (so the
  indices are the teacher's whatever order the rows come in); integer labels are the teacher's
  indices themselves; other names, or more classes than the teacher has, are refused;
- targets: class indices [N]; the model output is the logits [N, classes];
- fit: the teacher's predictions on every row are recorded (`TokenData.teacher`, the logits), so
  validation reports the student's agreement with them without running the teacher;
- validation: `val/accuracy`, `val/agreement` (student argmax = teacher argmax), `val/loss`
  (cross-entropy on the labels);
- evaluation: `teacher_accuracy`, `student_accuracy`, `agreement`, `teacher_ece`,
  `student_ece` (15-bin expected calibration error, Guo et al. 2017, as image classification)
  and `samples`: the first held-out texts with their label and both models' predictions.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.tasks.base import Autocast, IncompatibleDataError
from worker.engine.tasks.classification import expected_calibration_error, topk_accuracy
from worker.engine.tasks.text.base import TextTask, TokenData, token_outputs
from worker.engine.tasks.text.data import TextData
from worker.engine.tasks.text.models import unwrap

if TYPE_CHECKING:
    from worker.engine.loading import LoadedModel

SAMPLES = 8  # held-out texts shown with both models' predictions
_SAMPLE_CHARS = 300


def teacher_classes(teacher: LoadedModel) -> list[str]:
    """The teacher's class names by index (`id2label`); refuses a teacher without a
    sequence-classification head."""
    hf = unwrap(teacher.module)
    name = type(hf).__name__
    labels = (teacher.config or {}).get("id2label")
    if teacher.num_classes is None or "ForSequenceClassification" not in name or not labels:
        raise IncompatibleDataError(
            f"text_classification needs a teacher with a sequence-classification head (a "
            f"*ForSequenceClassification checkpoint whose config.json has id2label); this "
            f"teacher is {name}. A language model's checkpoint fits causal_lm, an encoder "
            "without a head sentence_embedding"
        )
    try:
        return [str(labels[str(i)]) for i in range(len(labels))]
    except KeyError as exc:
        raise IncompatibleDataError(
            f"the teacher's config.json id2label has no class {exc}; its keys must be 0..n-1"
        ) from exc


def match_classes(data: TextData, names: list[str]) -> TextData:
    """The dataset's labels as the teacher's class indices: by name (`id2label`), or integer
    labels as indices; refuses labels the teacher does not know."""
    assert data.labels is not None and data.classes is not None
    lookup = {n: i for i, n in enumerate(names)}
    if all(c in lookup for c in data.classes):
        index = [lookup[c] for c in data.classes]
    elif all(c.lstrip("-").isdigit() and 0 <= int(c) < len(names) for c in data.classes):
        index = [int(c) for c in data.classes]
    else:
        unknown = [c for c in data.classes if c not in lookup][:5]
        raise IncompatibleDataError(
            f"the dataset's labels {unknown} are not the teacher's classes ({len(names)}: "
            f"{', '.join(names[:10])}{', ...' if len(names) > 10 else ''}) nor indices "
            f"0..{len(names) - 1}; label the rows with the teacher's id2label names or indices"
        )
    return replace(data, labels=[index[y] for y in data.labels], classes=list(names))


class TextClassificationTask(TextTask):
    """Texts to classes; see the module docstring."""

    kinds = ("classification",)
    output = "logits"

    def fit_to_teacher(self, teacher: LoadedModel, data: TextData) -> TokenData:
        data = match_classes(data, teacher_classes(teacher))
        tokens = super().fit_to_teacher(teacher, data)
        return replace(tokens, teacher=token_outputs(teacher.module, tokens.ids))

    def output_size(self, data: TokenData) -> int:
        return len(data.text.classes or [])

    def inspect_output(self, output_shape: list[int] | None) -> dict[str, Any]:
        vector = output_shape is not None and len(output_shape) == 1
        return {"num_classes": output_shape[0] if vector and output_shape else None}

    @staticmethod
    def recognizes(path: Path, format: str | None) -> bool:
        """A .jsonl whose first record has `label`, or a .csv with a `text` column or a field
        holding words (a sentence) on its first row: labelled texts."""
        from worker.engine.tasks.text.embedding import first_record

        record = first_record(Path(path), format)
        if record is None:
            return False
        if format == "jsonl":
            return "label" in record
        words = any(isinstance(v, str) and " " in v.strip() for v in record.values())
        return "text" in record or words

    def validate(
        self,
        student: nn.Module,
        data: TokenData,
        batch_size: int,
        device: torch.device,
        autocast: Autocast,
    ) -> dict[str, float]:
        """Accuracy and cross-entropy on the labels, agreement with the teacher's predictions
        recorded at fit time."""
        logits = token_outputs(student, data.ids, max(batch_size, 64), device, autocast)
        student.train()
        metrics = {
            "val/accuracy": topk_accuracy(logits, data.labels, 1),
            "val/loss": float(F.cross_entropy(logits, data.labels)) if len(data) else 0.0,
        }
        if data.teacher is not None:
            metrics["val/agreement"] = agreement(logits, data.teacher)
        return metrics

    def evaluate(
        self, teacher: nn.Module, student: nn.Module, data: TokenData, **options: Any
    ) -> dict[str, Any]:
        """teacher_/student_accuracy, agreement, teacher_/student_ece, samples."""
        t_logits = data.teacher if data.teacher is not None else token_outputs(teacher, data.ids)
        s_logits = token_outputs(student, data.ids)
        labels = data.labels
        return {
            "teacher_accuracy": topk_accuracy(t_logits, labels, 1),
            "student_accuracy": topk_accuracy(s_logits, labels, 1),
            "agreement": agreement(s_logits, t_logits),
            "teacher_ece": expected_calibration_error(t_logits, labels),
            "student_ece": expected_calibration_error(s_logits, labels),
            "samples": samples(data, t_logits, s_logits),
        }


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """The fraction of rows where the two models predict the same class."""
    if len(student_logits) == 0:
        return 0.0
    same = student_logits.argmax(-1) == teacher_logits.argmax(-1)
    return float(same.float().mean())


def samples(data: TokenData, t_logits: Tensor, s_logits: Tensor) -> list[dict[str, Any]]:
    """The first held-out texts with their label and each model's predicted class."""
    names = data.text.classes or []
    rows = []
    for i in range(min(SAMPLES, len(data))):
        text = data.text.texts[i]
        rows.append(
            {
                "text": text if len(text) <= _SAMPLE_CHARS else text[: _SAMPLE_CHARS - 1] + "…",
                "label": names[int(data.labels[i])],
                "teacher": names[int(t_logits[i].argmax())],
                "student": names[int(s_logits[i].argmax())],
            }
        )
    return rows
