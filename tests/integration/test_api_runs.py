"""Launching runs: every check of a run config, queueing, cancelling, metrics, YAML, plans."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from .api_helpers import (
    CLOSED_BROKER,
    STUDENT_INSPECTION,
    TEACHER_INSPECTION,
    add_artifact,
    auth,
    other_team_token,
    queue_length,
    ready_dataset,
    ready_model,
    row_count,
    run_config,
    set_env,
    set_row,
    sql_sent,
    upload_dataset,
    upload_model,
)


def test_run_created_and_queued(api, studio_env) -> None:
    model_id, dataset_id = ready_model(api), ready_dataset(api)
    before = queue_length(studio_env)
    r = api.post("/runs", json=run_config(model_id, dataset_id))
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["status"] == "queued" and run["queue"] == "cpu" and run["name"] == "api-test"
    assert run["teacher_model_id"] == model_id and run["dataset_id"] == dataset_id
    assert run["progress"] == 0 and run["attempts"] == 0 and not run["cancel_requested"]
    assert run["config"]["losses"][1] == {
        "name": "kd",
        "weight": 1.0,
        "params": {"temperature": 4.0},
        "pairs": None,
    }
    assert run["config"]["training"]["lr"] == 0.05  # defaults filled in, stored with the run
    assert queue_length(studio_env) == before + 1  # the DISTILL message is in Redis

    import redis

    message = json.loads(redis.Redis.from_url(studio_env.env["DS_BROKER_URL"]).lindex("cpu", 0))
    assert message["headers"]["task"] == "worker.tasks.distill"
    assert message["headers"]["argsrepr"] in (f"[{run['id']}]", f"({run['id']},)")

    gpu = api.post(
        "/runs", json=run_config(model_id, dataset_id, name="on gpu", training={"device": "cuda"})
    )
    assert gpu.status_code == 201 and gpu.json()["queue"] == "gpu"
    assert queue_length(studio_env, "gpu") == 1

    assert api.get(f"/runs/{run['id']}").json()["config"] == run["config"]
    listed = api.get("/runs").json()["items"]
    assert [x["id"] for x in listed] == [gpu.json()["id"], run["id"]]
    assert [x["id"] for x in api.get("/runs", params={"q": "GPU"}).json()["items"]] == [
        gpu.json()["id"]
    ]
    assert api.get("/runs", params={"q": "%"}).json()["items"] == []
    assert (
        len(
            api.get("/runs", params={"status": "queued", "teacher_model_id": model_id}).json()[
                "items"
            ]
        )
        == 2
    )
    assert api.get("/runs", params={"teacher_model_id": model_id + 1000}).json()["items"] == []

    text = api.get(f"/runs/{run['id']}/config.yaml")
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/yaml")
    from core.config import RunConfig

    assert RunConfig.model_validate(yaml.safe_load(text.text)).name == "api-test"
    assert api.get(f"/runs/{run['id']}/artifacts").json() == []


def test_run_config_errors(api, studio_env) -> None:
    model_id, dataset_id = ready_model(api), ready_dataset(api)

    broken = api.post("/runs", content=b'{"name": ', headers={"content-type": "application/json"})
    assert broken.status_code == 422 and broken.json()["detail"].startswith("body: not valid JSON")

    unknown = api.post("/runs", json=run_config(model_id, dataset_id, losses=[{"name": "kdd"}]))
    assert unknown.status_code == 422
    from core import catalog

    assert unknown.json()["detail"] == (
        f"losses.0: unknown loss 'kdd'; the catalog has: {', '.join(sorted(catalog.LOSSES))}"
    )
    assert unknown.json()["errors"][0]["loc"] == ["body", "losses", 0]

    extra = api.post("/runs", json=run_config(model_id, dataset_id, epochs=3))
    assert extra.status_code == 422 and extra.json()["detail"].startswith("epochs: Extra inputs")

    pairs = api.post("/runs", json=run_config(model_id, dataset_id, losses=[{"name": "at"}]))
    assert pairs.status_code == 422 and "needs layer_pairs" in pairs.json()["detail"]

    path = api.post(
        "/runs",
        json=run_config(model_id, dataset_id, teacher={"path": "t.pt2"}, dataset={"path": "d.npz"}),
    )
    assert path.status_code == 422
    assert path.json()["detail"] == (
        "teacher.path: the API takes model_id/dataset_id; 'path' is for the standalone CLI; "
        "dataset.path: the API takes model_id/dataset_id; 'path' is for the standalone CLI"
    )

    missing = api.post("/runs", json=run_config(model_id + 1000, dataset_id))
    assert (
        missing.status_code == 404
        and missing.json()["detail"] == f"model {model_id + 1000} not found"
    )
    no_data = api.post("/runs", json=run_config(model_id, dataset_id + 1000))
    assert (
        no_data.status_code == 404
        and no_data.json()["detail"] == f"dataset {dataset_id + 1000} not found"
    )

    pending = upload_model(api, "pending").json()["id"]
    waiting = api.post("/runs", json=run_config(pending, dataset_id))
    assert waiting.status_code == 409
    assert (
        waiting.json()["detail"]
        == f"model {pending} is still being inspected; retry when its status is ready"
    )
    set_row("Model", pending, status="failed", error="not a torch.export archive")
    failed = api.post("/runs", json=run_config(pending, dataset_id))
    assert failed.status_code == 409 and "not a torch.export archive" in failed.json()["detail"]

    pending_data = upload_dataset(api, "later").json()["id"]
    scanning = api.post("/runs", json=run_config(model_id, pending_data))
    assert scanning.status_code == 409 and "still being scanned" in scanning.json()["detail"]

    student_missing = api.post(
        "/runs",
        json=run_config(
            model_id, dataset_id, student={"source": "model", "model": {"model_id": 99999}}
        ),
    )
    assert (
        student_missing.status_code == 404
        and student_missing.json()["detail"] == "model 99999 not found"
    )

    assert row_count("Run") == 0


def test_who_may_launch_is_checked_before_the_body(api, app_client) -> None:
    """`POST /runs` checks its caller in its endpoint, with the create (one worker-thread hop);
    a body FastAPI refuses still answers 401 and 403 first, as routes with `Writer` do."""
    from backend.bootstrap import create_user
    from core.db import session_scope

    with session_scope() as session:
        create_user(session, "vera", "vera-password-1", "default", "viewer")
    signed = app_client.post(
        "/auth/token", data={"username": "vera", "password": "vera-password-1"}
    )
    viewer = auth(signed.json()["access_token"])
    reader = auth(api.post("/auth/tokens", json={"name": "r", "read_only": True}).json()["token"])
    other_team = api.get("/auth/me", headers=auth(other_team_token(app_client))).json()["team_id"]
    good = run_config(ready_model(api), ready_dataset(api))
    not_a_config = {"name": 3, "losses": "kd"}
    broken = {"content": b'{"name": '}  # not JSON

    def status(headers: dict[str, str], **body: Any) -> int:
        headers = headers | {"content-type": "application/json"}
        return app_client.post("/runs", headers=headers, **body).status_code

    for body in ({"json": not_a_config}, broken):
        assert status({"Authorization": ""}, **body) == 401  # no token
        assert status(auth("ds_unknown_token"), **body) == 401
        assert status(viewer, **body) == 403
        assert status(reader, **body) == 403
        assert status(dict(api.headers) | {"X-Team-Id": str(other_team)}, **body) == 403
        assert status(dict(api.headers), **body) == 422  # a writer: the body's own answer
    assert status(dict(api.headers) | {"X-Team-Id": "abc"}, json=good) == 422  # the header's
    assert status(viewer, json=good) == 403 and status(reader, json=good) == 403
    assert status(dict(api.headers), json=good) == 201
    assert api.get("/runs").json()["items"][0]["name"] == "api-test"
    assert len(api.get("/runs").json()["items"]) == 1


def test_layer_pairs_are_checked_against_both_inspections(api, studio_env) -> None:
    teacher, dataset_id = ready_model(api), ready_dataset(api)
    student = ready_model(api, "student", inspection=STUDENT_INSPECTION)
    student_spec = {"source": "model", "model": {"model_id": student}}
    losses = [{"name": "ce"}, {"name": "kd"}, {"name": "fitnets"}]

    def post(pairs):
        return api.post(
            "/runs",
            json=run_config(
                teacher, dataset_id, student=student_spec, layer_pairs=pairs, losses=losses
            ),
        )

    bad_teacher = post([{"teacher": "layer9", "student": "blocks.1"}])
    assert bad_teacher.status_code == 422
    detail = bad_teacher.json()["detail"]
    assert detail.startswith("layer_pairs[0].teacher: layer 'layer9' not in teacher; nearest: ")
    assert "layer3" in detail
    assert bad_teacher.json()["errors"][0]["loc"] == ["body", "layer_pairs", 0, "teacher"]

    bad_student = post(
        [{"teacher": "layer2", "student": "blocks.1"}, {"teacher": "layer3", "student": "block.1"}]
    )
    assert bad_student.status_code == 422
    assert bad_student.json()["detail"].startswith(
        "layer_pairs[1].student: layer 'block.1' not in student"
    )
    assert "blocks.1" in bad_student.json()["detail"]

    unfit = post([{"teacher": "layer3", "student": "head"}])  # a map cannot come from a vector
    assert unfit.status_code == 422
    assert unfit.json()["detail"].startswith(
        "layer_pairs[0]: teacher layer 'layer3' [64,2,2] vs student layer 'head' [4]: "
    )
    assert row_count("Run") == 0

    good = post([{"teacher": "layer2", "student": "blocks.1"}])
    assert good.status_code == 201, good.text
    assert good.json()["config"]["layer_pairs"] == [
        {"teacher": "layer2", "student": "blocks.1", "tap": "output"}
    ]

    plan = api.post(
        "/runs/plan",
        json={"teacher_model_id": teacher, "dataset_id": dataset_id, "student": student_spec},
    )
    assert plan.status_code == 200, plan.text
    body = plan.json()
    assert body["teacher"] == TEACHER_INSPECTION and body["student"] == STUDENT_INSPECTION
    assert body["teacher_params"] == 5000 and body["student_params"] == 800
    assert body["suggested_pairs"] and {"teacher", "student"} <= body["suggested_pairs"][0].keys()


def _vit_inspection(blocks: int) -> dict[str, Any]:
    """A ViT-like classifier's layer table: blocks.i with attn (a fused qkv) and mlp."""
    tokens = [17, 32]
    rows = [{"path": "patch_embed", "type": "Linear", "output_shape": tokens}]
    for i in range(blocks):
        b = f"blocks.{i}"
        rows += [
            {"path": f"{b}.norm1", "type": "LayerNorm", "output_shape": tokens},
            {"path": f"{b}.attn.qkv", "type": "Linear", "output_shape": [17, 96]},
            {"path": f"{b}.attn.proj", "type": "Linear", "output_shape": tokens},
            {"path": f"{b}.attn", "type": "Attention", "output_shape": tokens},
            {"path": f"{b}.mlp.fc1", "type": "Linear", "output_shape": [17, 64]},
            {"path": f"{b}.mlp", "type": "Mlp", "output_shape": tokens},
            {"path": b, "type": "Block", "output_shape": tokens},
        ]
    rows.append({"path": "head", "type": "Linear", "output_shape": [4]})
    layers = [{"input_shape": None, "params": 10, "stage": None, **row} for row in rows]
    return {**TEACHER_INSPECTION, "layers": layers, "stages": []}


