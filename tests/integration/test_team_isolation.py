"""Teams own everything: another team's ids answer 404, exactly like ids that do not exist.

Tenant isolation, route by route: every route of the app is called by members of team B, in
every role, with team A's real ids; each must answer 404 (or 403), never 2xx.

The walk is driven by the app itself, so a new route is checked the day it is added:
- a route with path parameters is called with team A's id for each parameter (`FILL`); a
  parameter this test does not know fails the test: add team A's id for it;
- a route whose check runs after body validation needs a valid body (`BODIES`), else it would
  answer 422 and hide a missing check: a 422 fails the test;
- a route without path parameters must be in `COLLECTIONS` (public, or acting in the caller's
  own team) with a check that nothing of team A shows; an unknown one fails the test.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.testclient import TestClient

from backend.deps import CurrentUser, SessionDep
from core.db.tables import Model

from .api_helpers import (
    add_artifact,
    auth,
    other_team_token,
    ready_dataset,
    ready_model,
    run_config,
    signed_in,
)

ROLES = ("owner", "admin", "member", "viewer")
API = "/api/v1"
PARAM = re.compile(r"{(\w+)}")


def api_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path below /api/v1) of every route of the app."""
    try:  # FastAPI >= 0.16x keeps included routers lazily; this flattens them
        from fastapi.routing import iter_route_contexts

        routes = list(iter_route_contexts(app.routes))
    except ImportError:  # pragma: no cover - older FastAPI: app.routes is flat
        routes = list(app.routes)
    found = []
    for route in routes:
        path = getattr(route, "path", None) or ""
        if not path.startswith(API):
            continue
        for method in sorted(getattr(route, "methods", None) or ()):
            if method not in ("HEAD", "OPTIONS"):
                found.append((method, path[len(API) :] or "/"))
    return found


def team_a(api: TestClient) -> dict[str, Any]:
    """Team A (the first admin's "default" team) with one of everything."""
    from core.db import session_scope
    from core.db.tables import Metric
    from core.webhooks.events import record_run_event

    me = api.get("/auth/me").json()
    model_id, dataset_id = ready_model(api), ready_dataset(api)
    run_id = api.post("/runs", json=run_config(model_id, dataset_id)).json()["id"]
    artifact_id = add_artifact(run_id, b"team A's student")
    with session_scope() as session:
        session.add(Metric(run_id=run_id, name="loss", step=1, epoch=0, value=0.5))
    member = api.post("/users", json={"username": "a-member", "password": "a-member-pass"}).json()
    webhook_id = api.post("/webhooks", json={"url": "https://a.example.com/hook"}).json()["id"]
    done = api.post("/runs", json=run_config(model_id, dataset_id, name="done")).json()["id"]
    api.post(f"/runs/{done}/cancel")  # records a delivery for the webhook
    with session_scope() as session:
        record_run_event(session, done)
    token_id = api.post("/auth/tokens", json={"name": "a-ci"}).json()["id"]
    invitation = api.post(f"/teams/{me['team_id']}/invitations", json={"username": "a-guest"})
    assert invitation.status_code == 201, invitation.text
    comparison = api.post("/comparisons", json={"name": "a", "run_ids": [run_id, done]})
    assert comparison.status_code == 201, comparison.text
    return {
        "team_id": me["team_id"],
        "model_id": model_id,
        "dataset_id": dataset_id,
        "run_id": run_id,
        "artifact_id": artifact_id,
        "user_id": member["id"],
        "webhook_id": webhook_id,
        "token_id": token_id,
        "comparison_id": comparison.json()["id"],
        "invitation_id": invitation.json()["id"],
    }


def team_b(client: TestClient) -> dict[str, dict[str, str]]:
    """Headers of a user of team B in each role."""
    from backend.bootstrap import create_user
    from core.db import session_scope

    headers = {}
    for role in ROLES:
        with session_scope() as session:
            create_user(session, f"b-{role}", f"b-{role}-password", "team-b", role)
        r = client.post(
            "/auth/token", data={"username": f"b-{role}", "password": f"b-{role}-password"}
        )
        headers[role] = auth(r.json()["access_token"])
    return headers


