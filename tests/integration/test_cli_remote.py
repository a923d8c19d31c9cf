"""`distill-studio runs | models | datasets | teams` against a real API server (uvicorn in a
thread, SQLite, the real broker). No worker runs: the test stands in for it in the database."""

from __future__ import annotations

import json
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file
from typer.testing import CliRunner

from cli.main import app

INSPECTION = {
    "input_shape": [3, 8, 8],
    "output_shape": [4],
    "num_classes": 4,
    "params": 1234,
    "flops": 5678,
    "layers": [
        {
            "path": "fc",
            "type": "Linear",
            "input_shape": [16],
            "output_shape": [4],
            "params": 68,
            "stage": None,
        }
    ],
    "stages": [],
}
INFO = {
    "num_samples": 24,
    "num_classes": 4,
    "classes": ["a", "b", "c", "d"],
    "class_counts": [6, 6, 6, 6],
    "input_shape": [3, 8, 8],
    "kind": "image",
}


@pytest.fixture
def server(sqlite_env) -> Iterator[str]:
    """The API on a free port of 127.0.0.1, served by uvicorn from a thread."""
    import uvicorn

    from backend.app import create_app

    config = uvicorn.Config(
        create_app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def cli(server: str) -> Any:
    from backend.bootstrap import ensure_admin
    from core.db import session_scope

    with session_scope() as session:
        token = ensure_admin(session).token
    runner = CliRunner()
    env = {"DS_API_URL": server, "DS_TOKEN": token, "DS_TEAM_ID": ""}

    def invoke(*args: str, code: int = 0) -> Any:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == code, (result.output, result.stderr, result.exception)
        return result

    return invoke


def _set(table: str, row_id: int, **fields: Any) -> None:
    from core.db import session_scope, tables

    with session_scope() as session:
        row = session.get(getattr(tables, table), row_id)
        for key, value in fields.items():
            setattr(row, key, value)


def _finish_next_run(after: int) -> threading.Thread:
    """Stand in for the worker: once a client follows the next run created, it runs halfway,
    then succeeds, announcing each state on the run's event stream as a worker does."""
    from sqlalchemy import select

    from core import events
    from core.db import session_scope
    from core.db.tables import Run
    from core.settings import get_settings
    from worker.reporting import announce

    broker = events._publisher(get_settings().broker_url)

    def followed(run_id: int) -> bool:
        name = events.channel(run_id, events._db(broker))
        return any(count for _, count in broker.pubsub_numsub(name))

    def work() -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            with session_scope() as session:
                run_id = session.scalar(select(Run.id).where(Run.id > after))
            if run_id and followed(run_id):
                _set("Run", run_id, status="running", progress=0.5, epoch=1, step=3, total_steps=6)
                announce(run_id)
                _set(
                    "Run",
                    run_id,
                    status="succeeded",
                    progress=1.0,
                    step=6,
                    finished_at=datetime.now(UTC),
                    summary={
                        "teacher_top1": 0.9,
                        "student_top1": 0.8,
                        "student_params": 800,
                        "teacher_cache": {
                            "used": True,
                            "top_k": 8,
                            "size_bytes": 4096,
                            "replayed_batches": 6,
                            "recorded_batches": 0,
                            "teacher_loaded": "no",
                        },  # fmt: skip
                    },
                )
                announce(run_id)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_cli_against_a_running_api(cli, tmp_path: Path) -> None:
    weights = tmp_path / "teacher.safetensors"
    save_file({"fc.weight": np.zeros((4, 16), np.float32)}, str(weights))
    data = tmp_path / "tiny.npz"
    np.savez(data, x=np.zeros((24, 3, 8, 8), np.float32), y=np.arange(24) % 4)

    pushed = json.loads(
        cli(
            "models",
            "push",
            str(weights),
            "--name",
            "teacher",
            "--architecture",
            "resnet8",
            "--kwargs",
            '{"input_shape": [3, 8, 8], "num_classes": 4}',
            "--tag",
            "digits",
            "--description",
            "a teacher",
            "--json",
        ).stdout
    )
    assert pushed["format"] == "safetensors" and pushed["tags"] == ["digits"]
    assert pushed["status"] == "pending"
    dataset = json.loads(cli("datasets", "push", str(data), "--name", "tiny", "--json").stdout)
    _set("Model", pushed["id"], status="ready", inspection=INSPECTION)
    _set("Dataset", dataset["id"], status="ready", info=INFO)

    listed = cli("models", "list", "--tag", "digits").stdout
    assert "teacher" in listed and "safetensors" in listed and "resnet8" in listed
    assert json.loads(cli("models", "list", "--tag", "other", "--json").stdout) == []
    shown = cli("models", "show", str(pushed["id"])).stdout
    assert "a teacher" in shown and "source" in shown and "upload" in shown
    assert "tiny" in cli("datasets", "list").stdout

    # runs: create from YAML, list, show, compare, cancel, create --wait
    config = {
        "name": "kd",
        "teacher": {"model_id": pushed["id"]},
        "dataset": {"dataset_id": dataset["id"]},
        "student": {"architecture": "resnet8", "kwargs": {"width": 0.25}},
        "losses": [{"name": "ce"}, {"name": "kd", "params": {"temperature": 4}}],
        "training": {"epochs": 1, "batch_size": 8, "lr": 0.05, "device": "cpu"},
    }
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(config))
    first = json.loads(cli("runs", "create", "-f", str(run_file), "--json").stdout)
    assert first["status"] == "queued" and first["name"] == "kd"

    config["training"]["lr"] = 0.1
    run_file.write_text(yaml.safe_dump(config))
    worker = _finish_next_run(first["id"])
    waited = cli(
        "runs", "create", "-f", str(run_file), "--name", "kd-lr0.1", "--wait", "--poll", "0.1"
    )
    worker.join()
    assert "queued" in waited.stderr and "succeeded: 100%" in waited.stderr
    assert "running: 50% (epoch 1, step 3/6" in waited.stderr
    assert "kd-lr0.1" in waited.stdout and "student_top1" in waited.stdout
    second = json.loads(cli("runs", "list", "--json").stdout)[0]
    assert second["name"] == "kd-lr0.1" and second["status"] == "succeeded"
    assert (
        "Teacher-output cache (top-8 logits, 4.0 KiB): 6 of 6 training batches replayed without "
        "the teacher; the teacher was not loaded"
    ) in cli("runs", "show", str(second["id"])).stdout

    table = cli("runs", "list", "--status", "queued").stdout
    assert "kd " in table and "kd-lr0.1" not in table
    assert "queued" in cli("runs", "show", str(first["id"])).stdout

    compared = cli("runs", "compare", str(first["id"]), str(second["id"])).stdout
    width = len(compared.splitlines()[1].split("  ")[0])  # the label column, from its dashes
    lines = {line[:width].strip(): line[width:] for line in compared.splitlines()[2:]}
    assert lines["* lr"].split() == ["0.05", "0.1"]
    assert lines["losses"].strip().split("  ")[0] == "ce + kd(temperature=4)"
    assert lines["student top-1"].split() == ["-", "0.8"] and "epochs" in lines
    as_json = json.loads(
        cli("runs", "compare", str(first["id"]), str(second["id"]), "--json").stdout
    )
    assert as_json["run_ids"] == [first["id"], second["id"]]
    assert as_json["rows"]["lr"] == [0.05, 0.1] and as_json["rows"]["student top-1"] == [None, 0.8]

    assert cli("runs", "cancel", str(first["id"])).stdout.strip() == f"run {first['id']} cancelled"
    failed = cli("runs", "cancel", str(first["id"]), code=1)
    assert f"error (409): run {first['id']} already cancelled" in failed.stderr
    refused = cli("runs", "register", str(second["id"]), code=1)  # no weights were recorded
    assert "has no student weights" in refused.stderr

    # teams
    created = json.loads(cli("teams", "create", "lab", "--json").stdout)
    assert created["role"] == "owner"
    assert "lab" in cli("teams", "list").stdout
    members = json.loads(cli("teams", "members", str(created["id"]), "--json").stdout)
    assert [m["username"] for m in members] == ["admin"]
    empty = json.loads(cli("models", "list", "--team", str(created["id"]), "--json").stdout)
    assert empty == []

    # errors say what is wrong
    missing = cli("runs", "show", "9999", code=1)
    assert "error (404): run 9999 not found" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("- not a mapping")
    assert "one run config" in cli("runs", "create", "-f", str(bad), code=2).stderr
    attention = {
        **config,
        "student": {"source": "model", "model": {"model_id": pushed["id"]}},
        "layer_pairs": [{"teacher": "fc", "student": "fc"}],
        "losses": [{"name": "ce"}, {"name": "attention_kl"}],
    }
    bad.write_text(yaml.safe_dump(attention))
    refused = cli("runs", "create", "-f", str(bad), code=1).stderr
    assert (
        "error (422): layer_pairs[0].teacher: the teacher layer 'fc' holds no attention" in refused
    ), refused
    assert cli("models", "delete", str(pushed["id"]), code=1).stderr.startswith(
        "error (409): model"
    )
    assert "archived" in cli("models", "delete", str(pushed["id"]), "--archive").stdout


