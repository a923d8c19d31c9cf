"""`distill-studio runs | models | datasets | teams | artifacts | comparisons | tokens | webhooks |
audit ...`: a running studio, scripted over REST.

    distill-studio runs create -f run.yaml --wait      launch a run config, follow it to the end
    distill-studio runs list | show ID | cancel ID | wait ID | register ID --name NAME
    distill-studio runs compare 12 14 15               configs and results side by side
    distill-studio runs metrics 12 --name loss --max-points 500   a run's series, downsampled
    distill-studio models push teacher.pt2 --name resnet32
    distill-studio models push w.safetensors --name r8 --architecture resnet8 \\
        --kwargs '{"input_shape": [3, 32, 32], "num_classes": 10}'
    distill-studio models push all-MiniLM-L6-v2/ --name minilm   (a Hugging Face folder or .zip)
    distill-studio models list --tag cifar10 | show ID | update ID --tag prod | delete ID [--archive]
    distill-studio datasets push cifar.npz --name cifar | list | show ID | delete ID [--archive]
    distill-studio teams list | create NAME | members ID | invite ID USER --role admin | ...
    distill-studio teams invitations [--sent TEAM_ID] | accept INVITATION_ID | decline ID |
        withdraw TEAM_ID INVITATION_ID
    distill-studio models download ID -o teacher.pt2   (datasets download, artifacts download too)
    distill-studio artifacts list RUN_ID | download ID [-o DEST]
    distill-studio comparisons create NAME 12 14 | list | show ID | delete ID
        (runs show and comparisons show list every trained model: peers, generations, int8)
    distill-studio tokens list | create --name ci --read-only | revoke ID
    distill-studio webhooks list | create URL --event run.failed | delete ID | deliveries ID
    distill-studio audit list --action model --all

Every command talks to `--api-url` (DS_API_URL) with `--token` (DS_TOKEN), acting for `--team`
(DS_TEAM_ID, default: the token's team). `--json` prints JSON on stdout for scripts; tables and
progress otherwise (progress and errors go to stderr). These four are declared once
(cli/connection.py) and may come before the group, after it or after the command:
`distill-studio --json runs list`, `distill-studio runs --json list`, `distill-studio runs list
--json`. Errors exit with status 1 and the API's
message; `runs create --wait` and `runs wait` exit with 1 when the run did not succeed.

It uses only the typed client (`client`), never the database.
"""

from __future__ import annotations

import json
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import BaseModel

from cli.connection import Connection, command, with_connection
from client import Client, Run, walk
from core.teacher_cache import cache_line

Limit = Annotated[int, typer.Option(help="Rows per page.", min=1, max=200)]
AllPages = Annotated[bool, typer.Option("--all", help="Follow the cursor through every page.")]
Tags = Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeat for several).")]


def _app(help_text: str) -> typer.Typer:
    """A REST sub-command group whose callback takes the connection options too."""
    return with_connection(typer.Typer(help=help_text, no_args_is_help=True))


runs_app = _app("Launch, follow, cancel and compare runs.")
models_app = _app("The model registry: push, list, tag, download, delete or archive.")
datasets_app = _app("Datasets: push, list, download, delete or archive.")
teams_app = _app("Teams and their members.")
artifacts_app = _app("A run's outputs: list and download them.")
comparisons_app = _app("Saved comparisons of runs, shared with the team.")
tokens_app = _app("Your API tokens for scripts: list, create, revoke.")
webhooks_app = _app("URLs told when runs end (admins and owners).")
audit_app = _app("The team's audit log (admins and owners).")

REMOTE_APPS: dict[str, typer.Typer] = {}  # filled at the end of the module: name -> sub-command


# -- plumbing ---------------------------------------------------------------------------------


def _listed(list_page: Callable[..., Any], limit: int, every: bool, **filters: Any) -> list[Any]:
    """One page of `limit` items, or with --all every page (pages of `limit`)."""
    return list(walk(list_page, page_size=limit, max_items=None if every else limit, **filters))


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def emit_json(value: Any) -> None:
    typer.echo(json.dumps(_plain(value), indent=2, default=str))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table (no colours: it pipes well)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value) or "-"
    return str(value)


