"""Shared helpers of the integration tests that drive the API in-process; no tests here.

The API runs in-process (Starlette's TestClient) against the real databases of `studio_env`
(SQLite and PostgreSQL) and the real Redis broker. No worker runs: uploads stay `pending` and runs
`queued` unless a test stands in for the worker by writing to the database directly.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

BASE = "http://testserver/api/v1"

TEACHER_INSPECTION: dict[str, Any] = {
    "input_shape": [3, 8, 8],
    "output_shape": [4],
    "num_classes": 4,
    "params": 5000,
    "flops": 90000,
    "layers": [
        {
            "path": "conv1",
            "type": "Conv2d",
            "input_shape": [3, 8, 8],
            "output_shape": [16, 8, 8],
            "params": 432,
            "stage": 0,
        },
        {
            "path": "layer1",
            "type": "Sequential",
            "input_shape": [16, 8, 8],
            "output_shape": [16, 8, 8],
            "params": 1000,
            "stage": 0,
        },
        {
            "path": "layer2",
            "type": "Sequential",
            "input_shape": [16, 8, 8],
            "output_shape": [32, 4, 4],
            "params": 1500,
            "stage": 1,
        },
        {
            "path": "layer3",
            "type": "Sequential",
            "input_shape": [32, 4, 4],
            "output_shape": [64, 2, 2],
            "params": 2000,
            "stage": 2,
        },
        {
            "path": "fc",
            "type": "Linear",
            "input_shape": [64],
            "output_shape": [4],
            "params": 260,
            "stage": None,
        },
    ],
    "stages": [
        {
            "index": 0,
            "resolution": [8, 8],
            "channels": 16,
            "layers": ["conv1", "layer1"],
            "end": "layer1",
        },
        {"index": 1, "resolution": [4, 4], "channels": 32, "layers": ["layer2"], "end": "layer2"},
        {"index": 2, "resolution": [2, 2], "channels": 64, "layers": ["layer3"], "end": "layer3"},
    ],
}

STUDENT_INSPECTION: dict[str, Any] = {
    "input_shape": [3, 8, 8],
    "output_shape": [4],
    "num_classes": 4,
    "params": 800,
    "flops": 9000,
    "layers": [
        {
            "path": "stem",
            "type": "Conv2d",
            "input_shape": [3, 8, 8],
            "output_shape": [8, 8, 8],
            "params": 216,
            "stage": 0,
        },
        {
            "path": "blocks.0",
            "type": "Sequential",
            "input_shape": [8, 8, 8],
            "output_shape": [8, 8, 8],
            "params": 300,
            "stage": 0,
        },
        {
            "path": "blocks.1",
            "type": "Sequential",
            "input_shape": [8, 8, 8],
            "output_shape": [16, 4, 4],
            "params": 400,
            "stage": 1,
        },
        {
            "path": "head",
            "type": "Linear",
            "input_shape": [16],
            "output_shape": [4],
            "params": 68,
            "stage": None,
        },
    ],
    "stages": [
        {
            "index": 0,
            "resolution": [8, 8],
            "channels": 8,
            "layers": ["stem", "blocks.0"],
            "end": "blocks.0",
        },
        {
            "index": 1,
            "resolution": [4, 4],
            "channels": 16,
            "layers": ["blocks.1"],
            "end": "blocks.1",
        },
    ],
}

DATASET_INFO: dict[str, Any] = {
    "num_samples": 24,
    "num_classes": 4,
    "classes": ["a", "b", "c", "d"],
    "class_counts": [6, 6, 6, 6],
    "input_shape": [3, 8, 8],
    "kind": "image",
}


@contextmanager
def new_client() -> Iterator[TestClient]:
    """A client of a fresh app (for the current settings) with no credentials."""
    from backend.app import create_app

    with TestClient(create_app(), base_url=BASE) as client:
        yield client


def signed_in(client: TestClient, token: str) -> TestClient:
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def other_team_token(app_client: TestClient, username: str = "bob", team: str = "other") -> str:
    """Create a user in a team of its own and sign in as them."""
    from backend.bootstrap import create_user
    from core.db import session_scope

    with session_scope() as session:
        create_user(session, username, f"{username}-password-1", team, "member")
    r = app_client.post(
        "/auth/token", data={"username": username, "password": f"{username}-password-1"}
    )
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def upload_model(
    api: TestClient,
    name: str = "teacher",
    data: bytes = b"pt2 bytes",
    filename: str = "teacher.pt2",
    **fields: str,
) -> Any:
    return api.post(
        "/models", files={"file": (filename, io.BytesIO(data))}, data={"name": name, **fields}
    )


def upload_dataset(
    api: TestClient,
    name: str = "tiny",
    data: bytes = b"npz bytes",
    filename: str = "tiny.npz",
    **fields: str,
) -> Any:
    return api.post(
        "/datasets", files={"file": (filename, io.BytesIO(data))}, data={"name": name, **fields}
    )


def set_row(table_name: str, row_id: int, **fields: Any) -> None:
    """Stand in for the worker: write fields of a row (status, inspection, info, ...)."""
    from core.db import session_scope, tables

    with session_scope() as session:
        row = session.get(getattr(tables, table_name), row_id)
        for key, value in fields.items():
            setattr(row, key, value)


def ready_model(api: TestClient, name: str = "teacher", inspection: dict | None = None) -> int:
    r = upload_model(api, name)
    assert r.status_code == 201, r.text
    set_row("Model", r.json()["id"], status="ready", inspection=inspection or TEACHER_INSPECTION)
    return r.json()["id"]


def ready_dataset(api: TestClient, name: str = "tiny") -> int:
    r = upload_dataset(api, name)
    assert r.status_code == 201, r.text
    set_row("Dataset", r.json()["id"], status="ready", info=DATASET_INFO)
    return r.json()["id"]


def run_config(model_id: int, dataset_id: int, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "api-test",
        "teacher": {"model_id": model_id},
        "student": {"source": "zoo", "architecture": "resnet8", "kwargs": {"width": 0.25}},
        "dataset": {"dataset_id": dataset_id},
        "losses": [{"name": "ce"}, {"name": "kd", "params": {"temperature": 4.0}}],
        "training": {"epochs": 1, "batch_size": 8, "device": "cpu"},
        **overrides,
    }


def add_artifact(run_id: int, payload: bytes, filename: str = "student.safetensors") -> int:
    """Stand in for the worker: put a file in the store and record it as the run's artifact."""
    from core.db import session_scope
    from core.db.tables import Artifact, Run
    from core.storage import get_store, new_key

    with session_scope() as session:
        team_id = session.get(Run, run_id).team_id
        stored = get_store().put_bytes(new_key(team_id, "runs", filename), payload)
        art = Artifact(
            team_id=team_id,
            run_id=run_id,
            kind="student_safetensors",
            filename=filename,
            storage_key=stored.key,
            size_bytes=stored.size,
            sha256=stored.sha256,
        )
        session.add(art)
        session.flush()
        return art.id


