"""Segmentation through REST: the catalog offers the task with its losses and students, run
configs that do not fit the task are refused (422) in-process, and one real-worker run distils
the synthetic-digits teacher into a small student."""

from __future__ import annotations

from pathlib import Path

import pytest

from .api_helpers import ready_dataset, ready_model, run_config, set_row

SEG_INFO = {
    "task": "segmentation",
    "num_samples": 40,
    "num_classes": 11,
    "classes": ["background", *map(str, range(10))],
    "class_counts": {},
    "input_shape": [1, 32, 32],
    "kind": "image",
}


def test_the_catalog_offers_segmentation(api) -> None:
    tasks = {t["name"]: t for t in api.get("/catalog").json()["tasks"]}
    seg = tasks["segmentation"]["extra"]
    assert seg["students"] == ["seg_fcn", "seg_unet"]
    assert {"ce", "pixel_kd", "cwd", "fitnets", "at"} <= set(seg["losses"])
    assert seg["metrics"] == ["miou", "pixel_acc", "loss"]
    assert "cwd" not in tasks["classification"]["extra"]["losses"]
    # Liu et al.'s structured losses: pairwise on any feature maps, adversarial on dense outputs
    assert {"pairwise", "adversarial"} <= set(seg["losses"])
    assert "adversarial" not in tasks["classification"]["extra"]["losses"]
    losses = {e["name"]: e for e in api.get("/catalog").json()["losses"]}
    assert losses["pairwise"]["extra"]["default_weight"] == 0.5
    assert losses["adversarial"]["extra"]["default_weight"] == 0.1
    assert {p["name"] for p in losses["adversarial"]["params"]} >= {"lr", "gp_weight", "output"}


def test_run_configs_that_do_not_fit_the_task_are_refused(api) -> None:
    model_id, dataset_id = ready_model(api), ready_dataset(api)
    set_row("Dataset", dataset_id, info=SEG_INFO)
    seg = {"task": "segmentation", "student": {"architecture": "seg_fcn"}}

    kd = api.post("/runs", json=run_config(model_id, dataset_id, **seg))  # ce + kd
    assert kd.status_code == 422
    assert "losses[1] 'kd' does not work with task 'segmentation'" in kd.json()["detail"]
    assert "pixel_kd" in kd.json()["detail"] and "cwd" in kd.json()["detail"]

    resnet = api.post(
        "/runs",
        json=run_config(model_id, dataset_id, task="segmentation", losses=[{"name": "ce"}]),
    )
    assert resnet.status_code == 422
    assert "student 'resnet8' is not a segmentation student" in resnet.json()["detail"]
    assert "seg_fcn, seg_unet" in resnet.json()["detail"]

    cwd = api.post("/runs", json=run_config(model_id, dataset_id, losses=[{"name": "cwd"}]))
    assert cwd.status_code == 422
    assert "'cwd' does not work with task 'classification'" in cwd.json()["detail"]


@pytest.mark.slow
@pytest.mark.one_database
def test_segmentation_distillation_through_rest(api, worker, tmp_path: Path) -> None:
    """Upload the demo teacher and the synthetic digits as a user would; the worker's scan
    finds the task, and distilling with pixel-wise KD gives a student whose mIoU is at least
    half the teacher's."""
    import torch

    from worker.engine.tasks.segmentation.demo import make_demo

    from .conftest import wait_run, wait_status

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model: more threads only stall on a busy CPU
    try:
        teacher_path, data_path = make_demo(tmp_path, samples=240)
    finally:
        torch.set_num_threads(threads)
    with teacher_path.open("rb") as fh:
        model = api.post("/models", files={"file": ("seg.pt2", fh)}, data={"name": "seg"})
    with data_path.open("rb") as fh:
        dataset = api.post("/datasets", files={"file": ("seg.npz", fh)}, data={"name": "seg"})
    assert model.status_code == 201 and dataset.status_code == 201, (model.text, dataset.text)
    wait_status(api, f"/models/{model.json()['id']}", {"ready", "failed"})
    info = wait_status(api, f"/datasets/{dataset.json()['id']}", {"ready", "failed"})
    assert info["status"] == "ready", info
    assert info["info"]["task"] == "segmentation" and info["info"]["num_classes"] == 11
    config = run_config(
        model.json()["id"],
        dataset.json()["id"],
        task="segmentation",
        student={"architecture": "seg_fcn", "kwargs": {"width": 0.5}},
        losses=[{"name": "ce"}, {"name": "pixel_kd"}],
        training={"epochs": 3, "batch_size": 16, "device": "cpu", "export_onnx": False},
    )
    run = api.post("/runs", json=config)
    assert run.status_code == 201, run.text
    done = wait_run(api, run.json()["id"])
    assert done["status"] == "succeeded", done.get("error")
    evaluation = done["summary"]
    print("segmentation through REST:", {k: v for k, v in evaluation.items() if "miou" in k})
    assert evaluation["student_miou"] >= 0.5 * evaluation["teacher_miou"] > 0
