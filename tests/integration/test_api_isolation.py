"""Teams own everything: another team's ids answer 404, exactly like ids that do not exist."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from .test_api_support import (
    auth,
    new_client,
    other_team_token,
    ready_dataset,
    ready_model,
    run_config,
    signed_in,
)


@pytest.fixture
def app_client(studio_env) -> Iterator[TestClient]:
    with new_client() as client:
        yield client


@pytest.fixture
def api(app_client: TestClient, admin_token: str) -> TestClient:
    """The app, signed in as the first admin (team "default")."""
    return signed_in(app_client, admin_token)


def _artifact(run_id: int, payload: bytes, filename: str = "student.safetensors") -> int:
    """Stand in for the worker: put a file in the store and record it as the run's artifact."""
    from core.db import session_scope
    from core.db.tables import Artifact, Run
    from core.storage import get_store, new_key

    with session_scope() as session:
        team_id = session.get(Run, run_id).team_id
        stored = get_store().put_bytes(new_key(team_id, "runs", filename), payload)
        art = Artifact(team_id=team_id, run_id=run_id, kind="student_safetensors", filename=filename,
                       storage_key=stored.key, size_bytes=stored.size, sha256=stored.sha256)
        session.add(art)
        session.flush()
        return art.id


def test_artifact_download(api) -> None:
    model_id, dataset_id = ready_model(api), ready_dataset(api)
    run_id = api.post("/runs", json=run_config(model_id, dataset_id)).json()["id"]
    payload = b"student weights " * 100_000  # 1.6 MB: more than one chunk
    art_id = _artifact(run_id, payload, "stüdent weights.safetensors")

    [listed] = api.get(f"/runs/{run_id}/artifacts").json()
    assert listed["id"] == art_id and listed["size_bytes"] == len(payload)
    assert listed["kind"] == "student_safetensors" and listed["run_id"] == run_id
    r = api.get(f"/artifacts/{art_id}/download")
    assert r.status_code == 200 and r.content == payload
    disposition = r.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="student_weights.safetensors"')
    assert "filename*=UTF-8''st%C3%BCdent%20weights.safetensors" in disposition
    assert api.get(f"/artifacts/{art_id}").json()["filename"] == "stüdent weights.safetensors"
    assert api.get("/artifacts/777777/download").json() == {"detail": "artifact 777777 not found"}


def test_other_team_sees_nothing(api, app_client) -> None:
    model_id, dataset_id = ready_model(api), ready_dataset(api)
    run_id = api.post("/runs", json=run_config(model_id, dataset_id)).json()["id"]
    art_id = _artifact(run_id, b"secret")
    bob = auth(other_team_token(app_client))

    for path, label, id_ in [
        (f"/models/{model_id}", "model", model_id),
        (f"/models/{model_id}/download", "model", model_id),
        (f"/datasets/{dataset_id}", "dataset", dataset_id),
        (f"/runs/{run_id}", "run", run_id),
        (f"/runs/{run_id}/metrics", "run", run_id),
        (f"/runs/{run_id}/artifacts", "run", run_id),
        (f"/runs/{run_id}/config.yaml", "run", run_id),
        (f"/artifacts/{art_id}/download", "artifact", art_id),
    ]:
        r = app_client.get(path, headers=bob)
        assert r.status_code == 404 and r.json() == {"detail": f"{label} {id_} not found"}, path
    assert app_client.post(f"/runs/{run_id}/cancel", headers=bob).status_code == 404
    for listing in ("/models", "/datasets", "/runs"):
        assert app_client.get(listing, headers=bob).json()["items"] == [], listing

    # their own run may not use our teacher or dataset either
    theirs = app_client.post("/runs", headers=bob, json=run_config(model_id, dataset_id))
    assert theirs.status_code == 404 and theirs.json()["detail"] == f"model {model_id} not found"
    plan = app_client.post("/runs/plan", headers=bob, json={"teacher_model_id": model_id})
    assert plan.status_code == 404
