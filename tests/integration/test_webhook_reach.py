"""Webhooks reach only where they should.

Before the fix a team admin could register webhooks to the API itself, the broker port,
`[::1]:5432`, `0.0.0.0`, `2130706433` (127.0.0.1 as one decimal number) or `localhost`; the
worker POSTed to them and up to 500 characters of each reply were readable in the deliveries.
Now the host is resolved and every non-public address is refused at registration (422 naming
the address and DS_WEBHOOK_ALLOWED_NETWORKS) and again before each delivery, which connects to
the address that was checked (a name that resolves elsewhere by then gains nothing); redirects
are not followed and a delivery keeps at most a short, printable excerpt of the reply.

The receivers are real HTTP servers on 127.0.0.1; the deliveries are made by the worker's own
function (`worker.webhooks.attempt_delivery`, what the Celery task runs) in the test process, so
the system resolver can be replaced by a fake DNS (outside the project) for the rebinding cases.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .api_helpers import ready_dataset, ready_model, run_config, set_env, set_row

SETTING = "DS_WEBHOOK_ALLOWED_NETWORKS"


class Server:
    """A local HTTP server answering every POST with `answer(server) -> (status, headers, body)`
    and recording what it got."""

    def __init__(self, answer: Callable[[Server], tuple[int, dict[str, str], bytes]]) -> None:
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                status, headers, reply = answer(server)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def ok(_server: Server) -> tuple[int, dict[str, str], bytes]:
    return 200, {}, b"ok"


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Names under `.test` answered from `answers[name]` (a function of the lookup count), every
    lookup counted in `lookups`; other names go to the real resolver."""
    real = socket.getaddrinfo
    state: dict[str, Any] = {"answers": {}, "lookups": {}}

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name in state["answers"]:
            n = state["lookups"].get(name, 0) + 1
            state["lookups"][name] = n
            return real(state["answers"][name](n), port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return state


def ended_run_deliveries(api: TestClient, hook_id: int) -> list[int]:
    """A run that just succeeded, and the deliveries recorded for it (as a worker does)."""
    from core.db import session_scope
    from core.webhooks.events import record_run_event

    teacher, dataset = ready_model(api), ready_dataset(api)
    run = api.post("/runs", json=run_config(teacher, dataset, name="done")).json()
    set_row("Run", run["id"], status="succeeded", progress=1.0, finished_at=datetime.now(UTC))
    with session_scope() as session:
        ids = record_run_event(session, run["id"])
    assert ids, f"no delivery recorded for webhook {hook_id}"
    return ids


def delivery(api: TestClient, hook_id: int) -> dict[str, Any]:
    [item] = api.get(f"/webhooks/{hook_id}/deliveries").json()["items"]
    return item


# -- registration -------------------------------------------------------------------------------


def refused_urls(studio_env) -> list[tuple[str, str]]:
    """(URL, the address its answer must name): the attacks of the issue and their cousins."""
    broker_port = studio_env.env["DS_BROKER_URL"].rsplit(":", 1)[1].split("/")[0]
    return [
        ("http://127.0.0.1:8000/api/v1/health", "127.0.0.1"),  # the API itself
        (f"http://127.0.0.1:{broker_port}/", "127.0.0.1"),  # the broker
        ("http://[::1]:5432/", "::1"),  # PostgreSQL over IPv6 loopback
        ("http://0.0.0.0:8000/", "0.0.0.0"),
        ("http://2130706433/", "127.0.0.1"),  # 127.0.0.1 as one decimal number
        ("http://0177.0.0.1/", "127.0.0.1"),  # octal
        ("http://0x7f.1/", "127.0.0.1"),  # hex, short form
        ("http://localhost:8000/", "127.0.0.1"),
        ("http://[::ffff:127.0.0.1]:6379/", "127.0.0.1"),  # IPv4-mapped IPv6
        ("http://[::]/", "::"),
        ("http://10.0.0.1/", "10.0.0.1"),
        ("http://192.168.1.1/", "192.168.1.1"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),  # cloud metadata
        ("http://[fe80::1]/", "fe80::1"),
        ("http://224.0.0.1/", "224.0.0.1"),
        ("http://240.0.0.1/", "240.0.0.1"),
        ("http://100.64.0.1/", "100.64.0.1"),  # shared address space (carrier NAT)
        ("http://[fd00::1]/", "fd00::1"),
        ("https://[2002:7f00:1::]/", "127.0.0.1"),  # 6to4 of loopback
    ]


def test_registration_refuses_addresses_that_are_not_public(api: TestClient, studio_env) -> None:
    for url, address in refused_urls(studio_env):
        r = api.post("/webhooks", json={"url": url})
        assert r.status_code == 422, (url, r.status_code, r.text)
        detail = r.json()["detail"]
        assert detail.startswith("url: ") and address in detail and SETTING in detail, (url, detail)
    assert api.get("/webhooks").json() == []

    # changing the URL of a webhook is checked the same way
    hook = api.post("/webhooks", json={"url": "https://ci.example.com/hook"})
    assert hook.status_code == 201, hook.text
    r = api.patch(f"/webhooks/{hook.json()['id']}", json={"url": "http://2130706433:6379/"})
    assert r.status_code == 422 and "127.0.0.1" in r.json()["detail"]
    assert api.get(f"/webhooks/{hook.json()['id']}").json()["url"] == "https://ci.example.com/hook"


def test_the_allow_list_admits_only_the_networks_it_names(
    api: TestClient, studio_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_env(monkeypatch, **{SETTING: "127.0.0.1/32, 10.1.0.0/16"})
    for url in (
        "http://127.0.0.1:8123/hook",
        "http://localhost:8123/hook",
        "http://[::ffff:127.0.0.1]:8123/",
        "http://10.1.2.3/hook",
    ):
        r = api.post("/webhooks", json={"url": url})
        assert r.status_code == 201, (url, r.text)
    for url in ("http://127.0.0.2/", "http://[::1]/", "http://10.2.0.1/", "http://0.0.0.0/"):
        assert api.post("/webhooks", json={"url": url}).status_code == 422, url


def test_a_name_resolving_to_a_private_address_is_refused(
    api: TestClient, studio_env, fake_dns
) -> None:
    fake_dns["answers"]["intranet.test"] = lambda n: "10.20.30.40"
    r = api.post("/webhooks", json={"url": "https://intranet.test/hook"})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "10.20.30.40 ('intranet.test' resolves to it) is a private address" in detail, detail


# -- delivery -----------------------------------------------------------------------------------


def test_a_stored_webhook_to_loopback_is_refused_at_delivery(api: TestClient, studio_env) -> None:
    """A webhook written before the rules (or straight into the database) is not sent."""
    from core.db import session_scope
    from core.db.tables import Webhook
    from worker.webhooks import attempt_delivery

    with Server(ok) as receiver:
        hook = api.post("/webhooks", json={"url": "https://ci.example.com/hook"}).json()
        with session_scope() as session:
            session.get(Webhook, hook["id"]).url = f"http://localhost:{receiver.port}/hook"
        [delivery_id] = ended_run_deliveries(api, hook["id"])
        assert attempt_delivery(delivery_id) is None  # done: not tried again
    assert receiver.requests == []
    item = delivery(api, hook["id"])
    assert item["status"] == "failed" and item["attempts"] == 1 and item["last_status_code"] is None
    assert item["last_error"].startswith("not sent: 127.0.0.1") and SETTING in item["last_error"]


def test_dns_rebinding_to_loopback_is_refused_at_delivery(
    api: TestClient, studio_env, fake_dns
) -> None:
    """The name resolves to a public address when registered and to loopback afterwards."""
    from worker.webhooks import attempt_delivery

    phase = {"registering": True}
    fake_dns["answers"]["rebind.test"] = lambda n: (
        "93.184.216.34" if phase["registering"] else "127.0.0.1"
    )
    with Server(ok) as receiver:
        created = api.post("/webhooks", json={"url": f"http://rebind.test:{receiver.port}/hook"})
        assert created.status_code == 201, created.text
        phase["registering"] = False
        [delivery_id] = ended_run_deliveries(api, created.json()["id"])
        attempt_delivery(delivery_id)
    assert receiver.requests == []
    item = delivery(api, created.json()["id"])
    assert (
        item["status"] == "failed"
        and "127.0.0.1 ('rebind.test' resolves to it)" in item["last_error"]
    )


def test_delivery_connects_to_the_address_it_checked(
    api: TestClient, studio_env, fake_dns, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Registration and the delivery's check each resolve the name once; the request goes to
    the checked address (a third lookup would answer an address nothing listens on), with the
    name in the Host header."""
    from worker.webhooks import attempt_delivery

    set_env(monkeypatch, **{SETTING: "127.0.0.1/32"})
    fake_dns["answers"]["pinned.test"] = lambda n: "127.0.0.1" if n <= 2 else "10.255.255.1"
    with Server(ok) as receiver:
        hook = api.post(
            "/webhooks", json={"url": f"http://pinned.test:{receiver.port}/hook?x=1"}
        ).json()
        [delivery_id] = ended_run_deliveries(api, hook["id"])
        assert attempt_delivery(delivery_id) is None
    assert fake_dns["lookups"]["pinned.test"] == 2
    [request] = receiver.requests
    assert request["headers"]["Host"] == f"pinned.test:{receiver.port}"
    assert request["path"] == "/hook?x=1"
    item = delivery(api, hook["id"])
    assert item["status"] == "succeeded" and item["last_status_code"] == 200


def test_a_reply_leaves_only_a_short_printable_excerpt(
    api: TestClient, studio_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.webhooks import attempt_delivery

    set_env(monkeypatch, **{SETTING: "127.0.0.1/32"})
    secret = b"\x1b[31mTOKEN=abc\r\nSet-Cookie: x\x00\x07" + b"internal data " * 400

    with Server(lambda s: (500, {"Content-Type": "text/plain"}, secret)) as receiver:
        hook = api.post("/webhooks", json={"url": f"http://127.0.0.1:{receiver.port}/hook"}).json()
        [delivery_id] = ended_run_deliveries(api, hook["id"])
        assert attempt_delivery(delivery_id) is not None  # to be tried again
    item = delivery(api, hook["id"])
    error = item["last_error"]
    assert item["last_status_code"] == 500 and error.startswith("HTTP 500: ")
    assert len(error) <= len("HTTP 500: ") + 200 + len(" ..."), len(error)
    assert all(ch.isprintable() for ch in error), repr(error)
    assert "[31mTOKEN=abc Set-Cookie: x internal data" in error


def test_redirects_are_not_followed(
    api: TestClient, studio_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.webhooks import attempt_delivery

    set_env(monkeypatch, **{SETTING: "127.0.0.1/32"})
    with Server(ok) as inside:
        moved = (302, {"Location": f"http://127.0.0.1:{inside.port}/admin"}, b"")
        with Server(lambda s: moved) as receiver:
            hook = api.post("/webhooks", json={"url": f"http://127.0.0.1:{receiver.port}/h"}).json()
            [delivery_id] = ended_run_deliveries(api, hook["id"])
            attempt_delivery(delivery_id)
        assert len(receiver.requests) == 1
    assert inside.requests == []
    item = delivery(api, hook["id"])
    assert item["last_status_code"] == 302 and item["last_error"] == "HTTP 302"
