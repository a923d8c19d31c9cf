"""The `multi_teacher` scheme through the REST API: the catalog lists it with its parameters,
formula and paper; configs it cannot run, teachers of other classes or inputs and another
team's teacher are refused before queueing (saying which and how); a real worker distils two
uploaded teachers and reports each one's accuracy next to the student's."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.integration.api_helpers import (
    TEACHER_INSPECTION,
    queue_length,
    ready_dataset,
    ready_model,
    set_row,
)
from tests.integration.api_helpers import run_config as api_run_config
from tests.integration.conftest import mark_ready_from, run_config, upload_demo, wait_run

MULTI = {"name": "multi_teacher", "params": {"weighting": "confidence"}}


def test_the_catalog_lists_multi_teacher_with_its_parameters_formula_and_paper(
    api: TestClient,
) -> None:
    entry = {s["name"]: s for s in api.get("/catalog").json()["schemes"]}["multi_teacher"]
    assert "Confidence-Aware Multi-Teacher Knowledge Distillation" in entry["paper"]
    assert "ICASSP 2022" in entry["paper"]
    assert "softmax over teachers k of -CE(z_k,i, y_i)" in entry["help"]
    params = {p["name"]: p for p in entry["params"]}
    assert params["weighting"]["choices"] == ["fixed", "confidence"]
    assert params["weighting"]["default"] == "confidence"
    assert {"teacher_weight", "kd_weight", "temperature", "feature_weight"} <= set(params)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scheme": MULTI}, "needs 2 to 8 teachers"),
        ({"scheme": "offline", "teachers": [{"model_id": 2}]}, "use scheme 'multi_teacher'"),
        (
            {"scheme": MULTI, "teachers": [{"model_id": 2}], "losses": [{"name": "kd"}]},
            "remove ['kd'] from losses",
        ),
        (
            {"scheme": {"name": "multi_teacher", "params": {"weighting": "entropy"}}},
            "must be one of ['fixed', 'confidence']",
        ),
    ],
)
def test_configs_multi_teacher_cannot_run_are_refused(
    api: TestClient, fields: dict, message: str
) -> None:
    fake = {"id": 1}
    r = api.post("/runs", json=run_config(fake, fake, **{"losses": [{"name": "ce"}], **fields}))
    assert r.status_code == 422, r.text
    assert message in r.text


def _body(teacher: int, dataset: int, *others: int, **fields: object) -> dict:
    return api_run_config(
        teacher,
        dataset,
        losses=[{"name": "ce"}],
        scheme=MULTI,
        teachers=[{"model_id": m} for m in others],
        **fields,
    )


@pytest.mark.parametrize(
    ("inspection", "message"),
    [
        (
            {**TEACHER_INSPECTION, "output_shape": [7], "num_classes": 7},
            "outputs [7] per sample (7 classes), the run's teacher model {t} ('teacher') [4] "
            "(4 classes): every teacher must predict the same classes",
        ),
        (
            {**TEACHER_INSPECTION, "input_shape": [1, 8, 8]},
            "takes inputs [1, 8, 8], the run's teacher model {t} ('teacher') [3, 8, 8]",
        ),
    ],
)
def test_teachers_that_differ_are_refused_saying_which_and_how(
    api: TestClient, studio_env, inspection: dict, message: str
) -> None:
    teacher, dataset = ready_model(api), ready_dataset(api)
    same = ready_model(api, "same")
    other = ready_model(api, "other", inspection=inspection)
    queued = queue_length(studio_env)
    r = api.post("/runs", json=_body(teacher, dataset, same, other))
    assert r.status_code == 422, r.text
    error = r.json()["errors"][0]
    assert error["loc"] == ["body", "teachers", 1]
    assert f"teacher model {other} ('other') " + message.format(t=teacher) in error["msg"]
    assert queue_length(studio_env) == queued
    assert api.post("/runs", json=_body(teacher, dataset, same)).status_code == 201


def test_a_teachers_pairs_must_name_its_layers(api: TestClient) -> None:
    teacher, dataset = ready_model(api), ready_dataset(api)
    other = ready_model(api, "other")
    body = _body(teacher, dataset, other)
    body["teachers"][0]["pairs"] = [{"teacher": "layer9", "student": "layer1"}]
    r = api.post("/runs", json=body)  # checked before the student's layer table is asked for
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"][:4] == ["body", "teachers", 0, "pairs"]
    assert "layer 'layer9' not in teacher" in r.text


def test_another_teams_teacher_is_refused_like_the_single_teacher(api: TestClient) -> None:
    teacher, dataset = ready_model(api), ready_dataset(api)
    theirs = ready_model(api, "theirs")
    team = api.post("/teams", json={"name": "elsewhere"})
    assert team.status_code == 201, team.text
    set_row("Model", theirs, team_id=team.json()["id"])
    as_teacher = api.post("/runs", json=_body(theirs, dataset, teacher))
    as_other = api.post("/runs", json=_body(teacher, dataset, theirs))
    assert as_teacher.status_code == as_other.status_code == 404, as_other.text
    assert as_other.json()["detail"] == as_teacher.json()["detail"]


@pytest.mark.slow
@pytest.mark.one_database
def test_a_real_worker_distils_two_teachers_and_reports_each(
    api, worker, demo_files: tuple[Path, Path]
) -> None:
    model, dataset = mark_ready_from(api, *upload_demo(api, demo_files))
    second, _ = mark_ready_from(api, *upload_demo(api, demo_files))
    pairs = [{"teacher": "layer1", "student": "layer1"}]
    body = run_config(
        model,
        dataset,
        losses=[{"name": "ce"}],
        teachers=[{"model_id": second["id"], "weight": 2.0, "pairs": pairs}],
        scheme={"name": "multi_teacher", "params": {"weighting": "fixed"}},
        training={"epochs": 1, "export_onnx": False},
    )
    deadline = time.time() + 300  # 202 while the worker builds the student's layer table
    while (r := api.post("/runs", json=body)).status_code == 202:
        assert time.time() < deadline, r.text
        time.sleep(0.5)
    assert r.status_code == 201, r.text
    assert r.json()["config"]["teachers"][0]["model_id"] == second["id"]
    done = wait_run(api, r.json()["id"])
    assert done["status"] == "succeeded", (done, worker.output()[-3000:])
    teachers = done["summary"]["teachers"]
    assert [(t["teacher"], t["model_id"], t["weight"]) for t in teachers] == [
        (0, model["id"], 1.0),
        (1, second["id"], 2.0),
    ]
    assert all(0.0 <= t["teacher_top1"] <= 1.0 for t in teachers)
    assert 0.0 <= done["summary"]["student_top1"] <= 1.0
    series = api.get(f"/runs/{done['id']}/metrics").json()["series"]
    assert {"loss/ce", "loss/mkd", "loss/hint/t1", "val/top1"} <= set(series)