# Valid bodies, so that a refusal cannot hide behind a 422.
BODIES: dict[tuple[str, str], Callable[[dict[str, Any]], Any]] = {
    ("POST", "/teams/{team_id}/members"): lambda a: {"username": "b-owner", "role": "member"},
    ("POST", "/teams/{team_id}/invitations"): lambda a: {"username": "b-owner", "role": "admin"},
    ("PATCH", "/teams/{team_id}/members/{user_id}"): lambda a: {"role": "viewer"},
    ("PATCH", "/models/{model_id}"): lambda a: {"tags": ["mine"], "description": "mine"},
    ("PATCH", "/datasets/{dataset_id}"): lambda a: {"tags": ["mine"], "description": "mine"},
    ("PATCH", "/webhooks/{webhook_id}"): lambda a: {"url": "https://b.example.com/steal"},
    ("POST", "/runs/{run_id}/register"): lambda a: {"name": "stolen"},
}

# Query parameters a route requires, so that its refusal cannot hide behind a 422 either.
QUERIES: dict[tuple[str, str], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("GET", "/datasets/{dataset_id}/token-lengths"): lambda a: {"model_id": a["model_id"]},
}
# What team A itself gets where that is not 200: its model and dataset are images, not text.
TEAM_A_STATUS: dict[tuple[str, str], int] = {("GET", "/datasets/{dataset_id}/token-lengths"): 422}


def _ids(body: Any) -> list[int]:
    items = body["items"] if isinstance(body, dict) and "items" in body else body
    return [item["id"] for item in items]


def _no_team_a_rows(key: str) -> Callable[[dict[str, Any], Any], None]:
    def check(a: dict[str, Any], response: Any) -> None:
        assert response.status_code == 200, response.text
        assert a[key] not in _ids(response.json())

    return check


def _refused_or_own(a: dict[str, Any], response: Any) -> None:
    """Admins see their own team's entries, others are refused: never team A's."""
    assert response.status_code in (200, 403), response.text
    if response.status_code == 200:
        from core.db import session_scope
        from core.db.tables import AuditEntry

        with session_scope() as session:
            teams = {session.get(AuditEntry, i).team_id for i in _ids(response.json())}
        assert a["team_id"] not in teams


def _status(*codes: int) -> Callable[[dict[str, Any], Any], None]:
    def check(a: dict[str, Any], response: Any) -> None:
        assert response.status_code in codes, response.text

    return check


def _not_team_a(a: dict[str, Any], response: Any) -> None:
    assert response.status_code in (200, 201, 403, 409), response.text
    if response.status_code in (200, 201):
        assert response.json()["team_id"] != a["team_id"]


def _me(a: dict[str, Any], response: Any) -> None:
    assert response.status_code == 200 and response.json()["team_id"] != a["team_id"]
    assert a["team_id"] not in [t["id"] for t in response.json()["teams"]]


def _webhooks(a: dict[str, Any], response: Any) -> None:
    assert response.status_code in (200, 403), response.text
    if response.status_code == 200:
        assert a["webhook_id"] not in _ids(response.json())


# Routes without path parameters: public, or acting only in the caller's own team. Each with the
# request to make (with team A's ids where a body can name them) and what team B may get.
Make = Callable[[dict[str, Any]], dict[str, Any]]
Check = Callable[[dict[str, Any], Any], None]
COLLECTIONS: dict[tuple[str, str], tuple[Make, Check]] = {
    ("GET", "/health"): (lambda a: {}, _status(200)),
    ("POST", "/auth/token"): (
        lambda a: {"data": {"username": "admin", "password": "wrong"}},
        _status(401),
    ),
    ("GET", "/auth/me"): (lambda a: {}, _me),
    ("GET", "/auth/tokens"): (lambda a: {}, _no_team_a_rows("token_id")),
    ("POST", "/auth/tokens"): (lambda a: {"json": {"name": "b", "team_scoped": True}}, _not_team_a),
    ("GET", "/catalog"): (lambda a: {}, _status(200)),
    ("GET", "/teams"): (lambda a: {}, _no_team_a_rows("team_id")),
    ("POST", "/teams"): (lambda a: {"json": {"name": "b-new"}}, _status(201, 403, 409)),
    ("GET", "/invitations"): (lambda a: {}, _no_team_a_rows("invitation_id")),
    ("POST", "/users"): (
        lambda a: {"json": {"username": "b-user", "password": "b-user-pass"}},
        _not_team_a,
    ),
    ("GET", "/models"): (
        lambda a: {"params": {"include_archived": True}},
        _no_team_a_rows("model_id"),
    ),
    ("POST", "/models"): (
        lambda a: {"files": {"file": ("b.pt2", b"b")}, "data": {"name": "b"}},
        _status(201, 403),
    ),
    ("GET", "/datasets"): (
        lambda a: {"params": {"include_archived": True}},
        _no_team_a_rows("dataset_id"),
    ),
    ("POST", "/datasets"): (
        lambda a: {"files": {"file": ("b.npz", b"b")}, "data": {"name": "b"}},
        _status(201, 403),
    ),
    ("GET", "/runs"): (lambda a: {}, _no_team_a_rows("run_id")),
    ("POST", "/runs"): (
        lambda a: {"json": run_config(a["model_id"], a["dataset_id"])},
        _status(403, 404),
    ),
    ("POST", "/runs/plan"): (
        lambda a: {"json": {"teacher_model_id": a["model_id"], "dataset_id": a["dataset_id"]}},
        _status(403, 404),
    ),
    ("POST", "/students/search"): (
        lambda a: {"json": {"target": {"params": 20000}, "teacher_model_id": a["model_id"]}},
        _status(403, 404),
    ),
    ("GET", "/audit"): (lambda a: {}, _refused_or_own),
    ("GET", "/webhooks"): (lambda a: {}, _webhooks),
    ("POST", "/webhooks"): (
        lambda a: {"json": {"url": "https://b.example.com/h"}},
        _status(201, 403),
    ),
    ("GET", "/comparisons"): (lambda a: {}, _no_team_a_rows("comparison_id")),
    ("POST", "/comparisons"): (
        lambda a: {"json": {"name": "b", "run_ids": [a["run_id"]]}},
        _status(403, 404),
    ),
}


