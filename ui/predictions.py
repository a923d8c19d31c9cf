"""Teacher and student predictions drawn side by side, for the run page and Compare.

A dense task's evaluation (segmentation, detection, generation) writes a `predictions`
artifact (predictions.json): a fixed set of validation images, each with the ground truth and
each model's predictions drawn over it as PNGs (base64), and the classes each shows (or a note,
e.g. a generated image's PSNR); generation adds the input image. `prediction_rows` reads it,
pure; `show` draws it on a page, one row per image: input | ground truth | teacher | student
(those present).
"""

from __future__ import annotations

import base64
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


def show(api: Any, artifacts: list[Any], limit: int = 4) -> bool:
    """Draw a run's predictions artifact (when it has one); returns whether it did."""
    import streamlit as st

    found = next((a for a in artifacts or [] if getattr(a, "kind", None) == KIND), None)
    if found is None:
        return False
    try:
        rows = prediction_rows(api.artifact_bytes(found.id)[1], limit)
    except (ValueError, KeyError, TypeError) as exc:
        st.caption(f"The run's predictions could not be read: {exc}")
        return False
    for row in rows:
        cols = st.columns(len(row))
        for col, panel in zip(cols, row, strict=False):
            col.image(panel.image, width="stretch")
            col.caption(caption(panel))
    return True