def test_attention_losses_need_pairs_that_hold_an_attention(api, studio_env) -> None:
    """attention_kl and minilm_relations read Q/K/V inside each pair they read: a pair without
    an attention (an MLP, here) is a 422 naming the side and the layers that would do, before
    anything is queued; another loss may still read that pair."""
    teacher = ready_model(api, inspection=_vit_inspection(4))
    student = ready_model(api, "student", inspection=_vit_inspection(2))
    dataset_id = ready_dataset(api)

    def post(pairs: list[dict[str, str]], losses: list[dict[str, Any]]) -> Any:
        spec = {"source": "model", "model": {"model_id": student}}
        config = run_config(teacher, dataset_id, student=spec, layer_pairs=pairs, losses=losses)
        return api.post("/runs", json=config)

    mlp = {"teacher": "blocks.3.mlp", "student": "blocks.1.mlp"}
    block = {"teacher": "blocks.1", "student": "blocks.0"}
    refused = post([block, mlp], [{"name": "ce"}, {"name": "attention_kl"}])
    assert refused.status_code == 422, refused.text
    errors = refused.json()["errors"]
    assert [e["loc"] for e in errors] == [
        ["body", "layer_pairs", 1, "teacher"],
        ["body", "layer_pairs", 1, "student"],
    ]
    assert errors[0]["msg"] == (
        "the teacher layer 'blocks.3.mlp' holds no attention with "
        "query/key/value projections; pair a transformer block or its attention module such as "
        "blocks.0.attn, blocks.1.attn, blocks.2.attn (attention_kl reads it)"
    ), errors[0]
    assert (
        "minilm_relations reads it"
        in post([mlp], [{"name": "ce"}, {"name": "minilm_relations"}]).json()["detail"]
    )
    assert row_count("Run") == 0

    # hidden_mse reads the MLP pair, minilm_relations only the blocks (its `pairs`)
    losses = [{"name": "hidden_mse"}, {"name": "minilm_relations", "pairs": [0]}]
    assert post([block, mlp], losses).status_code == 201
    attention_module = {"teacher": "blocks.2.attn", "student": "blocks.1.attn"}
    assert post([attention_module], [{"name": "attention_kl"}]).status_code == 201