def walk(
    api: TestClient,
    client: TestClient,
    a: dict[str, Any],
    b: dict[str, dict[str, str]],
    only: set[str] | None = None,
) -> list[str]:
    """Call every route of `client.app` (or those with a path in `only`) as each member of
    team B; what went wrong, if anything."""
    routes = [(m, p) for m, p in api_routes(client.app) if only is None or p in only]
    problems: list[str] = []

    # team A reaches its own things through the same paths (so the ids are real)
    for method, path in routes:
        if method == "GET" and PARAM.search(path) and all(p in a for p in PARAM.findall(path)):
            url = PARAM.sub(lambda m: str(a[m.group(1)]), path)
            query = QUERIES[(method, path)](a) if (method, path) in QUERIES else None
            # a run's event stream stays open while the run is live: ask it to end soon
            r = api.get(url, params={"timeout": 0.2} if path.endswith("/events") else query)
            if r.status_code != TEAM_A_STATUS.get((method, path), 200):
                problems.append(f"team A: GET {url} -> {r.status_code} {r.text[:200]}")

    for method, path in routes:
        params = PARAM.findall(path)
        if not params:
            if (method, path) not in COLLECTIONS:
                problems.append(
                    f"{method} {path}: a route without path parameters that this test does not "
                    "know; add it to COLLECTIONS with a check that team B sees nothing of team A"
                )
                continue
            make, check = COLLECTIONS[(method, path)]
            for role, headers in b.items():
                r = client.request(method, path, headers=headers, **make(a))
                try:
                    check(a, r)
                except AssertionError as exc:
                    problems.append(f"team B {role}: {method} {path}: {exc}")
            continue
        unknown = [p for p in params if p not in a]
        if unknown:
            problems.append(f"{method} {path}: no team A id for {unknown}; add one to team_a()")
            continue
        url = PARAM.sub(lambda m: str(a[m.group(1)]), path)
        body = BODIES.get((method, path))
        query = QUERIES.get((method, path))
        for role, headers in b.items():
            kwargs: dict[str, Any] = {"json": body(a)} if body else {}
            if query:
                kwargs["params"] = query(a)
            r = client.request(method, url, headers=headers, **kwargs)
            if r.status_code == 422:
                problems.append(
                    f"team B {role}: {method} {url} -> 422 {r.text[:200]}; add a valid "
                    "body to BODIES so that the check behind validation is reached"
                )
            elif r.status_code not in (403, 404):
                problems.append(f"team B {role}: {method} {url} -> {r.status_code} {r.text[:200]}")
        # naming team A in X-Team-Id does not open it either
        r = client.request(
            method,
            url,
            headers={**b["owner"], "X-Team-Id": str(a["team_id"])},
            params=query(a) if query else None,
        )
        if r.status_code != 403:
            problems.append(f"team B with X-Team-Id of A: {method} {url} -> {r.status_code}")
    return problems


