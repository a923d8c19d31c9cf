"""The audit log, and webhooks delivered by a real Celery worker to a real local HTTP receiver
(signed, retried with backoff, every attempt recorded). On SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .api_helpers import (
    CLOSED_BROKER,
    auth,
    ready_dataset,
    ready_model,
    row_count,
    run_config,
    set_env,
    set_row,
    upload_model,
)

ROOT = Path(__file__).resolve().parents[2]


def member_headers(api: TestClient, username: str, role: str) -> dict[str, str]:
    password = f"{username}-pass-123"
    assert (
        api.post(
            "/users", json={"username": username, "password": password, "role": role}
        ).status_code
        == 201
    )
    r = api.post("/auth/token", data={"username": username, "password": password})
    return auth(r.json()["access_token"])


# -- audit log ----------------------------------------------------------------------------------


@pytest.mark.parametrize("autocommit", [False, True])
def test_a_row_and_its_entry_are_saved_together_or_not_at_all(
    api: TestClient, autocommit: bool
) -> None:
    """`add_audited` (a run's create): an entry that cannot be saved (here: for a team that does
    not exist) takes its row with it, on either kind of session."""
    from sqlalchemy.exc import IntegrityError

    from backend.audit.service import add_audited
    from backend.deps import Principal, UserRow
    from core.clock import utcnow
    from core.db import get_engine, get_read_engine, get_sessionmaker
    from core.db.tables import Run

    me = api.get("/auth/me").json()
    team_id = me["teams"][0]["id"]
    user = UserRow(me["id"], me["username"], True)
    engine = get_read_engine() if autocommit else get_engine()
    runs, entries = row_count("Run"), row_count("AuditEntry")

    def new_run() -> Run:
        config = {"name": "audited"}
        return Run(team_id=team_id, name="audited", config=config, created_at=utcnow())

    with get_sessionmaker()(bind=engine) as session:
        nowhere = Principal(user, team_id=987654, role="owner", read_only=False, token=None)  # type: ignore[arg-type]
        with pytest.raises(IntegrityError):
            add_audited(session, nowhere, new_run(), "run.create", "run", {})
    assert (row_count("Run"), row_count("AuditEntry")) == (runs, entries)

    with get_sessionmaker()(bind=engine) as session:
        here = Principal(user, team_id=team_id, role="owner", read_only=False, token=None)  # type: ignore[arg-type]
        run = new_run()
        entry_id = add_audited(session, here, run, "run.create", "run", {"k": 1})
    assert (run.status, run.progress, run.summary) == ("queued", 0.0, {})  # the defaults
    assert (row_count("Run"), row_count("AuditEntry")) == (runs + 1, entries + 1)
    logged = [e for e in api.get("/audit").json()["items"] if e["id"] == entry_id]
    assert [(e["resource_id"], e["detail"]) for e in logged] == [(str(run.id), {"k": 1})]


def test_audit_log(api: TestClient, monkeypatch) -> None:
    from .api_helpers import add_artifact

    me = api.get("/auth/me").json()
    teacher, dataset = ready_model(api), ready_dataset(api)
    api.patch(f"/models/{teacher}", json={"tags": ["a"], "description": "d"})
    api.get(f"/models/{teacher}/download")
    run = api.post("/runs", json=run_config(teacher, dataset)).json()
    art = add_artifact(run["id"], b"weights")
    api.get(f"/artifacts/{art}/download")
    api.post(f"/runs/{run['id']}/cancel")

    page = api.get("/audit").json()
    entries = page["items"]
    assert [e["action"] for e in entries] == [
        "run.cancel",
        "artifact.download",
        "run.create",
        "model.download",
        "model.update",
        "dataset.create",
        "model.create",
    ]
    assert page["next_cursor"] is None
    newest = entries[0]
    assert newest["username"] == "admin" and newest["user_id"] == me["id"]
    assert newest["resource_type"] == "run" and newest["resource_id"] == str(run["id"])
    assert newest["detail"] == {"name": "api-test", "was": "queued"}
    assert datetime.fromisoformat(newest["created_at"]) <= datetime.now(UTC)
    update = next(e for e in entries if e["action"] == "model.update")
    assert update["detail"]["changes"] == {"description": ["", "d"], "tags": [[], ["a"]]}
    assert (
        next(e for e in entries if e["action"] == "artifact.download")["detail"]["run_id"]
        == run["id"]
    )

    # filters
    actions = lambda **p: [e["action"] for e in api.get("/audit", params=p).json()["items"]]  # noqa: E731
    assert actions(action="model") == ["model.download", "model.update", "model.create"]
    assert actions(action="run.cancel") == ["run.cancel"]
    assert actions(resource_type="dataset") == ["dataset.create"]
    assert actions(resource_type="model", resource_id=str(teacher), action="model.update") == [
        "model.update"
    ]
    assert actions(user_id=me["id"] + 1000) == []

    # stable cursors: entries written between pages neither repeat nor shift the next page
    first = api.get("/audit", params={"limit": 3}).json()
    assert [e["action"] for e in first["items"]] == [
        "run.cancel",
        "artifact.download",
        "run.create",
    ]
    api.get(f"/models/{teacher}/download")
    second = api.get("/audit", params={"limit": 3, "cursor": first["next_cursor"]}).json()
    assert [e["action"] for e in second["items"]] == [
        "model.download",
        "model.update",
        "dataset.create",
    ]
    third = api.get("/audit", params={"limit": 3, "cursor": second["next_cursor"]}).json()
    assert [e["action"] for e in third["items"]] == ["model.create"] and third[
        "next_cursor"
    ] is None
    assert api.get("/audit", params={"cursor": "nonsense"}).status_code == 422

    # admins and owners only
    for role in ("member", "viewer"):
        r = api.get("/audit", headers=member_headers(api, f"a-{role}", role))
        assert (
            r.status_code == 403
            and "manage members, webhooks and the audit log" in r.json()["detail"]
        )
    assert api.get("/audit", headers=member_headers(api, "a-admin", "admin")).status_code == 200

    # the entry and the change share a transaction: a change undone leaves no entry behind
    entries_before = row_count("AuditEntry")
    set_env(monkeypatch, DS_BROKER_URL=CLOSED_BROKER)
    assert upload_model(api, "never").status_code == 503
    assert api.post("/runs", json=run_config(teacher, dataset)).status_code == 503
    assert row_count("AuditEntry") == entries_before


# -- webhooks: the rules ------------------------------------------------------------------------


def test_webhook_management(api: TestClient) -> None:
    created = api.post(
        "/webhooks", json={"url": "https://ci.example.com/hook", "description": "ci"}
    )
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["secret"].startswith("whsec_") and hook["secret"].startswith(hook["secret_prefix"])
    assert hook["events"] == ["run.succeeded", "run.failed", "run.cancelled"] and hook["active"]
    listed = api.get("/webhooks").json()
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
    assert "secret" not in api.get(f"/webhooks/{hook['id']}").json()

    from core.db import session_scope
    from core.db.tables import Webhook

    with session_scope() as session:  # only a salt is stored; the secret is derived from it
        row = session.get(Webhook, hook["id"])
        assert hook["secret"] not in json.dumps(
            [str(getattr(row, c.name)) for c in Webhook.__table__.columns]
        )

    for body, field in [
        ({"url": "ftp://x.example.com/h"}, "url"),
        ({"url": "http:///nohost"}, "url"),
        ({"url": "https://user:pw@x.example.com/h"}, "url"),
        ({"url": "https://x.example.com/h", "events": []}, "events"),
        ({"url": "https://x.example.com/h", "events": ["run.started"]}, "events"),
    ]:
        r = api.post("/webhooks", json=body)
        assert r.status_code == 422 and r.json()["detail"].startswith(field), body

    paused = api.patch(f"/webhooks/{hook['id']}", json={"active": False, "events": ["run.failed"]})
    assert paused.status_code == 200 and paused.json()["active"] is False
    assert paused.json()["events"] == ["run.failed"]

    member = member_headers(api, "w-member", "member")
    for method, path in [
        ("GET", "/webhooks"),
        ("POST", "/webhooks"),
        ("GET", f"/webhooks/{hook['id']}"),
        ("DELETE", f"/webhooks/{hook['id']}"),
        ("GET", f"/webhooks/{hook['id']}/deliveries"),
    ]:
        r = api.request(method, path, headers=member, json={"url": "https://x.example.com/h"})
        assert r.status_code == 403, path

    # a paused webhook is not told; a deleted one is gone with its deliveries
    from core.webhooks.events import record_run_event

    teacher, dataset = ready_model(api), ready_dataset(api)
    run = api.post("/runs", json=run_config(teacher, dataset)).json()
    set_row("Run", run["id"], status="failed", error="boom")
    with session_scope() as session:
        assert record_run_event(session, run["id"]) == []
    assert api.delete(f"/webhooks/{hook['id']}").status_code == 204
    assert api.get(f"/webhooks/{hook['id']}").status_code == 404
    assert api.get(f"/webhooks/{hook['id']}/deliveries").status_code == 404
    assert [
        e["action"] for e in api.get("/audit", params={"action": "webhook"}).json()["items"]
    ] == ["webhook.delete", "webhook.update", "webhook.create"]


# -- webhooks: delivered by a real worker to a real receiver ------------------------------------


class Receiver:
    """A local HTTP endpoint that fails each delivery's first attempt with 500, then answers 200."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    delivery = self.headers["X-Distill-Delivery"]
                    first = all(r["delivery"] != delivery for r in receiver.requests)
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "body": body,
                            "delivery": delivery,
                            "headers": dict(self.headers),
                        }
                    )
                self.send_response(500 if first else 200)
                self.end_headers()
                self.wfile.write(b"not yet" if first else b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class HookWorker:
    """A real Celery worker consuming the cpu queue with the webhook task (worker/webhooks.py)."""

    def __init__(self, studio_env, **env: str) -> None:
        self.log = studio_env.data_dir / "hook-worker.log"
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.webhooks",
            "worker",
            "-Q",
            "cpu",
            "-c",
            "1",
            "-P",
            "solo",
            "-n",
            "hooks@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "INFO",
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **studio_env.env, **env, "PYTHONUNBUFFERED": "1"},
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 60
        while "ready." not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