def _when(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M") if value else None


Dest = Annotated[
    Path,
    typer.Option(
        "-o", "--output", help="File to write, or an existing folder (the server's file name)."
    ),
]


def _downloaded(what: str, item_id: int, path: Path, as_json: bool) -> None:
    if as_json:
        emit_json({"id": item_id, "path": str(path), "size_bytes": path.stat().st_size})
    else:
        typer.echo(str(path))
        typer.echo(f"{what} {item_id}: {size_text(path.stat().st_size)} written", err=True)


def size_text(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


# -- runs -------------------------------------------------------------------------------------


def load_config(path: Path) -> dict[str, Any]:
    """A run config from a YAML or JSON file."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint="-f") from None
    except yaml.YAMLError as exc:
        raise typer.BadParameter(
            f"{path} is not valid YAML or JSON: {exc}", param_hint="-f"
        ) from None
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path} must hold one run config (a mapping)", param_hint="-f")
    return data


def _progress_line(run: Run) -> str:
    if run.waiting:  # queued for GPUs: says how many and where
        return f"run {run.id} queued on {run.queue}: {run.waiting}"
    eta = f", eta {run.eta_seconds:.0f}s" if run.eta_seconds else ""
    return (
        f"run {run.id} {run.status}: {run.progress:.0%} (epoch {run.epoch}, step {run.step}/"
        f"{run.total_steps or '?'}{eta})"
    )


SAMPLE_CHARS = 120  # characters of each text shown per sample line


def sample_lines(epoch: int | None, samples: Any) -> list[str]:
    """A run's live samples (a language model's continuations of the validation prompts, the
    teacher's next to the student's after `epoch`, 0-based) as lines for a terminal."""
    if not isinstance(samples, list):
        return []

    def cut(value: Any) -> str:
        text = " ".join(str(value).split()) if value is not None else "-"
        return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"

    after = f" after epoch {epoch}" if isinstance(epoch, int) else ""
    lines = [f"samples{after}:"] if samples else []
    for i, sample in enumerate(s for s in samples if isinstance(s, dict)):
        lines += [
            f"  [{i + 1}] prompt:  {cut(sample.get('prompt'))}",
            f"      teacher: {cut(sample.get('teacher'))}",
            f"      student: {cut(sample.get('student'))}",
        ]
    return lines


def _follow_run(api: Client, run_id: int, poll: float, timeout: float | None, quiet: bool) -> Run:
    last = [""]
    shown: list[int | None] = [None]  # the epoch whose samples were printed

    def show(run: Run) -> None:
        line = _progress_line(run)
        if not quiet and line != last[0]:
            typer.echo(line, err=True)
            last[0] = line
        epoch, samples = run.live_samples()
        if not quiet and samples and epoch != shown[0]:
            typer.echo("\n".join(sample_lines(epoch, samples)), err=True)
            shown[0] = epoch

    try:
        return api.wait(run_id, timeout=timeout, poll=poll, on_progress=show)
    except TimeoutError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _run_rows(runs: Sequence[Run]) -> list[list[Any]]:
    return [
        [
            r.id,
            r.name,
            f"{r.status} ({r.waiting})" if r.waiting else r.status,
            f"{r.progress:.0%}",
            r.teacher_model_id,
            r.dataset_id,
            r.summary.get("student_top1"),
            r.created_at.strftime("%Y-%m-%d %H:%M") if r.created_at else None,
        ]
        for r in runs
    ]


RUN_HEADERS = ("id", "name", "status", "progress", "teacher", "dataset", "student_top1", "created")


TRAINED_HEADERS = ("model", "top1", "agreement", "params", "size", "flops", "cpu_ms", "artifacts")


def _trained_rows(models: Sequence[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            m["label"],
            m["top1"],
            m["agreement"],
            m["params"],
            size_text(m["size_bytes"]),
            m["flops"],
            m["cpu_latency_ms"],
            ", ".join(sorted(m["artifacts"].values())),
        ]
        for m in models
    ]


def _show_run(run: Run, as_json: bool) -> None:
    """The run, its results, and every model it trained when there are several (`--json`: the
    run with `trained_models`, one row per model whatever their number)."""
    models = run.trained_models()
    if as_json:
        emit_json({**_plain(run), "trained_models": models})
        return
    typer.echo(table(RUN_HEADERS, _run_rows([run])))
    if run.waiting:
        typer.echo(f"\n{run.waiting}")
    if run.error:
        typer.echo(f"\nerror: {run.error}")
    epoch, samples = run.live_samples()
    if samples:
        typer.echo("\n" + "\n".join(sample_lines(epoch, samples)))
    if run.summary:
        typer.echo("")
        typer.echo(
            table(
                ("result", "value"),
                sorted((k, v) for k, v in run.summary.items() if not isinstance(v, dict | list)),
            )
        )
        if (cache := cache_line(run.summary, size_text)) is not None:
            typer.echo(f"\n{cache}")
    if len(models) > 1:
        typer.echo(f"\n{len(models)} trained models:")
        typer.echo(table(TRAINED_HEADERS, _trained_rows(models)))


@command(runs_app, "create")
def runs_create(
    conn: Connection,
    file: Annotated[Path, typer.Option("-f", "--file", help="Run config (YAML or JSON).")],
    name: Annotated[str | None, typer.Option(help="Override the config's name.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow it until it ends.")] = False,
    poll: Annotated[float, typer.Option(help="Seconds between progress checks.", min=0.05)] = 2.0,
    timeout: Annotated[
        float | None, typer.Option(help="Give up waiting after this many seconds.")
    ] = None,
) -> None:
    """Launch a run from a run config file (teacher.model_id, dataset.dataset_id, ...)."""
    config = load_config(file)
    if name:
        config["name"] = name
    api = conn.client()
    run = api.create_run(config)
    if not conn.as_json:
        typer.echo(f"run {run.id} queued ({run.name})", err=True)
    if wait:
        run = _follow_run(api, run.id, poll, timeout, quiet=conn.as_json)
    _show_run(run, conn.as_json)
    if wait and run.status != "succeeded":
        raise typer.Exit(1)


@command(runs_app, "list")
def runs_list(
    conn: Connection,
    status: Annotated[
        str | None, typer.Option(help="queued, running, succeeded, failed, cancelled.")
    ] = None,
    q: Annotated[str | None, typer.Option(help="Name contains.")] = None,
    limit: Limit = 20,
    every: AllPages = False,
) -> None:
    """Runs of the team, newest first."""
    api = conn.client()
    runs = _listed(api.runs, limit, every, status=status, q=q)
    if conn.as_json:
        emit_json(runs)
    else:
        typer.echo(table(RUN_HEADERS, _run_rows(runs)))


@command(runs_app, "show")
def runs_show(
    conn: Connection,
    run_id: Annotated[int, typer.Argument(help="Run id.")],
) -> None:
    """One run: status, progress and results."""
    _show_run(conn.client().run(run_id), conn.as_json)


@command(runs_app, "metrics")
def runs_metrics(
    conn: Connection,
    run_id: Annotated[int, typer.Argument(help="Run id.")],
    name: Annotated[
        list[str] | None,
        typer.Option("--name", help="A series name (repeat for several; default all)."),
    ] = None,
    since_step: Annotated[int | None, typer.Option(help="Only steps after this one.")] = None,
    max_points: Annotated[
        int | None,
        typer.Option(
            help="At most this many points per series (4-10000; downsampled keeping extremes).",
            min=4,
            max=10_000,
        ),
    ] = None,
) -> None:
    """A run's metric series: a line per series (--json: every point sent)."""
    metrics = conn.client().metrics(run_id, name, since_step=since_step, max_points=max_points)
    if conn.as_json:
        emit_json(metrics)
        return
    rows = [
        [
            series_name,
            len(s.steps),
            s.total,
            "yes" if s.downsampled else "no",
            s.steps[0] if s.steps else None,
            s.steps[-1] if s.steps else None,
            s.values[-1] if s.values else None,
        ]
        for series_name, s in metrics.series.items()
    ]
    headers = ("series", "points", "total", "downsampled", "first step", "last step", "last")
    typer.echo(table(headers, rows))


@command(runs_app, "wait")
def runs_wait(
    conn: Connection,
    run_id: Annotated[int, typer.Argument(help="Run id.")],
    poll: Annotated[
        float,
        typer.Option(
            help="Seconds between progress checks, when the server has no live event stream.",
            min=0.05,
        ),
    ] = 2.0,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
) -> None:
    """Follow a run until it ends, a progress line as each update arrives (the server's live
    events; polling when it has none); exit status 1 unless it succeeded."""
    run = _follow_run(conn.client(), run_id, poll, timeout, quiet=conn.as_json)
    _show_run(run, conn.as_json)
    if run.status != "succeeded":
        raise typer.Exit(1)


@command(runs_app, "cancel")
def runs_cancel(
    conn: Connection,
    run_id: Annotated[int, typer.Argument(help="Run id.")],
) -> None:
    """Cancel a run (queued: at once; running: the worker stops it shortly)."""
    run = conn.client().cancel_run(run_id)
    if conn.as_json:
        emit_json(run)
    else:
        state = "cancelled" if run.status == "cancelled" else "will stop shortly"
        typer.echo(f"run {run.id} {state}")


@command(runs_app, "register")
def runs_register(
    conn: Connection,
    run_id: Annotated[int, typer.Argument(help="A succeeded run.")],
    name: Annotated[
        str | None, typer.Option(help="Model name (default: <run name>-student).")
    ] = None,
    description: Annotated[str | None, typer.Option(help="Model description.")] = None,
    tag: Tags = None,
) -> None:
    """Register a succeeded run's student as a model (a teacher or student for later runs)."""
    model = conn.client().register_run(run_id, name, description=description, tags=tag or None)
    if conn.as_json:
        emit_json(model)
    else:
        typer.echo(f"model {model.id}: {model.name} v{model.version} ({model.status})")


def _losses(config: dict[str, Any]) -> str:
    parts = []
    for loss in config.get("losses") or []:
        params = ",".join(f"{k}={v}" for k, v in sorted((loss.get("params") or {}).items()))
        weight = loss.get("weight", 1.0)
        text = loss.get("name", "?") + (f"({params})" if params else "")
        parts.append(text if weight in (1, 1.0) else f"{text}x{weight:g}")
    return " + ".join(parts) or "-"


def _student(config: dict[str, Any]) -> str:
    student = config.get("student") or {}
    if student.get("source") == "model":
        return f"model {(student.get('model') or {}).get('model_id')}"
    kwargs = ",".join(f"{k}={v}" for k, v in sorted((student.get("kwargs") or {}).items()))
    return f"{student.get('architecture', 'resnet8')}" + (f"({kwargs})" if kwargs else "")


COMPARE_CONFIG: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("teacher", lambda c: f"model {(c.get('teacher') or {}).get('model_id')}"),
    ("dataset", lambda c: f"dataset {(c.get('dataset') or {}).get('dataset_id')}"),
    ("student", _student),
    ("losses", _losses),
    (
        "layer pairs",
        lambda c: (
            ", ".join(f"{p.get('teacher')}->{p.get('student')}" for p in c.get("layer_pairs") or [])
            or "-"
        ),
    ),
    ("scheme", lambda c: c.get("scheme", "offline")),
    ("epochs", lambda c: (c.get("training") or {}).get("epochs")),
    ("batch size", lambda c: (c.get("training") or {}).get("batch_size")),
    ("optimizer", lambda c: (c.get("training") or {}).get("optimizer")),
    ("lr", lambda c: (c.get("training") or {}).get("lr")),
    ("schedule", lambda c: (c.get("training") or {}).get("schedule")),
    ("seed", lambda c: c.get("seed")),
]
COMPARE_RESULTS = [
    ("teacher top-1", "teacher_top1"),
    ("student top-1", "student_top1"),
    ("agreement", "agreement"),
    ("student params", "student_params"),
    ("student size", "student_size_bytes"),
    ("student FLOPs", "student_flops"),
    ("student latency ms", "student_cpu_latency_ms"),
    ("teacher latency ms", "teacher_cpu_latency_ms"),
]