def test_cli_needs_a_token(server: str) -> None:
    result = CliRunner().invoke(app, ["runs", "list"], env={"DS_API_URL": server, "DS_TOKEN": ""})
    assert result.exit_code == 2 and "DS_TOKEN" in result.stderr
    result = CliRunner().invoke(
        app, ["runs", "list", "--token", "ds_abcdefgh_" + "x" * 43], env={"DS_API_URL": server}
    )
    assert result.exit_code == 1 and "error (401): unknown API token" in result.stderr


def _ready_inputs(cli, tmp_path: Path) -> tuple[dict, dict, Path]:
    """A ready teacher (pushed with the CLI, inspected by the test) and dataset; and the
    teacher's file."""
    weights = tmp_path / "teacher.safetensors"
    save_file({"fc.weight": np.ones((4, 16), np.float32)}, str(weights))
    data = tmp_path / "tiny.npz"
    np.savez(data, x=np.zeros((24, 3, 8, 8), np.float32), y=np.arange(24) % 4)
    model = json.loads(
        cli(
            "models",
            "push",
            str(weights),
            "--name",
            "teacher",
            "--architecture",
            "resnet8",
            "--kwargs",
            '{"input_shape": [3, 8, 8], "num_classes": 4}',
            "--json",
        ).stdout
    )
    dataset = json.loads(cli("datasets", "push", str(data), "--name", "tiny", "--json").stdout)
    _set("Model", model["id"], status="ready", inspection=INSPECTION)
    _set("Dataset", dataset["id"], status="ready", info=INFO)
    return model, dataset, weights


