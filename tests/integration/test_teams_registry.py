"""Teams, roles and members; API tokens; the model registry (tags, edits, archive, delete,
registering a run's student). On SQLite and PostgreSQL, with the real broker; no worker runs:
tests stand in for it by writing to the database (api_helpers.set_row)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from .api_helpers import (
    CLOSED_BROKER,
    STUDENT_INSPECTION,
    auth,
    queue_length,
    ready_dataset,
    ready_model,
    row_count,
    run_config,
    set_env,
    set_row,
    stored_files,
    upload_dataset,
    upload_model,
)


def login(client: TestClient, username: str, password: str) -> dict[str, str]:
    r = client.post("/auth/token", data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return auth(r.json()["access_token"])


def new_user(
    api: TestClient, username: str, role: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    """Create a user in the team of the request (POST /users) and sign them in."""
    r = api.post(
        "/users",
        json={"username": username, "password": f"{username}-pass-123", "role": role},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    return r.json()["id"], login(api, username, f"{username}-pass-123")


def audit_actions(api: TestClient, **params: Any) -> list[str]:
    return [e["action"] for e in api.get("/audit", params={"limit": 200, **params}).json()["items"]]


# -- teams, roles and members -------------------------------------------------------------------


def test_roles_members_and_switching_teams(api: TestClient) -> None:
    me = api.get("/auth/me").json()
    team = me["team_id"]
    ada_id, ada = new_user(api, "ada", "admin")
    mem_id, mem = new_user(api, "mem", "member")
    vic_id, vic = new_user(api, "vic", "viewer")
    from core.db import session_scope
    from core.db.tables import User

    with session_scope() as session:
        assert session.get(User, ada_id).password_hash.startswith("$argon2id$")
    members = api.get(f"/teams/{team}/members").json()
    assert {(m["username"], m["role"]) for m in members} == {
        ("admin", "owner"),
        ("ada", "admin"),
        ("mem", "member"),
        ("vic", "viewer"),
    }
    assert api.get(f"/teams/{team}/members", headers=vic).status_code == 200  # any member reads

    # viewer: reads only
    assert api.get("/models", headers=vic).status_code == 200
    r = api.post("/models", headers=vic, files={"file": ("t.pt2", b"x")}, data={"name": "t"})
    assert (
        r.status_code == 403
        and "viewer" in r.json()["detail"]
        and "member role" in r.json()["detail"]
    )
    for method, path, body in [
        ("POST", f"/teams/{team}/members", {"username": "mem", "role": "viewer"}),
        ("PATCH", f"/teams/{team}/members/{mem_id}", {"role": "viewer"}),
        ("GET", "/audit", None),
        ("GET", "/webhooks", None),
        ("POST", "/users", {"username": "x1", "password": "long-enough-1"}),
    ]:
        assert api.request(method, path, headers=vic, json=body).status_code == 403, path

    # member: writes, but neither deletes nor manages
    model = api.post("/models", headers=mem, files={"file": ("t.pt2", b"x")}, data={"name": "t"})
    assert model.status_code == 201
    r = api.delete(f"/models/{model.json()['id']}", headers=mem)
    assert r.status_code == 403 and "needs the admin role" in r.json()["detail"]
    assert api.get("/audit", headers=mem).status_code == 403
    assert (
        api.post(
            "/users", headers=mem, json={"username": "x2", "password": "long-enough-1"}
        ).status_code
        == 403
    )

    # admin: manages members' roles and invites, but owners only grant owner and change owners;
    # creating users and adding them without their consent is for studio administrators
    r = api.post("/users", headers=ada, json={"username": "x3", "password": "long-enough-1"})
    assert r.status_code == 403 and "studio administrators" in r.json()["detail"]
    bob_id, _ = new_user(api, "bob", "member")
    assert (
        api.patch(f"/teams/{team}/members/{vic_id}", headers=ada, json={"role": "member"}).json()[
            "role"
        ]
        == "member"
    )
    r = api.patch(f"/teams/{team}/members/{bob_id}", headers=ada, json={"role": "owner"})
    assert (
        r.status_code == 403
        and r.json()["detail"] == f"only an owner of team {team} can grant the owner role"
    )
    r = api.patch(f"/teams/{team}/members/{me['id']}", headers=ada, json={"role": "member"})
    assert r.status_code == 403 and "change an owner's role" in r.json()["detail"]
    assert api.delete(f"/teams/{team}/members/{me['id']}", headers=ada).status_code == 403
    r = api.post(
        f"/teams/{team}/members", headers=ada, json={"username": "nobody", "role": "viewer"}
    )
    assert r.status_code == 403 and "invite them instead" in r.json()["detail"]
    r = api.post(
        f"/teams/{team}/invitations", headers=ada, json={"username": "bob", "role": "viewer"}
    )
    assert r.status_code == 409 and "already a member" in r.json()["detail"]
    r = api.post(
        f"/teams/{team}/invitations", headers=ada, json={"username": "nobody", "role": "viewer"}
    )
    assert r.status_code == 201 and r.json()["status"] == "pending"  # whether or not they exist
    r = api.post(f"/teams/{team}/members", json={"username": "nobody", "role": "viewer"})
    assert (
        r.status_code == 404 and "no user named 'nobody'" in r.json()["detail"]
    )  # the studio admin
    r = api.post(f"/teams/{team}/members", json={"username": "bob", "role": "viewer"})
    assert r.status_code == 409 and "already a member" in r.json()["detail"]
    r = api.post(
        f"/teams/{team}/invitations", headers=ada, json={"username": "bob", "role": "boss"}
    )
    assert r.status_code == 422 and r.json()["detail"].startswith("role:")
    assert (
        api.post("/users", json={"username": "bob", "password": "long-enough-1"}).status_code == 409
    )

    # the owner grants owner; a team always keeps one owner
    assert (
        api.patch(f"/teams/{team}/members/{ada_id}", json={"role": "owner"}).json()["role"]
        == "owner"
    )
    assert (
        api.patch(
            f"/teams/{team}/members/{me['id']}", headers=ada, json={"role": "admin"}
        ).status_code
        == 200
    )
    r = api.patch(f"/teams/{team}/members/{ada_id}", headers=ada, json={"role": "admin"})
    assert r.status_code == 409 and "last owner" in r.json()["detail"]
    assert api.delete(f"/teams/{team}/members/{ada_id}", headers=ada).status_code == 409
    assert (
        api.patch(
            f"/teams/{team}/members/{me['id']}", headers=ada, json={"role": "owner"}
        ).status_code
        == 200
    )

    # removing a member takes the team away from their tokens at once; anyone may leave
    assert api.delete(f"/teams/{team}/members/{mem_id}", headers=ada).status_code == 204
    r = api.get("/models", headers=mem)
    assert r.status_code == 403 and "belongs to no team" in r.json()["detail"]
    assert (
        api.delete(
            f"/teams/{team}/members/{bob_id}", headers=login(api, "bob", "bob-pass-123")
        ).status_code
        == 204
    )
    assert api.delete(f"/teams/{team}/members/{vic_id}", headers=ada).status_code == 204

    # several teams: create one (its owner), add someone, switch with X-Team-Id or a scoped token
    lab = api.post("/teams", json={"name": "lab"})
    assert lab.status_code == 201 and lab.json()["role"] == "owner"
    lab_id = lab.json()["id"]
    assert api.post("/teams", json={"name": "lab"}).status_code == 409
    assert (
        api.post(f"/teams/{lab_id}/members", json={"username": "ada", "role": "viewer"}).status_code
        == 201
    )
    assert [t["name"] for t in api.get("/teams", headers=ada).json()] == ["default", "lab"]
    in_lab = {**ada, "X-Team-Id": str(lab_id)}
    assert api.get("/auth/me", headers=in_lab).json()["role"] == "viewer"
    assert (
        api.post(
            "/models", headers=in_lab, files={"file": ("t.pt2", b"x")}, data={"name": "t"}
        ).status_code
        == 403
    )
    mine = api.post(
        "/models",
        headers={"X-Team-Id": str(lab_id)},
        files={"file": ("l.pt2", b"x")},
        data={"name": "lab-model"},
    ).json()
    assert [m["id"] for m in api.get("/models", headers=in_lab).json()["items"]] == [mine["id"]]
    assert mine["id"] not in [m["id"] for m in api.get("/models", headers=ada).json()["items"]]
    scoped = api.post(
        "/auth/tokens",
        headers={"X-Team-Id": str(lab_id)},
        json={"name": "lab-ci", "team_scoped": True},
    ).json()
    assert scoped["team_id"] == lab_id
    lab_token = auth(scoped["token"])
    assert api.get("/auth/me", headers=lab_token).json()["team_id"] == lab_id
    r = api.get("/models", headers={**lab_token, "X-Team-Id": str(team)})
    assert r.status_code == 403 and f"scoped to team {lab_id}" in r.json()["detail"]
    assert api.get(f"/teams/{team}/members", headers=lab_token).status_code == 404

    actions = audit_actions(api, action="member")
    assert actions.count("member.update") == 4 and actions.count("member.remove") == 3
    assert audit_actions(api, resource_type="user") == ["user.create"] * 4
    assert "team.create" in [
        e["action"] for e in api.get("/audit", headers={"X-Team-Id": str(lab_id)}).json()["items"]
    ]


def test_api_tokens(api: TestClient) -> None:
    from sqlalchemy import select

    from core.db import session_scope
    from core.db.tables import ApiToken

    created = api.post(
        "/auth/tokens",
        json={"name": "ci", "read_only": True, "expires_in_days": 2, "team_scoped": True},
    )
    assert created.status_code == 201
    body = created.json()
    token = body["token"]
    assert token.startswith(f"ds_{body['prefix']}_") and body["read_only"] and body["team_id"]
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(days=1, hours=23) < expires - datetime.now(UTC) <= timedelta(days=2)
    assert body["last_used_at"] is None

    # shown once: the list has no secret, the database only a keyed hash
    listed = {t["id"]: t for t in api.get("/auth/tokens").json()}[body["id"]]
    assert "token" not in listed and listed["prefix"] == body["prefix"]
    with session_scope() as session:
        row = session.get(ApiToken, body["id"])
        stored = [str(v) for v in session.execute(select(ApiToken.__table__)).all()]
    assert all(token not in text for text in stored)
    assert row.token_hash != hashlib.sha256(token.encode()).hexdigest()  # keyed, not a plain hash

    reader = auth(token)
    assert api.get("/models", headers=reader).status_code == 200
    used = {t["id"]: t for t in api.get("/auth/tokens").json()}[body["id"]]["last_used_at"]
    assert used and datetime.fromisoformat(used) > datetime.now(UTC) - timedelta(minutes=1)
    for method, path in [("POST", "/teams"), ("DELETE", f"/auth/tokens/{body['id']}")]:
        r = api.request(method, path, headers=reader, json={"name": "x"})
        assert r.status_code == 403 and "read-only" in r.json()["detail"], path
    r = api.post("/auth/tokens", headers=reader, json={"name": "escalate"})
    assert r.status_code == 403

    # revoked or expired: 401 on the very next request
    assert api.delete(f"/auth/tokens/{body['id']}").json()["revoked_at"]
    r = api.get("/models", headers=reader)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    other = api.post("/auth/tokens", json={"name": "short"}).json()
    assert api.get("/models", headers=auth(other["token"])).status_code == 200
    set_row("ApiToken", other["id"], expires_at=datetime.now(UTC) - timedelta(seconds=1))
    r = api.get("/models", headers=auth(other["token"]))
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    assert api.delete("/auth/tokens/999999").status_code == 404
    assert audit_actions(api, resource_type="token") == [
        "token.create",
        "token.revoke",
        "token.create",
    ]


# -- the registry -------------------------------------------------------------------------------


def test_models_and_datasets_tags_edits_archive_delete(api: TestClient, studio_env) -> None:
    teacher = ready_model(api, "teacher")
    spare = upload_model(api, "spare").json()
    dataset = ready_dataset(api)
    spare_data = upload_dataset(api, "spare-data").json()
    assert spare["card"]["source"] == "upload" and spare["tags"] == [] and not spare["archived"]

    r = api.patch(
        f"/models/{teacher}",
        json={"description": "ResNet-20", "tags": ["cifar", "teacher", "cifar"]},
    )
    assert r.status_code == 200 and r.json()["tags"] == ["cifar", "teacher"]
    assert r.json()["description"] == "ResNet-20"
    api.patch(f"/models/{spare['id']}", json={"tags": ["cifarx10"]})
    ids = lambda **p: [m["id"] for m in api.get("/models", params=p).json()["items"]]  # noqa: E731
    assert ids(tag="cifar") == [teacher]
    assert ids(tag=["cifar", "teacher"]) == [teacher] and ids(tag=["cifar", "nope"]) == []
    assert ids(tag="cifarx10") == [spare["id"]] and ids(tag="cifar_10") == []  # no LIKE wildcards
    assert api.get("/models", params={"tag": "bad tag"}).status_code == 422
    r = api.patch(f"/models/{teacher}", json={"tags": ['has"quote']})
    assert r.status_code == 422 and r.json()["detail"].startswith("tags.0:")
    assert api.patch(f"/models/{teacher}", json={"name": "renamed"}).status_code == 422

    # runs depend on the teacher and the dataset: deleting is refused, archiving works
    run = api.post("/runs", json=run_config(teacher, dataset)).json()
    r = api.delete(f"/models/{teacher}")
    assert r.status_code == 409
    assert r.json()["detail"] == (
        f"model {teacher} is used by run {run['id']}, so it cannot be deleted; archive it instead "
        f"(DELETE /api/v1/models/{teacher}?archive=true hides it from lists and new runs)"
    )
    assert api.delete(f"/datasets/{dataset}").status_code == 409
    archived = api.delete(f"/models/{teacher}", params={"archive": "true"})
    assert archived.status_code == 200 and archived.json()["archived"] is True
    assert teacher not in ids() and teacher in ids(include_archived="true")
    r = api.post("/runs", json=run_config(teacher, dataset))
    assert r.status_code == 409 and "archived" in r.json()["detail"]
    assert api.get(f"/models/{teacher}").status_code == 200  # still readable
    assert api.patch(f"/models/{teacher}", json={"archived": False}).json()["archived"] is False
    assert api.post("/runs", json=run_config(teacher, dataset)).status_code == 201

    # a model nobody uses is deleted with its file
    files = len(stored_files(studio_env))
    assert api.delete(f"/models/{spare['id']}").status_code == 204
    assert api.get(f"/models/{spare['id']}").status_code == 404
    assert len(stored_files(studio_env)) == files - 1

    # datasets: the same
    r = api.patch(f"/datasets/{dataset}", json={"tags": ["digits"], "description": "8x8 digits"})
    assert (
        r.status_code == 200
        and r.json()["tags"] == ["digits"]
        and r.json()["description"] == "8x8 digits"
    )
    assert [d["id"] for d in api.get("/datasets", params={"tag": "digits"}).json()["items"]] == [
        dataset
    ]
    assert api.delete(f"/datasets/{dataset}", params={"archive": True}).json()["archived"] is True
    assert [d["id"] for d in api.get("/datasets").json()["items"]] == [spare_data["id"]]
    assert api.post("/runs", json=run_config(teacher, dataset)).status_code == 409
    assert api.delete(f"/datasets/{spare_data['id']}").status_code == 204
    assert api.get(f"/datasets/{dataset}/download").status_code == 200

    # members edit, but archiving (like deleting) is for admins and owners
    _, mem = new_user(api, "mem", "member")
    assert (
        api.patch(f"/datasets/{dataset}", headers=mem, json={"description": "x"}).status_code == 200
    )
    r = api.patch(f"/datasets/{dataset}", headers=mem, json={"archived": False})
    assert r.status_code == 403 and "admin" in r.json()["detail"]

    assert audit_actions(api, resource_id=str(teacher), resource_type="model") == [
        "model.update",
        "model.archive",
        "model.update",
        "model.create",
    ]
    assert set(audit_actions(api, action="dataset")) == {
        "dataset.create",
        "dataset.update",
        "dataset.archive",
        "dataset.delete",
        "dataset.download",
    }


def _finish_run(run_id: int, payload: bytes) -> int:
    """Stand in for the worker: the run succeeded with a student and an evaluation."""
    from core.db import session_scope
    from core.db.tables import Artifact, Run
    from core.storage import get_store, new_key

    summary = {
        "teacher_top1": 0.9,
        "student_top1": 0.85,
        "agreement": 0.88,
        "student_params": 800,
        "student_flops": 9000,
        "student_size_bytes": 4321,
        "student_cpu_latency_ms": 0.5,
        "student_architecture": "resnet8",
        "student_kwargs": {"width": 0.25, "input_shape": [3, 8, 8], "num_classes": 4},
    }
    set_row(
        "Run",
        run_id,
        status="succeeded",
        summary=summary,
        progress=1.0,
        finished_at=datetime.now(UTC),
    )
    with session_scope() as session:
        team_id = session.get(Run, run_id).team_id
        stored = get_store().put_bytes(new_key(team_id, "runs", "student.safetensors"), payload)
        art = Artifact(
            team_id=team_id,
            run_id=run_id,
            kind="student_safetensors",
            filename="student.safetensors",
            storage_key=stored.key,
            size_bytes=stored.size,
            sha256=stored.sha256,
        )
        session.add(art)
        session.flush()
        return art.id


def test_register_run_student_and_reuse_it(api: TestClient, studio_env, monkeypatch) -> None:
    teacher, dataset = ready_model(api), ready_dataset(api)
    run = api.post("/runs", json=run_config(teacher, dataset, name="kd-r8")).json()
    r = api.post(f"/runs/{run['id']}/register")
    assert r.status_code == 409 and "queued; only a succeeded run" in r.json()["detail"]
    payload = b"student weights"
    _finish_run(run["id"], payload)

    queued = queue_length(studio_env)
    r = api.post(f"/runs/{run['id']}/register", json={"tags": ["student"]})
    assert r.status_code == 201, r.text
    model = r.json()
    assert model["name"] == "kd-r8-student" and model["version"] == 1
    assert model["format"] == "safetensors" and model["architecture"] == "resnet8"
    assert model["arch_kwargs"] == {"width": 0.25, "input_shape": [3, 8, 8], "num_classes": 4}
    assert model["status"] == "pending" and queue_length(studio_env) == queued + 1  # INSPECT_MODEL
    assert model["tags"] == ["student"] and model["source_run_id"] == run["id"]
    assert model["card"] == {
        "source": "run",
        "format": "safetensors",
        "input_shape": [3, 8, 8],
        "num_classes": 4,
        "classes": ["a", "b", "c", "d"],
        "accuracy": 0.85,
        "teacher_accuracy": 0.9,
        "agreement": 0.88,
        "size_bytes": 4321,
        "params": 800,
        "flops": 9000,
        "latency_ms": 0.5,
    }
    lineage = model["lineage"]
    assert lineage["source_run_id"] == run["id"] and lineage["teacher_model_id"] == teacher
    assert lineage["dataset_id"] == dataset and lineage["run_config"]["name"] == "kd-r8"
    assert model["sha256"] == hashlib.sha256(payload).hexdigest()
    assert api.get(f"/models/{model['id']}/download").content == payload  # its own copy
    again = api.post(f"/runs/{run['id']}/register", json={"name": "kd-r8-student"}).json()
    assert again["version"] == 2

    # once a worker inspected it, it teaches, or starts a student, in later runs
    set_row("Model", model["id"], status="ready", inspection=STUDENT_INSPECTION)
    as_teacher = api.post("/runs", json=run_config(model["id"], dataset))
    assert as_teacher.status_code == 201, as_teacher.text
    as_student = api.post(
        "/runs",
        json=run_config(
            teacher, dataset, student={"source": "model", "model": {"model_id": model["id"]}}
        ),
    )
    assert as_student.status_code == 201, as_student.text
    set_row(
        "Run", as_teacher.json()["id"], teacher_model_id=teacher
    )  # only the student run uses it now
    r = api.delete(f"/models/{model['id']}")
    assert r.status_code == 409 and f"used by run {as_student.json()['id']}" in r.json()["detail"]

    # broker down: nothing is registered, nothing stored, nothing audited
    counts = (row_count("Model"), row_count("AuditEntry"), len(stored_files(studio_env)))
    set_env(monkeypatch, DS_BROKER_URL=CLOSED_BROKER)
    assert api.post(f"/runs/{run['id']}/register").status_code == 503
    assert (row_count("Model"), row_count("AuditEntry"), len(stored_files(studio_env))) == counts
    assert audit_actions(api, action="model.register") == ["model.register", "model.register"]


def test_migration_fills_student_model_ids(sqlite_env) -> None:
    """0002 records which registered model each existing run's student starts from."""
    from sqlalchemy import text

    from backend.migrate import downgrade, upgrade
    from core.db import get_engine

    downgrade("0001")
    config = '{"student": {"source": "model", "model": {"model_id": 1}}}'
    with get_engine().begin() as conn:
        conn.execute(text("INSERT INTO teams (id, name, created_at) VALUES (1, 't', '2026-01-01')"))
        conn.execute(
            text(
                "INSERT INTO models (id, team_id, name, version, description, format, arch_kwargs, "
                "storage_key, size_bytes, sha256, status, card, created_at) VALUES "
                "(1, 1, 'm', 1, '', 'pt2', '{}', 'k', 0, '', 'ready', '{}', '2026-01-01')"
            )
        )
        for run_id, cfg in [(1, config), (2, '{"student": {"source": "zoo"}}')]:
            conn.execute(
                text(
                    "INSERT INTO runs (id, team_id, name, config, status, queue, progress, epoch, step, "
                    "total_steps, summary, attempts, cancel_requested, created_at) VALUES "
                    f"({run_id}, 1, 'r', :cfg, 'queued', 'cpu', 0, 0, 0, 0, '{{}}', 0, 0, '2026-01-01')"
                ),
                {"cfg": cfg},
            )
    upgrade("head")
    with get_engine().connect() as conn:
        runs = conn.execute(text("SELECT id, student_model_id FROM runs ORDER BY id")).all()
        model = conn.execute(text("SELECT archived, tags, lineage FROM models")).one()
    assert [tuple(r) for r in runs] == [(1, 1), (2, None)]
    assert tuple(model) == (0, "[]", "{}")  # existing rows get the defaults