def compare_rows(runs: Sequence[Run]) -> list[tuple[str, list[Any]]]:
    """(label, one value per run) for the config and the results of `runs`."""
    rows: list[tuple[str, list[Any]]] = [
        ("name", [r.name for r in runs]),
        ("status", [r.status for r in runs]),
    ]
    rows += [(label, [get(r.config or {}) for r in runs]) for label, get in COMPARE_CONFIG]
    for label, key in COMPARE_RESULTS:
        values = [r.summary.get(key) for r in runs]
        if key == "student_size_bytes":
            values = [size_text(v) if v is not None else None for v in values]
        rows.append((label, values))
    return rows


@command(runs_app, "compare")
def runs_compare(
    conn: Connection,
    run_ids: Annotated[
        list[int], typer.Argument(help="Two or more run ids; the first is the baseline.")
    ],
) -> None:
    """Runs side by side: their configs (rows that differ are marked *) and their results."""
    api = conn.client()
    runs = [api.run(i) for i in run_ids]
    if conn.as_json:
        rows = compare_rows(runs)
        emit_json({"run_ids": [r.id for r in runs], "rows": {label: vals for label, vals in rows}})
        return
    typer.echo(compare_table(runs))


def compare_table(runs: Sequence[Run]) -> str:
    """`compare_rows` as a table, one column per run; config rows that differ are marked *."""
    config_labels = {label for label, _ in COMPARE_CONFIG}
    marked = [
        (
            f"* {label}"
            if label in config_labels and len({_cell(v) for v in vals}) > 1
            else f"  {label}",
            *vals,
        )
        for label, vals in compare_rows(runs)
    ]
    return table(["", *(f"run {r.id}" for r in runs)], marked)


