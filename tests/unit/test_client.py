"""The typed client against the real app (through Starlette's TestClient: the `sdk` fixture of
tests/conftest.py), on SQLite and PostgreSQL, with the real broker. No worker runs here: models
and datasets stay `pending` unless a test marks them ready in the database, and queued runs stay
queued."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from client import ApiError, Client, Model, Page, Run, collect, pages, walk

BASE = "http://testserver"
TEACHER_KWARGS = {"input_shape": [3, 8, 8], "num_classes": 4, "width": 0.25}
INSPECTION = {
    "input_shape": [3, 8, 8],
    "output_shape": [4],
    "num_classes": 4,
    "params": 1234,
    "flops": 56789,
    "layers": [
        {
            "path": "layer1",
            "type": "Sequential",
            "input_shape": [4, 8, 8],
            "output_shape": [4, 8, 8],
            "params": 300,
            "stage": 0,
        },
        {
            "path": "fc",
            "type": "Linear",
            "input_shape": [16],
            "output_shape": [4],
            "params": 68,
            "stage": None,
        },
    ],
    "stages": [
        {"index": 0, "resolution": [8, 8], "channels": 4, "layers": ["layer1"], "end": "layer1"}
    ],
}


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "teacher.safetensors"
    save_file({"fc.weight": np.zeros((4, 16), np.float32)}, str(path))
    return path


@pytest.fixture
def npz(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((24, 3, 8, 8), dtype=np.float32), y=np.arange(24) % 4)
    return path


def _set_ready(table_name: str, row_id: int, **fields: Any) -> None:
    """Stand in for the worker: mark an upload inspected (the API reads it like any other)."""
    from core.db import session_scope, tables

    table = getattr(tables, table_name)
    with session_scope() as session:
        row = session.get(table, row_id)
        row.status = "ready"
        for key, value in fields.items():
            setattr(row, key, value)


def _ready_inputs(sdk: Client, weights: Path, npz: Path) -> tuple[int, int]:
    model = sdk.upload_model(weights, "teacher", architecture="resnet8", kwargs=TEACHER_KWARGS)
    _set_ready("Model", model.id, inspection=INSPECTION)
    dataset = sdk.upload_dataset(npz, "tiny")
    _set_ready(
        "Dataset",
        dataset.id,
        info={
            "num_samples": 24,
            "num_classes": 4,
            "classes": ["a", "b", "c", "d"],
            "class_counts": [6, 6, 6, 6],
            "input_shape": [3, 8, 8],
            "kind": "image",
        },
    )
    return model.id, dataset.id


def _config(model_id: int, dataset_id: int, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "client-test",
        "teacher": {"model_id": model_id},
        "student": {"source": "zoo", "architecture": "resnet8", "kwargs": {"width": 0.25}},
        "dataset": {"dataset_id": dataset_id, "val_fraction": 0.25},
        "losses": [
            {"name": "ce", "weight": 1.0},
            {"name": "kd", "weight": 1.0, "params": {"temperature": 4.0}},
        ],
        "training": {"epochs": 1, "batch_size": 8, "device": "cpu"},
        **overrides,
    }


# -- auth, health, catalog ----------------------------------------------------------------------


def test_login_me_health_and_catalog(sdk: Client) -> None:
    logged_in = Client.login(BASE, "admin", "admin-password-123", http=sdk._http)
    assert logged_in.token and logged_in.token != sdk.token
    me = logged_in.me()
    assert me.username == "admin"
    assert me.team_id in [team.id for team in me.teams]

    assert sdk.health().status == "ok"

    catalog = sdk.catalog()
    kd = catalog.loss("kd")
    assert kd is not None and kd.kind == "logits" and not kd.needs_pairs
    temperature = next(p for p in kd.params if p.name == "temperature")
    assert temperature.type == "float" and temperature.default == 4.0
    assert catalog.loss("at").needs_pairs
    assert catalog.student("resnet8") is not None and "sgd" in catalog.optimizers
    assert catalog.scheme("offline") is not None


def test_errors_carry_the_servers_detail(sdk: Client) -> None:
    with pytest.raises(ApiError) as wrong:
        Client.login(BASE, "admin", "not-the-password", http=sdk._http)
    assert wrong.value.status == 401
    assert str(wrong.value) == wrong.value.detail and wrong.value.detail

    with pytest.raises(ApiError) as anonymous:
        Client(BASE, http=sdk._http).models()
    assert anonymous.value.status == 401

    with pytest.raises(ApiError) as missing:
        sdk.model(999_999)
    assert missing.value.status == 404 and "999999" in missing.value.detail


def test_unreachable_api_says_how_to_fix_it() -> None:
    with pytest.raises(ApiError) as err, Client("http://127.0.0.1:9", timeout=2) as offline:
        offline.health()
    assert err.value.status == 0
    assert "cannot reach" in err.value.detail and "distill-studio up" in err.value.detail


# -- models and datasets -----------------------------------------------------------------------


def test_upload_model_streams_and_reports_progress(sdk: Client, weights: Path) -> None:
    seen: list[tuple[int, int]] = []
    model = sdk.upload_model(
        weights,
        "teacher",
        architecture="resnet8",
        kwargs=TEACHER_KWARGS,
        description="tiny",
        on_progress=lambda sent, total: seen.append((sent, total)),
    )
    size = weights.stat().st_size
    assert seen and seen[-1] == (size, size)
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert model.format == "safetensors" and model.architecture == "resnet8"
    assert model.arch_kwargs == TEACHER_KWARGS
    assert model.size_bytes == size
    assert model.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert model.status == "pending" and model.version == 1

    again = sdk.upload_model(
        weights.open("rb"),
        "teacher",
        format="safetensors",
        architecture="resnet8",
        kwargs=TEACHER_KWARGS,
    )
    assert again.version == 2

    detail = sdk.model(model.id)
    assert detail.id == model.id and detail.inspection is None
    assert {m.id for m in sdk.models(name="teacher").items} == {model.id, again.id}
    assert [m.id for m in sdk.models(status="ready").items] == []

    dest = sdk.download_model(model.id, weights.parent / "copy.safetensors")
    assert dest.read_bytes() == weights.read_bytes()


def test_upload_errors_name_the_field(sdk: Client, weights: Path) -> None:
    with pytest.raises(ApiError) as no_arch:
        sdk.upload_model(weights, "teacher")
    assert no_arch.value.status == 422 and "architecture" in no_arch.value.detail

    with pytest.raises(ApiError) as bad_shape:
        sdk.upload_model(
            weights,
            "teacher",
            architecture="resnet8",
            kwargs={"input_shape": "big", "num_classes": 4},
        )
    assert bad_shape.value.status == 422 and "input_shape" in bad_shape.value.detail

    odd = weights.with_suffix(".bin")
    odd.write_bytes(b"x")
    with pytest.raises(ValueError, match="format="):
        sdk.upload_model(odd, "teacher")
    with pytest.raises(FileNotFoundError):
        sdk.upload_model(weights.with_name("missing.pt2"), "teacher")


def test_iterators_follow_cursors(sdk: Client, weights: Path) -> None:
    ids = [
        sdk.upload_model(weights, f"m{i}", architecture="resnet8", kwargs=TEACHER_KWARGS).id
        for i in range(3)
    ]
    first = sdk.models(limit=2)
    assert len(first.items) == 2 and first.next_cursor
    assert sorted(m.id for m in sdk.iter_models(page_size=1)) == sorted(ids)


def test_the_pagination_helper_walks_every_page_once(sdk: Client, weights: Path) -> None:
    """`walk`, `pages` and `collect` (what the iter_* methods, the CLI and the UI use) ask for
    each page once, in order, with the previous page's cursor, and stop at the last one."""
    ids = [
        sdk.upload_model(weights, f"p{i}", architecture="resnet8", kwargs=TEACHER_KWARGS).id
        for i in range(5)
    ]
    asked: list[tuple[str | None, int]] = []

    def list_page(**kw: Any) -> Page[Model]:
        asked.append((kw["cursor"], kw["limit"]))
        return sdk.models(**kw)

    got = [m.id for m in walk(list_page, page_size=2)]
    assert sorted(got) == sorted(ids) and len(got) == len(set(got)) == 5
    cursors = [c for c, _ in asked]
    assert len(asked) == 3 and cursors[0] is None and len(set(cursors)) == 3  # 2 + 2 + 1

    asked.clear()
    first, more = collect(list_page, limit=3, page_size=2)
    assert [m.id for m in first] == got[:3] and more
    assert [size for _, size in asked] == [2, 1]  # the last request asks only for what is left
    asked.clear()
    every, more = collect(list_page, limit=50, page_size=2)
    assert [m.id for m in every] == got and not more and len(asked) == 3
    assert [p.next_cursor is None for p in pages(sdk.models, page_size=5)] == [True]


