"""The Streamlit pages (streamlit.testing AppTest) against a real API: uvicorn serving
`create_app()` on a free port in a thread, on SQLite, with the real broker.

No worker runs here, so what a worker would write (a model's inspection, a dataset's scan, a
finished run's summary, metrics and artifacts) is written to the database by `seeded` — the
pages read it through the API like any other data.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file
from streamlit.testing.v1 import AppTest

from client import Client
from tests.conftest import StudioEnv, WorkerProcess, make_studio_env, migrate

APP = str(Path(__file__).resolve().parents[2] / "ui" / "streamlit_app.py")
TIMEOUT = 30
PASSWORD = "admin-password-123"
TEACHER_KWARGS = {"input_shape": [3, 8, 8], "num_classes": 4, "width": 0.25}
INSPECTION = {
    "input_shape": [3, 8, 8],
    "output_shape": [4],
    "num_classes": 4,
    "params": 1234,
    "flops": 56789,
    "layers": [
        {
            "path": "conv1",
            "type": "Conv2d",
            "input_shape": [3, 8, 8],
            "output_shape": [4, 8, 8],
            "params": 108,
            "stage": 0,
        },
        {
            "path": "layer1",
            "type": "Sequential",
            "input_shape": [4, 8, 8],
            "output_shape": [4, 8, 8],
            "params": 300,
            "stage": 0,
        },
        {
            "path": "layer2",
            "type": "Sequential",
            "input_shape": [4, 8, 8],
            "output_shape": [8, 4, 4],
            "params": 900,
            "stage": 1,
        },
        {
            "path": "fc",
            "type": "Linear",
            "input_shape": [8],
            "output_shape": [4],
            "params": 36,
            "stage": None,
        },
    ],
    "stages": [
        {
            "index": 0,
            "resolution": [8, 8],
            "channels": 4,
            "layers": ["conv1", "layer1"],
            "end": "layer1",
        },
        {"index": 1, "resolution": [4, 4], "channels": 8, "layers": ["layer2"], "end": "layer2"},
    ],
}
SUMMARY = {
    "teacher_top1": 0.91,
    "student_top1": 0.87,
    "agreement": 0.93,
    "teacher_params": 1234,
    "student_params": 321,
    "student_size_bytes": 2048,
    "teacher_size_bytes": 8192,
    "teacher_flops": 56789,
    "student_flops": 9000,
    "teacher_cpu_latency_ms": 1.5,
    "student_cpu_latency_ms": 0.5,
}


@dataclass
class Studio:
    env: StudioEnv
    url: str
    token: str
    teacher_id: int
    dataset_id: int
    done_run_id: int
    queued_run_id: int
    weights: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(port: int) -> tuple[Any, threading.Thread]:
    import uvicorn

    from backend.app import create_app

    server = uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the API did not start")
        time.sleep(0.05)
    return server, thread


def _update(table_name: str, row_id: int, **fields: Any) -> None:
    from core.db import session_scope, tables

    with session_scope() as session:
        row = session.get(getattr(tables, table_name), row_id)
        for key, value in fields.items():
            setattr(row, key, value)


def _finish_run(run_id: int) -> None:
    """What a worker leaves behind after a successful run: summary, metrics, artifacts."""
    from datetime import UTC, datetime, timedelta

    from core.db import session_scope
    from core.db.tables import Artifact, Metric, Run
    from core.storage import get_store

    with session_scope() as session:
        run = session.get(Run, run_id)
        now = datetime.now(UTC)
        run.status, run.progress, run.epoch, run.step, run.total_steps = "succeeded", 1.0, 2, 6, 6
        run.started_at, run.finished_at, run.summary = now - timedelta(seconds=75), now, SUMMARY
        for step in range(1, 7):
            for name, value in (
                ("loss", 3.0 / step),
                ("loss/ce", 2.0 / step),
                ("loss/kd", 1.0 / step),
                ("lr", 0.05),
            ):
                session.add(
                    Metric(run_id=run_id, name=name, step=step, epoch=(step - 1) // 3, value=value)
                )
        for epoch, top1 in ((0, 0.6), (1, 0.87)):
            session.add(
                Metric(
                    run_id=run_id, name="val/top1", step=3 * (epoch + 1), epoch=epoch, value=top1
                )
            )
        stored = get_store().put_bytes(
            f"teams/{run.team_id}/runs/{run_id}/student.safetensors", b"weights" * 100
        )
        session.add(
            Artifact(
                team_id=run.team_id,
                run_id=run_id,
                kind="student_safetensors",
                filename="student.safetensors",
                storage_key=stored.key,
                size_bytes=stored.size,
                sha256=stored.sha256,
            )
        )


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    tmp = tmp_path_factory.mktemp("ui-studio")
    env = make_studio_env(tmp, "sqlite")
    with pytest.MonkeyPatch.context() as mp:
        env.apply(mp)
        migrate()
        from backend.bootstrap import ensure_admin
        from core.db import session_scope

        with session_scope() as session:
            token = ensure_admin(session).token
        port = _free_port()
        server, thread = _serve(port)
        url = f"http://127.0.0.1:{port}"
        mp.setenv("DS_API_URL", url)
        try:
            yield _seed(env, Client(url, token), url, token, tmp)
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def _seed(env: StudioEnv, api: Client, url: str, token: str, tmp: Path) -> Studio:
    weights = tmp / "teacher.safetensors"
    save_file({"fc.weight": np.zeros((4, 8), np.float32)}, str(weights))
    teacher = api.upload_model(
        weights, "resnet-teacher", architecture="resnet8", kwargs=TEACHER_KWARGS
    )
    _update(
        "Model",
        teacher.id,
        status="ready",
        inspection=INSPECTION,
        card={"input_shape": [3, 8, 8], "num_classes": 4},
    )
    data = tmp / "tiny.npz"
    np.savez(data, x=np.zeros((24, 3, 8, 8), np.float32), y=np.arange(24) % 4)
    dataset = api.upload_dataset(data, "tiny-images")
    _update(
        "Dataset",
        dataset.id,
        status="ready",
        info={
            "num_samples": 24,
            "num_classes": 4,
            "classes": ["cat", "dog", "car", "ship"],
            "class_counts": [6, 6, 6, 6],
            "input_shape": [3, 8, 8],
            "kind": "image",
        },
    )
    config = {
        "name": "kd-done",
        "teacher": {"model_id": teacher.id},
        "student": {"source": "zoo", "architecture": "resnet8", "kwargs": {"width": 0.25}},
        "dataset": {"dataset_id": dataset.id},
        "training": {"epochs": 2, "device": "cpu"},
    }
    done = api.create_run(config)
    _finish_run(done.id)
    queued = api.create_run({**config, "name": "kd-waiting"})
    return Studio(env, url, token, teacher.id, dataset.id, done.id, queued.id, weights)


def _app(studio: Studio, page: str | None = None, **query: Any) -> AppTest:
    """The app, signed in with the admin's token, on `page` (a file under ui/app_pages)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["token"] = studio.token
    me = Client(studio.url, studio.token).me()
    at.session_state["me"] = me.model_dump(mode="json")
    at.session_state["team_id"] = me.team_id
    at.run()
    if page:
        at.query_params.update({k: str(v) for k, v in query.items()})
        at.switch_page(f"app_pages/{page}").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _offers(multiselect: Any, name: str) -> bool:
    """Whether a catalog multiselect (options shown as 'Title (name)') offers `name`."""
    return any(option.endswith(f"({name})") for option in multiselect.options)


