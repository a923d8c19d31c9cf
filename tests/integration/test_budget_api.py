"""Students found for a budget over REST: 202 until a worker measured the candidates (here the
worker's task runs in-process, on the message the API queued), then the cost table for any
target from the same measurements; 422s for bad targets and search spaces; a sweep of the best
candidates launched through the client and saved as one comparison."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from core import budget

from .api_helpers import ready_dataset, ready_model, run_config, set_row, upload_model
from .test_cli_remote import _ready_inputs, cli, server  # noqa: F401 - fixtures

# resnet8 has a width and no depth parameter: 7 candidates (the depth grid: the unit tests)
SEARCH = {"target": {"params": 20000}, "architecture": "resnet8", "kwargs": {"width": 0.5}}


def _measure_messages(studio_env) -> list[list[Any]]:
    """The args of every MEASURE_STUDENTS message on the cpu queue."""
    import redis

    broker = redis.Redis.from_url(studio_env.env["DS_BROKER_URL"])
    return [
        json.loads(base64.b64decode(m["body"]))[0]
        for m in map(json.loads, broker.lrange("cpu", 0, -1))
        if m["headers"]["task"] == "worker.tasks.measure_students"
    ]


def _run_worker_task(studio_env) -> None:
    """Do what a worker does with the queued message: measure and store (in-process)."""
    from worker.tasks import measure_students

    (args,) = _measure_messages(studio_env)
    measure_students(*args)


def test_search_answers_202_then_the_table_for_any_target(api, studio_env) -> None:
    dataset_id = ready_dataset(api)  # inputs [3, 8, 8], 4 classes
    body = {**SEARCH, "dataset_id": dataset_id}
    first = api.post("/students/search", json=body)
    assert first.status_code == 202, first.text
    assert first.headers["Retry-After"] == "2"
    pending = first.json()
    assert pending["status"] == "pending" and "send the same request again" in pending["detail"]
    again = api.post("/students/search", json=body)
    assert again.status_code == 202 and again.json()["job_id"] == pending["job_id"]
    messages = _measure_messages(studio_env)
    assert len(messages) == 1  # queued once, however often asked
    candidates, shape, classes = messages[0]
    assert shape == [3, 8, 8] and classes == 4
    assert candidates[0] == ["resnet8", {"width": 0.125}]  # base width 0.5 x 0.25

    _run_worker_task(studio_env)
    table = api.post("/students/search", json=body)
    assert table.status_code == 200, table.text
    out = table.json()
    assert out["metric"] == "params" and out["budget"] == 20000
    assert out["tried"] == len(candidates) == len(out["candidates"]) + out["rejected"]
    rows = out["candidates"]
    assert rows and all(r["params"] <= 20000 for r in rows)
    assert [r["params"] for r in rows] == sorted((r["params"] for r in rows), reverse=True)
    assert rows[0]["percent_of_budget"] == round(100 * rows[0]["params"] / 20000, 1)
    assert all(r["flops"] > 0 and r["latency_ms"] > 0 for r in rows)
    assert out["message"].startswith(f"{len(rows)} of {len(candidates)} candidates meet")

    # another target over the same space: from the same measurements, nothing queued again
    by_flops = api.post("/students/search", json={**body, "target": {"flops": 300000}})
    assert by_flops.status_code == 200
    assert all(r["flops"] <= 300000 for r in by_flops.json()["candidates"])
    none = api.post("/students/search", json={**body, "target": {"params": 10}}).json()
    assert none["candidates"] == [] and none["rejected"] == none["tried"]
    assert none["message"].startswith(
        "no candidate meets 10 parameters; the smallest is resnet8 {'width': 0.125}"
    )
    assert len(_measure_messages(studio_env)) == 1


def test_search_refuses_bad_targets_and_spaces(api) -> None:
    def detail(body: dict[str, Any]) -> str:
        r = api.post("/students/search", json={"input_shape": [1, 8, 8], "num_classes": 3, **body})
        assert r.status_code == 422, r.text
        return r.json()["detail"]

    assert "got none" in detail({"target": {}, "architecture": "resnet"})
    assert "got flops, params" in detail(
        {"target": {"params": 1000, "flops": 5000}, "architecture": "resnet"}
    )
    assert "must be a positive number, got -5" in detail(
        {"target": {"params": -5}, "architecture": "resnet"}
    )
    assert "unknown student architecture 'resnet9'" in detail(
        {"target": {"params": 1000}, "architecture": "resnet9"}
    )
    assert "nothing to search; search its family's generic entry 'resnet'" in detail(
        {"target": {"params": 1000}, "architecture": "resnet8x4"}
    )
    assert "give architecture" in detail({"target": {"params": 1000}})
    no_inputs = api.post(
        "/students/search", json={"target": {"params": 1000}, "architecture": "resnet"}
    )
    assert no_inputs.status_code == 422 and "needs the students' inputs" in no_inputs.text


def test_derived_from_a_teacher_without_architecture_is_refused(api) -> None:
    teacher = ready_model(api)  # a .pt2 graph: no zoo architecture to derive from
    r = api.post(
        "/students/search",
        json={"target": {"params": 1000}, "teacher_model_id": teacher, "dataset_id": None},
    )
    assert r.status_code == 422
    assert "derived students need a teacher whose architecture is in the zoo" in r.text


def test_students_derived_from_a_zoo_teacher_take_its_inputs(api, studio_env) -> None:
    """No architecture, a zoo teacher: the grid of `derived_architecture`'s factors, built for
    the inputs the teacher records (no dataset given)."""
    kwargs = {
        "architecture": "resnet8",
        "kwargs": json.dumps({"input_shape": [1, 8, 8], "num_classes": 3}),
    }
    r = upload_model(
        api, "zoo-teacher", b"weights", "teacher.safetensors", format="safetensors", **kwargs
    )
    assert r.status_code == 201, r.text
    set_row(
        "Model",
        r.json()["id"],
        status="ready",
        inspection={"input_shape": [1, 8, 8], "num_classes": 3},
    )
    body = {"target": {"latency_ms": 1000.0}, "teacher_model_id": r.json()["id"]}
    assert api.post("/students/search", json=body).status_code == 202
    ((candidates, shape, classes),) = _measure_messages(studio_env)
    assert (shape, classes) == ([1, 8, 8], 3)
    assert candidates == [["resnet8", {"width": w}] for w in (0.25, 0.375, 0.5, 0.75, 1.0)]
    _run_worker_task(studio_env)
    out = api.post("/students/search", json=body).json()
    assert out["metric"] == "latency_ms" and out["tried"] == 5 and out["rejected"] == 0
    latencies = [c["latency_ms"] for c in out["candidates"]]
    assert latencies == sorted(latencies, reverse=True)


def test_best_candidates_launch_as_runs_in_one_comparison(api, studio_env) -> None:
    from client import Client

    teacher, dataset_id = ready_model(api), ready_dataset(api)
    studio = Client("http://testserver", http=api)
    body: dict[str, Any] = {"architecture": "resnet8", "kwargs": {"width": 0.5}}
    assert (
        api.post("/students/search", json={**SEARCH, "dataset_id": dataset_id}).status_code == 202
    )
    _run_worker_task(studio_env)
    table = studio.search_students({"params": 20000}, **body, dataset_id=dataset_id, wait=0)
    best = table.candidates[:2]
    sweep = studio.launch_candidates(run_config(teacher, dataset_id, name="kd"), best)
    assert [r.name for r in sweep.runs] == [f"kd [{c.label}]" for c in best]
    assert [r.config["student"] for r in sweep.runs] == [
        {**r.config["student"], "architecture": "resnet8", "kwargs": c.kwargs}
        for r, c in zip(sweep.runs, best, strict=True)
    ]
    assert sweep.comparison.run_ids == [r.id for r in sweep.runs]
    assert studio.comparison(sweep.comparison.id).name == "kd: budget candidates"


def test_cli_search_and_launch(cli: Any, tmp_path: Path) -> None:  # noqa: F811
    """`distill-studio students search` against a running API (uvicorn, SQLite): the table, and
    `--launch 2 -f run.yaml` starting the best two as runs saved as one comparison."""
    from worker.tasks import measure_students

    model, dataset, _ = _ready_inputs(cli, tmp_path)
    # the worker's part, done before asking (the 202 path: the REST tests above)
    measure_students([[a, k] for a, k in budget.zoo_candidates("resnet8")], [3, 8, 8], 4)
    search = ["students", "search", "--params", "20000", "--architecture", "resnet8"]
    shown = cli(*search, "--dataset", str(dataset["id"])).stdout
    assert "architecture" in shown and "% of budget" in shown
    assert "resnet8 width=0.5 " in shown and "candidates meet 20,000 parameters" in shown

    run_file = tmp_path / "run.yaml"
    config = run_config(model["id"], dataset["id"], name="kd")
    run_file.write_text(yaml.safe_dump(config))
    out = json.loads(
        cli(
            *search, "--dataset", str(dataset["id"]), "--launch", "2", "-f", str(run_file), "--json"
        ).stdout
    )
    best = out["candidates"][:2]
    launched = out["launched"]
    assert [r["config"]["student"]["kwargs"] for r in launched["runs"]] == [
        c["kwargs"] for c in best
    ]
    assert launched["comparison"]["run_ids"] == [r["id"] for r in launched["runs"]]
    shown = json.loads(
        cli("comparisons", "show", str(launched["comparison"]["id"]), "--json").stdout
    )
    assert shown["name"] == "kd: budget candidates"

    refused = cli("students", "search", "--architecture", "resnet8", "--dataset", "1", code=1)
    assert "target: give exactly one target" in refused.stderr


@pytest.mark.slow
@pytest.mark.one_database
def test_a_real_worker_measures_the_candidates_and_trains_the_sweep(
    api, worker, demo_files: tuple[Path, Path]
) -> None:
    from client import Client

    from .conftest import mark_ready_from, upload_demo, wait_run
    from .conftest import run_config as worker_config

    model, dataset = mark_ready_from(api, *upload_demo(api, demo_files))  # digits: [1, 8, 8], 10
    studio = Client("http://testserver", http=api)
    table = studio.search_students(
        {"params": 20000}, architecture="resnet8", dataset_id=dataset["id"], wait=300
    )
    assert table.input_shape == [1, 8, 8] and table.num_classes == 10 and table.tried == 7
    assert table.candidates and all(c.params <= 20000 for c in table.candidates)
    assert table.candidates[0].kwargs == {"width": 0.5}  # the widest resnet8 under 20k
    config = worker_config(
        model, dataset, name="swept", training={"epochs": 1, "export_onnx": False}
    )
    sweep = studio.launch_candidates(config, table.candidates[:2])
    for run in sweep.runs:
        done = wait_run(api, run.id)
        assert done["status"] == "succeeded", (done, worker.output()[-3000:])
    models = studio.comparison_models(sweep.comparison.id)
    assert sorted(m.run_id for m in models) == sorted(r.id for r in sweep.runs)
    assert [m.params for m in sorted(models, key=lambda m: m.run_id)] == [
        c.params for c in table.candidates[:2]
    ]
