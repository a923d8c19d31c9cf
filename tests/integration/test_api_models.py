"""Uploading models: formats, validation, versions, the size limit, listing and download."""

from __future__ import annotations

import base64
import hashlib
import json

from .api_helpers import (
    CLOSED_BROKER,
    queue_length,
    row_count,
    set_env,
    set_row,
    stored_files,
    upload_model,
)

ZOO = {
    "architecture": "resnet8",
    "kwargs": json.dumps({"input_shape": [3, 8, 8], "num_classes": 4}),
}


def test_upload_pt2_versions_list_detail_download(api, studio_env) -> None:
    data = b"not really an archive; the worker checks it"
    r = upload_model(api, "teacher", data, description="first")
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["name"] == "teacher" and first["version"] == 1 and first["format"] == "pt2"
    assert first["status"] == "pending" and first["size_bytes"] == len(data)
    assert first["sha256"] == hashlib.sha256(data).hexdigest()
    assert first["description"] == "first" and "inspection" not in first
    assert first["created_at"].endswith(("+00:00", "Z"))
    assert queue_length(studio_env) == 1  # INSPECT_MODEL waits for a worker

    second = upload_model(api, "teacher", b"v2").json()
    other = upload_model(api, "other", b"o").json()
    assert second["version"] == 2 and other["version"] == 1

    detail = api.get(f"/models/{first['id']}").json()
    assert detail["id"] == first["id"] and detail["inspection"] is None
    set_row("Model", first["id"], status="ready", inspection={"layers": []})
    assert api.get(f"/models/{first['id']}").json()["inspection"] == {"layers": []}

    page = api.get("/models", params={"limit": 2}).json()
    assert [m["id"] for m in page["items"]] == [other["id"], second["id"]]
    rest = api.get("/models", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [m["id"] for m in rest["items"]] == [first["id"]] and rest["next_cursor"] is None
    named = api.get("/models", params={"name": "teacher"}).json()["items"]
    assert {m["version"] for m in named} == {1, 2}
    assert [m["id"] for m in api.get("/models", params={"status": "ready"}).json()["items"]] == [
        first["id"]
    ]
    bad_status = api.get("/models", params={"status": "done"})
    assert bad_status.status_code == 422 and bad_status.json()["detail"].startswith("status:")
    bad_cursor = api.get("/models", params={"cursor": "garbage"})
    assert bad_cursor.status_code == 422 and "cursor" in bad_cursor.json()["detail"]
    for last_id in (0, -5, 2**31, 2**70):  # shaped like ours, but no id a table can hold
        forged = base64.urlsafe_b64encode(f"v1:{last_id}".encode()).decode().rstrip("=")
        for path in ("/models", "/runs"):
            out_of_range = api.get(path, params={"cursor": forged})
            assert out_of_range.status_code == 422, (path, last_id, out_of_range.text)

    dl = api.get(f"/models/{first['id']}/download")
    assert dl.status_code == 200 and dl.content == data
    assert 'filename="teacher-v1.pt2"' in dl.headers["content-disposition"]
    assert api.get("/models/999999").json() == {"detail": "model 999999 not found"}
    assert api.get("/models/999999").status_code == 404


def test_safetensors_validation(api, studio_env) -> None:
    def post(**fields: str):
        return upload_model(api, "w", b"weights", "w.safetensors", **fields)

    missing = post()
    assert missing.status_code == 422
    assert missing.json()["detail"].startswith("architecture: safetensors weights need")
    assert missing.json()["errors"][0]["loc"] == ["body", "architecture"]

    unknown = post(architecture="resnet9", kwargs=ZOO["kwargs"])
    assert unknown.status_code == 422
    detail = unknown.json()["detail"]
    assert "unknown architecture 'resnet9'; nearest:" in detail and "resnet8" in detail

    bad_json = post(architecture="resnet8", kwargs="{input_shape: [3]")
    assert bad_json.status_code == 422 and bad_json.json()["detail"].startswith(
        "kwargs: not valid JSON"
    )

    no_shape = post(architecture="resnet8", kwargs=json.dumps({"num_classes": 4}))
    assert no_shape.status_code == 422 and "need input_shape" in no_shape.json()["detail"]
    bad_param = post(
        architecture="resnet8",
        kwargs=json.dumps({"input_shape": [3, 8, 8], "num_classes": 4, "depth": 3}),
    )
    assert (
        bad_param.status_code == 422 and "unknown parameter 'depth'" in bad_param.json()["detail"]
    )

    bad_format = upload_model(api, "x", b"x", "x.tflite")
    assert bad_format.status_code == 422 and bad_format.json()["detail"].startswith("format:")
    assert ".pt2" in bad_format.json()["detail"]
    named_format = upload_model(api, "x", b"x", "x.bin", format="tflite")
    assert (
        named_format.status_code == 422
        and "'tflite' is not accepted" in named_format.json()["detail"]
    )
    no_name = api.post("/models", files={"file": ("a.pt2", b"x")})
    assert no_name.status_code == 422 and no_name.json()["detail"] == "name: Field required"

    assert (
        row_count("Model") == 0 and stored_files(studio_env) == [] and queue_length(studio_env) == 0
    )

    ok = post(**ZOO)
    assert ok.status_code == 201, ok.text
    body = ok.json()
    assert body["format"] == "safetensors" and body["architecture"] == "resnet8"
    assert body["arch_kwargs"] == {"input_shape": [3, 8, 8], "num_classes": 4}
    by_name = upload_model(api, "w", b"weights", "weights.bin", format="safetensors", **ZOO)
    assert by_name.status_code == 201 and by_name.json()["version"] == 2


def test_too_large_or_broker_down_leaves_nothing(api, studio_env, monkeypatch) -> None:
    set_env(monkeypatch, DS_MAX_UPLOAD_MB="1")
    streamed = upload_model(api, "big", b"x" * (1024 * 1024 + 1))  # caught while streaming
    assert streamed.status_code == 413
    assert streamed.json()["detail"].startswith("file is larger than 1 MiB")
    declared = upload_model(api, "big", b"x" * (3 * 1024 * 1024))  # refused by Content-Length
    assert declared.status_code == 413 and declared.json()["detail"].startswith(
        "file is larger than 1 MiB"
    )
    assert row_count("Model") == 0 and stored_files(studio_env) == []

    set_env(monkeypatch, DS_BROKER_URL=CLOSED_BROKER)
    down = upload_model(api, "small", b"x" * 1024)
    assert down.status_code == 503 and "broker" in down.json()["detail"]
    assert row_count("Model") == 0 and stored_files(studio_env) == []