def test_pagination_stops_on_an_empty_page_and_refuses_a_zero_page_size() -> None:
    """A page without items ends the walk even if it names a next cursor."""
    served = {None: Page[int](items=[1, 2], next_cursor="a"), "a": Page[int](next_cursor="b")}
    calls: list[str | None] = []

    def list_page(*, limit: int, cursor: str | None) -> Page[int]:
        calls.append(cursor)
        return served[cursor]

    assert list(walk(list_page)) == [1, 2] and calls == [None, "a"]
    with pytest.raises(ValueError, match="page_size"):
        list(walk(list_page, page_size=0))


def test_upload_dataset(sdk: Client, npz: Path) -> None:
    seen: list[int] = []
    dataset = sdk.upload_dataset(npz, "tiny", on_progress=lambda sent, _: seen.append(sent))
    assert dataset.format == "npz" and dataset.status == "pending"
    assert dataset.size_bytes == npz.stat().st_size == seen[-1]
    assert sdk.dataset(dataset.id).name == "tiny"
    assert [d.id for d in sdk.iter_datasets()] == [dataset.id]


# -- runs and artifacts ------------------------------------------------------------------------


def test_run_life_cycle(sdk: Client, weights: Path, npz: Path) -> None:
    model_id, dataset_id = _ready_inputs(sdk, weights, npz)
    run = sdk.create_run(_config(model_id, dataset_id))
    assert isinstance(run, Run) and run.status == "queued" and not run.is_terminal
    assert run.teacher_model_id == model_id and run.dataset_id == dataset_id
    assert run.config["losses"][1]["params"] == {"temperature": 4.0}

    assert sdk.run(run.id).name == "client-test"
    assert [r.id for r in sdk.runs(status="queued").items] == [run.id]
    assert [r.id for r in sdk.iter_runs(q="client")] == [run.id]
    assert sdk.runs(status="succeeded").items == []
    assert "client-test" in sdk.run_config_yaml(run.id)
    assert sdk.metrics(run.id).series == {} or all(
        not s.steps for s in sdk.metrics(run.id).series.values()
    )
    assert sdk.artifacts(run.id) == []

    with pytest.raises(TimeoutError, match="still queued"):
        sdk.wait(run.id, timeout=0.2, poll=0.05)

    cancelled = sdk.cancel_run(run.id)
    assert cancelled.cancel_requested or cancelled.status == "cancelled"
    seen: list[str] = []
    final = sdk.wait(run.id, timeout=10, poll=0.1, on_progress=lambda r: seen.append(r.status))
    assert final.status == "cancelled" and seen[-1] == "cancelled"