def _texts(elements: Any) -> str:
    return "\n".join(str(e.value) for e in elements)


# -- login -------------------------------------------------------------------------------------


def test_login_with_password_then_token(studio: Studio) -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert "Distill Studio" in _texts(at.title)
    assert "API **ok**" in _texts(at.caption)

    at.text_input(key="login_username").set_value("admin")
    at.text_input(key="login_password").set_value("wrong-password")
    at.button[0].click().run()
    assert at.error and "Distill Studio" in _texts(at.title)

    at.text_input(key="login_password").set_value(PASSWORD)
    at.button[0].click().run()
    assert not at.exception
    assert at.session_state["token"] and "Runs" in _texts(at.title)
    assert "Signed in as **admin**" in _texts(at.sidebar.caption)

    at.sidebar.button[0].click().run()  # log out
    assert "token" not in at.session_state and "Distill Studio" in _texts(at.title)
    at.text_input(key="login_token").set_value("not-a-token")
    at.button[1].click().run()
    assert at.error
    at.text_input(key="login_token").set_value(studio.token)
    at.button[1].click().run()
    assert "Runs" in _texts(at.title)


# -- models and datasets -----------------------------------------------------------------------


def test_models_list_and_upload(studio: Studio) -> None:
    at = _app(studio, "models.py")
    assert "Models" in _texts(at.title)
    table = at.dataframe[0].value
    assert "resnet-teacher" in set(table["name"])

    at.text_input(key="models_q").set_value("no-such-model").run()
    assert "No models match" in _texts(at.info)
    at.text_input(key="models_q").set_value("").run()

    content = studio.weights.read_bytes()
    at.file_uploader(key="up_file").set_value(("new.safetensors", content, "application/x"))
    at.run()
    assert at.selectbox(key="up_arch").value == "resnet8"
    assert at.number_input(key="up_arch.resnet8.width").value == 1.0
    at.text_input(key="up_shape").set_value("3,8,8")
    at.number_input(key="up_classes").set_value(4)
    at.text_input(key="up_name").set_value("uploaded-from-ui")
    at.button(key="up_submit").click().run()
    assert not at.exception
    assert "uploaded-from-ui" in _texts(at.title)  # now on the model page
    assert "Inspecting the model" in _texts(at.info)


