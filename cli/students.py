"""`distill-studio students search ...`: students that meet a parameter, FLOPs or latency budget,
and `--launch N` to start the best N as runs of a run config, saved as one comparison.

    distill-studio students search --params 20000 --architecture resnet --dataset 3
    distill-studio students search --latency-ms 0.5 --teacher 7 --dataset 3 --launch 2 -f run.yaml
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.connection import Connection, command, with_connection
from cli.remote import emit_json, load_config, table

students_app = with_connection(
    typer.Typer(
        help="Students found for a budget (params, FLOPs, CPU latency).", no_args_is_help=True
    )
)
HEADERS = ["#", "architecture", "params", "FLOPs", "latency ms", "% of budget"]


@command(students_app, "search")
def students_search(
    conn: Connection,
    params: Annotated[float | None, typer.Option(help="At most this many parameters.")] = None,
    flops: Annotated[float | None, typer.Option(help="At most this many FLOPs per sample.")] = None,
    latency_ms: Annotated[
        float | None, typer.Option(help="At most this CPU latency at batch 1 (ms).")
    ] = None,
    architecture: Annotated[
        str | None, typer.Option(help="Zoo student to search (resnet, wrn, vgg, mlp, ...).")
    ] = None,
    kwargs: Annotated[
        str | None, typer.Option(help="Its base parameters as JSON, e.g. '{\"width\": 0.5}'.")
    ] = None,
    teacher: Annotated[
        int | None, typer.Option(help="Without --architecture: derive students from this model.")
    ] = None,
    dataset: Annotated[
        int | None, typer.Option(help="Dataset whose inputs the students take.")
    ] = None,
    launch: Annotated[
        int, typer.Option(help="Launch the best N (1-3) as runs of -f, saved as a comparison.")
    ] = 0,
    file: Annotated[
        Path | None, typer.Option("-f", "--file", help="Run config (YAML) for --launch.")
    ] = None,
) -> None:
    """The candidates of a depth/width grid that meet the target, largest first."""
    if launch and file is None:
        raise typer.BadParameter("--launch needs a run config: -f run.yaml", param_hint="--launch")
    if not 0 <= launch <= 3:
        raise typer.BadParameter("launch 1 to 3 candidates", param_hint="--launch")
    target = {
        k: v
        for k, v in {"params": params, "flops": flops, "latency_ms": latency_ms}.items()
        if v is not None
    }
    try:
        base = json.loads(kwargs) if kwargs else None
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--kwargs") from None
    api = conn.client()

    def waiting(pending, waited: float) -> None:  # noqa: ANN001 - client.Pending
        if not conn.as_json:
            typer.echo(f"{pending.detail} ({waited:.0f}s)", err=True)

    result = api.search_students(
        target,
        architecture=architecture,
        kwargs=base,
        teacher_model_id=teacher,
        dataset_id=dataset,
        on_pending=waiting,
    )
    sweep = None
    if launch:
        assert file is not None
        chosen = result.candidates[:launch]
        if not chosen:
            typer.echo(f"error: nothing to launch: {result.message}", err=True)
            raise typer.Exit(1)
        sweep = api.launch_candidates(load_config(file), chosen)
    if conn.as_json:
        out = result.model_dump(mode="json")
        if sweep is not None:
            out["launched"] = sweep.model_dump(mode="json")
        emit_json(out)
        return
    rows = [
        [i, c.label, f"{c.params:,}", f"{c.flops:,}", c.latency_ms, c.percent_of_budget]
        for i, c in enumerate(result.candidates, 1)
    ]
    if rows:
        typer.echo(table(HEADERS, rows))
    typer.echo(f"{result.message} (tried {result.tried}, rejected {result.rejected})")
    if sweep is not None:
        for run in sweep.runs:
            typer.echo(f"run {run.id} queued ({run.name})")
        typer.echo(f"comparison {sweep.comparison.id}: {sweep.comparison.name}")