def test_no_worker_or_no_broker_is_503(api, studio_env, monkeypatch) -> None:
    """No worker: 202 (nothing saved) until the inspection limit passes, then 503 naming the
    limit; no broker: 503 at once. Nothing is saved either way."""
    set_env(monkeypatch, DS_INSPECT_TIMEOUT_S="1")
    teacher, dataset_id = ready_model(api), ready_dataset(api)
    config = run_config(
        teacher,
        dataset_id,
        layer_pairs=[{"teacher": "layer2", "student": "layer2"}],
        losses=[{"name": "ce"}, {"name": "at"}],
    )
    first = api.post("/runs", json=config)
    assert first.status_code == 202, first.text
    assert first.json()["status"] == "pending" and first.headers["Retry-After"] == "2"
    r = _until_not_pending(lambda: api.post("/runs", json=config))
    assert r.status_code == 503
    assert (
        r.json()["detail"]
        == "no worker answered in 1s; is a worker running? (`distill-studio worker`)"
    )
    assert row_count("Run") == 0

    set_env(monkeypatch, DS_BROKER_URL=CLOSED_BROKER)
    down = api.post("/runs", json=run_config(teacher, dataset_id))
    assert down.status_code == 503 and "broker" in down.json()["detail"]
    plan = api.post("/runs/plan", json={"teacher_model_id": teacher, "dataset_id": dataset_id})
    assert plan.status_code == 503 and "broker" in plan.json()["detail"]
    assert row_count("Run") == 0  # saved before the publish, then taken back with its entry
    assert "run.create" not in [e["action"] for e in api.get("/audit").json()["items"]]