def test_model_detail_groups_layers_by_stage(studio: Studio) -> None:
    at = _app(studio, "model.py", id=studio.teacher_id)
    assert "resnet-teacher" in _texts(at.title)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Parameters"] == "1.23k" and metrics["FLOPs"] == "56.8k"
    assert metrics["Input"] == "3×8×8" and metrics["Classes"] == "4"
    labels = [e.label for e in at.expander]
    assert any(label.startswith("Stage 0 · resolution 8×8") for label in labels)
    assert any(label.startswith("Stage 1") and "layer2" in label for label in labels)
    assert any(label.startswith("Other layers") for label in labels)
    paths = {p for f in at.dataframe if "path" in f.value.columns for p in f.value["path"]}
    assert paths == {"conv1", "layer1", "layer2", "fc"}

    missing = _app(studio, "model.py", id=999_999)
    assert "not found" in _texts(missing.error).lower() or "999999" in _texts(missing.error)


def test_datasets_page(studio: Studio) -> None:
    at = _app(studio, "datasets.py")
    assert "tiny-images" in set(at.dataframe[0].value["name"])
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Samples"] == "24" and metrics["Classes"] == "4"
    assert at.get("vega_lite_chart"), "class counts chart"

    csv = b"f1,f2,target\n0.1,0.2,a\n0.3,0.4,b\n"
    at.file_uploader(key="ds_file_0").set_value(("table.csv", csv, "text/csv"))
    at.run()
    at.text_input(key="ds_label").set_value("target")
    at.button(key="ds_submit").click().run()
    assert not at.exception
    assert "Uploaded **table**" in _texts(at.success)
    assert "table" in set(at.dataframe[0].value["name"])


# -- new run -----------------------------------------------------------------------------------


def test_new_run_form_review_and_launch(studio: Studio) -> None:
    at = _app(studio, "new_run.py")
    assert at.selectbox(key="nr_teacher").value == studio.teacher_id
    assert at.selectbox(key="nr_dataset").value == studio.dataset_id
    assert at.number_input(key="nr_student.resnet8.width").value == 1.0
    losses = at.multiselect(key="nr_losses")
    assert losses.value == ["ce", "kd"]
    assert not _offers(losses, "at") and not _offers(losses, "fitnets")  # no pairs yet
    assert at.number_input(key="nr_loss.kd.temperature").value == 4.0
    review = _texts(at.code)
    assert "architecture: resnet8" in review and "temperature: 4.0" in review
    assert at.download_button(key="nr_download")

    at.number_input(key="nr_student.resnet8.width").set_value(0.5)
    at.number_input(key="nr_t.epochs").set_value(3)
    at.text_input(key="nr_name").set_value("from-the-form")
    at.run()
    review = _texts(at.code)
    assert "width: 0.5" in review and "epochs: 3" in review and "name: from-the-form" in review

    at.button(key="nr_launch").click().run()
    assert not at.exception
    assert "from-the-form" in _texts(at.title)  # the run page
    assert "queued" in _texts(at.toast)


def test_new_run_keeps_the_form_across_pages(studio: Studio) -> None:
    at = _app(studio, "new_run.py")
    at.number_input(key="nr_t.epochs").set_value(9).run()
    at.number_input(key="nr_loss.kd.temperature").set_value(2.0).run()
    at.switch_page("app_pages/runs.py").run()
    assert "Runs" in _texts(at.title)
    at.switch_page("app_pages/new_run.py").run()
    assert at.number_input(key="nr_t.epochs").value == 9
    assert at.number_input(key="nr_loss.kd.temperature").value == 2.0


