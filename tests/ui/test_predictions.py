"""The run page's and Compare's predictions panels, read from a predictions.json."""

from __future__ import annotations

import base64
import json

import pytest

from ui.predictions import caption, prediction_rows


def test_rows_hold_the_panels_present_in_order() -> None:
    png = base64.b64encode(b"\x89PNG fake").decode()
    raw = json.dumps(
        [
            {"truth": png, "truth_classes": ["3"], "teacher": png, "teacher_classes": ["3"],
             "student": png, "student_classes": []},
            {"truth": png, "truth_classes": ["1", "7"], "student": png},  # no teacher panel
        ]
    ).encode()  # fmt: skip
    rows = prediction_rows(raw)
    assert [[p.title for p in row] for row in rows] == [
        ["Ground truth", "Teacher", "Student"],
        ["Ground truth", "Student"],
    ]
    assert rows[0][0].image == b"\x89PNG fake"
    assert caption(rows[0][1]) == "Teacher: 3" and caption(rows[0][2]) == "Student: nothing"
    assert caption(rows[1][0]) == "Ground truth: 1, 7"
    assert len(prediction_rows(raw, limit=1)) == 1
    with pytest.raises(ValueError, match="list of samples"):
        prediction_rows(b"{}")


def test_generation_rows_show_the_input_and_each_output_s_note() -> None:
    """A generation sample: input | target | teacher | student, the models captioned by their
    PSNR note, the images by their titles."""
    png = base64.b64encode(b"\x89PNG fake").decode()
    sample = {"input": png, "truth": png, "teacher": png, "student": png,
              "teacher_note": "PSNR 17.7 dB vs the target",
              "student_note": "PSNR 16.9 dB vs the target"}  # fmt: skip
    (row,) = prediction_rows(json.dumps([sample]).encode())
    assert [p.title for p in row] == ["Input", "Ground truth", "Teacher", "Student"]
    assert [caption(p) for p in row] == [
        "Input",
        "Ground truth",
        "Teacher: PSNR 17.7 dB vs the target",
        "Student: PSNR 16.9 dB vs the target",
    ]
