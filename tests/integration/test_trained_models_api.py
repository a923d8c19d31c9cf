"""Every trained model of a run through REST, the client and the CLI: a comparison's
`/models` rows (one per peer, generation, int8 student), `runs show` and `comparisons show`.
No worker: the runs' summaries are written to the database as a worker leaves them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from client import Client
from tests.integration.api_helpers import (
    auth,
    other_team_token,
    ready_dataset,
    ready_model,
    run_config,
    set_row,
)
from tests.integration.test_cli_remote import _ready_inputs, cli, server  # noqa: F401

EVAL = {"teacher_top1": 0.95, "student_params": 1000, "student_size_bytes": 4096}
PEERS = {
    **EVAL,
    "student_top1": 0.9,
    "peers": [
        {"peer": 0, "artifacts": {"student_pt2": "student.pt2"}, **EVAL, "student_top1": 0.9},
        {"peer": 1, "artifacts": {"peer1_student_pt2": "peer1_student.pt2"}, **EVAL,
         "student_top1": 0.8},
    ],
}  # fmt: skip
GENERATIONS = {
    **EVAL,
    "student_top1": 0.88,
    "generations": [
        {"generation": 1, "artifacts": {}, **EVAL, "student_top1": 0.7},
        {"generation": 2, "artifacts": {}, **EVAL, "student_top1": 0.88},
    ],
    "quantized": {"artifact": "student_int8.pt", "int8": {"top1": 0.86, "size_bytes": 1100}},
}
SINGLE = {**EVAL, "student_top1": 0.85}


def _finished(run_id: int, summary: dict[str, Any]) -> None:
    set_row("Run", run_id, status="succeeded", progress=1.0, summary=summary)


def test_a_comparisons_models_are_every_trained_model_of_its_runs(api: TestClient) -> None:
    model_id, dataset_id = ready_model(api), ready_dataset(api)
    ids = []
    for name, summary in (("dml", PEERS), ("ban", GENERATIONS), ("kd", SINGLE)):
        run_id = api.post("/runs", json=run_config(model_id, dataset_id, name=name)).json()["id"]
        _finished(run_id, summary)
        ids.append(run_id)
    pending = api.post("/runs", json=run_config(model_id, dataset_id, name="q")).json()["id"]
    saved = api.post("/comparisons", json={"name": "all", "run_ids": [*ids, pending]}).json()

    got = api.get(f"/comparisons/{saved['id']}/models")
    assert got.status_code == 200, got.text
    rows = got.json()
    assert [(r["run_id"], r["label"]) for r in rows] == [
        (ids[0], "student"),
        (ids[0], "peer 1"),
        (ids[1], "generation 1"),
        (ids[1], "generation 2"),
        (ids[1], "int8"),
        (ids[2], "student"),
    ]  # the queued run has none yet
    assert [r["top1"] for r in rows] == [0.9, 0.8, 0.7, 0.88, 0.86, 0.85]
    assert rows[1]["artifacts"] == {"peer1_student_pt2": "peer1_student.pt2"}
    assert rows[1]["val_prefix"] == "val/p1/" and rows[0]["run_name"] == "dml"
    assert rows[4]["size_bytes"] == 1100 and rows[4]["params"] == 1000

    other = auth(other_team_token(api))
    assert api.get(f"/comparisons/{saved['id']}/models", headers=other).status_code == 404
    assert api.get("/comparisons/999999/models").status_code == 404


def test_the_client_and_cli_list_every_trained_model(cli, server: str, tmp_path: Path) -> None:  # noqa: F811
    model, dataset, _ = _ready_inputs(cli, tmp_path)
    config = {
        "name": "dml",
        "teacher": {"model_id": model["id"]},
        "dataset": {"dataset_id": dataset["id"]},
        "student": {"architecture": "resnet8", "kwargs": {"width": 0.25}},
        "training": {"epochs": 1, "batch_size": 8, "device": "cpu"},
        "scheme": {"name": "online", "params": {"peers": 2}},
    }
    run_file = tmp_path / "run.yaml"
    run_file.write_text(json.dumps(config))
    dml = json.loads(cli("runs", "create", "-f", str(run_file), "--json").stdout)["id"]
    kd = json.loads(cli("runs", "create", "-f", str(run_file), "--name", "kd", "--json").stdout)
    _finished(dml, PEERS)
    _finished(kd["id"], SINGLE)

    shown = json.loads(cli("runs", "show", str(dml), "--json").stdout)
    assert [m["label"] for m in shown["trained_models"]] == ["student", "peer 1"]
    text = cli("runs", "show", str(dml)).stdout
    assert "2 trained models:" in text and "peer1_student.pt2" in text
    assert "trained models" not in cli("runs", "show", str(kd["id"])).stdout  # only one

    api = Client(server, _token())
    assert [m["label"] for m in api.run(dml).trained_models()] == ["student", "peer 1"]
    saved = api.create_comparison("dml vs kd", [dml, kd["id"]])
    models = api.comparison_models(saved.id)
    assert [(m.run_id, m.label, m.top1) for m in models] == [
        (dml, "student", 0.9),
        (dml, "peer 1", 0.8),
        (kd["id"], "student", 0.85),
    ]
    as_json = json.loads(cli("comparisons", "show", str(saved.id), "--json").stdout)
    assert [m["label"] for m in as_json["models"]] == ["student", "peer 1", "student"]
    table = cli("comparisons", "show", str(saved.id)).stdout
    assert "3 trained models:" in table and f"#{dml} peer 1" in table


def _token() -> str:
    from backend.bootstrap import ensure_admin
    from core.db import session_scope

    with session_scope() as session:
        return ensure_admin(session).token
