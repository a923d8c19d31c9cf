"""Text classification and sentence embeddings through REST: the catalog offers both tasks with
their students, losses and max_length (image tasks offer none of them), and one real-worker run
of each: the real MiniLM-L6 distilled into a 2-block hf_layers student on standard-library
docstring sentences (cosine and neighbour agreement on held-out sentences, beating the same
student before training, and the speed-up), and a tiny BERT classifier trained here on two
packages' docstrings distilled into a 2-block student (agreement with the teacher); and a
teacher that does not fit its task fails the run with the reason, keeping no student."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.hf_helpers import TINY_BERT, folder_members, minilm_folder, tiny_members, write_zip
from tests.integration.conftest import wait_run, wait_status
from tests.text_helpers import (
    CLASSIFIER_CONFIG,
    embedding_corpus,
    labelled_texts,
    train_classifier_teacher,
    word_tokenizer,
    write_jsonl,
)

TRAINING = {"batch_size": 32, "optimizer": "adamw", "device": "cpu", "export_onnx": False}


def test_the_catalog_offers_the_text_tasks(api: TestClient) -> None:
    tasks = {t["name"]: t for t in api.get("/catalog").json()["tasks"]}
    cls, emb = tasks["text_classification"], tasks["sentence_embedding"]
    assert cls["extra"]["formats"] == ["csv", "jsonl"]
    assert emb["extra"]["formats"] == ["txt", "jsonl", "csv"]
    assert cls["extra"]["metrics"] == ["accuracy", "agreement", "loss"]
    assert emb["extra"]["metrics"] == ["cosine", "loss"]
    for task in (cls, emb):
        assert {"hf_layers", "hf_config"} <= set(task["extra"]["students"])
        assert "resnet8" not in task["extra"]["students"]
        assert [(p["name"], p["default"]) for p in task["params"]] == [("max_length", 128)]
    assert {"ce", "kd", "reverse_kl", "gkd_jsd", "tvd"} <= set(cls["extra"]["losses"])
    assert {"embedding_mse", "embedding_cosine"} <= set(emb["extra"]["losses"])
    assert "kd" not in emb["extra"]["losses"]
    image = tasks["classification"]["extra"]
    assert not {"hf_layers", "hf_config"} & set(image["students"])
    assert not {"embedding_mse", "embedding_cosine"} & set(image["losses"])
    students = {s["name"]: s for s in api.get("/catalog").json()["students"]}
    (size,) = [p for p in students["hf_config"]["params"] if p["name"] == "size"]
    assert size["choices"] == ["none", "tiny", "mini", "small", "medium"]


def _upload(api: TestClient, model: Path, data: Path) -> tuple[int, int]:
    with model.open("rb") as fh:
        m = api.post(
            "/models", files={"file": (model.name, fh)}, data={"name": "t", "format": "hf"}
        )
    with data.open("rb") as fh:
        d = api.post("/datasets", files={"file": (data.name, fh)}, data={"name": data.stem})
    assert m.status_code == 201 and d.status_code == 201, (m.text, d.text)
    for path in (f"/models/{m.json()['id']}", f"/datasets/{d.json()['id']}"):
        ready = wait_status(api, path, {"ready", "failed"})
        assert ready["status"] == "ready", ready
    return m.json()["id"], d.json()["id"]


def _run(api: TestClient, worker: Any, body: dict[str, Any]) -> dict[str, Any]:
    r = api.post("/runs", json=body)
    assert r.status_code == 201, r.text
    done = wait_run(api, r.json()["id"])
    assert done["status"] == "succeeded", (done.get("error"), worker.output()[-3000:])
    return done


def _untrained_cosine(teacher_zip: Path, corpus: Path, body: dict[str, Any]) -> float:
    """The cosine of the same hf_layers student before training, on the run's held-out split
    (the engine in this process, as the worker builds and splits them)."""
    import torch

    from core.config import DatasetRef
    from worker.engine.hf_teacher import load_hf
    from worker.engine.tasks import build_task
    from worker.engine.tasks.text.students import build_text_student

    task = build_task("sentence_embedding", **body["task_params"])
    teacher = load_hf(teacher_zip)
    teacher = replace(teacher, module=task.adapt_model(teacher.module, teacher))
    data = task.fit_to_teacher(teacher, task.load(corpus, DatasetRef(path=str(corpus))))
    _, val = task.split(data, body["dataset"]["val_fraction"], 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        student = build_text_student("hf_layers", {"layers": 2}, teacher, "mean_pool")
        return float(task.evaluate(teacher.module, student, val)["cosine"])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.one_database
def test_minilm_sentence_embeddings_through_rest(
    api: TestClient, worker: Any, tmp_path: Path
) -> None:
    teacher_zip = write_zip(tmp_path / "minilm.zip", folder_members(minilm_folder()))
    corpus = tmp_path / "sentences.txt"
    corpus.write_text("\n".join(embedding_corpus(240)) + "\n", encoding="utf-8")
    model_id, dataset_id = _upload(api, teacher_zip, corpus)
    body = {
        "name": "minilm-2-blocks",
        "task": "sentence_embedding",
        "task_params": {"max_length": 32},
        "teacher": {"model_id": model_id},
        "dataset": {"dataset_id": dataset_id, "val_fraction": 0.25},
        "student": {"architecture": "hf_layers", "kwargs": {"layers": 2}},
        "losses": [{"name": "embedding_mse"}, {"name": "embedding_cosine"}],
        "training": {**TRAINING, "epochs": 2, "lr": 2e-4},
        "seed": 0,
    }
    done = _run(api, worker, body)
    summary = done["summary"]
    before = _untrained_cosine(teacher_zip, corpus, body)
    speedup = summary["teacher_cpu_latency_ms"] / summary["student_cpu_latency_ms"]
    print(
        "MiniLM-L6 -> 2 blocks through REST:",
        {k: summary[k] for k in ("cosine", "neighbour_top1", "neighbour_top5")},
        f"untrained cosine {before:.3f}, speed-up {speedup:.2f}x",
    )
    assert summary["cosine"] > before + 0.02 and summary["cosine"] > 0.6
    assert 0.3 < summary["neighbour_top1"] <= summary["neighbour_top5"] <= 1
    assert summary["student_params"] < summary["teacher_params"]
    assert speedup > 1.5
    series = api.get(f"/runs/{done['id']}/metrics").json()["series"]
    cosine = series["val/cosine"]["values"]
    assert len(cosine) == 2 and cosine[-1] == pytest.approx(summary["cosine"], rel=1e-3)
    arts = {a["kind"]: a for a in api.get(f"/runs/{done['id']}/artifacts").json()}
    raw = api.get(f"/artifacts/{arts['predictions']['id']}/download")
    samples = json.loads(raw.content)
    assert samples and {"text", "teacher_nearest", "student_nearest"} <= set(samples[0])


@pytest.mark.slow
@pytest.mark.one_database
def test_text_classification_through_rest(api: TestClient, worker: Any, tmp_path: Path) -> None:
    import torch

    rows = labelled_texts(240)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        teacher_zip = train_classifier_teacher(tmp_path / "docs_classifier.zip", rows)
    finally:
        torch.set_num_threads(threads)
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": t, "label": y} for t, y in rows])
    model_id, dataset_id = _upload(api, teacher_zip, data)
    info = api.get(f"/datasets/{dataset_id}").json()["info"]
    assert info["kind"] == "classification" and info["class_counts"] == {
        "asyncio": 120,
        "email": 120,
    }
    body = {
        "name": "docs-2-blocks",
        "task": "text_classification",
        "task_params": {"max_length": 32},
        "teacher": {"model_id": model_id},
        "dataset": {"dataset_id": dataset_id, "val_fraction": 0.25},
        "student": {"architecture": "hf_layers", "kwargs": {"layers": 2}},
        "losses": [{"name": "ce"}, {"name": "kd", "params": {"temperature": 2.0}}],
        "training": {**TRAINING, "epochs": 3, "lr": 1e-3},
        "seed": 0,
    }
    summary = _run(api, worker, body)["summary"]
    print(
        "text classification through REST:",
        {k: summary[k] for k in ("teacher_accuracy", "student_accuracy", "agreement")},
    )
    assert summary["teacher_accuracy"] > 0.9
    assert summary["agreement"] >= 0.8 and summary["student_accuracy"] >= 0.75
    assert 0 <= summary["student_ece"] <= 1


@pytest.mark.slow
@pytest.mark.one_database
def test_a_teacher_that_does_not_fit_the_text_task_fails_the_run_with_the_reason(
    api: TestClient, worker: Any, tmp_path: Path
) -> None:
    """A sequence classifier given to sentence_embedding: the worker fails the run saying
    which checkpoint the task needs, and keeps no student artifact."""
    texts = embedding_corpus(40)
    tok = word_tokenizer(texts)
    config = {**CLASSIFIER_CONFIG, "vocab_size": tok.get_vocab_size()}
    members = {**tiny_members(config), "tokenizer.json": tok.to_str().encode()}
    teacher_zip = write_zip(tmp_path / "classifier.zip", members)
    corpus = tmp_path / "sentences.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    model_id, dataset_id = _upload(api, teacher_zip, corpus)
    body = {
        "name": "wrong-teacher",
        "task": "sentence_embedding",
        "task_params": {"max_length": 32},
        "teacher": {"model_id": model_id},
        "dataset": {"dataset_id": dataset_id},
        "student": {"architecture": "hf_layers", "kwargs": {"layers": 1}},
        "losses": [{"name": "embedding_mse"}],
        "training": {**TRAINING, "epochs": 1},
    }
    r = api.post("/runs", json=body)
    assert r.status_code == 201, r.text
    done = wait_run(api, r.json()["id"])
    assert done["status"] == "failed"
    assert "sentence_embedding needs an encoder checkpoint without a head" in done["error"]
    assert "BertForSequenceClassification" in done["error"]
    kinds = {a["kind"] for a in api.get(f"/runs/{r.json()['id']}/artifacts").json()}
    assert not kinds & {"student_safetensors", "evaluation", "predictions"}, kinds


@pytest.mark.slow
@pytest.mark.one_database
def test_a_registered_student_with_its_own_tokenizer_through_rest(
    api: TestClient, worker: Any, tmp_path: Path
) -> None:
    """Sentence embeddings from a word-level teacher into a registered student with a byte-level
    BPE tokenizer of its own: the run trains it (its curve rises), and its Hugging Face export
    carries its own tokenizer."""
    import io
    import zipfile

    from worker.engine.tasks.text.lm_demo import train_tokenizer

    texts = embedding_corpus(64)
    words = word_tokenizer(texts)
    teacher = {**TINY_BERT, "vocab_size": words.get_vocab_size(), "max_position_embeddings": 64}
    teacher_zip = write_zip(
        tmp_path / "teacher.zip",
        {**tiny_members(teacher), "tokenizer.json": words.to_str().encode()},
    )
    bpe = train_tokenizer(texts, 300)
    student_zip = write_zip(
        tmp_path / "student.zip",
        {
            **tiny_members({**TINY_BERT, "vocab_size": 300, "max_position_embeddings": 64}, 1),
            "tokenizer.json": bpe.to_str().encode(),
        },
    )
    corpus = tmp_path / "sentences.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    model_id, dataset_id = _upload(api, teacher_zip, corpus)
    with student_zip.open("rb") as fh:
        s = api.post("/models", files={"file": ("s.zip", fh)}, data={"name": "s", "format": "hf"})
    assert s.status_code == 201, s.text
    assert wait_status(api, f"/models/{s.json()['id']}", {"ready", "failed"})["status"] == "ready"
    body = {
        "name": "own-tokenizer",
        "task": "sentence_embedding",
        "task_params": {"max_length": 32},
        "teacher": {"model_id": model_id},
        "dataset": {"dataset_id": dataset_id, "val_fraction": 0.25},
        "student": {"source": "model", "model": {"model_id": s.json()["id"]}},
        "losses": [{"name": "embedding_mse"}, {"name": "embedding_cosine"}],
        "training": {**TRAINING, "epochs": 2, "batch_size": 16, "lr": 0.003},
    }
    done = _run(api, worker, body)
    cosine = api.get(f"/runs/{done['id']}/metrics").json()["series"]["val/cosine"]["values"]
    assert len(cosine) == 2 and cosine[-1] > cosine[0]
    arts = {a["kind"]: a for a in api.get(f"/runs/{done['id']}/artifacts").json()}
    raw = api.get(f"/artifacts/{arts['student_hf']['id']}/download").content
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        assert json.loads(zf.read("tokenizer.json"))["model"]["type"] == "BPE"
