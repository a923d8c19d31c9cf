"""Detection on the pages: the Datasets page shows a COCO upload's images with their boxes
drawn, boxes per class and the split by image; New run offers the detection student and losses;
the run page and Compare show teacher and student predictions side by side."""

from __future__ import annotations

import json

import numpy as np
import pytest

from client import Client
from tests.integration.pages.conftest import LiveApi
from tests.integration.pages.support import texts, update
from tests.integration.pages.test_run_workflow import Studio, _app, _seed

pytestmark = pytest.mark.slow

SUMMARY = {
    "teacher_map": 0.54,
    "student_map": 0.31,
    "teacher_map50": 0.84,
    "student_map50": 0.6,
    "teacher_params": 107_000,
    "student_params": 27_000,
    "teacher_cpu_latency_ms": 7.0,
    "student_cpu_latency_ms": 4.0,
}


@pytest.fixture(scope="module")
def studio(live_api: LiveApi) -> Studio:
    """The shared seed, its dataset scanned as the synthetic digits in COCO form (the scan's
    real `describe`), and one finished detection run with a predictions artifact."""
    from worker.engine.tasks.detection import prediction_samples
    from worker.engine.tasks.detection.data import describe_dataset, synthetic_digits, write_zip
    from worker.engine.tasks.detection.evaluate import Prediction

    api = Client(live_api.url, live_api.token)
    studio = _seed(live_api.env, api, live_api.url, live_api.token, live_api.env.data_dir)
    data = synthetic_digits(10, seed=3, digits_per_image=(1, 3))
    info = describe_dataset(write_zip(data, live_api.env.data_dir / "det.zip"), "zip")
    update("Dataset", studio.dataset_id, info=info)
    truth = [  # the teacher finds every box; the student nothing
        Prediction(b.numpy(), np.ones(len(b)), lab.numpy())
        for b, lab in zip(data.boxes, data.labels, strict=True)
    ]
    none = [Prediction(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)) for _ in truth]
    samples = prediction_samples(data, {"teacher": truth, "student": none}, n=2)
    run = api.create_run(
        {
            "name": "det-done",
            "task": "detection",
            "teacher": {"model_id": studio.teacher_id},
            "student": {"architecture": "det_centernet", "kwargs": {"width": 0.5}},
            "dataset": {"dataset_id": studio.dataset_id},
            "losses": [{"name": "centernet"}],
            "training": {"epochs": 1, "device": "cpu"},
        }
    )
    _finish(run.id, samples)
    studio.done_run_id = run.id
    return studio


def _finish(run_id: int, samples: list[dict]) -> None:
    """What the worker leaves after a detection run: its summary and predictions.json."""
    from core.db import session_scope
    from core.db.tables import Artifact, Run
    from core.storage import get_store

    with session_scope() as session:
        run = session.get(Run, run_id)
        run.status, run.progress, run.summary = "succeeded", 1.0, SUMMARY
        stored = get_store().put_bytes(
            f"teams/{run.team_id}/runs/{run_id}/predictions.json", json.dumps(samples).encode()
        )
        session.add(
            Artifact(
                team_id=run.team_id,
                run_id=run_id,
                kind="predictions",
                filename="predictions.json",
                storage_key=stored.key,
                size_bytes=stored.size,
                sha256=stored.sha256,
            )
        )


def test_the_datasets_page_draws_boxes_and_counts_them(studio: Studio) -> None:
    at = _app(studio, "datasets.py")
    at.selectbox(key="ds_selected").set_value(studio.dataset_id).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = texts(at.markdown)
    assert "**Boxes per class**" in shown and "**Samples**" in shown
    assert "with their boxes drawn" in texts(at.caption)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Train images"] == "8" and metrics["Validation images"] == "2"
    assert int(metrics["Boxes"]) >= 10


def test_new_run_offers_the_detection_student_and_losses(studio: Studio) -> None:
    at = _app(studio, "new_run.py")
    at.selectbox(key="nr_dataset").set_value(studio.dataset_id).run()
    assert not at.exception
    assert at.selectbox(key="nr_task").value == "detection"
    assert at.selectbox(key="nr_student").options == [
        "CenterNet detector on a ResNet backbone (det_centernet)"
    ]
    losses = " ".join(at.multiselect(key="nr_losses").options)
    assert "(centernet)" in losses and "(kd)" not in losses and "(pixel_kd)" not in losses


def test_the_run_page_shows_teacher_and_student_predictions(studio: Studio) -> None:
    at = _app(studio, "run.py", id=studio.done_run_id)
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Student mAP"] == "31.00%"
    assert "Teacher and student on validation images" in texts(at.markdown)
    captions = texts(at.caption)
    assert "Ground truth:" in captions and "Student: nothing" in captions
    rows = {label for frame in at.dataframe if "" in frame.value for label in frame.value[""]}
    assert {"mAP@[.5:.95] (COCO)", "mAP@.5", "Parameters"} <= rows