def test_new_run_feature_losses_need_pairs_and_yaml_paste(studio: Studio) -> None:
    at = _app(studio, "new_run.py")
    at.session_state["nr_pairs"] = [{"teacher": "layer2", "student": "layer2", "tap": "output"}]
    at.run()
    assert _offers(at.multiselect(key="nr_losses"), "at")
    assert _offers(at.multiselect(key="nr_losses"), "fitnets")

    pasted = f"""
name: pasted
teacher: {{model_id: {studio.teacher_id}}}
student: {{source: zoo, architecture: resnet14, kwargs: {{width: 0.5}}}}
dataset: {{dataset_id: {studio.dataset_id}, val_fraction: 0.3}}
losses:
  - {{name: ce, weight: 1.0}}
  - {{name: kd, weight: 2.0, params: {{temperature: 8.0}}}}
training: {{epochs: 7, batch_size: 32, optimizer: adamw, lr: 0.001}}
seed: 5
"""
    at.text_area(key="nr_yaml").set_value(pasted)
    at.button(key="nr_yaml_load").click().run()
    assert not at.exception
    assert "Loaded the pasted config" in _texts(at.success)
    assert at.selectbox(key="nr_student").value == "resnet14"
    assert at.number_input(key="nr_student.resnet14.width").value == 0.5
    assert at.number_input(key="nr_loss.kd.temperature").value == 8.0
    assert at.number_input(key="nr_loss.kd.weight").value == 2.0
    assert at.selectbox(key="nr_t.optimizer").value == "adamw"
    assert at.session_state["nr_pairs"] == []
    review = _texts(at.code)
    assert "name: pasted" in review and "epochs: 7" in review and "seed: 5" in review

    at.text_area(key="nr_yaml").set_value("losses: [{name: kdd}]")
    at.button(key="nr_yaml_load").click().run()
    assert "Could not load the YAML" in _texts(at.error)


# -- runs --------------------------------------------------------------------------------------


def test_runs_list_and_filter(studio: Studio) -> None:
    at = _app(studio, "runs.py")
    frame = at.dataframe[0].value
    assert {"kd-done", "kd-waiting"} <= set(frame["name"])
    done = frame[frame["name"] == "kd-done"].iloc[0]
    assert done["student top-1"] == pytest.approx(0.87) and done["progress"] == 1.0

    at.selectbox(key="runs_status").set_value("succeeded").run()
    assert set(at.dataframe[0].value["name"]) == {"kd-done"}
    at.selectbox(key="runs_status").set_value("failed").run()
    assert "No runs match" in _texts(at.info)


def test_run_page_after_success(studio: Studio) -> None:
    at = _app(studio, "run.py", id=studio.done_run_id)
    assert "kd-done" in _texts(at.title)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Student top-1"] == "87.00%" and metrics["Agreement"] == "93.00%"
    assert metrics["Compression"] == "3.84×" and metrics["CPU speed-up"] == "3.00×"
    assert metrics["Duration"] == "1m 15s" and metrics["Epoch"] == "2/2"
    top1 = next(m for m in at.metric if m.label == "Student top-1")
    assert top1.proto.delta == "-4.00 pp vs teacher"
    assert "Student weights (safetensors)" in _texts(at.markdown)  # not the kind's raw id
    assert "`student_safetensors`" not in _texts(at.markdown)
    evaluation = next(f.value for f in at.dataframe if "teacher / student" in f.value.columns)
    assert list(evaluation[""]) == [
        "Top-1 accuracy",
        "Parameters",
        "Size",
        "FLOPs",
        "CPU latency, 1 sample",
    ]
    size = evaluation[evaluation[""] == "Size"].iloc[0]
    assert (size["teacher"], size["student"], size["teacher / student"]) == (
        "8 KiB",
        "2 KiB",
        "4.00×",
    )
    assert len(at.get("vega_lite_chart")) >= 2  # loss terms and validation
    assert at.download_button(key=f"art_{_artifact_id(studio)}")
    assert "kd-done" in _texts(at.code)  # the config YAML
    assert not [b for b in at.button if b.label == "Cancel"]

    # a student as accurate as its teacher: a grey "same", not a green arrow for +0.00
    _update("Run", studio.done_run_id, summary={**SUMMARY, "student_top1": 0.91})
    try:
        at = _app(studio, "run.py", id=studio.done_run_id)
        top1 = next(m for m in at.metric if m.label == "Student top-1")
        assert top1.proto.delta == "same as the teacher (±0.00 pp)"
        assert top1.proto.direction == top1.proto.MetricDirection.NONE
        assert top1.proto.color == top1.proto.MetricColor.GRAY
    finally:
        _update("Run", studio.done_run_id, summary=SUMMARY)


