"""The teacher top-k logit cache of a language model through REST, with a real worker: the first
causal_lm run of a (teacher, dataset) pair records the teacher's top-k token logits as the
team's artifact, the second run of the same pair replays them (no teacher forward in training)
and computes the same losses; the catalog offers on_policy's lambda."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import upload_lm_demo, wait_run


def test_the_catalog_offers_on_policy_with_its_lambda(api: TestClient) -> None:
    schemes = {s["name"]: s for s in api.get("/catalog").json()["schemes"]}
    params = {p["name"]: p for p in schemes["on_policy"]["params"]}
    assert params["lmbda"]["default"] == 0.5 and params["lmbda"]["max"] == 1.0
    assert {"temperature", "max_new_tokens"} <= set(params)


@pytest.mark.slow
@pytest.mark.one_database
def test_a_second_lm_run_of_the_pair_replays_the_first_runs_top_k_cache(
    api: TestClient, worker, tmp_path: Path
) -> None:
    model_id, dataset_id = upload_lm_demo(api, tmp_path, 60)
    body = {
        "name": "lm-cache",
        "task": "causal_lm",
        "task_params": {"max_length": 48},
        "teacher": {"model_id": model_id},
        "dataset": {"dataset_id": dataset_id, "val_fraction": 0.2},
        # a fresh student of the teacher's config: the second run never reads the teacher's
        # weights (an hf_layers student would: engine test_lm_topk_cache)
        "student": {"architecture": "hf_config", "kwargs": {"layers": 1}},
        "losses": [{"name": "gkd_jsd", "params": {"beta": 0.5}}],
        "training": {
            "epochs": 1, "batch_size": 16, "optimizer": "adamw", "lr": 0.001, "device": "cpu",
            "export_onnx": False, "log_every": 1, "teacher_cache": "on",
            "teacher_cache_top_k": 32,
        },
    }  # fmt: skip
    runs = []
    for _ in range(2):
        r = api.post("/runs", json=body)
        assert r.status_code == 201, r.text
        done = wait_run(api, r.json()["id"])
        assert done["status"] == "succeeded", (done.get("error"), worker.output()[-3000:])
        runs.append(done)
    first, second = (run["summary"]["teacher_cache"] for run in runs)
    batches = first["recorded_batches"]
    assert batches == 3 and first["replayed_batches"] == 0 and first["top_k"] == 32
    assert second["replayed_batches"] == batches and second["recorded_batches"] == 0
    assert second["key"] == first["key"]
    # the second run did without the teacher: its figures are the first run's record
    assert (first["teacher_loaded"], second["teacher_loaded"]) == ("yes", "no")
    for key in ("teacher_perplexity", "teacher_tokens_per_s", "teacher_cpu_latency_ms"):
        assert runs[1]["summary"][key] == runs[0]["summary"][key], key
    losses = [
        api.get(f"/runs/{run['id']}/metrics", params={"names": "loss"}).json()["series"]["loss"]
        for run in runs
    ]
    # the replay computes the same losses, to float rounding: the two runs are two worker
    # processes, and CPU matrix products may round differently between processes (seen: 1.3e-7
    # apart at 0.135 in one CI run; the issue asks for 1e-6)
    assert losses[1]["values"] == pytest.approx(losses[0]["values"], rel=1e-6, abs=1e-6)
    for run in runs:
        arts = {a["kind"]: a for a in api.get(f"/runs/{run['id']}/artifacts").json()}
        assert arts["teacher_cache"]["size_bytes"] == run["summary"]["teacher_cache"]["size_bytes"]
    # top-32 of 512 tokens: 32 float16 values, 32 int16 indices, a float32 rest per counted
    # token (132 bytes) against 2,048 bytes of float32 logits
    assert 0 < first["size_bytes"] < 48 * 48 * 132 + 100_000