# -- models -----------------------------------------------------------------------------------

MODEL_HEADERS = (
    "id",
    "name",
    "version",
    "format",
    "architecture",
    "status",
    "tags",
    "accuracy",
    "size",
)


def _model_rows(models: Sequence[Any]) -> list[list[Any]]:
    return [
        [
            m.id,
            m.name,
            m.version,
            m.format,
            m.architecture,
            m.status + (" (archived)" if getattr(m, "archived", False) else ""),
            getattr(m, "tags", None) or [],
            (m.card or {}).get("accuracy"),
            size_text(m.size_bytes),
        ]
        for m in models
    ]


def zip_folder(folder: Path, dest: Path) -> Path:
    """The folder's files (subfolders too) as a zip under their relative paths; links skipped
    (the studio refuses them)."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                zf.write(path, path.relative_to(folder).as_posix())
    return dest


@command(models_app, "push")
def models_push(
    conn: Connection,
    file: Annotated[
        Path,
        typer.Argument(
            help="A .pt2 archive, .safetensors weights, an .onnx teacher, or a Hugging Face "
            "checkpoint folder (config.json, model.safetensors, tokenizer.json) or its .zip.",
            exists=True,
        ),
    ],
    name: Annotated[str, typer.Option(help="Model name; an existing name gets a new version.")],
    format_: Annotated[
        str | None,
        typer.Option("--format", help="pt2 | safetensors | onnx | hf (default: extension)."),
    ] = None,
    architecture: Annotated[
        str | None, typer.Option(help="For safetensors: the catalog architecture.")
    ] = None,
    kwargs: Annotated[
        str | None,
        typer.Option(help='For safetensors, JSON: {"input_shape": [3, 32, 32], "num_classes": 10}'),
    ] = None,
    description: Annotated[str, typer.Option(help="What it is.")] = "",
    tag: Tags = None,
) -> None:
    """Upload a model (a worker inspects it: status pending -> ready)."""
    try:
        parsed = json.loads(kwargs) if kwargs else None
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="--kwargs") from None
    api = conn.client()
    with tempfile.TemporaryDirectory(prefix="ds-push-") as tmp:
        if file.is_dir():  # a checkpoint folder travels as one .zip of its files
            file, format_ = zip_folder(file, Path(tmp) / f"{file.name}.zip"), "hf"
        model = api.upload_model(
            file,
            name,
            format=format_,
            architecture=architecture,
            kwargs=parsed,
            description=description,
        )
    if tag:
        model = api.update_model(model.id, tags=tag)
    if conn.as_json:
        emit_json(model)
    else:
        typer.echo(f"model {model.id}: {model.name} v{model.version} ({model.status})")


@command(models_app, "list")
def models_list(
    conn: Connection,
    tag: Tags = None,
    name: Annotated[str | None, typer.Option(help="Only this name (all versions).")] = None,
    archived: Annotated[bool, typer.Option("--archived", help="Include archived models.")] = False,
    limit: Limit = 50,
    every: AllPages = False,
) -> None:
    """Models of the team, newest first (filter by tags: every --tag must match)."""
    api = conn.client()
    models = _listed(api.models, limit, every, tags=tag, name=name, include_archived=archived)
    if conn.as_json:
        emit_json(models)
    else:
        typer.echo(table(MODEL_HEADERS, _model_rows(models)))


@command(models_app, "show")
def models_show(
    conn: Connection,
    model_id: Annotated[int, typer.Argument(help="Model id.")],
) -> None:
    """One model with its card and lineage."""
    model = conn.client().model(model_id)
    if conn.as_json:
        emit_json(model)
        return
    typer.echo(table(MODEL_HEADERS, _model_rows([model])))
    if model.description:
        typer.echo(f"\n{model.description}")
    card = {k: v for k, v in (model.card or {}).items() if v is not None}
    if card:
        typer.echo("\n" + table(("card", "value"), sorted(card.items())))
    lineage = {
        k: v for k, v in (getattr(model, "lineage", None) or {}).items() if k != "run_config"
    }
    if any(v is not None for v in lineage.values()):
        typer.echo("\n" + table(("lineage", "value"), sorted(lineage.items())))


@command(models_app, "update")
def models_update(
    conn: Connection,
    model_id: Annotated[int, typer.Argument(help="Model id.")],
    description: Annotated[str | None, typer.Option(help="New description.")] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Replaces the tags (repeat for several).")
    ] = None,
) -> None:
    """Change a model's description or tags."""
    model = conn.client().update_model(model_id, description=description, tags=tag)
    if conn.as_json:
        emit_json(model)
    else:
        typer.echo(f"model {model.id}: tags {_cell(getattr(model, 'tags', []))}")


