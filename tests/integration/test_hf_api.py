"""Hugging Face checkpoints through the REST API: the real MiniLM-L6 folder, zipped, is accepted
as format hf and inspected (here by the worker's task run in-process; the sandbox still loads
the zip in a child process) into its model type, sizes, blocks and tokenizer; bad zips end
failed with the reason and serve no run; a run of an image task refuses the transformer."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from fastapi.testclient import TestClient

from tests.hf_helpers import TINY_BERT, folder_members, minilm_folder, tiny_members, zip_bytes
from tests.integration.api_helpers import (
    queue_length,
    ready_dataset,
    ready_model,
    row_count,
    run_config,
    stored_files,
    upload_model,
)

pytestmark = pytest.mark.one_database


def _inspect_here(model_id: int) -> str:
    """What a worker does with the queued INSPECT_MODEL message."""
    from worker.tasks import inspect_model

    return inspect_model(model_id)


def test_minilm_zip_is_inspected_and_image_runs_refuse_it(api: TestClient, studio_env) -> None:
    data = zip_bytes(folder_members(minilm_folder(), "all-MiniLM-L6-v2"))
    r = upload_model(api, "minilm", data, "all-MiniLM-L6-v2.zip")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "hf" and body["status"] == "pending"
    assert queue_length(studio_env) == 1
    assert _inspect_here(body["id"]) == "ready"
    model = api.get(f"/models/{body['id']}").json()
    insp = model["inspection"]
    assert (insp["model_type"], insp["architecture"]) == ("bert", "BertModel")
    assert (insp["hidden_size"], insp["num_layers"], insp["num_heads"]) == (384, 6, 12)
    assert insp["tokenizer_vocab_size"] == insp["vocab_size"] == 30522
    assert [b["path"] for b in insp["blocks"]] == [f"encoder.layer.{i}" for i in range(6)]
    assert model["card"]["model_type"] == "bert" and model["card"]["params"] == insp["params"]

    dataset = ready_dataset(api)
    refused = api.post("/runs", json=run_config(body["id"], dataset))
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert f"model {body['id']} ('minilm') is a Hugging Face transformer" in detail
    assert "transformer teacher needs a text task" in detail and "classification" in detail
    image_teacher = ready_model(api, "image-teacher")
    start = {"source": "model", "model": {"model_id": body["id"]}}
    as_student = api.post("/runs", json=run_config(image_teacher, dataset, student=start))
    assert as_student.status_code == 422, as_student.text
    assert "transformer student needs a text task" in as_student.json()["detail"]
    assert as_student.json()["errors"][0]["loc"] == ["body", "student", "model", "model_id"]
    assert row_count("Run") == 0


BAD = {
    "no config.json": ({"model.safetensors": b"x"}, "no config.json"),
    "a .bin pickle": (
        {"config.json": json.dumps(TINY_BERT).encode(), "pytorch_model.bin": b"\x80\x04."},
        "convert it to safetensors",
    ),
    "remote code": (
        {"config.json": json.dumps({**TINY_BERT, "auto_map": {"AutoModel": "m.M"}}).encode()},
        "remote code",
    ),
    "unknown model_type": (
        {"config.json": json.dumps({**TINY_BERT, "model_type": "t5"}).encode()},
        "bert, distilbert, roberta",
    ),
    "traversal": ({"../config.json": b"{}"}, "contains '..'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_zips_fail_inspection_with_the_reason(api: TestClient, case: str) -> None:
    members, reason = BAD[case]
    r = upload_model(api, "bad", zip_bytes(members), "bad.zip")
    assert r.status_code == 201, r.text
    assert _inspect_here(r.json()["id"]) == "failed"
    model = api.get(f"/models/{r.json()['id']}").json()
    assert model["status"] == "failed" and reason in model["error"], model["error"]
    assert model["inspection"] is None


def test_shapes_and_tokenizer_that_do_not_fit_fail_inspection(api: TestClient) -> None:
    shapes = tiny_members({**TINY_BERT, "hidden_size": 32, "intermediate_size": 64})
    shapes["config.json"] = json.dumps(TINY_BERT).encode()
    tokens = {**tiny_members(TINY_BERT)}
    tokens["tokenizer.json"] = (minilm_folder() / "tokenizer.json").read_bytes()
    for members, reason in [
        (shapes, "file [120, 32] vs config [120, 16]"),
        (tokens, "30522 tokens but the model's vocab_size is 120"),
    ]:
        r = upload_model(api, "bad", zip_bytes(members), "bad.zip")
        assert _inspect_here(r.json()["id"]) == "failed"
        assert reason in api.get(f"/models/{r.json()['id']}").json()["error"]


def test_pickled_checkpoints_never_reach_a_worker(api: TestClient, studio_env) -> None:
    r = upload_model(api, "bin", b"\x80\x04.", "pytorch_model.bin")
    assert r.status_code == 422 and "convert it to safetensors" in r.text
    assert row_count("Model") == 0 and queue_length(studio_env) == 0


def _parts(members: dict[str, bytes]) -> list[tuple[str, tuple[str, io.BytesIO]]]:
    return [("file", (name, io.BytesIO(data))) for name, data in members.items()]


def test_a_checkpoint_uploaded_as_its_files_is_stored_as_one_zip(
    api: TestClient, studio_env
) -> None:
    members = tiny_members({**TINY_BERT, "vocab_size": 30522})
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        members[name] = (minilm_folder() / name).read_bytes()
    r = api.post("/models", files=_parts(members), data={"name": "files"})
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "hf"
    assert _inspect_here(r.json()["id"]) == "ready"
    insp = api.get(f"/models/{r.json()['id']}").json()["inspection"]
    assert insp["tokenizer_vocab_size"] == 30522 and insp["num_layers"] == 2
    download = api.get(f"/models/{r.json()['id']}/download")
    with zipfile.ZipFile(io.BytesIO(download.content)) as zf:
        assert sorted(zf.namelist()) == sorted(members)


def test_files_that_are_not_one_checkpoint_are_refused_and_nothing_kept(
    api: TestClient, studio_env
) -> None:
    members = tiny_members(TINY_BERT)
    cases = [
        ({**members, "pytorch_model.bin": b"x"}, {}, "convert it to safetensors"),
        ({"model.safetensors": b"x", "tokenizer.json": b"{}"}, {}, "must include config.json"),
        (members, {"format": "pt2"}, "not format=pt2"),
        ({**members, ".env": b"x"}, {}, "'.env' is not a checkpoint file name"),
    ]
    for files, fields, reason in cases:
        r = api.post("/models", files=_parts(files), data={"name": "files", **fields})
        assert r.status_code == 422 and reason in r.text, r.text
    twice = api.post(
        "/models",
        files=[*_parts(members), ("file", ("sub/config.json", io.BytesIO(b"{}")))],
        data={"name": "files"},
    )
    assert twice.status_code == 422 and "'config.json' was given twice" in twice.text
    assert row_count("Model") == 0 and queue_length(studio_env) == 0
    assert stored_files(studio_env) == []


def test_odd_part_names_get_a_422_not_a_crash(api: TestClient, studio_env) -> None:
    refused = ["", "..", "x" * 300, "C:\\config.json"]  # the last: config.json twice
    for odd in [*refused, "a\x00b.json", "é/ü.json"]:
        parts = [("file", ("config.json", io.BytesIO(b"{}"))), ("file", (odd, io.BytesIO(b"")))]
        r = api.post("/models", files=parts, data={"name": "odd"})
        assert r.status_code in (201, 422), (odd, r.status_code, r.text)
        assert r.status_code == 422 or odd not in refused, (odd, r.text)
