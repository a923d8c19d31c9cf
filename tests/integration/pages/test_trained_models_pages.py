"""Every trained model on the pages: a finished `online` run's page lists its student and peer
and draws each one's validation curve; a born-again run's generations are cut from its one
validation series; Compare lists every model and plots each as its own point, pickable. The runs
are written to the database as a worker leaves them (no worker)."""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pytest

from client import Client
from tests.integration.pages.conftest import LiveApi
from tests.integration.pages.support import SUMMARY, finish_run, texts, update
from tests.integration.pages.test_run_workflow import Studio, _app, _seed

pytestmark = pytest.mark.slow

PEERS = {
    **SUMMARY,
    "peers": [
        {"peer": 0, "artifacts": {"student_pt2": "student.pt2"}, **SUMMARY},
        {"peer": 1, "artifacts": {"peer1_student_pt2": "peer1_student.pt2"}, **SUMMARY,
         "student_top1": 0.8, "student_size_bytes": 1024},
    ],
}  # fmt: skip
GENERATIONS = {
    **SUMMARY,
    "generations": [
        {"generation": 1, "artifacts": {}, **SUMMARY, "student_top1": 0.7},
        {"generation": 2, "artifacts": {}, **SUMMARY},
    ],
}


@pytest.fixture(scope="module")
def studio(live_api: LiveApi) -> Studio:
    api = Client(live_api.url, live_api.token)
    return _seed(live_api.env, api, live_api.url, live_api.token, live_api.env.data_dir)


def _finished_run(studio: Studio, name: str, summary: dict[str, Any], **config: Any) -> int:
    """A run that succeeded with `summary`; val/top1 at epochs 0 and 1 (finish_run) and, for
    peers, val/p1/top1 too."""
    from core.db import session_scope
    from core.db.tables import Metric

    api = Client(studio.url, studio.token)
    run = api.create_run(
        {
            "name": name,
            "teacher": {"model_id": studio.teacher_id},
            "student": {"source": "zoo", "architecture": "resnet8", "kwargs": {"width": 0.25}},
            "dataset": {"dataset_id": studio.dataset_id},
            "training": {"epochs": 1, "device": "cpu"},
            **config,
        }
    )
    finish_run(run.id)
    update("Run", run.id, summary=summary)
    if "peers" in summary:
        with session_scope() as session:
            for epoch, top1 in ((0, 0.5), (1, 0.8)):
                step = 3 * (epoch + 1)
                session.add(
                    Metric(run_id=run.id, name="val/p1/top1", step=step, epoch=epoch, value=top1)
                )
    return run.id


def _chart_data(chart: Any) -> list[dict[str, Any]]:
    """The rows a vega_lite_chart element was given."""
    proto = chart.proto
    raw = proto.data.data if proto.HasField("data") else proto.datasets[0].data.data
    return pa.ipc.open_stream(io.BytesIO(raw)).read_all().to_pylist()


def _charts_with(at: Any, column: str) -> list[list[dict[str, Any]]]:
    found = [_chart_data(c) for c in at.get("vega_lite_chart")]
    return [rows for rows in found if rows and column in rows[0]]


def test_an_online_runs_page_shows_every_model_and_its_curve(studio: Studio) -> None:
    run_id = _finished_run(studio, "dml", PEERS, scheme={"name": "online", "params": {}})
    at = _app(studio, "run.py", id=run_id)
    assert not at.exception
    assert "**Every trained model** (2)" in texts(at.markdown)
    frame = next(f.value for f in at.dataframe if "model" in f.value.columns)
    assert list(frame["model"]) == ["student", "peer 1"]
    assert list(frame["top-1"]) == ["87.00%", "80.00%"]
    assert list(frame["size"]) == ["2 KiB", "1 KiB"]
    assert "peer1_student.pt2" in frame.iloc[1]["artifacts"]
    assert "Validation top-1 of every trained model" in texts(at.markdown)
    curves = [
        rows
        for rows in _charts_with(at, "name")
        if {r["name"] for r in rows} == {"student", "peer 1"}
    ]
    assert curves, "no chart of each model's validation top-1"
    assert sorted((r["name"], r["epoch"], r["value"]) for r in curves[0]) == [
        ("peer 1", 0, 0.5),
        ("peer 1", 1, 0.8),
        ("student", 0, 0.6),
        ("student", 1, 0.87),
    ]


def test_born_again_generations_each_have_a_row_and_a_curve(studio: Studio) -> None:
    scheme = {"name": "self", "params": {"mode": "born_again", "generations": 2}}
    run_id = _finished_run(studio, "ban", GENERATIONS, scheme=scheme)
    at = _app(studio, "run.py", id=run_id)
    assert not at.exception
    frame = next(f.value for f in at.dataframe if "model" in f.value.columns)
    assert list(frame["model"]) == ["generation 1", "generation 2"]
    # training.epochs 1: epoch 0 is generation 1's, epoch 1 generation 2's
    curves = [rows for rows in _charts_with(at, "name") if rows[0]["name"].startswith("gen")]
    assert sorted((r["name"], r["epoch"]) for r in curves[0]) == [
        ("generation 1", 0),
        ("generation 2", 1),
    ]


def test_a_qat_runs_int8_student_is_a_row_without_a_curve(studio: Studio) -> None:
    block = {"artifact": "student_int8.pt", "int8": {"top1": 0.85, "size_bytes": 1024}}
    run_id = _finished_run(studio, "qat", {**SUMMARY, "quantized": block})
    at = _app(studio, "run.py", id=run_id)
    assert not at.exception
    frame = next(f.value for f in at.dataframe if "model" in f.value.columns)
    assert list(frame["model"]) == ["student", "int8"]
    assert list(frame["size"]) == ["2 KiB", "1 KiB"] and frame.iloc[1]["params"] == "321"
    assert "Validation top-1 of every trained model" not in texts(at.markdown)  # one curve


def test_a_single_students_page_has_no_model_table(studio: Studio) -> None:
    at = _app(studio, "run.py", id=studio.done_run_id)
    assert not at.exception
    assert not [f for f in at.dataframe if "model" in f.value.columns]
    assert "Every trained model" not in texts(at.markdown)


def test_compare_plots_each_trained_model_and_picks_them_like_runs(studio: Studio) -> None:
    dml = _finished_run(studio, "dml-cmp", PEERS, scheme={"name": "online", "params": {}})
    at = _app(studio, "compare.py", runs=f"{studio.done_run_id},{dml}")
    assert not at.exception
    done = f"#{studio.done_run_id} kd-done"
    labels = [done, f"#{dml} dml-cmp · student", f"#{dml} dml-cmp · peer 1"]
    table = next(f.value for f in at.dataframe if "model" in f.value.columns)
    assert list(table["model"]) == labels
    assert "**Every trained model** (3 models of 2 runs)" in texts(at.markdown)
    picker = at.multiselect(key="cmp_models")
    assert list(picker.options) == labels and picker.value == labels

    def points() -> list[set[str]]:
        return [
            {r["label"] for r in rows if r["kind"] == "student"}
            for rows in _charts_with(at, "front")
        ]

    assert points() == [set(labels), set(labels)]  # size and latency scatters
    picker.set_value([done, labels[2]]).run()
    assert not at.exception
    assert points() == [{done, labels[2]}] * 2
    at.run()  # the pick holds across reruns
    assert at.multiselect(key="cmp_models").value == [done, labels[2]]