@command(models_app, "delete")
def models_delete(
    conn: Connection,
    model_id: Annotated[int, typer.Argument(help="Model id.")],
    archive: Annotated[
        bool, typer.Option("--archive", help="Hide it instead (works while runs use it).")
    ] = False,
) -> None:
    """Delete a model (refused while runs use it: archive it instead)."""
    kept = conn.client().delete_model(model_id, archive=archive)
    if conn.as_json:
        emit_json({"id": model_id, "archived": kept is not None, "deleted": kept is None})
    else:
        typer.echo(f"model {model_id} {'archived' if kept is not None else 'deleted'}")


@command(models_app, "download")
def models_download(
    conn: Connection,
    model_id: Annotated[int, typer.Argument(help="Model id.")],
    output: Dest = Path("."),
) -> None:
    """Download a model's file (.pt2, .safetensors or .onnx); prints the path written."""
    path = conn.client().download_model(model_id, output)
    _downloaded("model", model_id, path, conn.as_json)


# -- datasets ---------------------------------------------------------------------------------

DATASET_HEADERS = ("id", "name", "format", "status", "samples", "classes", "tags", "size")


def _dataset_rows(datasets: Sequence[Any]) -> list[list[Any]]:
    return [
        [
            d.id,
            d.name,
            d.format,
            d.status + (" (archived)" if getattr(d, "archived", False) else ""),
            d.info.num_samples if d.info else None,
            d.info.num_classes if d.info else None,
            getattr(d, "tags", None) or [],
            size_text(d.size_bytes),
        ]
        for d in datasets
    ]


@command(datasets_app, "push")
def datasets_push(
    conn: Connection,
    file: Annotated[
        Path,
        typer.Argument(
            help="A .npz (x, y), .zip/.tar (class folders or WebDataset shards), .csv or .parquet.",
            exists=True,
            dir_okay=False,
        ),
    ],
    name: Annotated[str, typer.Option(help="Dataset name.")],
    format_: Annotated[
        str | None,
        typer.Option("--format", help="npz | zip | tar | csv | parquet (default: extension)."),
    ] = None,
    label_column: Annotated[
        str, typer.Option(help="csv and parquet only: the label column.")
    ] = "label",
    description: Annotated[str | None, typer.Option(help="What it is.")] = None,
    tag: Tags = None,
) -> None:
    """Upload a dataset (a worker scans it: status pending -> ready)."""
    api = conn.client()
    dataset = api.upload_dataset(file, name, format=format_, label_column=label_column)
    if tag or description:
        dataset = api.update_dataset(dataset.id, description=description, tags=tag or None)
    if conn.as_json:
        emit_json(dataset)
    else:
        typer.echo(f"dataset {dataset.id}: {dataset.name} ({dataset.status})")


@command(datasets_app, "list")
def datasets_list(
    conn: Connection,
    tag: Tags = None,
    name: Annotated[str | None, typer.Option(help="Only this name.")] = None,
    archived: Annotated[
        bool, typer.Option("--archived", help="Include archived datasets.")
    ] = False,
    limit: Limit = 50,
    every: AllPages = False,
) -> None:
    """Datasets of the team, newest first."""
    api = conn.client()
    datasets = _listed(api.datasets, limit, every, tags=tag, name=name, include_archived=archived)
    if conn.as_json:
        emit_json(datasets)
    else:
        typer.echo(table(DATASET_HEADERS, _dataset_rows(datasets)))


@command(datasets_app, "show")
def datasets_show(
    conn: Connection,
    dataset_id: Annotated[int, typer.Argument(help="Dataset id.")],
) -> None:
    """One dataset."""
    dataset = conn.client().dataset(dataset_id)
    if conn.as_json:
        emit_json(dataset)
    else:
        typer.echo(table(DATASET_HEADERS, _dataset_rows([dataset])))


@command(datasets_app, "delete")
def datasets_delete(
    conn: Connection,
    dataset_id: Annotated[int, typer.Argument(help="Dataset id.")],
    archive: Annotated[
        bool, typer.Option("--archive", help="Hide it instead (works while runs use it).")
    ] = False,
) -> None:
    """Delete a dataset (refused while runs use it: archive it instead)."""
    kept = conn.client().delete_dataset(dataset_id, archive=archive)
    if conn.as_json:
        emit_json({"id": dataset_id, "archived": kept is not None, "deleted": kept is None})
    else:
        typer.echo(f"dataset {dataset_id} {'archived' if kept is not None else 'deleted'}")


@command(datasets_app, "download")
def datasets_download(
    conn: Connection,
    dataset_id: Annotated[int, typer.Argument(help="Dataset id.")],
    output: Dest = Path("."),
) -> None:
    """Download a dataset's file; prints the path written."""
    path = conn.client().download_dataset(dataset_id, output)
    _downloaded("dataset", dataset_id, path, conn.as_json)


# -- teams ------------------------------------------------------------------------------------


@command(teams_app, "list")
def teams_list(
    conn: Connection,
) -> None:
    """Your teams, with your role in each."""
    teams = conn.client().teams()
    if conn.as_json:
        emit_json(teams)
    else:
        typer.echo(table(("id", "name", "role"), [[t.id, t.name, t.role] for t in teams]))


