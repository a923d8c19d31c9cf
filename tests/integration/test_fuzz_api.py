"""The API under fuzzing: schemathesis generates requests for every operation of the OpenAPI
document (valid and invalid data), sends them with a valid token to the ASGI app
(`backend.app.create_app()`) on PostgreSQL and Redis, and checks that no response is a 5xx and
that every response (status, content type, headers, body) matches what the document says.

No worker runs: routes that enqueue only publish to Redis; routes that ask a worker for a student
inspection get their answer from the API's in-process cache, or 503 after DS_INSPECT_TIMEOUT_S=1.
The database holds a ready model, dataset, run with metrics and artifact, webhook and comparison,
and generated ids are steered towards them, so the 200 paths are checked too.

Also: path traversal on downloads (`..`, `%2e%2e`, absolute paths, `#`, encoded slashes) and a
storage key that points outside the store never serve a file from outside it.

Figures in docs/reliability.md ("The API under fuzzing"). More examples: DS_FUZZ_EXAMPLES=200.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from tests.conftest import StudioEnv, _postgres_database, make_studio_env, migrate
from tests.integration.api_helpers import (
    DATASET_INFO,
    STUDENT_INSPECTION,
    TEACHER_INSPECTION,
    run_config,
    set_row,
)

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("DS_FUZZ_EXAMPLES", "10"))


@dataclass
class Seeded:
    app: Any
    api: TestClient
    token: str
    ids: dict[str, list[int]]
    own: dict[str, int]
    env: StudioEnv
    outside: Path
    calls: Counter[str] = field(default_factory=Counter)


@pytest.fixture(
    scope="module", params=[pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"]
)
def seeded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Seeded]:
    """A studio (PostgreSQL, the production database, and SQLite) with one of everything, and
    the app to fuzz."""
    from sqlalchemy import select

    from backend.app import create_app
    from backend.bootstrap import ensure_admin
    from backend.runs import service as runs_service
    from core.db import reset_caches, session_scope
    from core.db.tables import ApiToken, Artifact, Metric, User
    from core.storage import get_store

    tmp = tmp_path_factory.mktemp("fuzz")
    outside = tmp / "outside-secret.txt"
    outside.write_text("a file outside the artifact store")
    database = _postgres_database() if request.param == "postgres" else iter(["sqlite"])
    env = make_studio_env(tmp, next(database))
    with pytest.MonkeyPatch.context() as mp:
        env.apply(mp)
        mp.setenv("DS_INSPECT_TIMEOUT_S", "1")
        reset_caches()
        migrate()
        with session_scope() as session:
            token = ensure_admin(session).token
        app = create_app()
        with TestClient(app, base_url="http://testserver/api/v1") as api:
            api.headers["Authorization"] = f"Bearer {token}"
            ids = _seed(api, runs_service, set_row)
            with session_scope() as session:
                admin = session.scalar(select(User).where(User.username == "admin"))
                assert admin is not None
                own = {
                    "user_id": admin.id,
                    "token_id": session.scalar(select(ApiToken.id).order_by(ApiToken.id)),
                }
                run_id = ids["run_id"][0]
                for step in range(1, 6):
                    session.add(Metric(run_id=run_id, name="loss", step=step, value=1.0 / step))
                store = get_store()
                stored = store.put_bytes(f"team-1/runs/{run_id}/student.safetensors", b"weights")
                good = Artifact(
                    team_id=1,
                    run_id=run_id,
                    kind="student_safetensors",
                    filename="student.safetensors",
                    storage_key=stored.key,
                    size_bytes=stored.size,
                    sha256=stored.sha256,
                )
                # a row whose key points outside the store (as a compromised writer might leave)
                bad = Artifact(
                    team_id=1,
                    run_id=run_id,
                    kind="config",
                    filename="passwd",
                    storage_key=f"../../../../../../..{outside}",
                    size_bytes=1,
                )
                session.add_all([good, bad])
                session.flush()
                ids["artifact_id"] = [good.id, bad.id]
            yield Seeded(app, api, token, ids, own, env, outside)
        reset_caches()
    next(database, None)


def _seed(api: TestClient, runs_service: Any, set_row: Any) -> dict[str, list[int]]:
    model = api.post("/models", files={"file": ("t.pt2", b"pt2")}, data={"name": "teacher"}).json()
    set_row("Model", model["id"], status="ready", inspection=TEACHER_INSPECTION)
    dataset = api.post("/datasets", files={"file": ("d.npz", b"npz")}, data={"name": "d"}).json()
    set_row("Dataset", dataset["id"], status="ready", info=DATASET_INFO)
    from core import inspections

    for width in (0.25, 0.5):  # ours, and the documented examples': as if a worker built them
        inspections.plant("resnet8", {"width": width}, [3, 8, 8], 4, STUDENT_INSPECTION)
    run = api.post("/runs", json=run_config(model["id"], dataset["id"]))
    assert run.status_code == 201, run.text
    done = api.post("/runs", json=run_config(model["id"], dataset["id"], name="done")).json()
    set_row(
        "Run",
        done["id"],
        status="succeeded",
        progress=1.0,
        summary={
            "student_top1": 0.9,
            "teacher_top1": 0.95,
            "student_architecture": "resnet8",
            "student_kwargs": {"width": 0.25},
        },
    )
    hook = api.post("/webhooks", json={"url": "https://ci.example.com/hook"})
    assert hook.status_code == 201, hook.text
    comparison = api.post(
        "/comparisons", json={"name": "c", "run_ids": [run.json()["id"], done["id"]]}
    )
    ids = {
        "model_id": [model["id"]],
        "dataset_id": [dataset["id"]],
        "run_id": [run.json()["id"], done["id"]],
        "webhook_id": [hook.json()["id"]],
        "team_id": [1],
        "user_id": [1],
    }
    if comparison.status_code == 201:
        ids["comparison_id"] = [comparison.json()["id"]]
    return ids


# -- fuzzing ------------------------------------------------------------------------------------


def _operations(seeded: Seeded) -> list[Any]:
    import schemathesis

    schema = schemathesis.openapi.from_asgi("/openapi.json", seeded.app)
    return [result.ok() for result in schema.get_all_operations()]


def _steer(seeded: Seeded, case: Any, pick: Any) -> bool:
    """Point some generated ids at existing rows; False for a case that would lock us out."""
    params = case.path_parameters or {}
    for name, value in list(params.items()):
        if name in seeded.ids and pick(st.booleans()):
            params[name] = pick(st.sampled_from(seeded.ids[name]))
        elif name in seeded.ids and not isinstance(value, int):
            pass
    method, path = case.operation.method.upper(), case.operation.path
    if method in ("DELETE", "PATCH") and "/members/" in path:
        return params.get("user_id") != seeded.own["user_id"]
    if method == "DELETE" and path.endswith("/auth/tokens/{token_id}"):
        return params.get("token_id") != seeded.own["token_id"]
    if path.endswith("/events"):  # a live stream ends with its run: end it soon
        case.query = {**(case.query or {}), "timeout": 0.2}
    return True


def test_no_5xx_and_every_response_matches_the_schema(seeded: Seeded) -> None:
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    headers = {"Authorization": f"Bearer {seeded.token}"}
    failures: list[str] = []
    statuses: Counter[str] = Counter()
    started = time.perf_counter()
    operations = _operations(seeded)

    def make_fuzz(operation: Any, mode: Any, label: str) -> Any:
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
        def fuzz(case: Any, data: Any) -> None:
            if not _steer(seeded, case, data.draw):
                return
            response = case.call(headers=headers)
            seeded.calls[label] += 1
            if response.status_code == 503 and "no worker answered" in response.text:
                # documented: a student inspection needs a worker, and none runs here
                statuses["503 no worker"] += 1
                return
            statuses[f"{response.status_code // 100}xx"] += 1
            case.validate_response(response, checks=checks, headers=headers)

        return fuzz

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{operation.method.upper()} {operation.path} [{mode.value}]"
            try:
                make_fuzz(operation, mode, label)()
            except Unsatisfiable:  # nothing to make invalid (GET /health takes no input)
                continue
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect them all
                failures.append(f"{label}: {str(exc)[:1500]}")
    took = time.perf_counter() - started
    total = sum(seeded.calls.values())
    print(
        f"{seeded.env.env['DS_DATABASE_URL'].split(':')[0]}: fuzzed {len(operations)} "
        f"operations with {total} requests in {took:.0f}s: "
        f"{dict(sorted(statuses.items()))}"
    )
    assert not failures, "\n\n".join(failures)


# -- path traversal on downloads ------------------------------------------------------------------


TRAVERSALS = [
    "/api/v1/artifacts/../../../../etc/passwd/download",
    "/api/v1/artifacts/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd/download",
    "/api/v1/artifacts/..%2f..%2f..%2f..%2fetc%2fpasswd/download",
    "/api/v1/artifacts/%252e%252e%252f%252e%252e%252fetc%252fpasswd/download",
    "/api/v1/artifacts/%2fetc%2fpasswd/download",
    "/api/v1/artifacts//etc/passwd/download",
    "/api/v1/artifacts/..\\..\\..\\etc\\passwd/download",
    "/api/v1/artifacts/{good}%23/download",
    "/api/v1/artifacts/{good}#/../../../../etc/passwd",
    "/api/v1/artifacts/{good}%00/download",
    "/api/v1/artifacts/{good}%2f..%2f..%2fdownload",
    "/api/v1/artifacts/{good}/download/../../../../../etc/passwd",
    "/api/v1/artifacts/{good}/download/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/api/v1/artifacts/{good}/download%2f..%2f..%2f..%2fetc%2fpasswd",
    "/api/v1/models/{model}/download/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/api/v1/datasets/{dataset}/download/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/api/v1/runs/{run}/config.yaml/../../../../etc/passwd",
    "/api/v1/artifacts/{outside}/download",
    "/api/v1/artifacts/-1/download",
    "/api/v1/artifacts/99999999999999999999999/download",
]


def test_download_path_traversal_never_leaves_the_store(seeded: Seeded) -> None:
    """Raw request targets on the wire (a client would normalise them), to a real uvicorn."""
    import socket

    from tests.integration.servers import ApiServer

    fill = {
        "good": seeded.ids["artifact_id"][0],
        "outside": seeded.ids["artifact_id"][1],
        "model": seeded.ids["model_id"][0],
        "dataset": seeded.ids["dataset_id"][0],
        "run": seeded.ids["run_id"][0],
    }
    server = ApiServer(seeded.env).start()
    answers: Counter[int] = Counter()
    seen: list[tuple[str, int, bytes]] = []
    try:
        for target in TRAVERSALS:
            target = target.format(**fill)
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(
                    f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                    f"Authorization: Bearer {seeded.token}\r\n\r\n".encode()
                )
                raw = b""
                while chunk := sock.recv(65536):
                    raw += chunk
            status = int(raw.split(b" ", 2)[1])
            answers[status] += 1
            seen.append((target, status, raw))
        for target, status, raw in seen:
            assert b"outside the artifact store" not in raw and b"root:" not in raw, target
            if "#" in target and status == 200:
                # uvicorn drops the fragment: this is GET /artifacts/{id}, the row's JSON
                assert raw.split(b"\r\n\r\n", 1)[1].startswith(b'{"id":'), raw[:300]
                continue
            assert status in (400, 404, 422), [(t, s) for t, s, _ in seen]
            if status == 400:  # only uvicorn itself refuses a target it cannot parse
                assert b"Invalid HTTP request" in raw, (target, raw[:300])
        log = server.output()
        assert "refused to open artifact" in log  # the hostile key was logged, never opened
        assert "Traceback" not in log
    finally:
        server.stop()
    # the genuine download still works
    good = seeded.api.get(f"/artifacts/{fill['good']}/download")
    assert good.status_code == 200 and good.content == b"weights"
    print(f"{len(TRAVERSALS)} traversal attempts: {dict(sorted(answers.items()))}")