def test_run_config_objects_and_errors(sdk: Client, weights: Path, npz: Path) -> None:
    from core.config import RunConfig

    model_id, dataset_id = _ready_inputs(sdk, weights, npz)
    config = RunConfig.model_validate(_config(model_id, dataset_id, name="typed"))
    assert sdk.create_run(config).name == "typed"

    with pytest.raises(ApiError) as unknown_loss:
        sdk.create_run(_config(model_id, dataset_id, losses=[{"name": "kdd"}]))
    assert unknown_loss.value.status == 422 and "kdd" in unknown_loss.value.detail

    with pytest.raises(ApiError) as no_pairs:
        sdk.create_run(_config(model_id, dataset_id, losses=[{"name": "at"}]))
    assert no_pairs.value.status == 422 and "layer_pairs" in no_pairs.value.detail


def test_download_artifact(sdk: Client, weights: Path, npz: Path, tmp_path: Path) -> None:
    from core.db import session_scope
    from core.db.tables import Artifact
    from core.db.tables import Run as RunRow
    from core.storage import get_store

    model_id, dataset_id = _ready_inputs(sdk, weights, npz)
    run = sdk.create_run(_config(model_id, dataset_id))
    payload = b"student weights " * 1000
    with session_scope() as session:
        team_id = session.get(RunRow, run.id).team_id
        stored = get_store().put_bytes(
            f"teams/{team_id}/runs/{run.id}/student.safetensors", payload
        )
        session.add(
            Artifact(
                team_id=team_id,
                run_id=run.id,
                kind="student_safetensors",
                filename="student.safetensors",
                storage_key=stored.key,
                size_bytes=stored.size,
                sha256=stored.sha256,
            )
        )
    [artifact] = sdk.artifacts(run.id)
    assert artifact.kind == "student_safetensors" and artifact.size_bytes == len(payload)

    into_folder = sdk.download_artifact(artifact.id, tmp_path)
    assert into_folder == tmp_path / "student.safetensors"
    assert into_folder.read_bytes() == payload
    named = sdk.download_artifact(artifact.id, tmp_path / "sub" / "w.safetensors")
    assert named.read_bytes() == payload
    assert sdk.artifact_bytes(artifact.id) == ("student.safetensors", payload)

    with pytest.raises(ApiError) as missing:
        sdk.download_artifact(999_999, tmp_path)
    assert missing.value.status == 404


