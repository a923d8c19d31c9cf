"""The `self` scheme through the REST API: configs a mode cannot run are refused before queueing,
and a real worker trains born-again generations (each stored with its evaluation) and a
deep-supervised student (heads not in the stored student)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import mark_ready_from, run_config, upload_demo, wait_run

pytestmark = pytest.mark.slow

MLP = {"source": "zoo", "architecture": "mlp", "kwargs": {"hidden": 32, "depth": 1}}
RESNET = {"source": "zoo", "architecture": "resnet8", "kwargs": {"width": 0.25}}


def test_the_catalog_lists_the_self_scheme_with_both_modes(api: TestClient) -> None:
    schemes = {s["name"]: s for s in api.get("/catalog").json()["schemes"]}
    entry = schemes["self"]
    assert "Born-Again" in entry["paper"] and "Be Your Own Teacher" in entry["paper"]
    params = {p["name"]: p for p in entry["params"]}
    assert params["mode"]["choices"] == ["born_again", "deep_supervision"]
    assert (params["generations"]["min"], params["generations"]["max"]) == (1, 5)
    assert {"ensemble_last", "temperature", "kd_weight", "hint_weight"} <= set(params)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"scheme": {"name": "self", "params": {"generations": 7}}},
            "'generations' of 'self' must be in [1, 5]",
        ),
        (
            {"scheme": "self", "losses": [{"name": "ce"}]},
            "add a loss that reads the teacher's logits, e.g. kd",
        ),
        (
            {
                "scheme": {"name": "self", "params": {"mode": "deep_supervision"}},
                "student": MLP,
            },
            "needs a student with at least 2 stages; 'mlp'",
        ),
    ],
)
def test_configs_self_cannot_run_are_refused_before_queueing(
    api: TestClient, fields: dict, message: str
) -> None:
    fake = {"id": 1}
    r = api.post("/runs", json=run_config(fake, fake, **fields))
    assert r.status_code == 422, r.text
    assert message in r.text


@pytest.mark.one_database
def test_a_real_worker_trains_every_generation(api, worker, demo_files: tuple[Path, Path]) -> None:
    model, dataset = mark_ready_from(api, *upload_demo(api, demo_files))
    body = run_config(
        model,
        dataset,
        student=MLP,
        scheme={"name": "self", "params": {"generations": 2, "ensemble_last": True}},
        training={"epochs": 1, "export_onnx": False},
    )
    r = api.post("/runs", json=body)
    assert r.status_code == 201, r.text
    done = wait_run(api, r.json()["id"])
    assert done["status"] == "succeeded", (done, worker.output()[-3000:])
    generations = done["summary"]["generations"]
    assert [g["generation"] for g in generations] == [1, 2]
    assert all(0.0 <= g["student_top1"] <= 1.0 for g in generations)
    arts = {a["kind"]: a["filename"] for a in api.get(f"/runs/{done['id']}/artifacts").json()}
    assert arts["student_safetensors"] == "student.safetensors"
    assert arts["gen1_student_safetensors"] == "gen1_student.safetensors"
    assert arts["gen1_student_pt2"] == "gen1_student.pt2"
    series = api.get(f"/runs/{done['id']}/metrics").json()["series"]
    assert {"loss/kd", "val/top1"} <= set(series)


@pytest.mark.one_database
def test_a_real_worker_trains_deep_supervision_heads(
    api, worker, demo_files: tuple[Path, Path]
) -> None:
    model, dataset = mark_ready_from(api, *upload_demo(api, demo_files))
    body = run_config(
        model,
        dataset,
        student=RESNET,
        scheme={"name": "self", "params": {"mode": "deep_supervision"}},
        training={"epochs": 1, "export_onnx": False},
    )
    r = api.post("/runs", json=body)
    assert r.status_code == 201, r.text
    done = wait_run(api, r.json()["id"])
    assert done["status"] == "succeeded", (done, worker.output()[-3000:])
    series = api.get(f"/runs/{done['id']}/metrics").json()["series"]
    assert {"loss/head0/ce", "loss/head1/kd", "loss/head1/hint"} <= set(series)
    assert "generations" not in done["summary"]