def test_every_route_refuses_other_teams(api: TestClient, app_client: TestClient) -> None:
    a = team_a(api)
    b = team_b(app_client)
    assert len(api_routes(app_client.app)) > 40
    problems = walk(api, app_client, a, b)
    assert not problems, "\n".join(problems)

    # and team A's things are all still there, unchanged
    assert api.get(f"/models/{a['model_id']}").json()["tags"] == []
    assert api.get(f"/datasets/{a['dataset_id']}").json()["tags"] == []
    assert api.get(f"/webhooks/{a['webhook_id']}").json()["url"] == "https://a.example.com/hook"
    assert api.get(f"/runs/{a['run_id']}").json()["status"] == "queued"
    members = {m["username"]: m["role"] for m in api.get(f"/teams/{a['team_id']}/members").json()}
    assert members == {"admin": "owner", "a-member": "member"}
    assert a["token_id"] in [t["id"] for t in api.get("/auth/tokens").json() if not t["revoked_at"]]
    assert api.get(f"/comparisons/{a['comparison_id']}").status_code == 200
    assert api.get("/models", params={"name": "stolen"}).json()["items"] == []


# Routes a careless change could add: the walk must report each of them.
careless = APIRouter()


@careless.get("/models/{model_id}/leak")
def leak(model_id: int, session: SessionDep, _user: CurrentUser) -> dict[str, Any]:
    return {"name": session.get(Model, model_id).name}  # no team check


@careless.get("/gadgets/{gadget_id}")
def gadget(gadget_id: int) -> dict[str, Any]:
    return {}


@careless.get("/secrets")
def secrets() -> list[Any]:
    return []


def test_the_walk_catches_new_unchecked_routes(sqlite_env) -> None:
    """Routes that forget the team check, or that the walk cannot fill, fail it."""
    from backend.app import create_app
    from backend.bootstrap import ensure_admin
    from core.db import session_scope

    app = create_app()
    app.include_router(careless, prefix=API)
    with session_scope() as session:
        token = ensure_admin(session).token
    with TestClient(app, base_url=f"http://testserver{API}") as client:
        a = team_a(signed_in(client, token))
        b = team_b(client)
        problems = walk(
            client,
            client,
            a,
            b,
            only={
                "/models/{model_id}/leak",
                "/gadgets/{gadget_id}",
                "/secrets",
                "/models/{model_id}",
            },
        )
    assert len(problems) == len(ROLES) + 2, "\n".join(problems)
    assert all(f"GET /models/{a['model_id']}/leak -> 200" in p for p in problems[:4])
    assert problems[4].startswith("GET /gadgets/{gadget_id}: no team A id for ['gadget_id']")
    assert problems[5].startswith("GET /secrets: a route without path parameters")


def test_other_team_sees_nothing(api, app_client) -> None:
    model_id, dataset_id = ready_model(api), ready_dataset(api)
    run_id = api.post("/runs", json=run_config(model_id, dataset_id)).json()["id"]
    art_id = add_artifact(run_id, b"secret")
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


def test_other_team_reads_no_metrics_of_a_run_with_points(api, app_client) -> None:
    """The metrics read checks the team in its own statements (no look-up of the run before
    them): another team's run with points, chunks and rollups is 404 however it is asked for,
    while its own team reads the points."""
    from .test_conditional_get import _reporter, _step
    from .test_metrics_scale import _reporting_run

    run_id = _reporting_run(api)
    reporter = _reporter(run_id)
    for step in range(1, 80):
        _step(reporter, step)
    bob = auth(other_team_token(app_client))
    asks: list[dict[str, Any]] = [
        {},
        {"names": "loss"},
        {"names": "loss,lr"},
        {"since_step": 10},
        {"max_points": 8},
        {"max_points": 8, "since_step": 3},
        {"max_points": 1000},
    ]
    for params in asks:
        theirs = app_client.get(f"/runs/{run_id}/metrics", headers=bob, params=params)
        assert theirs.status_code == 404, (params, theirs.text)
        assert theirs.json() == {"detail": f"run {run_id} not found"}, params
        ours = api.get(f"/runs/{run_id}/metrics", params=params)
        assert ours.status_code == 200 and ours.json()["series"]["loss"]["steps"], params
    empty = api.post("/runs", json=run_config(ready_model(api), ready_dataset(api))).json()["id"]
    assert api.get(f"/runs/{empty}/metrics").json() == {"series": {}}  # ours, no points yet
    assert app_client.get(f"/runs/{empty}/metrics", headers=bob).status_code == 404