def _until_not_pending(send, timeout: float = 60):
    """Send again while the API answers 202; the first other answer."""
    deadline = time.time() + timeout
    while (r := send()).status_code == 202:
        assert time.time() < deadline, r.text
        time.sleep(0.2)
    return r


def _inspect_student_messages(studio_env) -> list[str]:
    import redis

    broker = redis.Redis.from_url(studio_env.env["DS_BROKER_URL"])
    return [
        m["headers"]["argsrepr"]
        for m in map(json.loads, broker.lrange("cpu", 0, -1))
        if m["headers"]["task"] == "worker.tasks.inspect_student"
    ]


def test_plan_and_pairs_answer_from_stored_inspections_or_202(api, studio_env) -> None:
    """A zoo student's layer table comes from the store the worker fills: until it is there,
    plan and run creation answer 202 (nothing saved) and queue the inspection once, however
    often asked; then 200/201 from the store; a student that cannot be built is a 422."""
    from core import inspections

    teacher, dataset_id = ready_model(api), ready_dataset(api)
    student = {"source": "zoo", "architecture": "resnet8", "kwargs": {"width": 0.25}}
    body = {"teacher_model_id": teacher, "dataset_id": dataset_id, "student": student}
    answers = [api.post("/runs/plan", json=body) for _ in range(5)]
    assert {a.status_code for a in answers} == {202}, answers[0].text
    pending = answers[0].json()
    assert pending["status"] == "pending" and pending["retry_after_s"] == 2
    assert "resnet8" in pending["detail"] and "send the same request again" in pending["detail"]
    assert {a.json()["job_id"] for a in answers} == {pending["job_id"]}
    config = run_config(
        teacher,
        dataset_id,
        student=student,
        losses=[{"name": "ce"}, {"name": "at"}],
        layer_pairs=[{"teacher": "layer2", "student": "blocks.1"}],
    )
    waiting = api.post("/runs", json=config)
    assert waiting.status_code == 202 and waiting.json()["job_id"] == pending["job_id"]
    assert row_count("Run") == 0
    assert _inspect_student_messages(studio_env) == ["['resnet8', {'width': 0.25}, [3, 8, 8], 4]"]

    # the worker stores what it built (here: planted, as test_worker_runs.py does it for real)
    assert (
        inspections.plant("resnet8", {"width": 0.25}, [3, 8, 8], 4, STUDENT_INSPECTION)
        == pending["job_id"]
    )
    plan = api.post("/runs/plan", json=body)
    assert plan.status_code == 200, plan.text
    assert plan.json()["student"] == STUDENT_INSPECTION
    assert plan.json()["suggested_pairs"][-1]["student"] == "blocks.1"
    created = api.post("/runs", json=config)
    assert created.status_code == 201, created.text
    assert len(_inspect_student_messages(studio_env)) == 1  # never queued again

    inspections.store_failed(
        inspections.build_args("resnet8", {"width": 3.0}, [3, 8, 8], 4),
        "width 3.0 makes 192 channels, more than the input allows",
    )
    bad = api.post("/runs/plan", json={**body, "student": {**student, "kwargs": {"width": 3.0}}})
    assert bad.status_code == 422
    assert bad.json()["detail"] == (
        "student: could not build 'resnet8' with {'width': 3.0} for inputs [3, 8, 8] and 4 "
        "classes: width 3.0 makes 192 channels, more than the input allows"
    )


