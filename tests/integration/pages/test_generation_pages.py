"""Image-to-image generation on the pages: the Datasets page shows input/target pairs and the
split by image; New run starts at the task and offers its student and losses; the run page
shows the input, the target and both models' outputs side by side with PSNR/SSIM."""

from __future__ import annotations

import json

import pytest

from client import Client
from tests.integration.pages.conftest import LiveApi
from tests.integration.pages.support import texts, update
from tests.integration.pages.test_run_workflow import Studio, _app, _seed

pytestmark = pytest.mark.slow

SUMMARY = {
    "teacher_psnr": 17.7,
    "student_psnr": 17.3,
    "teacher_ssim": 0.73,
    "student_ssim": 0.70,
    "student_psnr_vs_teacher": 22.6,
    "student_ssim_vs_teacher": 0.91,
    "has_targets": True,
    "teacher_params": 160_000,
    "student_params": 9_000,
}


@pytest.fixture(scope="module")
def studio(live_api: LiveApi) -> Studio:
    """The shared seed, its dataset scanned as the digits denoising pairs (the scan's real
    `describe`), and two finished generation runs (`done_run_id`, `other_run_id`) with a
    predictions artifact drawn by the task's own `prediction_samples`."""
    from worker.engine.tasks.generation import prediction_samples
    from worker.engine.tasks.generation.data import describe_dataset, synthetic_digits, write_zip

    api = Client(live_api.url, live_api.token)
    studio = _seed(live_api.env, api, live_api.url, live_api.token, live_api.env.data_dir)
    data = synthetic_digits(10, seed=3)
    info = describe_dataset(write_zip(data, live_api.env.data_dir / "gen.zip"), "zip")
    update("Dataset", studio.dataset_id, info=info)
    samples = prediction_samples(data, {"teacher": data.y, "student": data.x}, n=2)  # type: ignore[dict-item]
    ids = []
    for name in ("gen-done", "gen-other"):
        ids.append(_finished_run(api, studio, name, samples))
    studio.done_run_id, studio.other_run_id = ids  # type: ignore[attr-defined]
    return studio


def _finished_run(api: Client, studio: Studio, name: str, samples: list[dict]) -> int:
    run = api.create_run(
        {
            "name": name,
            "task": "generation",
            "teacher": {"model_id": studio.teacher_id},
            "student": {"architecture": "gen_resnet", "kwargs": {"width": 0.25}},
            "dataset": {"dataset_id": studio.dataset_id},
            "losses": [{"name": "recon_l1"}],
            "training": {"epochs": 1, "device": "cpu"},
        }
    )
    _finish(run.id, samples)
    return run.id


def _finish(run_id: int, samples: list[dict]) -> None:
    """What the worker leaves after a generation run: its summary and predictions.json."""
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


def test_the_datasets_page_shows_input_target_pairs(studio: Studio) -> None:
    at = _app(studio, "datasets.py")
    at.selectbox(key="ds_selected").set_value(studio.dataset_id).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "**Samples**" in texts(at.markdown)
    assert "each input beside its target" in texts(at.caption)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Train images"] == "8" and metrics["Validation images"] == "2"
    assert metrics["Targets"] == "1×16×16"


def test_the_task_selector_offers_generation_with_its_students_and_losses(
    studio: Studio,
) -> None:
    at = _app(studio, "new_run.py")
    at.selectbox(key="nr_dataset").set_value(studio.dataset_id).run()
    assert not at.exception
    assert at.selectbox(key="nr_task").value == "generation"
    assert at.selectbox(key="nr_student").options == [
        "Encoder-decoder generator (ResNet blocks) (gen_resnet)"
    ]
    losses = " ".join(at.multiselect(key="nr_losses").options)
    assert "(recon_l1)" in losses and "(target_l1)" in losses and "(adversarial)" in losses
    assert "(kd)" not in losses
    at.multiselect(key="nr_losses").set_value(["recon_l1", "target_l1", "adversarial"]).run()
    assert not at.exception
    assert at.selectbox(key="nr_loss.adversarial.output").value == "raw"  # the task's start
    assert "task: generation" in texts(at.code)


def test_the_run_page_shows_inputs_targets_and_both_outputs(studio: Studio) -> None:
    at = _app(studio, "run.py", id=studio.done_run_id)
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Student PSNR vs teacher"] == "22.60 dB"
    assert metrics["Student SSIM vs teacher"] == "0.9100"
    assert "Teacher and student on validation images" in texts(at.markdown)
    captions = texts(at.caption)
    assert "Input" in captions and "Ground truth" in captions
    assert "Student: PSNR" in captions and "dB vs the target" in captions
    frames = [frame.value for frame in at.dataframe if "" in frame.value]
    rows = {label: frame for frame in frames for label in frame[""]}
    assert {"PSNR vs the targets", "SSIM vs the targets", "PSNR vs the teacher's outputs"} <= set(
        rows
    )
    table = next(f for f in frames if "PSNR vs the targets" in list(f[""]))
    row = list(table[""]).index("PSNR vs the targets")
    assert table["teacher"].iloc[row] == "17.70 dB" and table["student"].iloc[row] == "17.30 dB"


def test_compare_draws_both_runs_outputs_and_offers_the_task_metrics(studio: Studio) -> None:
    other = studio.other_run_id  # type: ignore[attr-defined]
    at = _app(studio, "compare.py", runs=f"{studio.done_run_id},{other}")
    assert not at.exception, [e.value for e in at.exception]
    assert "Predictions side by side" in texts(at.subheader)
    assert "Student: PSNR" in texts(at.caption) and "Input" in texts(at.caption)
    options = at.selectbox(key="cmp_metric").options
    assert "val/psnr" in options and "val/ssim" in options and "loss/recon_l1" in options