def test_cli_tokens_webhooks_audit_comparisons_and_downloads(
    cli, server: str, tmp_path: Path
) -> None:
    from core.db import session_scope
    from core.db.tables import Artifact
    from core.storage import get_store

    model, dataset, weights = _ready_inputs(cli, tmp_path)

    # downloads: a model, a dataset, a run's artifact (stored as a worker would)
    got = cli("models", "download", str(model["id"]), "-o", str(tmp_path / "back.safetensors"))
    assert got.stdout.strip() == str(tmp_path / "back.safetensors")
    assert (tmp_path / "back.safetensors").read_bytes() == weights.read_bytes()
    into = tmp_path / "out"
    into.mkdir()
    as_json = json.loads(
        cli("datasets", "download", str(dataset["id"]), "-o", str(into), "--json").stdout
    )
    assert as_json["path"] == str(into / "tiny.npz") and as_json["size_bytes"] > 0

    config = {
        "name": "kd",
        "teacher": {"model_id": model["id"]},
        "dataset": {"dataset_id": dataset["id"]},
        "student": {"architecture": "resnet8", "kwargs": {"width": 0.25}},
        "training": {"epochs": 1, "batch_size": 8, "device": "cpu"},
    }
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(config))
    first = json.loads(cli("runs", "create", "-f", str(run_file), "--json").stdout)
    second = json.loads(
        cli("runs", "create", "-f", str(run_file), "--name", "kd2", "--json").stdout
    )
    stored = get_store().put_bytes(f"team-1/runs/{first['id']}/student.safetensors", b"student")
    with session_scope() as session:
        art = Artifact(
            team_id=1,
            run_id=first["id"],
            kind="student_safetensors",
            filename="student.safetensors",
            storage_key=stored.key,
            size_bytes=stored.size,
            sha256=stored.sha256,
        )
        session.add(art)
        session.flush()
        art_id = art.id
    listed = json.loads(cli("artifacts", "list", str(first["id"]), "--json").stdout)
    assert [(a["id"], a["kind"]) for a in listed] == [(art_id, "student_safetensors")]
    assert "student.safetensors" in cli("artifacts", "list", str(first["id"])).stdout
    path = cli("artifacts", "download", str(art_id), "-o", str(into)).stdout.strip()
    assert Path(path) == into / "student.safetensors" and Path(path).read_bytes() == b"student"
    assert (
        "error (404): artifact 9999 not found"
        in cli("artifacts", "download", "9999", code=1).stderr
    )

    # saved comparisons
    saved = json.loads(
        cli(
            "comparisons",
            "create",
            "kd vs kd2",
            str(first["id"]),
            str(second["id"]),
            "--description",
            "same config",
            "--json",
        ).stdout
    )
    assert saved["run_ids"] == [first["id"], second["id"]] and saved["created_by_name"] == "admin"
    assert [c["id"] for c in json.loads(cli("comparisons", "list", "--json").stdout)] == [
        saved["id"]
    ]
    assert "kd vs kd2" in cli("comparisons", "list").stdout
    shown = cli("comparisons", "show", str(saved["id"])).stdout
    assert "same config" in shown and f"run {second['id']}" in shown and "losses" in shown
    assert cli("comparisons", "delete", str(saved["id"])).stdout.strip() == (
        f"comparison {saved['id']} deleted"
    )
    assert json.loads(cli("comparisons", "list", "--json").stdout) == []

    # webhooks: cancelling a queued run records a delivery (no worker sends it here)
    created = cli(
        "webhooks",
        "create",
        "https://ci.example.com/hook",
        "--event",
        "run.cancelled",
        "--description",
        "ci",
    )
    secret = created.stdout.strip()
    assert secret.startswith("whsec_") and "shown only this once" in created.stderr
    hooks = json.loads(cli("webhooks", "list", "--json").stdout)
    assert [(h["url"], h["events"], h["secret_prefix"]) for h in hooks] == [
        ("https://ci.example.com/hook", ["run.cancelled"], secret[:12])
    ]
    assert (
        "run.cancelled" in cli("webhooks", "list").stdout
        and secret not in cli("webhooks", "list").stdout
    )
    cli("runs", "cancel", str(second["id"]))
    deliveries = json.loads(cli("webhooks", "deliveries", str(hooks[0]["id"]), "--json").stdout)
    assert [(d["event"], d["run_id"]) for d in deliveries] == [("run.cancelled", second["id"])]
    assert "run.cancelled" in cli("webhooks", "deliveries", str(hooks[0]["id"])).stdout
    assert (
        json.loads(
            cli(
                "webhooks", "deliveries", str(hooks[0]["id"]), "--status", "failed", "--json"
            ).stdout
        )
        == []
    )
    bad = cli("webhooks", "create", "ftp://example.com/x", code=1)
    assert "error (422): url: give an http:// or https:// URL" in bad.stderr
    assert cli("webhooks", "delete", str(hooks[0]["id"])).stdout.strip() == (
        f"webhook {hooks[0]['id']} deleted"
    )
    assert json.loads(cli("webhooks", "list", "--json").stdout) == []

    # API tokens: the new one works (read-only), then is revoked
    made = cli("tokens", "create", "--name", "ci", "--read-only", "--expires-in-days", "30")
    secret_token = made.stdout.strip()
    assert secret_token.startswith("ds_") and "shown only this once" in made.stderr
    tokens = json.loads(cli("tokens", "list", "--json").stdout)
    ci = next(t for t in tokens if t["name"] == "ci")
    assert ci["read_only"] is True and ci["revoked_at"] is None and ci["token"] is None
    assert secret_token not in cli("tokens", "list").stdout
    runner = CliRunner()
    env = {"DS_API_URL": server, "DS_TOKEN": secret_token}
    assert runner.invoke(app, ["runs", "list", "--json"], env=env).exit_code == 0
    refused = runner.invoke(app, ["teams", "create", "x"], env=env)
    assert refused.exit_code == 1 and "error (403): this token is read-only" in refused.stderr
    revoked = json.loads(cli("tokens", "revoke", str(ci["id"]), "--json").stdout)
    assert revoked["revoked_at"] is not None
    after = runner.invoke(app, ["runs", "list"], env=env)
    assert after.exit_code == 1 and "error (401): this API token was revoked" in after.stderr
    as_json_token = json.loads(cli("tokens", "create", "--name", "script", "--json").stdout)
    assert as_json_token["token"].startswith("ds_")

    # the audit log saw all of it, newest first, filterable
    entries = json.loads(cli("audit", "list", "--all", "--limit", "2", "--json").stdout)
    actions = [e["action"] for e in entries]
    assert {
        "webhook.create",
        "webhook.delete",
        "comparison.create",
        "comparison.delete",
        "token.create",
        "token.revoke",
        "model.download",
        "run.cancel",
    } <= set(actions), actions
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    only = json.loads(cli("audit", "list", "--action", "webhook", "--json").stdout)
    assert {e["action"] for e in only} == {"webhook.create", "webhook.delete"}
    table = cli("audit", "list", "--resource-type", "comparison").stdout
    assert "comparison.create" in table and "admin" in table and "webhook" not in table