def _wait_deliveries(api: TestClient, hook_id: int, done: int, timeout: float = 60) -> list[dict]:
    deadline = time.time() + timeout
    items: list[dict] = []
    while time.time() < deadline:
        items = api.get(f"/webhooks/{hook_id}/deliveries").json()["items"]
        if sum(d["status"] in ("succeeded", "failed") for d in items) >= done:
            return items
        time.sleep(0.2)
    raise AssertionError(f"deliveries of webhook {hook_id} did not finish: {items}")


LOCAL_RECEIVER = "127.0.0.1/32"  # the receivers below listen on loopback, refused by default


def test_webhooks_delivered_signed_and_retried(api: TestClient, studio_env, monkeypatch) -> None:
    from worker.webhooks import enqueue_run_event

    set_env(monkeypatch, DS_WEBHOOK_ALLOWED_NETWORKS=LOCAL_RECEIVER)

    teacher, dataset = ready_model(api), ready_dataset(api)
    finished = api.post("/runs", json=run_config(teacher, dataset, name="done")).json()
    queued = api.post("/runs", json=run_config(teacher, dataset, name="to-cancel")).json()
    with Receiver() as receiver:
        hook = api.post("/webhooks", json={"url": receiver.url}).json()
        broken = api.post(
            "/webhooks", json={"url": "http://127.0.0.1:9/closed", "events": ["run.succeeded"]}
        ).json()
        worker = HookWorker(studio_env, DS_WEBHOOK_BACKOFF_S="0.2", DS_WEBHOOK_MAX_ATTEMPTS="3")
        try:
            # what the distill task does when a run ends
            set_row(
                "Run",
                finished["id"],
                status="succeeded",
                summary={"student_top1": 0.8},
                progress=1.0,
                finished_at=datetime.now(UTC),
            )
            assert len(enqueue_run_event(finished["id"])) == 2
            assert enqueue_run_event(finished["id"]) == []  # reported twice, delivered once
            # a queued run cancelled through the API never reaches a worker: the API tells
            assert api.post(f"/runs/{queued['id']}/cancel").json()["status"] == "cancelled"
            items = _wait_deliveries(api, hook["id"], 2)
            failed = _wait_deliveries(api, broken["id"], 1)
        finally:
            worker.stop()

    # each delivery failed once (500), was retried after the backoff and succeeded
    by_event = {d["event"]: d for d in items}
    assert set(by_event) == {"run.succeeded", "run.cancelled"}
    for event, delivery in by_event.items():
        assert delivery["status"] == "succeeded" and delivery["attempts"] == 2, delivery
        assert delivery["last_status_code"] == 200 and delivery["last_error"] is None
        assert delivery["delivered_at"] and delivery["next_attempt_at"] is None
        assert delivery["run_id"] == (finished if event == "run.succeeded" else queued)["id"]
    [dead] = failed
    assert dead["status"] == "failed" and dead["attempts"] == 3 and dead["last_status_code"] is None
    assert "ConnectError" in dead["last_error"] and dead["event"] == "run.succeeded"

    # what the receiver got: the same signed body on every attempt
    assert len(receiver.requests) == 4 and all(r["path"] == "/hook" for r in receiver.requests)
    secret = hook["secret"].encode()
    for request in receiver.requests:
        expected = "sha256=" + hmac.new(secret, request["body"], hashlib.sha256).hexdigest()
        assert request["headers"]["X-Distill-Signature"] == expected
        payload = json.loads(request["body"])
        assert request["headers"]["X-Distill-Event"] == payload["event"]
        assert str(payload["delivery_id"]) == request["delivery"]
        assert payload["webhook_id"] == hook["id"] and payload["run"]["status"] in (
            "succeeded",
            "cancelled",
        )
    attempts = {}
    for request in receiver.requests:
        attempts.setdefault(request["delivery"], []).append(request["body"])
    assert all(len(bodies) == 2 and bodies[0] == bodies[1] for bodies in attempts.values())
    done = next(json.loads(r["body"]) for r in receiver.requests if b"run.succeeded" in r["body"])
    assert done["run"]["id"] == finished["id"] and done["run"]["summary"] == {"student_top1": 0.8}
    assert done["run"]["url"] == f"/api/v1/runs/{finished['id']}"

    # deliveries page with stable cursors and filter by status and event
    first = api.get(f"/webhooks/{hook['id']}/deliveries", params={"limit": 1}).json()
    second = api.get(
        f"/webhooks/{hook['id']}/deliveries", params={"limit": 1, "cursor": first["next_cursor"]}
    ).json()
    paged = [d["id"] for d in first["items"] + second["items"]]
    assert paged == sorted((int(k) for k in attempts), reverse=True)
    assert second["next_cursor"] is None
    params = {"event": "run.cancelled", "status": "succeeded"}
    cancelled = api.get(f"/webhooks/{hook['id']}/deliveries", params=params).json()["items"]
    assert [d["run_id"] for d in cancelled] == [queued["id"]]
    assert (
        api.get(f"/webhooks/{broken['id']}/deliveries", params={"status": "succeeded"}).json()[
            "items"
        ]
        == []
    )