def test_run_page_live_then_cancel(studio: Studio) -> None:
    _update(
        "Run",
        studio.queued_run_id,
        status="running",
        progress=0.25,
        epoch=0,
        step=3,
        total_steps=12,
        throughput=512.0,
        eta_seconds=30.0,
    )
    at = _app(studio, "run.py", id=studio.queued_run_id)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Step"] == "3/12" and metrics["ETA"] == "30s" and metrics["Epoch"] == "1/2"
    assert metrics["Throughput"] == "512/s"  # samples per second, in the help
    assert at.get("progress")[0].value == 25

    _update("Run", studio.queued_run_id, progress=0.5, step=6, eta_seconds=20.0)
    at.run()  # what the fragment shows on its next tick
    assert {m.label: m.value for m in at.metric}["Step"] == "6/12"

    _update("Run", studio.queued_run_id, status="queued")
    at.run()
    at.button(key="run_cancel").click().run()
    assert not at.exception
    assert "cancelled" in _texts(at.warning)


def _artifact_id(studio: Studio) -> int:
    return Client(studio.url, studio.token).artifacts(studio.done_run_id)[0].id


# -- plan: the student's layer table comes from a real worker ------------------------------------


@pytest.fixture(scope="module")
def worker(studio: Studio) -> Iterator[WorkerProcess]:
    """A real worker, for the student's layer table. The jobs queued for the seeded uploads and
    runs are dropped first: their rows already hold what a worker would have written."""
    from core import jobs

    jobs.producer_app().control.purge()
    proc = WorkerProcess(studio.env, name="ui").start()
    yield proc
    proc.stop()


def test_new_run_plan_pairs_and_feature_losses(studio: Studio, worker: WorkerProcess) -> None:
    at = _app(studio, "new_run.py")
    at.button(key="nr_plan_btn").click().run()
    assert not at.exception and not at.error, _texts(at.error)
    plan = at.session_state["nr_plan"]["plan"]
    student_paths = {layer["path"] for layer in plan["student"]["layers"]}
    assert {"conv1", "layer1", "layer2", "layer3", "fc"} <= student_paths
    assert "fewer parameters than the teacher" in _texts(at.caption)
    pairs = at.session_state["nr_pairs"]
    assert pairs == [
        {"teacher": p["teacher"], "student": p["student"], "tap": "output"}
        for p in plan["suggested_pairs"]
    ]
    assert pairs and all(p["teacher"] in {"conv1", "layer1", "layer2"} for p in pairs)

    losses = at.multiselect(key="nr_losses")
    assert _offers(losses, "at") and _offers(losses, "fitnets")
    losses.select("at").run()
    assert at.number_input(key="nr_loss.at.p").value == 2.0
    at.multiselect(key="nr_loss.at.pairs").select(0).run()
    review = _texts(at.code)
    assert "layer_pairs:" in review and "- name: at" in review and "pairs:" in review

    at.number_input(key="nr_student.resnet8.width").set_value(0.5).run()
    assert "plan again" in _texts(at.warning)

    at.text_input(key="nr_name").set_value("with-attention").run()
    at.button(key="nr_launch").click().run()
    assert not at.exception and not at.error, _texts(at.error)
    assert "with-attention" in _texts(at.title)


# -- empty states and errors -------------------------------------------------------------------


def test_empty_team_pages_say_what_to_do_and_errors_say_why(studio: Studio) -> None:
    """A team with nothing in it: every list page says how to fill it. A revoked token signs the
    session out with a message to log in again."""
    empty = Client(studio.url, studio.token).create_team("empty-team")
    expected = {
        "runs.py": "No runs yet — start one on the New run page",
        "models.py": "No models yet — upload a teacher above",
        "datasets.py": "No datasets yet — upload one above",
        "new_run.py": "You need a ready teacher model and a ready dataset first",
        "compare.py": "Pick at least two runs above",
    }
    for page, words in expected.items():
        at = _app(studio)
        at.session_state["team_id"] = empty.id
        at.switch_page(f"app_pages/{page}").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert words in _texts(at.info), (page, _texts(at.info))

    admin = Client(studio.url, studio.token)
    short = admin.create_token("short-lived")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["token"] = short.token
    me = Client(studio.url, short.token).me()
    at.session_state["me"] = me.model_dump(mode="json")
    at.session_state["team_id"] = me.team_id
    at.run()
    admin.revoke_token(short.id)
    at.switch_page("app_pages/runs.py").run()
    assert "log in again" in _texts(at.error), _texts(at.error)
    assert "token" not in at.session_state or at.session_state["token"] is None