def test_connection_options_anywhere_before_or_after_the_command(server: str, cli) -> None:
    """One callback carries --api-url/--token/--team/--json: they work before the group, between
    group and command, and after the command (as scripts wrote them); a value typed on the
    command line wins over the environment, and the one nearest the command wins."""
    from backend.bootstrap import ensure_admin
    from core.db import session_scope

    with session_scope() as session:
        token = ensure_admin(session).token
    lab = json.loads(cli("teams", "create", "positions", "--json").stdout)["id"]
    runner = CliRunner()
    no_env = {"DS_API_URL": "http://127.0.0.1:9", "DS_TOKEN": "", "DS_TEAM_ID": ""}
    given = ["--api-url", server, "--token", token, "--json"]
    for args in (
        [*given, "teams", "list"],
        ["teams", *given, "list"],
        ["teams", "list", *given],
        ["--api-url", server, "teams", "--token", token, "list", "--json"],
    ):
        result = runner.invoke(app, args, env=no_env)
        assert result.exit_code == 0, (args, result.output, result.exception)
        assert lab in [t["id"] for t in json.loads(result.stdout)], args

    env = {"DS_API_URL": server, "DS_TOKEN": "ds_wrong", "DS_TEAM_ID": ""}
    ok = runner.invoke(app, ["--token", token, "models", "list", "--json"], env=env)
    assert ok.exit_code == 0 and json.loads(ok.stdout) == [], ok.output  # typed beats DS_TOKEN
    stranger = ["--token", token, "--team", "999999"]  # a team the admin is not in
    refused = runner.invoke(app, [*stranger, "models", "list"], env=env)
    assert refused.exit_code == 1 and "error (4" in refused.stderr, refused.output
    nearest = runner.invoke(app, [*stranger, "models", "list", "--team", str(lab)], env=env)
    assert nearest.exit_code == 0, nearest.output  # the --team nearest the command wins