def queue_length(studio_env, queue: str = "cpu") -> int:
    import redis

    return redis.Redis.from_url(studio_env.env["DS_BROKER_URL"]).llen(queue)


def row_count(table_name: str) -> int:
    from sqlalchemy import func, select

    from core.db import session_scope, tables

    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(getattr(tables, table_name)))


def stored_files(studio_env) -> list[str]:
    root = studio_env.data_dir / "artifacts"
    return (
        sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        if root.exists()
        else []
    )


def set_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """Change settings for the rest of a test (the next request reads them)."""
    from core.db import reset_caches
    from core.storage import get_store

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_caches()
    get_store.cache_clear()


CLOSED_BROKER = "redis://127.0.0.1:9/0"  # nothing listens on the discard port


@contextmanager
def sql_sent() -> Iterator[list[tuple[str, Any, bool]]]:
    """The SQL statements sent to the database meanwhile, through either engine (the API's reads
    have one of their own on PostgreSQL, `core.db.get_read_engine`): each with its parameters
    and whether its connection was in autocommit."""
    from sqlalchemy import event

    from core.db import get_engine, get_read_engine

    sent: list[tuple[str, Any, bool]] = []

    def record(conn, _cursor, statement, parameters, *_args) -> None:  # noqa: ANN001
        autocommit = bool(getattr(conn.connection.dbapi_connection, "autocommit", False))
        sent.append((statement, parameters, autocommit))

    engines = {id(e): e for e in (get_engine(), get_read_engine())}.values()
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)
