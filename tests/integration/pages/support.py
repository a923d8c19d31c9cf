"""Shared data and helpers of the page tests (AppTest against a live API); no tests here."""

from __future__ import annotations

from typing import Any

from tests.conftest import ROOT

APP = str(ROOT / "ui" / "streamlit_app.py")
# How long one script run of a page may take: a deadline, not an expectation. A page that asks the
# worker for a plan waits for it (up to the client's PLAN_TIMEOUT_S), so this is longer than that.
TIMEOUT = 200
PASSWORD = "admin-password-123"
TEACHER_KWARGS = {"input_shape": [3, 8, 8], "num_classes": 4, "width": 0.25}
INSPECTION = {
    "input_shape": [3, 8, 8],
    "output_shape": [4],
    "num_classes": 4,
    "params": 1234,
    "flops": 56789,
    "layers": [
        {
            "path": "conv1",
            "type": "Conv2d",
            "input_shape": [3, 8, 8],
            "output_shape": [4, 8, 8],
            "params": 108,
            "stage": 0,
        },
        {
            "path": "layer1",
            "type": "Sequential",
            "input_shape": [4, 8, 8],
            "output_shape": [4, 8, 8],
            "params": 300,
            "stage": 0,
        },
        {
            "path": "layer2",
            "type": "Sequential",
            "input_shape": [4, 8, 8],
            "output_shape": [8, 4, 4],
            "params": 900,
            "stage": 1,
        },
        {
            "path": "fc",
            "type": "Linear",
            "input_shape": [8],
            "output_shape": [4],
            "params": 36,
            "stage": None,
        },
    ],
    "stages": [
        {
            "index": 0,
            "resolution": [8, 8],
            "channels": 4,
            "layers": ["conv1", "layer1"],
            "end": "layer1",
        },
        {"index": 1, "resolution": [4, 4], "channels": 8, "layers": ["layer2"], "end": "layer2"},
    ],
}
SUMMARY = {
    "teacher_top1": 0.91,
    "student_top1": 0.87,
    "agreement": 0.93,
    "teacher_params": 1234,
    "student_params": 321,
    "student_size_bytes": 2048,
    "teacher_size_bytes": 8192,
    "teacher_flops": 56789,
    "student_flops": 9000,
    "teacher_cpu_latency_ms": 1.5,
    "student_cpu_latency_ms": 0.5,
}


def update(table_name: str, row_id: int, **fields: Any) -> None:
    from core.db import session_scope, tables

    with session_scope() as session:
        row = session.get(getattr(tables, table_name), row_id)
        for key, value in fields.items():
            setattr(row, key, value)


def finish_run(run_id: int) -> None:
    """What a worker leaves behind after a successful run: summary, metrics, artifacts."""
    from datetime import UTC, datetime, timedelta

    from core.db import session_scope
    from core.db.tables import Artifact, Metric, Run
    from core.storage import get_store

    with session_scope() as session:
        run = session.get(Run, run_id)
        now = datetime.now(UTC)
        run.status, run.progress, run.epoch, run.step, run.total_steps = "succeeded", 1.0, 2, 6, 6
        run.started_at, run.finished_at, run.summary = now - timedelta(seconds=75), now, SUMMARY
        for step in range(1, 7):
            for name, value in (
                ("loss", 3.0 / step),
                ("loss/ce", 2.0 / step),
                ("loss/kd", 1.0 / step),
                ("lr", 0.05),
            ):
                session.add(
                    Metric(run_id=run_id, name=name, step=step, epoch=(step - 1) // 3, value=value)
                )
        for epoch, top1 in ((0, 0.6), (1, 0.87)):
            session.add(
                Metric(
                    run_id=run_id, name="val/top1", step=3 * (epoch + 1), epoch=epoch, value=top1
                )
            )
        stored = get_store().put_bytes(
            f"teams/{run.team_id}/runs/{run_id}/student.safetensors", b"weights" * 100
        )
        session.add(
            Artifact(
                team_id=run.team_id,
                run_id=run_id,
                kind="student_safetensors",
                filename="student.safetensors",
                storage_key=stored.key,
                size_bytes=stored.size,
                sha256=stored.sha256,
            )
        )


def texts(elements: Any) -> str:
    """The values of AppTest elements (titles, captions, errors, ...) as one text."""
    return "\n".join(str(e.value) for e in elements)