@command(teams_app, "create")
def teams_create(
    conn: Connection,
    name: Annotated[str, typer.Argument(help="Team name (unique).")],
) -> None:
    """Create a team; you become its owner."""
    created = conn.client().create_team(name)
    if conn.as_json:
        emit_json(created)
    else:
        typer.echo(
            f"team {created.id}: {created.name} (you are its owner; use --team {created.id})"
        )


@command(teams_app, "members")
def teams_members(
    conn: Connection,
    team_id: Annotated[int, typer.Argument(help="Team id.")],
) -> None:
    """Members of a team with their roles."""
    members = conn.client().team_members(team_id)
    if conn.as_json:
        emit_json(members)
    else:
        typer.echo(
            table(
                ("user_id", "username", "role"), [[m.user_id, m.username, m.role] for m in members]
            )
        )


@command(teams_app, "add")
def teams_add(
    conn: Connection,
    team_id: Annotated[int, typer.Argument(help="Team id.")],
    username: Annotated[str, typer.Argument(help="An existing user.")],
    role: Annotated[str, typer.Option(help="owner | admin | member | viewer.")] = "member",
) -> None:
    """Add a user to a team without asking them (studio administrators; others: `invite`)."""
    member = conn.client().add_member(team_id, username, role)
    if conn.as_json:
        emit_json(member)
    else:
        typer.echo(f"{member.username} is now {member.role} of team {team_id}")


@command(teams_app, "invite")
def teams_invite(
    conn: Connection,
    team_id: Annotated[int, typer.Argument(help="Team id.")],
    username: Annotated[str, typer.Argument(help="Whom to invite (they accept or decline).")],
    role: Annotated[str, typer.Option(help="owner | admin | member | viewer.")] = "member",
) -> None:
    """Invite a user to a team with a role (admins and owners; only owners invite as owner)."""
    invitation = conn.client().invite(team_id, username, role)
    if conn.as_json:
        emit_json(invitation)
    else:
        typer.echo(
            f"invitation {invitation.id}: {invitation.username} to {invitation.team_name} as "
            f"{invitation.role}; they accept it with `distill-studio teams accept {invitation.id}`"
        )


INVITATION_HEADERS = ("id", "team", "user", "role", "status", "invited by", "created")