def test_no_database_connection_is_held_while_the_broker_is_asked(
    api, studio_env, monkeypatch
) -> None:
    """A broker that accepts connections and never answers: the plan waits for it (up to the
    socket timeout, then 503), and meanwhile the request holds no database connection."""
    import socket
    import threading

    from core.db import get_engine

    teacher, dataset_id = ready_model(api), ready_dataset(api)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    set_env(monkeypatch, DS_BROKER_URL=f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
    api.get("/auth/me")  # the engine of the new settings, and the token's last use, first
    result: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: result.update(
            r=api.post(
                "/runs/plan",
                json={
                    "teacher_model_id": teacher,
                    "dataset_id": dataset_id,
                    "student": {"architecture": "resnet8", "kwargs": {"width": 0.5}},
                },
            )
        )
    )
    thread.start()
    deadline = time.time() + 60
    while not accepted:  # the request is now waiting for the broker
        assert time.time() < deadline and thread.is_alive(), result
        time.sleep(0.02)
    held = get_engine().pool.checkedout()
    thread.join(timeout=60)
    silent.close()
    for conn in accepted:
        conn.close()
    assert held == 0, f"{held} database connection(s) held while waiting for the broker"
    assert result["r"].status_code == 503 and "broker" in result["r"].json()["detail"]


def test_the_client_follows_202_until_built(api, studio_env) -> None:
    """`Client.plan` and `Client.create_run` ask again as the 202 says until the student is
    built (here planted while the client waits), showing each wait; and give up after `wait`."""
    from client import ApiError, Client
    from core import inspections

    teacher, dataset_id = ready_model(api), ready_dataset(api)
    http = TestClient(api.app, base_url="http://testserver")
    client = Client("http://testserver", api.headers["Authorization"].split()[1], http=http)
    seen: list[tuple[str, float]] = []

    def build(pending, waited: float) -> None:  # the worker finishes while the client waits
        seen.append((pending.job_id, waited))
        inspections.plant("resnet8", {"width": 0.5}, [3, 8, 8], 4, STUDENT_INSPECTION)

    student = {"source": "zoo", "architecture": "resnet8", "kwargs": {"width": 0.5}}
    plan = client.plan(teacher, dataset_id, student, on_pending=build)
    assert plan.student.params == 800 and len(seen) == 1
    config = run_config(
        teacher,
        dataset_id,
        student={**student, "kwargs": {"width": 0.75}},
        losses=[{"name": "ce"}, {"name": "at"}],
        layer_pairs=[{"teacher": "layer2", "student": "blocks.1"}],
    )
    with pytest.raises(ApiError) as gave_up:
        client.create_run(config, wait=0, on_pending=lambda p, w: seen.append((p.job_id, w)))
    assert gave_up.value.status == 503 and "still not built" in gave_up.value.detail
    assert row_count("Run") == 0
    inspections.plant("resnet8", {"width": 0.75}, [3, 8, 8], 4, STUDENT_INSPECTION)
    assert client.create_run(config).status == "queued"


