"""Every list query is served by an index that matches it: PostgreSQL's plan for the query as
the service sends it (captured from the driver) is an index scan of the expected index, with no
Sort node and no sequential scan.

The tables are seeded with a few thousand rows and autovacuum is off for them, so the planner
has no statistics (nothing ran ANALYZE): the plan must be right without them, as it is in a
freshly migrated or freshly restored database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import insert, text
from sqlalchemy.orm import Session

from core.db import get_engine, session_scope
from core.db.tables import (
    Artifact,
    AuditEntry,
    Comparison,
    Dataset,
    Invitation,
    Metric,
    Model,
    Run,
    Team,
    Webhook,
    WebhookDelivery,
)

from .api_helpers import sql_sent

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("studio_env", ["postgres"], indirect=True),
]

TEAMS, PER_TEAM = 8, 500  # 4,000 rows in each listed table
SEEDED = [
    "runs",
    "models",
    "datasets",
    "artifacts",
    "audit_entries",
    "webhooks",
    "webhook_deliveries",
    "comparisons",
    "invitations",
    "metrics",
]


def _seed() -> dict[str, int]:
    with get_engine().begin() as conn:
        for table in SEEDED:
            conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
    statuses = ["queued", "running", "succeeded", "failed", "cancelled"]
    with session_scope() as s:
        teams = [Team(name=f"team {i}") for i in range(TEAMS)]
        s.add_all(teams)
        s.flush()
        ids = [t.id for t in teams]
        each = [(team, i) for i in range(PER_TEAM) for team in ids]  # teams interleaved by id
        s.execute(
            insert(Run),
            [
                {"team_id": t, "name": f"r{i}", "config": {}, "status": statuses[i % 5]}
                for t, i in each
            ],
        )
        for table in (Model, Dataset):
            s.execute(
                insert(table),
                [
                    {"team_id": t, "name": f"m{i}", "format": "npz", "storage_key": f"k{t}/{i}"}
                    for t, i in each
                ],
            )
        s.execute(
            insert(AuditEntry),
            [{"team_id": t, "action": "run.create", "resource_type": "run"} for t, _ in each],
        )
        s.execute(
            insert(Comparison), [{"team_id": t, "name": f"c{i}", "run_ids": []} for t, i in each]
        )
        s.execute(insert(Invitation), [{"team_id": t, "username": f"u{t}-{i}"} for t, i in each])
        s.execute(
            insert(Webhook),
            [
                {
                    "team_id": t,
                    "url": "https://example.org/h",
                    "secret_salt": "s",
                    "secret_prefix": "p",
                }
                for t, _ in each
            ],
        )
        hook = s.query(Webhook).filter_by(team_id=ids[0]).first()
        run = s.query(Run).filter_by(team_id=ids[0]).first()
        assert hook is not None and run is not None
        s.execute(
            insert(WebhookDelivery),
            [
                {"webhook_id": h, "team_id": ids[0], "event": f"e{i}", "run_id": i, "body": "{}"}
                for i in range(PER_TEAM)
                for h in (hook.id, hook.id + 1)
            ],
        )
        s.execute(
            insert(Artifact),
            [
                {
                    "team_id": ids[0],
                    "run_id": r,
                    "kind": "config",
                    "filename": "c.yaml",
                    "storage_key": "k",
                }
                for r in range(run.id, run.id + PER_TEAM)
                for _ in range(4)
            ],
        )
        s.execute(
            insert(Metric),
            [
                {"run_id": r, "name": n, "step": step, "value": 1.0}
                for r in (run.id, run.id + 1)
                for n in ("loss", "lr")
                for step in range(1, 1001)
            ],
        )
        return {"team": ids[3], "hook": hook.id, "run": run.id}


@contextmanager
def _captured() -> Iterator[list[tuple[str, Any]]]:
    """The SQL statements sent to the driver meanwhile, with their parameters."""
    with sql_sent() as sent:
        statements: list[tuple[str, Any]] = []
        yield statements
        statements += [(statement, parameters) for statement, parameters, _ in sent]


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _plan(call: Callable[[Session], Any]) -> list[dict[str, Any]]:
    """The nodes of the plan of the last SELECT that `call` sends (the list itself)."""
    with session_scope() as s, _captured() as sent:
        call(s)
    return _plan_of(sent)


def _plan_of(sent: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """The plan of the last SELECT `sent` (after any look-ups of the arguments: session.get),
    as the database plans it on a connection of its own: nothing set beforehand."""
    selects = [q for q in sent if q[0].lstrip().upper().startswith(("SELECT", "WITH"))]
    statement, parameters = selects[-1]
    with get_engine().connect() as conn:
        [[explained]] = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).all()
    return list(_nodes(explained[0]["Plan"]))


def _assert_index(nodes: list[dict[str, Any]], index: str) -> None:
    kinds = [n["Node Type"] for n in nodes]
    assert any(
        n["Node Type"] in ("Index Scan", "Index Only Scan") and n.get("Index Name") == index
        for n in nodes
    ), (index, nodes)
    assert not {"Sort", "Incremental Sort", "Seq Scan", "Bitmap Heap Scan"} & set(kinds), nodes


def test_list_queries_use_matching_indexes(studio_env) -> None:
    from backend.artifacts import service as artifacts
    from backend.audit.service import list_entries
    from backend.compare.service import list_comparisons
    from backend.datasets.service import list_datasets
    from backend.models.service import list_models
    from backend.runs import service as runs
    from backend.teams.invitations import sent
    from backend.teams.service import encode_cursor
    from backend.webhooks.service import list_deliveries, list_webhooks

    ids = _seed()
    team, page = ids["team"], {"limit": 50, "cursor": None}
    later = {"limit": 50, "cursor": encode_cursor(3000)}
    run_filters = {"status": None, "teacher_model_id": None, "q": None}
    plain = {"name": None, "status": None}
    no_filter = {"action": None, "resource_type": None, "resource_id": None, "user_id": None}
    cases: list[tuple[str, Callable[[Session], Any], str]] = [
        ("runs", lambda s: runs.list_runs(s, team, **page, **run_filters), "ix_runs_team_id_id"),
        (
            "runs, next page",
            lambda s: runs.list_runs(s, team, **later, **run_filters),
            "ix_runs_team_id_id",
        ),
        (
            "runs by status",
            lambda s: runs.list_runs(s, team, **page, **{**run_filters, "status": "running"}),
            "ix_runs_team_id_status_id",
        ),
        (
            "runs by status, next page",
            lambda s: runs.list_runs(s, team, **later, **{**run_filters, "status": "failed"}),
            "ix_runs_team_id_status_id",
        ),
        ("models", lambda s: list_models(s, team, **page, **plain), "ix_models_team_id_id"),
        ("datasets", lambda s: list_datasets(s, team, **page, **plain), "ix_datasets_team_id_id"),
        (
            "audit",
            lambda s: list_entries(s, team, **page, **no_filter),
            "ix_audit_entries_team_id_id",
        ),
        ("comparisons", lambda s: list_comparisons(s, team, **page), "ix_comparisons_team_id_id"),
        (
            "deliveries",
            lambda s: list_deliveries(
                s, s.get(Webhook, ids["hook"]), **page, status=None, event=None
            ),
            "ix_webhook_deliveries_webhook_id_id",
        ),
        (
            "artifacts of a run",
            lambda s: artifacts.list_for_run(s, s.get(Run, ids["run"])),
            "ix_artifacts_run_id_id",
        ),
    ]
    wrong = []
    for label, call, index in cases:
        nodes = _plan(call)
        try:
            _assert_index(nodes, index)
        except AssertionError:
            wrong.append((label, index, [(n["Node Type"], n.get("Index Name")) for n in nodes]))
    assert not wrong, wrong

    # Whole lists of a team (a few webhooks, invitations): the team's rows by the index; sorting
    # those few is as cheap as reading them in order, so either plan is right.
    for call, index in (
        (lambda s: list_webhooks(s, team), "ix_webhooks_team_id_id"),
        (lambda s: sent(s, team), "ix_invitations_team_id_id"),
    ):
        nodes = _plan(call)
        assert any(n.get("Index Name") == index for n in nodes), nodes
        assert "Seq Scan" not in {n["Node Type"] for n in nodes}, nodes


def test_the_api_lists_runs_by_the_index(studio_env, api) -> None:
    """`GET /runs` as the API sends it (its own session and settings, not the service's in a
    test's transaction) is planned from the (team_id, id) index without statistics."""
    _seed()
    team = api.get("/auth/me").json()["teams"][0]["id"]
    with session_scope() as s:
        s.execute(
            insert(Run), [{"team_id": team, "name": f"a{i}", "config": {}} for i in range(500)]
        )
    for params in ({"limit": 50}, {"limit": 20, "status": "queued"}):
        with _captured() as sent:
            assert api.get("/runs", params=params).status_code == 200
        index = "ix_runs_team_id_status_id" if "status" in params else "ix_runs_team_id_id"
        _assert_index(_plan_of(sent), index)


def test_incremental_metric_reads_use_the_primary_key(studio_env) -> None:
    from backend.runs import service as runs

    ids = _seed()
    nodes = _plan(lambda s: runs.metrics(s, s.get(Run, ids["run"]), ["loss", "lr"], since_step=990))
    _assert_index(nodes, "pk_metrics")
    assert any("step >" in n.get("Index Cond", "") for n in nodes), nodes  # a range, not a filter


def test_downsampled_reads_scan_only_key_ranges(studio_env) -> None:
    """`max_points` (M4): the count and every bucket's look-ups are ranges of the primary key;
    the series is never scanned whole outside its key range, nor sorted whole."""
    from backend.runs import service as runs

    ids = _seed()
    with session_scope() as s, _captured() as sent:
        series = runs.metrics(s, s.get(Run, ids["run"]), ["loss"], None, max_points=100)
    assert series["loss"]["downsampled"] and series["loss"]["total"] == 1000
    reads = [q for q in sent if "FROM metrics" in q[0]]
    assert len(reads) == 4  # the series' names and step range, its count, M4, the points
    with get_engine().connect() as conn:
        for statement, parameters in reads:
            [[explained]] = conn.exec_driver_sql(
                "EXPLAIN (FORMAT JSON) " + statement, parameters
            ).all()
            nodes = list(_nodes(explained[0]["Plan"]))
            scans = [n for n in nodes if n.get("Relation Name") == "metrics"]
            assert scans and all(
                n["Node Type"] in ("Index Scan", "Index Only Scan")
                and n["Index Name"] == "pk_metrics"
                for n in scans
            ), (statement, nodes)


def test_rollup_reads_scan_only_key_ranges(studio_env) -> None:
    """`max_points` from the rollups the worker keeps: the series' names and span (look-ups)
    and its rollup rows of one width are each a range of a primary key; no point is read."""
    from backend.runs import service as runs
    from worker.reporting import rebuild_rollups

    ids = _seed()
    with session_scope() as s:
        rebuild_rollups(s, ids["run"], -1)
    with get_engine().begin() as conn:
        conn.execute(text("ALTER TABLE metric_rollups SET (autovacuum_enabled = false)"))
    with session_scope() as s, _captured() as sent:
        series = runs.metrics(s, s.get(Run, ids["run"]), ["loss"], None, max_points=40)
    assert series["loss"]["downsampled"] and series["loss"]["total"] == 1000
    reads = [q for q in sent if "FROM metric" in q[0]]
    assert len(reads) == 2, reads  # names and span, the rollups of one width (they hold the points)
    assert "metric_rollups" in reads[1][0]
    keys = {"metrics": "pk_metrics", "metric_rollups": "pk_metric_rollups"}
    with get_engine().connect() as conn:
        for statement, parameters in reads:
            [[explained]] = conn.exec_driver_sql(
                "EXPLAIN (FORMAT JSON) " + statement, parameters
            ).all()
            nodes = list(_nodes(explained[0]["Plan"]))
            scans = [n for n in nodes if n.get("Relation Name") in keys]
            assert scans and all(
                n["Node Type"] in ("Index Scan", "Index Only Scan")
                and n["Index Name"] == keys[n["Relation Name"]]
                for n in scans
            ), (statement, nodes)
            assert not {"Sort", "Incremental Sort"} & {n["Node Type"] for n in nodes}, nodes