@command(teams_app, "invitations")
def teams_invitations(
    conn: Connection,
    sent: Annotated[
        int | None,
        typer.Option(
            "--sent",
            help="Instead: the invitations this team sent (its admins).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Invitations waiting for your answer (or, with --sent TEAM_ID, those a team sent)."""
    api = conn.client()
    rows = api.invitations() if sent is None else api.sent_invitations(sent)
    if conn.as_json:
        emit_json(rows)
        return
    typer.echo(
        table(
            INVITATION_HEADERS,
            [
                [i.id, i.team_name, i.username, i.role, i.status, i.invited_by, i.created_at]
                for i in rows
            ],
        )
    )


@command(teams_app, "withdraw")
def teams_withdraw(
    conn: Connection,
    team_id: Annotated[int, typer.Argument(help="Team id.")],
    invitation_id: Annotated[int, typer.Argument(help="Invitation id (invitations --sent).")],
) -> None:
    """Withdraw a pending invitation of a team (admins and owners)."""
    invitation = conn.client().withdraw_invitation(team_id, invitation_id)
    if conn.as_json:
        emit_json(invitation)
    else:
        typer.echo(f"withdrew the invitation of {invitation.username} to {invitation.team_name}")


@command(teams_app, "accept")
def teams_accept(
    conn: Connection,
    invitation_id: Annotated[int, typer.Argument(help="Invitation id (teams invitations).")],
) -> None:
    """Accept an invitation: join its team with its role."""
    invitation = conn.client().accept_invitation(invitation_id)
    if conn.as_json:
        emit_json(invitation)
    else:
        typer.echo(
            f"you joined {invitation.team_name} as {invitation.role}; act for it with "
            f"--team {invitation.team_id}"
        )


@command(teams_app, "decline")
def teams_decline(
    conn: Connection,
    invitation_id: Annotated[int, typer.Argument(help="Invitation id (teams invitations).")],
) -> None:
    """Decline an invitation."""
    invitation = conn.client().decline_invitation(invitation_id)
    if conn.as_json:
        emit_json(invitation)
    else:
        typer.echo(f"declined the invitation to {invitation.team_name}")


@command(teams_app, "role")
def teams_role(
    conn: Connection,
    team_id: Annotated[int, typer.Argument(help="Team id.")],
    user_id: Annotated[int, typer.Argument(help="The member's user id.")],
    role: Annotated[str, typer.Argument(help="owner | admin | member | viewer.")],
) -> None:
    """Change a member's role."""
    member = conn.client().set_member_role(team_id, user_id, role)
    if conn.as_json:
        emit_json(member)
    else:
        typer.echo(f"{member.username} is now {member.role} of team {team_id}")


@command(teams_app, "remove")
def teams_remove(
    conn: Connection,
    team_id: Annotated[int, typer.Argument(help="Team id.")],
    user_id: Annotated[int, typer.Argument(help="The member's user id.")],
) -> None:
    """Remove a member from a team (or leave it, with your own user id)."""
    conn.client().remove_member(team_id, user_id)
    if conn.as_json:
        emit_json({"team_id": team_id, "user_id": user_id, "removed": True})
    else:
        typer.echo(f"user {user_id} removed from team {team_id}")


# -- artifacts --------------------------------------------------------------------------------

ARTIFACT_HEADERS = ("id", "run", "kind", "filename", "size", "sha256", "created")


@command(artifacts_app, "list")
def artifacts_list(
    conn: Connection,
    run_id: Annotated[int, typer.Argument(help="Run id.")],
) -> None:
    """A run's outputs (student weights, config, evaluation, ...)."""
    arts = conn.client().artifacts(run_id)
    if conn.as_json:
        emit_json(arts)
    else:
        typer.echo(
            table(
                ARTIFACT_HEADERS,
                [
                    [
                        a.id,
                        a.run_id,
                        a.kind,
                        a.filename,
                        size_text(a.size_bytes),
                        a.sha256[:12],
                        _when(a.created_at),
                    ]
                    for a in arts
                ],
            )
        )


@command(artifacts_app, "download")
def artifacts_download(
    conn: Connection,
    artifact_id: Annotated[int, typer.Argument(help="Artifact id (see `artifacts list RUN_ID`).")],
    output: Dest = Path("."),
) -> None:
    """Download an artifact's file; prints the path written."""
    path = conn.client().download_artifact(artifact_id, output)
    _downloaded("artifact", artifact_id, path, conn.as_json)


# -- saved comparisons ------------------------------------------------------------------------

COMPARISON_HEADERS = ("id", "name", "runs", "by", "created")


def _comparison_rows(items: Sequence[Any]) -> list[list[Any]]:
    return [[c.id, c.name, c.run_ids, c.created_by_name, _when(c.created_at)] for c in items]


@command(comparisons_app, "create")
def comparisons_create(
    conn: Connection,
    name: Annotated[str, typer.Argument(help="What the comparison is about.")],
    run_ids: Annotated[list[int], typer.Argument(help="Run ids; the first is the baseline.")],
    description: Annotated[str, typer.Option(help="Why these runs.")] = "",
) -> None:
    """Save a comparison of runs for the team."""
    saved = conn.client().create_comparison(name, run_ids, description)
    if conn.as_json:
        emit_json(saved)
    else:
        typer.echo(f"comparison {saved.id}: {saved.name} (runs {_cell(saved.run_ids)})")


@command(comparisons_app, "list")
def comparisons_list(
    conn: Connection,
    limit: Limit = 50,
    every: AllPages = False,
) -> None:
    """The team's saved comparisons, newest first."""
    api = conn.client()
    items = _listed(api.comparisons, limit, every)
    if conn.as_json:
        emit_json(items)
    else:
        typer.echo(table(COMPARISON_HEADERS, _comparison_rows(items)))


@command(comparisons_app, "show")
def comparisons_show(
    conn: Connection,
    comparison_id: Annotated[int, typer.Argument(help="Comparison id.")],
) -> None:
    """A saved comparison, with its runs side by side (as `runs compare`) and every model they
    trained (`--json`: the comparison with `models`, one row per trained model)."""
    api = conn.client()
    saved = api.comparison(comparison_id)
    models = api.comparison_models(comparison_id)
    if conn.as_json:
        emit_json({**_plain(saved), "models": models})
        return
    typer.echo(table(COMPARISON_HEADERS, _comparison_rows([saved])))
    if saved.description:
        typer.echo(f"\n{saved.description}")
    typer.echo("\n" + compare_table([api.run(i) for i in saved.run_ids]))
    if len(models) > len({m.run_id for m in models}):
        rows = [{**m.model_dump(), "label": f"#{m.run_id} {m.label}"} for m in models]
        typer.echo(f"\n{len(models)} trained models:")
        typer.echo(table(TRAINED_HEADERS, _trained_rows(rows)))


@command(comparisons_app, "delete")
def comparisons_delete(
    conn: Connection,
    comparison_id: Annotated[int, typer.Argument(help="Comparison id.")],
) -> None:
    """Delete a saved comparison (whoever saved it, or a team admin or owner)."""
    conn.client().delete_comparison(comparison_id)
    if conn.as_json:
        emit_json({"id": comparison_id, "deleted": True})
    else:
        typer.echo(f"comparison {comparison_id} deleted")


# -- API tokens -------------------------------------------------------------------------------

TOKEN_HEADERS = (
    "id",
    "name",
    "prefix",
    "team",
    "read_only",
    "created",
    "last_used",
    "expires",
    "revoked",
)


def _token_rows(tokens: Sequence[Any]) -> list[list[Any]]:
    return [
        [
            t.id,
            t.name,
            t.prefix,
            t.team_id,
            "yes" if t.read_only else "no",
            _when(t.created_at),
            _when(t.last_used_at),
            _when(t.expires_at),
            _when(t.revoked_at),
        ]
        for t in tokens
    ]


@command(tokens_app, "list")
def tokens_list(
    conn: Connection,
) -> None:
    """Your API tokens (prefix, scope, last use, expiry; never the secret)."""
    tokens = conn.client().tokens()
    if conn.as_json:
        emit_json(tokens)
    else:
        typer.echo(table(TOKEN_HEADERS, _token_rows(tokens)))


@command(tokens_app, "create")
def tokens_create(
    conn: Connection,
    name: Annotated[str, typer.Option(help="What the token is for, e.g. ci.")] = "token",
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Only GET requests work with it.")
    ] = False,
    team_scoped: Annotated[
        bool, typer.Option("--team-scoped", help="Bind it to the team of this request (--team).")
    ] = False,
    expires_in_days: Annotated[
        int | None,
        typer.Option(
            help="Days until it expires (default DS_TOKEN_TTL_DAYS; 0 never); never later than the "
            "token you use.",
            min=0,
            max=3650,
        ),
    ] = None,
) -> None:
    """Create an API token; prints the secret on stdout (shown only this once)."""
    created = conn.client().create_token(
        name, read_only=read_only, team_scoped=team_scoped, expires_in_days=expires_in_days
    )
    if conn.as_json:
        emit_json(created)
        return
    typer.echo(created.token)
    expires = _when(created.expires_at) or "never"
    typer.echo(
        f"token {created.id} ({created.name}, expires {expires}): store it now, it is "
        "shown only this once",
        err=True,
    )


@command(tokens_app, "revoke")
def tokens_revoke(
    conn: Connection,
    token_id: Annotated[int, typer.Argument(help="Token id (see `tokens list`).")],
) -> None:
    """Revoke one of your tokens (refused with 401 from then on)."""
    revoked = conn.client().revoke_token(token_id)
    if conn.as_json:
        emit_json(revoked)
    else:
        typer.echo(f"token {revoked.id} ({revoked.name}) revoked")


# -- webhooks ---------------------------------------------------------------------------------

WEBHOOK_HEADERS = ("id", "url", "events", "active", "secret", "description")
DELIVERY_HEADERS = (
    "id",
    "event",
    "run",
    "status",
    "attempts",
    "last_code",
    "last_error",
    "created",
)


@command(webhooks_app, "list")
def webhooks_list(
    conn: Connection,
) -> None:
    """The team's webhooks."""
    hooks = conn.client().webhooks()
    if conn.as_json:
        emit_json(hooks)
    else:
        typer.echo(
            table(
                WEBHOOK_HEADERS,
                [
                    [
                        h.id,
                        h.url,
                        h.events,
                        "yes" if h.active else "paused",
                        f"{h.secret_prefix}...",
                        h.description,
                    ]
                    for h in hooks
                ],
            )
        )


@command(webhooks_app, "create")
def webhooks_create(
    conn: Connection,
    url: Annotated[str, typer.Argument(help="http(s) URL to POST each event to.")],
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event", help="run.succeeded | run.failed | run.cancelled (repeat; default: all)."
        ),
    ] = None,
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
) -> None:
    """Register a URL told when runs end; prints its signing secret (shown only this once)."""
    hook = conn.client().create_webhook(url, event or None, description)
    if conn.as_json:
        emit_json(hook)
        return
    typer.echo(hook.secret)
    typer.echo(
        f"webhook {hook.id}: {hook.url} ({_cell(hook.events)}); the secret above signs "
        "each delivery (X-Distill-Signature) and is shown only this once",
        err=True,
    )


