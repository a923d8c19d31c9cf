"""Teacher and student predictions drawn side by side, for the run page and Compare.

A dense task's evaluation (segmentation, detection, generation) writes a `predictions`
artifact (predictions.json): a fixed set of validation images, each with the ground truth and
each model's predictions drawn over it as PNGs (base64), and the classes each shows (or a note,
e.g. a generated image's PSNR); generation adds the input image. `prediction_rows` reads it,
pure; `show` draws it on a page, one row per image: input | ground truth | teacher | student
(those present).

A text task's evaluation writes the same artifact with text instead of images: each sample's
context (an LM's prompt and reference, a classified text and its label), each model's output as
text (an LM's greedy continuation, a predicted class) and, for an LM, the student's continuation
after each epoch (`epochs`: [{epoch, student}], `worker.engine.tasks.text.lm`). `text_rows` reads those, and `show` draws them as the
context above the teacher's and the student's outputs side by side.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

KIND = "predictions"  # the artifact's kind
PANELS = (
    ("input", "Input"),
    ("truth", "Ground truth"),
    ("teacher", "Teacher"),
    ("student", "Student"),
)


CONTEXT = (  # a text sample's context fields, in the order shown
    ("prompt", "Prompt"),
    ("text", "Text"),
    ("input", "Input"),
    ("label", "Label"),
    ("truth", "Reference"),
    ("completion", "Reference"),
    ("reference", "Reference"),
)
MODELS = (("teacher", "Teacher"), ("student", "Student"))


@dataclass(frozen=True)
class TextSample:
    """One text sample: its context [(title, text)], and the teacher's and student's outputs."""

    context: list[tuple[str, str]]
    teacher: str | None
    student: str | None
    epoch: int | None = None
    epochs: tuple[tuple[int, str], ...] = ()  # the student's output after each epoch (from 0)


@dataclass(frozen=True)
class Panel:
    title: str
    image: bytes  # PNG
    classes: list[str] | None  # None: the sample lists none for this panel
    note: str | None = None  # e.g. "PSNR 23.1 dB vs the target" (generation)


def prediction_rows(raw: bytes, limit: int = 8) -> list[list[Panel]]:
    """The panels of the first `limit` images of a predictions.json (input, ground truth,
    teacher, student: those present); a ValueError when it is not one."""
    samples = json.loads(raw)
    if not isinstance(samples, list):
        raise ValueError("predictions.json holds a list of samples")
    rows = []
    for sample in samples[:limit]:
        row = [
            Panel(title, base64.b64decode(sample[key]), _classes(sample, key), _note(sample, key))
            for key, title in PANELS
            if isinstance(sample.get(key), str)
        ]
        if row:
            rows.append(row)
    return rows


def _is_png(value: Any) -> bool:
    """Whether `value` is a base64 PNG (an image panel) rather than text."""
    if not isinstance(value, str):
        return False
    try:
        return base64.b64decode(value[:16], validate=True).startswith(b"\x89PNG")
    except (binascii.Error, ValueError):
        return False


def text_rows(samples: Any, limit: int = 8) -> list[TextSample]:
    """The first `limit` text samples of a predictions list (empty when its outputs are
    images): each sample's context fields and both models' outputs, as text."""
    if not isinstance(samples, list):
        raise ValueError("predictions.json holds a list of samples")
    rows = []
    for sample in samples:
        if not isinstance(sample, dict):
            continue
        outputs = [sample.get(key) for key, _ in MODELS]
        if any(_is_png(v) for v in outputs) or all(v is None for v in outputs):
            return []
        context = [(t, str(sample[k])) for k, t in CONTEXT if sample.get(k) is not None]
        teacher, student = (None if v is None else str(v) for v in outputs)
        epoch = sample.get("epoch")
        epochs = tuple(
            (int(e["epoch"]), str(e.get("student", "")))
            for e in sample.get("epochs") or []
            if isinstance(e, dict) and isinstance(e.get("epoch"), int)
        )
        when = epoch if isinstance(epoch, int) else None
        rows.append(TextSample(context, teacher, student, when, epochs))
        if len(rows) == limit:
            break
    return rows


def _classes(sample: dict[str, Any], key: str) -> list[str] | None:
    found = sample.get(f"{key}_classes")
    return [str(c) for c in found] if isinstance(found, list) else None


def _note(sample: dict[str, Any], key: str) -> str | None:
    found = sample.get(f"{key}_note")
    return found if isinstance(found, str) else None


def caption(panel: Panel) -> str:
    """A panel's caption: its title and the classes it shows (boxes' classes, in order), or
    its note, or the title alone when the sample gives neither (an input image)."""
    if panel.note:
        return f"{panel.title}: {panel.note}"
    if panel.classes is None:
        return panel.title
    shown = ", ".join(panel.classes) if panel.classes else "nothing"
    return f"{panel.title}: {shown}"


def show(api: Any, artifacts: list[Any], limit: int = 4) -> str:
    """Draw a run's predictions artifact (when it has one); returns what it drew: "image",
    "text" or "" (nothing)."""
    import streamlit as st

    found = next((a for a in artifacts or [] if getattr(a, "kind", None) == KIND), None)
    if found is None:
        return ""
    try:
        raw = api.artifact_bytes(found.id)[1]
        texts = text_rows(json.loads(raw), limit)
        rows = [] if texts else prediction_rows(raw, limit)
    except (ValueError, KeyError, TypeError) as exc:
        st.caption(f"The run's predictions could not be read: {exc}")
        return ""
    if texts:
        show_texts(texts)
        return "text"
    for row in rows:
        cols = st.columns(len(row))
        for col, panel in zip(cols, row, strict=False):
            col.image(panel.image, width="stretch")
            col.caption(caption(panel))
    return "image" if rows else ""


def show_texts(samples: list[TextSample]) -> None:
    """Each text sample: its context, then the teacher's and the student's outputs side by
    side (an LM's continuations of the same prompt)."""
    import streamlit as st

    for sample in samples:
        with st.container(border=True):
            head = f"Epoch {sample.epoch + 1} · " if sample.epoch is not None else ""
            for title, text in sample.context:
                st.markdown(f"{head}**{title}**")
                st.text(text)
                head = ""
            cols = st.columns(2)
            for col, (title, output) in zip(
                cols, (("Teacher", sample.teacher), ("Student", sample.student)), strict=True
            ):
                col.markdown(f"**{title}**")
                col.text(output if output is not None else "—")
            if sample.epochs:
                st.markdown("**The student after each epoch**")
                st.table(
                    {
                        "epoch": [e + 1 for e, _ in sample.epochs],
                        "student": [text for _, text in sample.epochs],
                    }
                )