def test_cli_pushes_a_hugging_face_checkpoint_folder_or_zip(cli, tmp_path: Path) -> None:
    from tests.hf_helpers import TINY_BERT, tiny_members, write_zip

    folder = tmp_path / "tiny-bert"
    (folder / "extra").mkdir(parents=True)
    members = tiny_members(TINY_BERT)
    for name, data in members.items():
        (folder / name).write_bytes(data)
    (folder / "extra" / "notes.md").write_text("a sub-folder travels too")
    pushed = json.loads(cli("models", "push", str(folder), "--name", "bert", "--json").stdout)
    assert pushed["format"] == "hf" and pushed["status"] == "pending"
    stored = Path(_stored_path(pushed["id"]))
    with zipfile.ZipFile(stored) as zf:
        assert sorted(zf.namelist()) == ["config.json", "extra/notes.md", "model.safetensors"]
    zipped = write_zip(tmp_path / "bert.zip", members)
    again = json.loads(cli("models", "push", str(zipped), "--name", "bert", "--json").stdout)
    assert again["format"] == "hf" and again["version"] == 2


def _stored_path(model_id: int) -> str:
    """Where the artifact store keeps a model's file (the local store of the test studio)."""
    from core.db import session_scope, tables
    from core.storage import get_store

    with session_scope() as session:
        key = session.get(tables.Model, model_id).storage_key
    return str(get_store().get_file(key, Path(tempfile.mkdtemp()) / "model.zip"))