def test_tokens(sdk: Client) -> None:
    created = sdk.create_token("script", read_only=True)
    assert created.token and created.read_only
    reader = Client(BASE, created.token, http=sdk._http)
    assert reader.me().read_only
    with pytest.raises(ApiError) as refused:
        reader.create_run({"name": "x"})
    assert refused.value.status == 403
    assert created.id in [t.id for t in sdk.tokens()]
    assert sdk.revoke_token(created.id).revoked_at is not None
    with pytest.raises(ApiError):
        reader.me()


def test_client_import_is_light() -> None:
    code = (
        "import sys; from client import Client; "
        "heavy = [m for m in ('torch', 'sqlalchemy', 'fastapi', 'celery', 'core.settings', "
        "'worker') if m in sys.modules]; print(heavy); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the studio pages' calls: teacher filter, retry, comparisons, samples, teams ----------------


def test_runs_by_teacher_retry_and_comparisons(sdk: Client, weights: Path, npz: Path) -> None:
    model_id, dataset_id = _ready_inputs(sdk, weights, npz)
    other_teacher = sdk.upload_model(
        weights, "other", architecture="resnet8", kwargs=TEACHER_KWARGS
    )
    first = sdk.create_run(_config(model_id, dataset_id, name="first"))
    second = sdk.create_run(_config(model_id, dataset_id, name="second"))
    assert {r.id for r in sdk.runs(teacher_model_id=model_id).items} == {first.id, second.id}
    assert sdk.runs(teacher_model_id=other_teacher.id).items == []
    assert [r.id for r in sdk.iter_runs(teacher_model_id=model_id, page_size=1)] == [
        second.id,
        first.id,
    ]

    with pytest.raises(ApiError) as running:
        sdk.retry_run(first.id)
    assert running.value.status == 409 and "still queued" in running.value.detail
    sdk.cancel_run(first.id)
    again = sdk.retry_run(first.id)
    assert again.id not in (first.id, second.id) and again.status == "queued"
    assert again.config == sdk.run(first.id).config and again.worker is None

    saved = sdk.create_comparison("first vs second", [first.id, second.id], "a note")
    assert saved.run_ids == [first.id, second.id] and saved.description == "a note"
    assert saved.created_by_name == "admin"
    assert [c.id for c in sdk.comparisons().items] == [saved.id]
    assert sdk.comparison(saved.id).name == "first vs second"
    with pytest.raises(ApiError) as unknown_run:
        sdk.create_comparison("bad", [first.id, 10**6])
    assert unknown_run.value.status == 404 and f"run {10**6} not found" in unknown_run.value.detail
    sdk.delete_comparison(saved.id)
    assert sdk.comparisons().items == []


def test_dataset_samples_and_teams(sdk: Client, npz: Path) -> None:
    dataset = sdk.upload_dataset(npz, "tiny")
    assert sdk.dataset_samples(dataset.id).kind is None  # not scanned yet: no preview
    preview = {
        "kind": "image",
        "samples": [
            {"index": i, "label": "a", "mime": "image/png", "data": "iVBORw0KGgo="}
            for i in range(20)
        ],
    }
    _set_ready("Dataset", dataset.id, info={"num_samples": 24, "preview": preview})
    samples = sdk.dataset_samples(dataset.id, n=16)
    assert samples.kind == "image" and len(samples.samples) == 16
    assert samples.samples[3].index == 3 and samples.samples[0].mime == "image/png"
    assert "preview" not in sdk.dataset(dataset.id).info.model_dump()
    assert all(
        "preview" not in (d.info.model_dump() if d.info else {}) for d in sdk.datasets().items
    )

    teams = sdk.teams()
    assert [t.id for t in teams] == [sdk.me().team_id]
    members = sdk.team_members(teams[0].id)
    assert [(m.username, m.role) for m in members] == [("admin", "owner")]
    with pytest.raises(ApiError) as other:
        sdk.team_members(10**6)
    assert other.value.status == 404
