"""Uploading datasets, and the catalog."""

from __future__ import annotations

import json

from .api_helpers import (
    queue_length,
    row_count,
    stored_files,
    upload_dataset,
)


def test_dataset_formats_and_listing(api, studio_env) -> None:
    npz = upload_dataset(api, "arrays", b"npz", "train.npz")
    assert npz.status_code == 201, npz.text
    assert npz.json()["format"] == "npz" and npz.json()["status"] == "pending"
    assert npz.json()["label_column"] == "label" and npz.json()["info"] is None
    folder = upload_dataset(api, "images", b"zip", "images.ZIP")
    assert folder.status_code == 201 and folder.json()["format"] == "zip"
    table = upload_dataset(api, "table", b"a,b,target\n1,2,0\n", "t.csv", label_column="target")
    assert table.status_code == 201 and table.json()["label_column"] == "target"
    named = upload_dataset(api, "named", b"x", "data.bin", format="npz")
    assert named.status_code == 201 and named.json()["format"] == "npz"
    shards = upload_dataset(api, "shards", b"tar", "shards.tar")
    assert shards.status_code == 201 and shards.json()["format"] == "tar"
    parquet = upload_dataset(api, "pq", b"PAR1", "t.parquet", label_column="target")
    assert parquet.status_code == 201 and parquet.json()["format"] == "parquet"
    assert queue_length(studio_env) == 6  # one SCAN_DATASET each

    bad = upload_dataset(api, "bad", b"x", "data.h5")
    assert bad.status_code == 422
    detail = bad.json()["detail"]
    assert detail.startswith("format: cannot read 'data.h5' as a dataset; accepted:")
    for fmt in ("npz", "zip", "tar", "csv", "parquet"):
        assert fmt in detail
    bad_named = upload_dataset(api, "bad", b"x", "data.npz", format="hdf5")
    assert bad_named.status_code == 422 and "'hdf5' is not accepted" in bad_named.json()["detail"]
    assert row_count("Dataset") == 6 and len(stored_files(studio_env)) == 6

    listed = api.get("/datasets", params={"limit": 5}).json()
    assert [d["name"] for d in listed["items"]] == ["pq", "shards", "named", "table", "images"]
    assert (
        api.get("/datasets", params={"cursor": listed["next_cursor"]}).json()["items"][0]["name"]
        == "arrays"
    )
    assert api.get("/datasets", params={"name": "table"}).json()["items"][0]["format"] == "csv"
    one = api.get(f"/datasets/{npz.json()['id']}")
    assert one.status_code == 200 and one.json()["name"] == "arrays"
    assert api.get(f"/datasets/{npz.json()['id']}/download").content == b"npz"
    assert api.get("/datasets/424242").json() == {"detail": "dataset 424242 not found"}


def test_catalog(api) -> None:
    from core import catalog

    r = api.get("/catalog")
    assert r.status_code == 200
    body = r.json()
    assert body == json.loads(json.dumps(catalog.as_json()))
    assert {"losses", "students", "schemes", "optimizers", "schedules"} <= body.keys()
    kd = next(e for e in body["losses"] if e["name"] == "kd")
    assert kd["kind"] == "logits" and kd["params"][0]["name"] == "temperature"
    jsd = next(e for e in body["losses"] if e["name"] == "gkd_jsd")
    assert "GKD" in jsd["title"] and jsd["paper"] and jsd["params"][0]["default"] == 0.5
    tasks = {t["name"]: t["extra"]["losses"] for t in body["tasks"]}
    divergences = {"kd", "reverse_kl", "gkd_jsd", "skew_kl", "tvd"}
    assert divergences <= set(tasks["classification"])
    assert not divergences & (set(tasks["segmentation"]) | set(tasks["detection"]))
    assert any(e["name"] == "resnet8" for e in body["students"])
    assert api.get("/catalog", headers={"Authorization": ""}).status_code == 401
