"""The New run page's `multi_teacher` fields: the other teachers (the team's ready models, the
run's teacher left out) and each one's weight, carried to the review and the launched run;
pasted YAML fills them (pairs included)."""

from __future__ import annotations

import pytest

from client import Client
from tests.integration.pages.conftest import LiveApi
from tests.integration.pages.support import INSPECTION, SUMMARY, TEACHER_KWARGS, texts, update
from tests.integration.pages.test_run_workflow import Studio, _app, _seed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studio(live_api: LiveApi) -> tuple[Studio, int]:
    api = Client(live_api.url, live_api.token)
    studio = _seed(live_api.env, api, live_api.url, live_api.token, live_api.env.data_dir)
    second = api.upload_model(
        studio.weights, "second-teacher", architecture="resnet8", kwargs=TEACHER_KWARGS
    )
    update("Model", second.id, status="ready", inspection=INSPECTION)
    return studio, second.id


def test_the_teachers_picker_and_weights_reach_the_launched_run(
    studio: tuple[Studio, int],
) -> None:
    seeded, second = studio
    at = _app(seeded, "new_run.py")
    at.selectbox(key="nr_teacher").set_value(seeded.teacher_id).run()
    at.selectbox(key="nr_scheme").set_value("multi_teacher").run()
    assert not at.exception
    picker = at.multiselect(key="nr_teachers")
    assert picker.options == [f"#{second} second-teacher v1"]  # the run's teacher left out
    assert at.selectbox(key="nr_scheme.multi_teacher.weighting").value == "confidence"
    assert "Confidence-Aware Multi-Teacher" in " ".join(c.value for c in at.caption)
    picker.select(second).run()
    at.number_input(key=f"nr_teachers.{second}.weight").set_value(2.5).run()
    at.selectbox(key="nr_scheme.multi_teacher.weighting").set_value("fixed").run()
    at.multiselect(key="nr_losses").set_value(["ce"]).run()
    at.text_input(key="nr_name").set_value("two-teachers-from-the-form").run()
    review = texts(at.code)
    assert "name: multi_teacher" in review and "weighting: fixed" in review
    assert f"model_id: {second}" in review and "weight: 2.5" in review
    at.button(key="nr_launch").click().run()
    assert not at.exception
    runs = Client(seeded.url, seeded.token).list_runs().items
    run = next(r for r in runs if r.name == "two-teachers-from-the-form")
    assert run.config["scheme"] == "multi_teacher"
    assert [(t["model_id"], t["weight"]) for t in run.config["teachers"]] == [(second, 2.5)]


def test_pasted_yaml_fills_the_teachers_and_keeps_their_pairs(
    studio: tuple[Studio, int],
) -> None:
    seeded, second = studio
    at = _app(seeded, "new_run.py")
    pasted = f"""
name: pasted-teachers
teacher: {{model_id: {seeded.teacher_id}}}
dataset: {{dataset_id: {seeded.dataset_id}}}
losses: [{{name: ce}}]
teachers: [{{model_id: {second}, weight: 3, pairs: [{{teacher: layer1, student: layer1}}]}}]
scheme: {{name: multi_teacher, params: {{weighting: fixed}}}}
"""
    at.text_area(key="nr_yaml").set_value(pasted)
    at.button(key="nr_yaml_load").click().run()
    assert not at.exception
    assert at.selectbox(key="nr_scheme").value == "multi_teacher"
    assert at.multiselect(key="nr_teachers").value == [second]
    assert at.number_input(key=f"nr_teachers.{second}.weight").value == 3.0
    review = texts(at.code)
    assert "weight: 3.0" in review and "teacher: layer1" in review


def test_the_run_page_shows_each_teachers_accuracy_next_to_the_students(
    studio: tuple[Studio, int],
) -> None:
    seeded, second = studio
    teachers = [
        {"teacher": 0, "model_id": seeded.teacher_id, "weight": 1.0, "teacher_top1": 0.98},
        {"teacher": 1, "model_id": second, "weight": 2.0, "teacher_top1": 0.955},
    ]
    update("Run", seeded.done_run_id, summary={**SUMMARY, "teachers": teachers})
    try:
        at = _app(seeded, "run.py", id=seeded.done_run_id)
        assert not at.exception
        frame = next(f.value for f in at.dataframe if "weight" in f.value.columns)
        assert list(frame[""]) == ["teacher 0", "teacher 1", "student"]
        assert list(frame["model"]) == [f"#{seeded.teacher_id}", f"#{second}", ""]
        assert list(frame["weight"]) == ["1", "2", ""]
        assert list(frame["top-1"])[:2] == ["98.00%", "95.50%"]
        assert "Each teacher next to the student" in texts(at.markdown)
    finally:
        update("Run", seeded.done_run_id, summary=SUMMARY)
    at = _app(seeded, "run.py", id=seeded.done_run_id)
    assert not [f for f in at.dataframe if "weight" in f.value.columns]  # one teacher
