"""A pruned language model through REST, start to finish: one real-worker run prunes the demo
GPT-2 (`tests.lm_helpers`) with Minitron (student hf_pruned) and distils it; its student comes
back as a Hugging Face checkpoint zip (artifact student_hf) that transformers loads, is
registered as a model of format hf (inspected by the worker), and is accepted as the teacher of
the next run."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import upload_lm_demo, wait_run, wait_status

TRAINING = {
    "epochs": 1, "batch_size": 16, "optimizer": "adamw", "lr": 0.001, "device": "cpu",
    "export_onnx": False,
}  # fmt: skip


def lm_run(teacher: int, dataset: int, student: dict, name: str) -> dict:
    return {
        "name": name,
        "task": "causal_lm",
        "task_params": {"max_length": 32},
        "teacher": {"model_id": teacher},
        "dataset": {"dataset_id": dataset, "val_fraction": 0.2},
        "student": student,
        "losses": [{"name": "kd", "params": {"temperature": 1.0}}],
        "training": TRAINING,
    }


@pytest.mark.slow
@pytest.mark.one_database
def test_a_pruned_student_exported_registered_and_teaching(
    api: TestClient, worker, tmp_path: Path
) -> None:
    import torch
    import transformers

    model_id, dataset_id = upload_lm_demo(api, tmp_path, 80)
    pruned = {"architecture": "hf_pruned", "kwargs": {"layers": 2, "heads": 2, "intermediate": 96}}
    r = api.post("/runs", json=lm_run(model_id, dataset_id, pruned, "prune"))
    assert r.status_code == 201, r.text
    done = wait_run(api, r.json()["id"])
    assert done["status"] == "succeeded", (done.get("error"), worker.output()[-3000:])
    assert done["summary"]["student_architecture"] == "hf_pruned"
    assert done["summary"]["student_params"] < done["summary"]["teacher_params"]

    arts = {a["kind"]: a for a in api.get(f"/runs/{r.json()['id']}/artifacts").json()}
    assert arts["student_hf"]["filename"] == "student_hf.zip"
    raw = api.get(f"/artifacts/{arts['student_hf']['id']}/download")
    assert raw.status_code == 200, raw.text
    folder = tmp_path / "student"
    with zipfile.ZipFile(io.BytesIO(raw.content)) as zf:
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(zf.namelist())
        zf.extractall(folder)
    lm = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert (lm.config.n_layer, lm.config.n_head, lm.config.n_inner) == (2, 2, 96)
    with torch.no_grad():
        assert lm(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == lm.config.vocab_size

    registered = api.post(f"/runs/{r.json()['id']}/register", json={"name": "pruned-lm"})
    assert registered.status_code == 201, registered.text
    assert registered.json()["format"] == "hf" and registered.json()["architecture"] is None
    student_model = wait_status(api, f"/models/{registered.json()['id']}", {"ready", "failed"})
    assert student_model["status"] == "ready", student_model
    assert student_model["inspection"]["num_layers"] == 2  # the worker loaded it as an upload
    assert student_model["inspection"]["model_type"] == "gpt2"
    # it teaches the next run (the worker loads it as it loaded the demo teacher; in-process the
    # whole second run is tests/unit/engine/test_export_hf.py's causal_lm pipeline test)
    layers = {"architecture": "hf_layers", "kwargs": {"layers": 1}}
    again = api.post("/runs", json=lm_run(student_model["id"], dataset_id, layers, "2"))
    assert again.status_code == 201, again.text
    cancelled = api.post(f"/runs/{again.json()['id']}/cancel")
    assert cancelled.status_code in (200, 202), cancelled.text
