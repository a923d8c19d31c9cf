"""Causal language modelling through REST: the catalog offers the task with its losses,
students and max_length, and one real-worker run distils the demo GPT-2 (`tests.lm_helpers`)
into a 2-block student (hf_layers) by forward KL, reporting perplexities, agreement, tokens/s,
the per-epoch curves and the sample continuations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import upload_lm_demo, wait_for, wait_run


def test_the_catalog_offers_causal_lm(api: TestClient) -> None:
    tasks = {t["name"]: t for t in api.get("/catalog").json()["tasks"]}
    lm = tasks["causal_lm"]
    extra = lm["extra"]
    assert extra["formats"] == ["txt", "jsonl"] and extra["stage_rule"] == "blocks"
    assert extra["metrics"] == ["perplexity", "agreement", "loss"]
    assert {"ce", "kd", "reverse_kl", "gkd_jsd", "skew_kl", "tvd"} <= set(extra["losses"])
    assert {"hf_layers", "hf_config"} <= set(extra["students"])
    assert "resnet8" not in extra["students"]
    (max_length,) = lm["params"]
    assert (max_length["name"], max_length["default"]) == ("max_length", 128)


@pytest.mark.slow
@pytest.mark.one_database
def test_lm_distillation_through_rest(api: TestClient, worker, tmp_path: Path) -> None:
    model_id, dataset_id = upload_lm_demo(api, tmp_path, 120)
    body = {
        "name": "lm-kd",
        "task": "causal_lm",
        "task_params": {"max_length": 32},
        "teacher": {"model_id": model_id},
        "dataset": {"dataset_id": dataset_id, "val_fraction": 0.2},
        "student": {"architecture": "hf_layers", "kwargs": {"layers": 2}},
        "losses": [{"name": "kd", "params": {"temperature": 1.0}}],
        "training": {
            "epochs": 2, "batch_size": 16, "optimizer": "adamw", "lr": 0.001, "device": "cpu",
            "export_onnx": False,
        },
    }  # fmt: skip
    r = api.post("/runs", json=body)
    assert r.status_code == 201, r.text
    done = wait_run(api, r.json()["id"])
    assert done["status"] == "succeeded", (done.get("error"), worker.output()[-3000:])
    summary = done["summary"]
    print("causal LM through REST:", {k: v for k, v in summary.items() if "perplex" in k})
    # measured: teacher 139.8, student (blocks 0 and 3 of 4, 2 epochs of kd) 145.9
    assert 1 < summary["teacher_perplexity"] < summary["student_perplexity"]
    assert summary["student_perplexity"] < 1.25 * summary["teacher_perplexity"]
    assert 0.3 < summary["next_token_agreement"] <= 1
    assert summary["student_tokens_per_s_b32"] > summary["student_tokens_per_s"] > 0
    assert summary["student_params"] < summary["teacher_params"]
    series = api.get(f"/runs/{r.json()['id']}/metrics").json()["series"]
    ppl = series["val/perplexity"]["values"]
    assert len(ppl) == 2 and ppl[-1] == pytest.approx(summary["student_perplexity"], rel=1e-3)
    assert len(series["val/agreement"]["values"]) == 2
    arts = {a["kind"]: a for a in api.get(f"/runs/{r.json()['id']}/artifacts").json()}
    assert {"student_safetensors", "predictions", "evaluation"} <= set(arts)
    raw = api.get(f"/artifacts/{arts['predictions']['id']}/download")
    assert raw.status_code == 200, raw.text
    samples = json.loads(raw.content)
    assert len(samples) == 4 and all(s["teacher"] and s["prompt"] for s in samples)
    assert [e["epoch"] for e in samples[0]["epochs"]] == [0, 1]

    # a longer run shows the continuations while it trains: after its first epoch the run's
    # summary holds them (from the training process, through the worker), and a cancelled run
    # keeps them
    r = api.post("/runs", json={**body, "name": "lm-live", "training": {**body["training"], "epochs": 50}})  # fmt: skip
    assert r.status_code == 201, r.text
    run = wait_for(api, r.json()["id"], lambda b: "live_samples" in b["summary"])
    assert api.post(f"/runs/{run['id']}/cancel").status_code == 202
    live = run["summary"]["live_samples"]
    assert live["epoch"] >= 0 and len(live["samples"]) == 4
    assert all(s["prompt"] and s["teacher"] and isinstance(s["student"], str) for s in live["samples"])  # fmt: skip
    assert [s["teacher"] for s in live["samples"]] == [s["teacher"] for s in samples]
    done = wait_run(api, run["id"])
    assert done["status"] == "cancelled" and "live_samples" in done["summary"]