@command(webhooks_app, "delete")
def webhooks_delete(
    conn: Connection,
    webhook_id: Annotated[int, typer.Argument(help="Webhook id.")],
) -> None:
    """Delete a webhook (its pending retries stop)."""
    conn.client().delete_webhook(webhook_id)
    if conn.as_json:
        emit_json({"id": webhook_id, "deleted": True})
    else:
        typer.echo(f"webhook {webhook_id} deleted")


@command(webhooks_app, "deliveries")
def webhooks_deliveries(
    conn: Connection,
    webhook_id: Annotated[int, typer.Argument(help="Webhook id.")],
    status: Annotated[
        str | None, typer.Option(help="pending | retrying | succeeded | failed.")
    ] = None,
    event: Annotated[
        str | None, typer.Option(help="run.succeeded | run.failed | run.cancelled.")
    ] = None,
    limit: Limit = 50,
    every: AllPages = False,
) -> None:
    """Deliveries of a webhook, newest first: status, attempts, last status code and error."""
    api = conn.client()
    items = _listed(
        lambda **page: api.deliveries(webhook_id, **page), limit, every, status=status, event=event
    )
    if conn.as_json:
        emit_json(items)
    else:
        typer.echo(
            table(
                DELIVERY_HEADERS,
                [
                    [
                        d.id,
                        d.event,
                        d.run_id,
                        d.status,
                        d.attempts,
                        d.last_status_code,
                        d.last_error,
                        _when(d.created_at),
                    ]
                    for d in items
                ],
            )
        )


# -- audit log --------------------------------------------------------------------------------

AUDIT_HEADERS = ("id", "when", "user", "action", "resource", "detail")


@command(audit_app, "list")
def audit_list(
    conn: Connection,
    action: Annotated[
        str | None, typer.Option(help="`model` (every model.*) or one, e.g. model.delete.")
    ] = None,
    resource_type: Annotated[
        str | None, typer.Option(help="model, dataset, run, webhook, ...")
    ] = None,
    resource_id: Annotated[str | None, typer.Option(help="The resource's id.")] = None,
    user_id: Annotated[int | None, typer.Option(help="Only this user's actions.")] = None,
    limit: Limit = 50,
    every: AllPages = False,
) -> None:
    """The team's audit log, newest first (admins and owners)."""
    api = conn.client()
    entries = _listed(
        api.audit,
        limit,
        every,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        user_id=user_id,
    )
    if conn.as_json:
        emit_json(entries)
        return
    typer.echo(
        table(
            AUDIT_HEADERS,
            [
                [
                    e.id,
                    _when(e.created_at),
                    e.username,
                    e.action,
                    f"{e.resource_type} {e.resource_id}" if e.resource_id else e.resource_type,
                    _short(json.dumps(e.detail, sort_keys=True, default=str)),
                ]
                for e in entries
            ],
        )
    )


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


REMOTE_APPS.update(
    {
        "runs": runs_app,
        "models": models_app,
        "datasets": datasets_app,
        "teams": teams_app,
        "artifacts": artifacts_app,
        "comparisons": comparisons_app,
        "tokens": tokens_app,
        "webhooks": webhooks_app,
        "audit": audit_app,
    }
)


def main() -> None:  # pragma: no cover - `python -m cli.remote`
    app = with_connection(typer.Typer(no_args_is_help=True))
    for name, sub in REMOTE_APPS.items():
        app.add_typer(sub, name=name)
    app(prog_name="distill-studio")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
