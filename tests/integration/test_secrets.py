"""Secrets stay secret.

- Production settings refuse a default or short DS_SECRET_KEY and DS_ADMIN_PASSWORD, and the
  refusal (also when `distill-studio api` refuses to start) never prints the values it was given.
- No password, API token, webhook signing secret, token hash or DS_SECRET_KEY appears in any log
  while people sign in (also with a wrong password), create and revoke tokens, create webhooks
  and a webhook delivery is signed and sent: the API's own loggers (caplog, DEBUG), and the logs
  of a real uvicorn server and a real Celery worker process.
- Secrets are shown once, in the response that creates them; no GET returns a token, a webhook
  secret, a token or password hash, or a webhook's salt.

Figures in docs/reliability.md ("Secrets").
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, StudioEnv, WorkerProcess, free_port
from tests.integration.api_helpers import DATASET_INFO, TEACHER_INSPECTION, set_row
from tests.integration.servers import ApiServer

STRONG_KEY = "a-real-production-secret-key-0123456789-abcdef"
STRONG_PASSWORD = "a-real-admin-password-42"


# -- production settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DS_ADMIN_PASSWORD": STRONG_PASSWORD}, "DS_SECRET_KEY"),  # the default key
        (
            {
                "DS_SECRET_KEY": "short-key-31-characters-long-xx",
                "DS_ADMIN_PASSWORD": STRONG_PASSWORD,
            },
            "DS_SECRET_KEY",
        ),
        ({"DS_SECRET_KEY": STRONG_KEY}, "DS_ADMIN_PASSWORD"),  # empty: generated in dev only
        ({"DS_SECRET_KEY": STRONG_KEY, "DS_ADMIN_PASSWORD": "change-me"}, "DS_ADMIN_PASSWORD"),
        ({"DS_SECRET_KEY": STRONG_KEY, "DS_ADMIN_PASSWORD": "eleven-char"}, "DS_ADMIN_PASSWORD"),
    ],
    ids=[
        "default key",
        "short key",
        "no admin password",
        "default admin password",
        "short admin password",
    ],
)
def test_production_refuses_weak_secrets(
    env: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    from core.settings import Settings

    monkeypatch.setenv("DS_ENV", "production")
    for key in ("DS_SECRET_KEY", "DS_ADMIN_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match=named) as info:
        Settings(_env_file=None)
    for value in env.values():
        assert value not in str(info.value), "the refusal repeats a secret it was given"
    monkeypatch.setenv("DS_SECRET_KEY", STRONG_KEY)
    monkeypatch.setenv("DS_ADMIN_PASSWORD", STRONG_PASSWORD)
    assert Settings(_env_file=None).env == "production"


def test_api_process_refuses_to_start_in_production(tmp_path) -> None:
    """`distill-studio api` exits before listening, naming the setting, printing no secret."""
    port = free_port()
    env = {
        **os.environ,
        "DS_ENV": "production",
        "DS_DATA_DIR": str(tmp_path),
        "DS_SECRET_KEY": STRONG_KEY,
        "DS_ADMIN_PASSWORD": "weak-pw-11c",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "DS_ADMIN_PASSWORD must be set" in output
    assert STRONG_KEY not in output and "weak-pw-11c" not in output
    assert "Uvicorn running" not in output


# -- logs and responses ----------------------------------------------------------------------------


class Receiver(BaseHTTPRequestHandler):
    """Records webhook deliveries (headers and body)."""

    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Receiver.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.received = []
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def flow(client: httpx.Client, env: StudioEnv, hook_url: str) -> dict[str, Any]:
    """Sign in (wrongly, then rightly), create, use, list and revoke tokens, create a webhook,
    and cancel a run so that a delivery is signed and sent. Returns every secret it met and
    every GET body."""
    password = env.env["DS_ADMIN_PASSWORD"]
    wrong = "wrong-password-" + os.urandom(6).hex()
    bad = client.post("/auth/token", data={"username": "admin", "password": wrong})
    assert bad.status_code == 401 and wrong not in bad.text
    login = client.post("/auth/token", data={"username": "admin", "password": password})
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    created = client.post("/auth/tokens", json={"name": "ci"}, headers=auth)
    assert created.status_code == 201, created.text
    script_token = created.json()["token"]
    scoped = client.post(
        "/auth/tokens",
        json={"name": "ro", "read_only": True, "team_scoped": True},
        headers={"Authorization": f"Bearer {script_token}"},
    ).json()
    assert client.get("/auth/me", headers={"Authorization": f"Bearer {scoped['token']}"}).is_success
    revoked = client.delete(f"/auth/tokens/{scoped['id']}", headers=auth)
    assert revoked.status_code in (200, 204), revoked.text
    hook = client.post("/webhooks", json={"url": hook_url, "description": "ci"}, headers=auth)
    assert hook.status_code == 201, hook.text
    secret = hook.json()["secret"]
    user = client.post(
        "/users", json={"username": "bob", "password": "bob-password-123"}, headers=auth
    )
    secrets = {
        "admin password": password,
        "wrong password": wrong,
        "login token": token,
        "script token": script_token,
        "scoped token": scoped["token"],
        "webhook secret": secret,
        "secret key": env.env["DS_SECRET_KEY"],
        "user password": "bob-password-123",
    }
    assert user.status_code in (201, 409), user.text  # 409: bob exists (the second flow)

    model = client.post(
        "/models", files={"file": ("t.pt2", b"x")}, data={"name": "t"}, headers=auth
    ).json()
    dataset = client.post(
        "/datasets", files={"file": ("d.npz", b"x")}, data={"name": "d"}, headers=auth
    ).json()
    for path in (f"/models/{model['id']}", f"/datasets/{dataset['id']}"):  # the worker refuses
        deadline = time.time() + 60  # the bytes; then stand in for a good inspection
        while client.get(path, headers=auth).json()["status"] not in ("ready", "failed"):
            assert time.time() < deadline, path
            time.sleep(0.2)
    set_row("Model", model["id"], status="ready", inspection=TEACHER_INSPECTION)
    set_row("Dataset", dataset["id"], status="ready", info=DATASET_INFO)
    run = client.post(
        "/runs",
        headers=auth,
        json={
            "name": "cancelled at once",
            "teacher": {"model_id": model["id"]},
            "dataset": {"dataset_id": dataset["id"]},
            "student": {"source": "zoo", "architecture": "resnet8", "kwargs": {"width": 0.25}},
            "losses": [{"name": "ce"}],
            "training": {"epochs": 1, "batch_size": 8, "device": "cpu"},
        },
    )
    assert run.status_code == 201, run.text
    client.post(f"/runs/{run.json()['id']}/cancel", headers=auth)

    gets = [
        "/auth/me",
        "/auth/tokens",
        "/webhooks",
        f"/webhooks/{hook.json()['id']}",
        f"/webhooks/{hook.json()['id']}/deliveries",
        "/teams",
        "/teams/1",
        "/teams/1/members",
        "/audit",
        "/models",
        f"/runs/{run.json()['id']}",
        "/runs",
    ]
    bodies = {path: client.get(path, headers=auth) for path in gets}
    for path, response in bodies.items():
        assert response.status_code == 200, (path, response.text)
    return {
        "secrets": secrets,
        "gets": {p: r.text for p, r in bodies.items()},
        "hook_id": hook.json()["id"],
        "auth": auth,
    }


def stored_hashes() -> list[str]:
    """Token hashes, password hashes and webhook salts as the database holds them."""
    from sqlalchemy import select

    from core.db import session_scope
    from core.db.tables import ApiToken, User, Webhook

    with session_scope() as s:
        return [
            *s.scalars(select(ApiToken.token_hash)),
            *s.scalars(select(User.password_hash)),
            *s.scalars(select(Webhook.secret_salt)),
        ]


def assert_nothing_secret(text: str, secrets: dict[str, str], where: str) -> None:
    for what, value in secrets.items():
        assert value not in text, f"{what} appears in {where}"
        if what.endswith("token"):  # not even the secret part after the visible prefix
            assert value.split("_", 2)[2] not in text, f"{what} (secret part) appears in {where}"


def keys(value: Any) -> set[str]:
    """Every object key in a JSON document."""
    if isinstance(value, dict):
        return set(value).union(*(keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(keys(v) for v in value))
    return set()


def assert_gets_clean(result: dict[str, Any], hashes: list[str]) -> None:
    for path, body in result["gets"].items():
        assert_nothing_secret(body, result["secrets"], f"GET {path}")
        for digest in hashes:
            assert digest not in body, f"a stored hash or salt appears in GET {path}"
        assert "$argon2" not in body, f"a password hash in GET {path}"
        leaked = keys(json.loads(body)) & {
            "token",
            "secret",
            "token_hash",
            "password",
            "password_hash",
            "secret_salt",
            "salt",
        }
        assert not leaked, f"GET {path} has fields {leaked}"
    tokens = json.loads(result["gets"]["/auth/tokens"])
    assert tokens and all(set(t) >= {"prefix", "name"} for t in tokens)


@pytest.mark.slow
def test_no_secret_in_logs_or_get_responses(
    studio_env: StudioEnv,
    admin_token: str,
    receiver: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fastapi.testclient import TestClient

    from backend.app import create_app
    from core.db import reset_caches

    # the receiver listens on loopback, which webhooks may reach only when the studio says so
    studio_env.env["DS_WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.1/32"
    studio_env.apply(monkeypatch)
    worker = WorkerProcess(studio_env).start()  # signs and sends deliveries
    server: ApiServer | None = None
    try:
        # 1. the API in-process, every logger at DEBUG
        caplog.set_level(logging.DEBUG)
        with TestClient(create_app(), base_url="http://testserver/api/v1") as client:
            local = flow(client, studio_env, receiver)
        assert_gets_clean(local, stored_hashes())
        assert caplog.records, "the API logged something"  # the check looked at real logs
        assert_nothing_secret(caplog.text, local["secrets"], "the API's logs (caplog)")

        # 2. a real uvicorn server
        reset_caches()
        server = ApiServer(studio_env).start()
        with httpx.Client(base_url=f"{server.url}/api/v1", timeout=60) as client:
            wire = flow(client, studio_env, receiver)
            deadline = time.time() + 60
            while len(Receiver.received) < 2 and time.time() < deadline:
                time.sleep(0.2)
            deliveries = client.get(
                f"/webhooks/{wire['hook_id']}/deliveries", headers=wire["auth"]
            ).text
    finally:
        if server is not None:
            server.stop()
        worker.stop()
    hashes = stored_hashes()
    assert_gets_clean(wire, hashes)
    assert len(Receiver.received) >= 2, (Receiver.received, worker.output()[-3000:])
    for headers, body in Receiver.received:  # signed with the secret, which is never sent
        assert headers["X-Distill-Signature"].startswith("sha256=")
        both = json.dumps(headers) + body.decode()
        assert_nothing_secret(both, {**local["secrets"], **wire["secrets"]}, "a delivery")
    everything = {**{f"first {k}": v for k, v in local["secrets"].items()}, **wire["secrets"]}
    logs = {
        "the uvicorn log": server.output(),
        "the worker log": worker.output(),
        "GET deliveries": deliveries,
    }
    assert "POST /api/v1/auth/token" in logs["the uvicorn log"]
    assert "deliver_webhook" in logs["the worker log"] or "webhook" in logs["the worker log"]
    for where, text in logs.items():
        assert_nothing_secret(text, everything, where)
        for digest in hashes:
            assert digest not in text, f"a stored hash or salt appears in {where}"
    print(
        f"checked {len(everything)} secrets and {len(hashes)} stored hashes against "
        f"{len(caplog.records)} log records, {sum(len(t) for t in logs.values())} bytes of "
        f"server and worker logs and {len(local['gets']) + len(wire['gets'])} GET responses"
    )
