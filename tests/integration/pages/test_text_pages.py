"""Text tasks on the pages: New run maps a transformer student's blocks onto its teacher's
(picked from both models' block tables, or spread evenly) and shows the chosen task's catalog
parameters and the text column; the Datasets page shows a text dataset's kind, rows, sample rows,
class counts and token lengths; the run page draws every validation metric of the run's task and
an LM's continuations of teacher and student side by side; Compare offers the task's metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from client import Client
from tests.hf_helpers import TINY_GPT2, tiny_members, write_zip
from tests.integration.pages.conftest import LiveApi
from tests.integration.pages.support import texts, update
from tests.integration.pages.test_run_workflow import Studio, _app, _seed

pytestmark = pytest.mark.slow


def _hf_model(api: Client, folder: Path, name: str, layers: int) -> int:
    """A tiny GPT-2 of `layers` blocks uploaded as a checkpoint zip, inspected as the worker
    inspects it (`inspect_hf`)."""
    from worker.engine.hf_teacher import inspect_hf

    path = write_zip(folder / f"{name}.zip", tiny_members({**TINY_GPT2, "n_layer": layers}))
    model = api.upload_model(path, name)
    update("Model", model.id, status="ready", inspection=inspect_hf(path))
    return model.id


@pytest.fixture(scope="module")
def studio(live_api: LiveApi) -> Studio:
    """The shared seed, a 4-block GPT-2 teacher and a 2-block GPT-2 student model."""
    api = Client(live_api.url, live_api.token)
    studio = _seed(live_api.env, api, live_api.url, live_api.token, live_api.env.data_dir)
    folder = live_api.env.data_dir
    studio.hf_teacher = _hf_model(api, folder, "gpt2-teacher", 4)  # type: ignore[attr-defined]
    studio.hf_student = _hf_model(api, folder, "gpt2-student", 2)  # type: ignore[attr-defined]
    return studio


def _block_tables(at: Any) -> list[Any]:
    """The block tables on the page (teacher's, then the student's): those with an MLP column."""
    return [f.value for f in at.dataframe if "mlp" in f.value.columns]


def test_new_run_maps_student_blocks_onto_teacher_blocks(studio: Studio) -> None:
    at = _app(studio, "new_run.py")
    at.selectbox(key="nr_teacher").set_value(studio.hf_teacher).run()  # type: ignore[attr-defined]
    assert not at.exception, [e.value for e in at.exception]
    assert "**Layer mapping by blocks**" in texts(at.markdown)
    teacher = _block_tables(at)[0]
    assert list(teacher["path"]) == [f"transformer.h.{i}" for i in range(4)]
    assert list(teacher["attention"]) == [f"transformer.h.{i}.attn" for i in range(4)]
    assert "Plan to see the student's blocks" in texts(at.info)

    at.radio(key="nr_student_source").set_value("model").run()
    at.selectbox(key="nr_student_model").set_value(studio.hf_student).run()  # type: ignore[attr-defined]
    assert not at.exception, [e.value for e in at.exception]
    student = _block_tables(at)[1]
    assert list(student["path"]) == ["transformer.h.0", "transformer.h.1"]
    at.button(key="nr_blocks_even").click().run()
    assert not at.exception, [e.value for e in at.exception]
    pairs = [(p["student"], p["teacher"]) for p in at.session_state["nr_pairs"]]
    assert pairs == [("transformer.h.0", "transformer.h.1"), ("transformer.h.1", "transformer.h.3")]
    review = texts(at.code)
    assert "teacher: transformer.h.1" in review and "student: transformer.h.0" in review