def test_cancel(api, studio_env) -> None:
    model_id, dataset_id = ready_model(api), ready_dataset(api)
    queued = api.post("/runs", json=run_config(model_id, dataset_id)).json()
    r = api.post(f"/runs/{queued['id']}/cancel")
    assert r.status_code == 200
    assert (
        r.json()["status"] == "cancelled"
        and r.json()["cancel_requested"]
        and r.json()["finished_at"]
    )
    assert r.json() == api.get(f"/runs/{queued['id']}").json()  # the answer is what was stored
    again = api.post(f"/runs/{queued['id']}/cancel")
    assert (
        again.status_code == 409
        and again.json()["detail"] == f"run {queued['id']} already cancelled"
    )

    running = api.post("/runs", json=run_config(model_id, dataset_id)).json()
    set_row("Run", running["id"], status="running")
    r = api.post(f"/runs/{running['id']}/cancel")
    assert r.status_code == 202
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True

    done = api.post("/runs", json=run_config(model_id, dataset_id)).json()
    set_row("Run", done["id"], status="succeeded")
    r = api.post(f"/runs/{done['id']}/cancel")
    assert r.status_code == 409 and r.json()["detail"] == f"run {done['id']} already succeeded"
    assert api.post("/runs/98765/cancel").status_code == 404


@contextmanager
def _writes_sent() -> Iterator[tuple[list[str], list[object]]]:
    """The verbs of the statements sent meanwhile (`sql_sent`), and the write engine's commits."""
    from sqlalchemy import event

    from core.db import get_engine

    verbs: list[str] = []
    commits: list[object] = []
    commit = commits.append  # one bound method: the listener to remove is the one added
    event.listen(get_engine(), "commit", commit)
    try:
        with sql_sent() as sent:
            yield verbs, commits
        verbs += [statement.split()[0] for statement, _, _ in sent]
    finally:
        event.remove(get_engine(), "commit", commit)


def test_who_may_cancel_a_queued_run(api, studio_env) -> None:
    """A viewer of the team and a read-only token are refused (403), another team's member
    finds no such run (404), and the run stays queued with no audit entry; a member cancels it.
    (On PostgreSQL a member's cancel of a waiting run is one statement, `cancel_waiting`.)"""
    from backend.bootstrap import create_user
    from core.db import session_scope

    queued = api.post("/runs", json=run_config(ready_model(api), ready_dataset(api))).json()
    tokens = {}
    for role in ("viewer", "member"):
        with session_scope() as session:
            create_user(session, f"a-{role}", f"a-{role}-password", "default", role)
        signed = api.post(
            "/auth/token", data={"username": f"a-{role}", "password": f"a-{role}-password"}
        )
        tokens[role] = signed.json()["access_token"]
    read_only = api.post("/auth/tokens", json={"name": "reader", "read_only": True}).json()
    outsider = other_team_token(api)
    path = f"/runs/{queued['id']}/cancel"
    viewer = api.post(path, headers=auth(tokens["viewer"]))
    assert viewer.status_code == 403, viewer.text
    reader = api.post(path, headers=auth(read_only["token"]))
    assert reader.status_code == 403 and "read-only" in reader.json()["detail"]
    stranger = api.post(path, headers=auth(outsider))
    assert (
        stranger.status_code == 404 and stranger.json()["detail"] == f"run {queued['id']} not found"
    )
    assert api.get(f"/runs/{queued['id']}").json() == queued
    assert "run.cancel" not in [e["action"] for e in api.get("/audit").json()["items"]]
    member = api.post(path, headers=auth(tokens["member"]))
    assert member.status_code == 200 and member.json()["status"] == "cancelled"
    assert api.get(f"/runs/{queued['id']}").json() == member.json()
    entry = api.get("/audit", params={"limit": 1}).json()["items"][0]
    assert (entry["action"], entry["username"]) == ("run.cancel", "a-member")


