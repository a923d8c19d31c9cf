"""The pages for model versions, dataset samples, run filters and retry, Compare and the Team
(AppTest against a live API, see conftest.py): model versions and the runs that used a teacher,
dataset samples and split, run filters, retry and the worker log, Compare (diff highlighting,
curves, Pareto scatters, saving and sharing), New run's student sources and layer-pair warnings,
and the Team page (members managed by admins, read-only for others, tokens shown once, revoke).

What a worker writes (inspections, scans with their previews, finished runs) is written to the
database directly, as in test_run_workflow.py; the previews come from the engine's own
`dataset_preview`, the function the scan task calls. A zoo student's layer table (built by a
worker for Plan) is put in the store of them (`core.inspections`), as a worker would.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file
from streamlit.testing.v1 import AppTest

from client import ApiError, Client
from tests.integration.pages.conftest import LiveApi
from tests.integration.pages.support import (
    APP,
    INSPECTION,
    SUMMARY,
    TEACHER_KWARGS,
    TIMEOUT,
    finish_run,
    texts,
    update,
)


@dataclass
class Studio:
    url: str
    token: str
    teacher_v1: int
    teacher_v2: int
    images: int
    table: int
    run_a: int
    run_b: int
    failed: int


def _app(
    studio: Studio, page: str | None = None, *, token: str | None = None, **query: Any
) -> AppTest:
    """The app signed in with `token` (default: the admin's), on `page` under ui/app_pages."""
    token = token or studio.token
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["token"] = token
    me = Client(studio.url, token).me()
    at.session_state["me"] = me.model_dump(mode="json")
    at.session_state["team_id"] = me.team_id
    at.run()
    if page:
        at.query_params.update({k: str(v) for k, v in query.items()})
        at.switch_page(f"app_pages/{page}").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _scan(dataset_id: int, x: np.ndarray, y: np.ndarray, classes: list[str], names=None) -> None:
    """What the scan task records: dataset_info plus dataset_preview."""
    import torch

    from worker.engine.tasks.classification.data import TensorData, dataset_info, dataset_preview

    data = TensorData(torch.from_numpy(x), torch.from_numpy(y), classes)
    info = dataset_info(data)
    info["preview"] = dataset_preview(data, feature_names=names)
    update("Dataset", dataset_id, status="ready", info=info)


@pytest.fixture(scope="module")
def studio(live_api: LiveApi) -> Studio:
    return _seed(
        Client(live_api.url, live_api.token), live_api.url, live_api.token, live_api.env.data_dir
    )


def _seed(api: Client, url: str, token: str, tmp: Path) -> Studio:
    weights = tmp / "teacher.safetensors"
    save_file({"fc.weight": np.zeros((4, 8), np.float32)}, str(weights))
    teachers = []
    for _ in range(2):  # two versions of one name
        model = api.upload_model(
            weights, "cifar-teacher", architecture="resnet8", kwargs=TEACHER_KWARGS
        )
        card = {"input_shape": [3, 8, 8], "num_classes": 4, "params": 1234, "flops": 56789}
        update("Model", model.id, status="ready", inspection=INSPECTION, card=card)
        teachers.append(model.id)

    rng = np.random.default_rng(0)
    images = tmp / "shapes.npz"
    x = rng.random((40, 3, 8, 8), dtype=np.float32)
    y = np.arange(40) % 4
    np.savez(images, x=x, y=y)
    image_ds = api.upload_dataset(images, "shapes")
    _scan(image_ds.id, x, y, ["circle", "square", "star", "triangle"])

    table = tmp / "iris.csv"
    table.write_text(
        "sepal,petal,kind\n" + "".join(f"{i / 10},{i / 5},{'ab'[i % 2]}\n" for i in range(30))
    )
    table_ds = api.upload_dataset(table, "iris-ish", label_column="kind")
    tx = np.array([[i / 10, i / 5] for i in range(30)], np.float32)
    _scan(table_ds.id, tx, np.arange(30) % 2, ["a", "b"], names=["sepal", "petal"])

    config = {
        "name": "kd-t4",
        "teacher": {"model_id": teachers[0]},
        "student": {"source": "zoo", "architecture": "resnet8", "kwargs": {"width": 0.25}},
        "dataset": {"dataset_id": image_ds.id},
        "losses": [{"name": "ce"}, {"name": "kd", "params": {"temperature": 4.0}}],
        "training": {"epochs": 2, "device": "cpu"},
    }
    run_a = api.create_run(config)
    finish_run(run_a.id)
    other = copy.deepcopy(config)
    other["name"], other["training"]["epochs"] = "kd-t8", 3
    other["losses"][1]["params"]["temperature"] = 8.0
    run_b = api.create_run(other)
    finish_run(run_b.id)
    bigger = {
        **SUMMARY,
        "student_top1": 0.89,
        "student_size_bytes": 4096,
        "student_params": 640,
        "student_cpu_latency_ms": 0.4,
    }
    update("Run", run_b.id, summary=bigger, worker="gpu-box:4242", attempts=1)
    failed = api.create_run({**config, "name": "kd-broken"})
    update(
        "Run",
        failed.id,
        status="failed",
        error="CUDA out of memory; lower the batch size",
        attempts=2,
        worker="gpu-box:777",
    )
    return Studio(
        url,
        token,
        teachers[0],
        teachers[1],
        image_ds.id,
        table_ds.id,
        run_a.id,
        run_b.id,
        failed.id,
    )


# -- models: versions, runs, accuracy ----------------------------------------------------------


def test_models_list_latest_versions(studio: Studio) -> None:
    at = _app(studio, "models.py")
    table = at.dataframe[0].value
    row = table[table["name"] == "cifar-teacher"]
    assert len(row) == 1 and row.iloc[0]["version"] == 2 and row.iloc[0]["versions"] == 2
    assert row.iloc[0]["params"] == 1234 and row.iloc[0]["FLOPs"] == "56.8k"
    at.toggle(key="models_latest").set_value(False).run()
    assert len(at.dataframe[0].value) == 2


def test_model_page_versions_runs_and_accuracy(studio: Studio) -> None:
    at = _app(studio, "model.py", id=studio.teacher_v1)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Top-1 accuracy"] == "91.00%"  # measured by its newest succeeded run
    assert metrics["Best student top-1"] == "89.00%" and metrics["Runs as teacher"] == "3"
    assert metrics["FLOPs"] == "56.8k" and metrics["CPU latency"] == "1.5 ms"
    card = at.table[0].value  # the model card, in words, not raw JSON
    assert list(card.columns) == ["field", "value"] and not at.json
    assert dict(zip(card["field"], card["value"], strict=True)) == {
        "Input shape": "3×8×8",
        "Classes": "4",
        "Parameters": "1,234",
        "FLOPs (one sample)": "56,789 (56.8k)",
    }
    labels = [t.label for t in at.tabs]
    assert labels == ["Layers by stage", "Versions (2)", "Runs with this teacher (3)"]
    versions = next(f.value for f in at.dataframe if "version" in f.value.columns)
    assert list(versions["version"]) == ["v2", "v1 (this one)"]
    runs = next(f.value for f in at.dataframe if "student top-1" in f.value.columns)
    assert set(runs["name"]) == {"kd-t4", "kd-t8", "kd-broken"}

    fresh = _app(studio, "model.py", id=studio.teacher_v2)
    assert "Runs with this teacher (0)" in [t.label for t in fresh.tabs]
    assert "No run has used this model" in texts(fresh.info)
    assert {m.label: m.value for m in fresh.metric}["Top-1 accuracy"] == "—"


# -- datasets: samples, rows, split ------------------------------------------------------------


def test_dataset_image_samples_and_split(studio: Studio) -> None:
    at = _app(studio, "datasets.py")
    at.selectbox(key="ds_selected").set_value(studio.images).run()
    images = at.get("image")
    assert len(images) == 16
    captions = [i.caption for img in images for i in img.proto.imgs]
    assert captions[:4] == ["circle", "square", "star", "triangle"]  # spread over the classes
    assert all(i.url for img in images for i in img.proto.imgs)
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Train"], metrics["Validation"]) == ("32", "8")  # 20% of each class
    assert "Runs hold out 20% of every class" in texts(at.caption)


def test_dataset_table_rows(studio: Studio) -> None:
    at = _app(studio, "datasets.py")
    at.selectbox(key="ds_selected").set_value(studio.table).run()
    rows = next(f.value for f in at.dataframe if "sepal" in f.value.columns)
    assert list(rows.columns) == ["kind", "sepal", "petal"] and len(rows) == 16
    assert rows.iloc[1].tolist() == ["b", 0.1, 0.2]
    assert not at.get("image")


def test_samples_endpoint_is_team_scoped_and_lists_stay_small(studio: Studio) -> None:
    api = Client(studio.url, studio.token)
    assert len(api.dataset_samples(studio.images, n=5).samples) == 5
    assert "preview" not in (api.dataset(studio.images).info.model_dump())
    with pytest.raises(ApiError) as missing:
        api.dataset_samples(999_999)
    assert missing.value.status == 404


# -- runs: filters, compare selection, retry, worker log ---------------------------------------


def test_runs_filters_and_compare_selection(studio: Studio) -> None:
    at = _app(studio, "runs.py")
    frame = at.dataframe[0].value
    assert {"kd-t4", "kd-t8", "kd-broken"} <= set(frame["name"])
    assert set(frame["teacher"]) == {"cifar-teacher v1"}

    at.selectbox(key="runs_teacher").set_value(studio.teacher_v2).run()
    assert "No runs match these filters" in texts(at.info)
    at.selectbox(key="runs_teacher").set_value(studio.teacher_v1).run()
    at.text_input(key="runs_q").set_value("t8").run()
    assert list(at.dataframe[0].value["name"]) == ["kd-t8"]
    at.text_input(key="runs_q").set_value("").run()

    names = list(at.dataframe[0].value["name"])
    picked = [names.index("kd-t4"), names.index("kd-t8")]
    at.session_state["runs_table"] = {"selection": {"rows": picked, "columns": [], "cells": []}}
    at.run()
    compare = next(b for b in at.button if b.label.startswith("Compare 2 runs"))
    compare.click().run()
    assert not at.exception
    assert "Compare runs" in texts(at.title)
    assert at.multiselect(key="cmp_runs").value == [studio.run_a, studio.run_b]


def test_failed_run_shows_the_log_and_retries(studio: Studio) -> None:
    at = _app(studio, "run.py", id=studio.failed)
    assert "CUDA out of memory" in texts(at.error) and "Retry" in texts(at.error)
    log = next(e for e in at.expander if e.label.startswith("Worker log"))
    assert "2 attempts" in log.label
    events = next(f.value for f in at.dataframe if "event" in f.value.columns)
    assert list(events["event"]) == ["queued", "running", "failed"]
    assert "gpu-box:777" in events.iloc[1]["detail"] and "attempt 2" in events.iloc[1]["detail"]

    at.button(key="run_retry").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "kd-broken" in texts(at.title) and "queued" in texts(at.toast)
    api = Client(studio.url, studio.token)
    newest = api.runs(q="kd-broken").items[0]
    assert newest.id != studio.failed and newest.status == "queued"
    assert newest.config == api.run(studio.failed).config


def test_retry_api_refuses_unfinished_runs(studio: Studio) -> None:
    api = Client(studio.url, studio.token)
    queued = api.create_run({**api.run(studio.run_a).config, "name": "still-queued"})
    with pytest.raises(ApiError) as refused:
        api.retry_run(queued.id)
    assert refused.value.status == 409 and "still queued" in refused.value.detail
    with pytest.raises(ApiError) as missing:
        api.retry_run(999_999)
    assert missing.value.status == 404
    api.cancel_run(queued.id)


# -- compare -----------------------------------------------------------------------------------


def _diff_table(at: AppTest) -> Any:
    return next(f for f in at.dataframe if "config key" in f.value.columns)


def test_compare_diff_results_curves_and_pareto(studio: Studio) -> None:
    at = _app(studio, "compare.py", runs=f"{studio.run_a},{studio.run_b}")
    assert at.multiselect(key="cmp_runs").value == [studio.run_a, studio.run_b]
    results = next(f for f in at.dataframe if "Δ vs teacher (pp)" in f.value.columns)
    assert list(results.value["student top-1"]) == [0.87, 0.89]
    assert "#0f7b3f" in results.proto.arrow_data.styler.styles  # the best value is marked

    diff = _diff_table(at)
    assert list(diff.value["config key"]) == ["losses.kd.params.temperature", "training.epochs"]
    assert diff.value.iloc[0].tolist() == ["losses.kd.params.temperature", "4", "8"]
    assert "rgba(255, 189, 69" in diff.proto.arrow_data.styler.styles  # differing cells highlighted
    assert "baseline" in texts(at.caption)

    at.toggle(key="cmp_all_keys").set_value(True).run()
    every = _diff_table(at).value
    assert "student.architecture" in set(every["config key"]) and len(every) > 5

    assert len(at.get("vega_lite_chart")) == 3  # curves, size scatter, latency scatter
    at.selectbox(key="cmp_metric").set_value("loss/kd").run()
    assert not at.exception
    assert "Pareto front" in texts(at.caption)


def test_compare_needs_two_runs_and_handles_deleted_ones(studio: Studio) -> None:
    at = _app(studio, "compare.py")
    assert "Pick at least two runs" in texts(at.info)
    gone = _app(studio, "compare.py", runs=f"{studio.run_a},999999")
    assert "#999999" in texts(gone.warning)
    assert gone.multiselect(key="cmp_runs").value == [studio.run_a]


def test_compare_save_share_open_and_delete(studio: Studio) -> None:
    at = _app(studio, "compare.py", runs=f"{studio.run_b},{studio.run_a}")
    at.button(key="FormSubmitter:cmp_save_form-Save comparison for the team").click().run()
    assert "Give the comparison a name" in texts(at.error)
    at.text_input(key="cmp_name").set_value("temperature sweep")
    at.button(key="FormSubmitter:cmp_save_form-Save comparison for the team").click().run()
    assert not at.exception and "Saved." in texts(at.success)
    api = Client(studio.url, studio.token)
    saved = [c for c in api.comparisons().items if c.name == "temperature sweep"]
    assert len(saved) == 1 and saved[0].run_ids == [studio.run_b, studio.run_a]
    assert saved[0].created_by_name == "admin"
    assert f"?comparison={saved[0].id}" in texts(at.code)

    shared = _app(studio, "compare.py", comparison=saved[0].id)
    assert shared.multiselect(key="cmp_runs").value == [studio.run_b, studio.run_a]
    shared.button(key="cmp_delete").click().run()
    assert not shared.exception
    assert not [c for c in api.comparisons().items if c.id == saved[0].id]


def test_comparisons_api_validates_runs(studio: Studio) -> None:
    api = Client(studio.url, studio.token)
    with pytest.raises(ApiError) as missing:
        api.create_comparison("bad", [studio.run_a, 999_999])
    assert missing.value.status == 404 and "run 999999 not found" in missing.value.detail
    with pytest.raises(ApiError) as empty:
        api.create_comparison("empty", [])
    assert empty.value.status == 422
    made = api.create_comparison("dupes", [studio.run_a, studio.run_a, studio.run_b])
    assert made.run_ids == [studio.run_a, studio.run_b]
    assert api.comparison(made.id).name == "dupes"
    api.delete_comparison(made.id)
    with pytest.raises(ApiError) as deleted:
        api.comparison(made.id)
    assert deleted.value.status == 404


# -- team: members, tokens shown once, revoke --------------------------------------------------


def test_team_members_and_tokens(studio: Studio) -> None:
    at = _app(studio, "team.py")
    assert "Team & tokens" in texts(at.title)
    teams = next(f.value for f in at.dataframe if "your role" in f.value.columns)
    assert len(teams) == 1 and "acting for" in teams.iloc[0]["team"]
    members = next(f.value for f in at.dataframe if "user" in f.value.columns)
    assert members.iloc[0]["user"] == "admin (you)"
    tokens = next(f.value for f in at.dataframe if "prefix" in f.value.columns)
    assert any("(this session)" in name for name in tokens["name"])

    at.text_input(key="tok_name").set_value("ci-nightly")
    at.checkbox(key="tok_ro").check()
    at.button(key="FormSubmitter:token_form-Create token").click().run()
    assert not at.exception
    assert "shown only this once" in texts(at.success)
    secret = next(c.value for c in at.code if str(c.value).startswith("ds_"))
    me = Client(studio.url, secret).me()
    assert me.read_only and me.username == "admin"
    tokens = next(f.value for f in at.dataframe if "prefix" in f.value.columns)
    row = tokens[tokens["name"] == "ci-nightly"].iloc[0]
    assert row["access"] == "read-only" and row["state"] == "active"
    assert secret.split("_")[1] in row["prefix"] and secret not in row.to_string()

    at.run()  # any later run of the page: the secret is gone for good
    assert not [c for c in at.code if str(c.value).startswith("ds_")]

    created = next(t for t in Client(studio.url, studio.token).tokens() if t.name == "ci-nightly")
    at.selectbox(key="tok_revoke_pick").set_value(created.id).run()
    at.button(key="tok_revoke").click().run()
    assert not at.exception
    with pytest.raises(ApiError) as revoked:
        Client(studio.url, secret).me()
    assert revoked.value.status == 401
    assert "ci-nightly" not in set(
        next(f.value for f in at.dataframe if "prefix" in f.value.columns)["name"]
    )


# -- new run: where the student comes from; layer pairs that cannot fit --------------------------

STUDENT_INSPECTION = {**INSPECTION, "params": 321}  # the teacher's layers, fewer parameters
SHAPES_INPUT, SHAPES_CLASSES = [3, 8, 8], 4  # the "shapes" dataset the students are built for


def _cache_student(architecture: str, kwargs: dict[str, Any]) -> None:
    """What a worker stores for this zoo student, already in the store the API reads (no
    worker here; the module's own Redis database, flushed for the next studio)."""
    from core import inspections

    kwargs = {k: v for k, v in kwargs.items() if k not in ("input_shape", "num_classes")}
    inspections.plant(architecture, kwargs, SHAPES_INPUT, SHAPES_CLASSES, STUDENT_INSPECTION)


def _new_run(studio: Studio) -> AppTest:
    at = _app(studio, "new_run.py")
    at.selectbox(key="nr_teacher").set_value(studio.teacher_v1)
    at.selectbox(key="nr_dataset").set_value(studio.images).run()
    return at


def _run_named(studio: Studio, name: str) -> Any:
    return next(r for r in Client(studio.url, studio.token).runs(q=name).items if r.name == name)


def test_new_run_student_derived_or_the_teachers_own(studio: Studio) -> None:
    from core import catalog

    at = _new_run(studio)
    source = at.radio(key="nr_student_source")
    assert source.value == "zoo" and len(source.options) == 4  # a zoo teacher: every source

    source.set_value("teacher").run()
    assert "the student is **resnet8** (width 0.25), the teacher's own" in texts(at.caption)
    assert "source: teacher" in texts(at.code)

    at.radio(key="nr_student_source").set_value("derived").run()
    at.number_input(key="nr_student.depth_factor").set_value(0.5)
    at.number_input(key="nr_student.width_factor").set_value(0.75).run()
    arch, kwargs = catalog.derived_architecture("resnet8", TEACHER_KWARGS, 0.5, 0.75)
    assert f"The student is **{arch}** (width {kwargs['width']:g})" in texts(at.markdown)
    _cache_student(arch, kwargs)
    at.button(key="nr_plan_btn").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert at.session_state["nr_plan"]["plan"]["student_params"] == 321  # the derived student
    review = texts(at.code)
    assert "source: derived" in review and "width_factor: 0.75" in review
    assert at.session_state["nr_pairs"], "the plan's suggested pairs"

    at.number_input(key="nr_student.width_factor").set_value(0.5).run()
    assert "plan again" in texts(at.warning)  # the factors are part of the plan
    at.number_input(key="nr_student.width_factor").set_value(0.75).run()
    at.text_input(key="nr_name").set_value("derived-kd").run()
    at.button(key="nr_launch").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert "derived-kd" in texts(at.title)
    student = _run_named(studio, "derived-kd").config["student"]
    assert (student["source"], student["depth_factor"], student["width_factor"]) == (
        "derived",
        0.5,
        0.75,
    )


def test_new_run_student_model_and_pairs_that_cannot_fit(studio: Studio) -> None:
    at = _new_run(studio)
    at.radio(key="nr_student_source").set_value("model").run()
    at.selectbox(key="nr_student_model").set_value(studio.teacher_v2).run()
    at.button(key="nr_plan_btn").click().run()  # a model's own layer table: no worker needed
    assert not at.exception and not at.error, texts(at.error)
    plan = at.session_state["nr_plan"]["plan"]
    assert [layer["path"] for layer in plan["student"]["layers"]] == [
        "conv1",
        "layer1",
        "layer2",
        "fc",
    ]
    assert "cannot fit" not in texts(at.warning)

    at.session_state["nr_pairs"] = [
        {"teacher": "layer2", "student": "layer2", "tap": "output"},
        {"teacher": "layer2", "student": "fc", "tap": "output"},  # a vector for a map
        {"teacher": "layer2", "student": "fc", "tap": "input"},  # the same, at the inputs
    ]
    at.run()
    warning = texts(at.warning)
    assert "These layer pairs cannot fit" in warning and "pair 0" not in warning
    assert (
        "pair 1: teacher layer 'layer2' [8,4,4] vs student layer 'fc' [4]: cannot rebuild a "
        "spatial map from a vector" in warning
    )
    assert "student layers that would fit: conv1 [4,8,8], layer1 [4,8,8], layer2 [8,4,4]" in warning
    assert "pair 2: teacher layer 'layer2' [4,8,8] vs student layer 'fc' [8]" in warning
    assert "student layers that would fit: conv1 [3,8,8], layer1 [4,8,8], layer2 [4,8,8]" in warning
    assert "Fix these before launching" in texts(at.error)
    assert not [b for b in at.button if b.key == "nr_launch"]

    at.session_state["nr_pairs"] = [{"teacher": "layer2", "student": "layer2", "tap": "output"}]
    at.text_input(key="nr_name").set_value("from-a-model").run()
    assert "cannot fit" not in texts(at.warning)

    # a loss that reads attention, on CNN stages: refused before the launch, as the API would
    at.multiselect(key="nr_losses").set_value(["ce", "kd", "attention_kl"]).run()
    errors = texts(at.error)
    for side in ("teacher", "student"):
        assert (
            f"layer_pairs: pair 0: the {side} layer 'layer2' holds no attention with "
            "query/key/value projections; pair a transformer block or its attention module "
            "(attention_kl reads it)" in errors
        ), errors
    assert not [b for b in at.button if b.key == "nr_launch"]
    at.multiselect(key="nr_losses").set_value(["ce", "kd"]).run()
    at.button(key="nr_launch").click().run()
    assert not at.exception and not at.error, texts(at.error)
    student = _run_named(studio, "from-a-model").config["student"]
    assert student["source"] == "model" and student["model"]["model_id"] == studio.teacher_v2


def test_new_run_yaml_paste_restores_every_student_source(studio: Studio) -> None:
    at = _new_run(studio)

    def paste(student: str) -> None:
        at.text_area(key="nr_yaml").set_value(
            f"name: pasted\nteacher: {{model_id: {studio.teacher_v1}}}\n"
            f"dataset: {{dataset_id: {studio.images}}}\nstudent: {student}\n"
        )
        at.button(key="nr_yaml_load").click().run()
        assert not at.exception

    paste("{source: derived, depth_factor: 0.25, width_factor: 0.75}")
    assert at.radio(key="nr_student_source").value == "derived"
    assert at.number_input(key="nr_student.depth_factor").value == 0.25
    assert at.number_input(key="nr_student.width_factor").value == 0.75
    assert "width_factor: 0.75" in texts(at.code)

    paste("{source: teacher}")
    assert at.radio(key="nr_student_source").value == "teacher"
    assert "source: teacher" in texts(at.code)

    paste(f"{{source: model, model: {{model_id: {studio.teacher_v2}}}}}")
    assert at.radio(key="nr_student_source").value == "model"
    assert at.selectbox(key="nr_student_model").value == studio.teacher_v2

    paste("{source: zoo, architecture: resnet14, kwargs: {width: 0.5}}")
    assert at.radio(key="nr_student_source").value == "zoo"
    assert at.selectbox(key="nr_student").value == "resnet14"
    assert at.number_input(key="nr_student.resnet14.width").value == 0.5

    paste("{source: model, model: {path: student.safetensors}}")
    assert "student.model.path: the studio takes ids" in texts(at.error)


def test_new_run_pt2_teacher_offers_no_derived_student(studio: Studio, tmp_path: Path) -> None:
    graph = tmp_path / "graph.pt2"
    graph.write_bytes(b"PK not really an export archive")
    pt2 = Client(studio.url, studio.token).upload_model(graph, "graph-teacher")
    update("Model", pt2.id, status="ready", inspection=INSPECTION)

    at = _new_run(studio)
    at.radio(key="nr_student_source").set_value("derived").run()
    at.selectbox(key="nr_teacher").set_value(pt2.id).run()
    assert not at.exception
    source = at.radio(key="nr_student_source")
    assert source.value == "zoo" and len(source.options) == 2  # a zoo architecture, a model
    assert "is a .pt2 graph with no zoo architecture" in texts(at.warning)
    assert "need a zoo teacher" in texts(at.caption)
    assert "source: zoo" in texts(at.code)


# -- team: admins manage members, everyone else reads ------------------------------------------

BOB_PASSWORD = "bob-password-123"


def _members(at: AppTest) -> Any:
    return next(f.value for f in at.dataframe if "user" in f.value.columns)


def test_team_admin_adds_changes_and_removes_members(studio: Studio) -> None:
    api = Client(studio.url, studio.token)
    team_id = api.me().team_id
    assert team_id is not None
    other = api.create_team("lab-b")  # bob exists, but only in another team
    bob = api.use_team(other.id).create_user("bob", BOB_PASSWORD, "member")
    api.use_team(None)

    at = _app(studio, "team.py")
    assert "owner" in at.selectbox(key="mem_add_role").options[0]  # an owner grants every role
    at.text_input(key="mem_add_user").set_value("nobody")
    at.button(key="FormSubmitter:member_add-Add member").click().run()
    assert "no user named 'nobody'; create it first" in texts(at.error)

    at.text_input(key="mem_add_user").set_value("bob")
    at.selectbox(key="mem_add_role").set_value("viewer")
    at.button(key="FormSubmitter:member_add-Add member").click().run()
    assert not at.exception and not at.error, texts(at.error)
    members = _members(at)
    assert members[members["user"] == "bob"].iloc[0]["role"] == "viewer"

    at.selectbox(key="mem_pick").set_value(bob.id).run()
    at.selectbox(key=f"mem_role_{bob.id}").set_value("admin").run()
    at.button(key="mem_role_save").click().run()
    assert not at.exception and not at.error, texts(at.error)
    roles = {m.username: m.role for m in api.team_members(team_id)}
    assert roles["bob"] == "admin"

    at.button(key="mem_remove").click().run()
    assert "Remove **bob** (admin)" in texts(at.warning)
    assert "bob" in {m.username for m in api.team_members(team_id)}  # nothing yet
    at.button(key="mem_remove_no").click().run()
    assert "Remove **bob**" not in texts(at.warning)
    assert "bob" in {m.username for m in api.team_members(team_id)}

    at.button(key="mem_remove").click().run()
    at.button(key="mem_remove_yes").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert "bob" not in {m.username for m in api.team_members(team_id)}
    assert "bob" not in set(_members(at)["user"])


def test_team_admins_cannot_touch_owners_and_viewers_only_read(studio: Studio) -> None:
    api = Client(studio.url, studio.token)
    team_id = api.me().team_id
    assert team_id is not None
    api.add_member(team_id, "bob", "admin")
    api.create_user("vera", "vera-password-123", "viewer")

    bob = Client.login(studio.url, "bob", BOB_PASSWORD).token
    assert bob is not None
    at = _app(studio, "team.py", token=bob)
    at.session_state["team_id"] = team_id  # act for the admin's team
    at.run()
    assert not at.exception
    assert all("owner" not in option for option in at.selectbox(key="inv_role").options)
    assert not [w for w in at.text_input if w.key == "mem_add_user"]  # studio administrators add
    picks = at.selectbox(key="mem_pick").options
    assert any("vera" in option for option in picks)
    assert not any(option.startswith("admin") for option in picks)  # the owner is not offered
    assert "only an owner changes or removes owners" in texts(at.caption)

    vera = Client.login(studio.url, "vera", "vera-password-123").token
    assert vera is not None
    at = _app(studio, "team.py", token=vera)
    assert {"admin", "bob", "vera (you)"} <= set(_members(at)["user"])
    assert not [w for w in at.text_input if w.key in ("mem_add_user", "inv_user")]
    assert not [w for w in at.selectbox if w.key == "mem_pick"]
    assert "Ask a team owner or admin" in texts(at.caption)