def test_deliveries_the_broker_missed_are_sent_by_the_next_sweep(
    api: TestClient, studio_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run ends while the broker is away: its delivery is kept as not queued, and a worker's
    recovery sweep (`resend_unqueued_deliveries`) sends it once the broker is back, exactly once."""
    from core.settings import get_settings
    from core.webhooks.events import NOT_QUEUED
    from worker.webhooks import enqueue_run_event, resend_unqueued_deliveries

    set_env(monkeypatch, DS_WEBHOOK_ALLOWED_NETWORKS=LOCAL_RECEIVER)
    teacher, dataset = ready_model(api), ready_dataset(api)
    run = api.post("/runs", json=run_config(teacher, dataset, name="done")).json()
    with Receiver() as receiver:
        hook = api.post("/webhooks", json={"url": receiver.url}).json()
        set_row("Run", run["id"], status="succeeded", progress=1.0, finished_at=datetime.now(UTC))
        monkeypatch.setenv("DS_BROKER_URL", CLOSED_BROKER)
        get_settings.cache_clear()
        [delivery_id] = enqueue_run_event(run["id"])
        monkeypatch.setenv("DS_BROKER_URL", studio_env.env["DS_BROKER_URL"])
        get_settings.cache_clear()
        [kept] = api.get(f"/webhooks/{hook['id']}/deliveries").json()["items"]
        assert kept["status"] == "pending" and kept["last_error"] == NOT_QUEUED, kept

        worker = HookWorker(studio_env, DS_WEBHOOK_BACKOFF_S="0.2")
        try:
            assert resend_unqueued_deliveries() == [delivery_id]
            assert resend_unqueued_deliveries() == []  # taken once, by one sweep
            [sent] = _wait_deliveries(api, hook["id"], 1)
        finally:
            worker.stop()
    assert sent["status"] == "succeeded" and sent["attempts"] == 2, (
        sent
    )  # the receiver's 500, then 200
    assert {r["delivery"] for r in receiver.requests} == {str(delivery_id)}