def test_cancelling_a_queued_run_is_one_transaction(api, studio_env) -> None:
    """The run is not read back after its update, and a team without webhooks gets no second
    transaction looking for deliveries to record. On PostgreSQL the team check, the update, its
    audit entry and whether the team has a webhook are one statement after the principal's, on
    an autocommit connection (no BEGIN, no COMMIT)."""
    queued = api.post("/runs", json=run_config(ready_model(api), ready_dataset(api))).json()
    with sql_sent() as statements, _writes_sent() as (sent, commits):
        cancelled = api.post(f"/runs/{queued['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    # the principal, then (PostgreSQL) the rest in one statement
    if studio_env.env["DS_DATABASE_URL"].startswith("postgresql"):
        assert sent == ["SELECT", "WITH"], sent
        assert all(autocommit for _, _, autocommit in statements) and commits == []
    else:
        assert sent == ["SELECT", "SELECT", "UPDATE", "INSERT", "SELECT"], sent
        assert len(commits) == 1, commits
    assert api.get(f"/runs/{queued['id']}").json() == cancelled
    entry = api.get("/audit", params={"limit": 1}).json()["items"][0]
    assert (entry["action"], entry["resource_id"]) == ("run.cancel", str(queued["id"]))
    assert entry["detail"] == {"name": queued["name"], "was": "queued"}


def test_creating_a_run_reads_its_teacher_and_dataset_in_one_statement(api, studio_env) -> None:
    """A create's statements: the principal, the teacher and the dataset together, then the
    run's INSERT and its audit entry's: on PostgreSQL one statement on an autocommit connection
    (no BEGIN, no COMMIT), on SQLite one transaction; an unknown dataset is still a 404."""
    body = run_config(ready_model(api), ready_dataset(api))
    with sql_sent() as statements, _writes_sent() as (sent, commits):
        created = api.post("/runs", json=body)
    assert created.status_code == 201
    if studio_env.env["DS_DATABASE_URL"].startswith("postgresql"):
        assert sent == ["SELECT", "SELECT", "WITH"], sent
        assert all(autocommit for _, _, autocommit in statements) and commits == []
    else:
        assert sent == ["SELECT", "SELECT", "INSERT", "INSERT"], sent
        assert len(commits) == 1, commits
    run = created.json()  # the columns' defaults, as the database saved them
    assert (run["status"], run["progress"], run["step"], run["attempts"]) == ("queued", 0.0, 0, 0)
    assert api.get(f"/runs/{run['id']}").json() == run
    entry = api.get("/audit", params={"limit": 1}).json()["items"][0]
    assert (entry["action"], entry["resource_id"]) == ("run.create", str(run["id"]))
    unknown = {**body, "dataset": {**body["dataset"], "dataset_id": 98765}}
    missing = api.post("/runs", json=unknown)
    assert missing.status_code == 404 and missing.json()["detail"] == "dataset 98765 not found"


def test_metrics(api, studio_env) -> None:
    from core.db import session_scope
    from core.db.tables import Metric

    model_id, dataset_id = ready_model(api), ready_dataset(api)
    run_id = api.post("/runs", json=run_config(model_id, dataset_id)).json()["id"]
    with session_scope() as session:  # inserted out of order: the API sorts by step
        for step in (3, 1, 2, 4):
            session.add(
                Metric(run_id=run_id, name="loss", step=step, epoch=step // 3, value=1.0 / step)
            )
        session.add(Metric(run_id=run_id, name="val/top1", step=4, epoch=1, value=0.5))
        session.add(Metric(run_id=run_id, name="loss/kd", step=4, epoch=1, value=float("inf")))

    series = api.get(f"/runs/{run_id}/metrics").json()["series"]
    assert set(series) == {"loss", "val/top1", "loss/kd"}
    assert series["loss"] == {
        "steps": [1, 2, 3, 4],
        "values": [1.0, 0.5, 1 / 3, 0.25],
        "epochs": [0, 0, 1, 1],
        "total": 4,
        "downsampled": False,
    }
    assert series["loss/kd"]["values"] == [None]  # infinity (or NaN) is not JSON
    picked = api.get(
        f"/runs/{run_id}/metrics", params={"names": "loss,val/top1", "since_step": 2}
    ).json()
    assert picked["series"]["loss"]["steps"] == [3, 4] and set(picked["series"]) == {
        "loss",
        "val/top1",
    }
    assert api.get("/runs/4242/metrics").status_code == 404


def test_artifact_download(api) -> None:
    model_id, dataset_id = ready_model(api), ready_dataset(api)
    run_id = api.post("/runs", json=run_config(model_id, dataset_id)).json()["id"]
    payload = b"student weights " * 100_000  # 1.6 MB: more than one chunk
    art_id = add_artifact(run_id, payload, "stüdent weights.safetensors")

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
