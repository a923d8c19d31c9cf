"""Celery tasks: the glue between the database, the artifact store and the engine.

Tasks take IDs, open their own DB session, fetch inputs from the artifact store into a scratch
folder, call the engine with callbacks that report progress, and write results back. The engine
(torch) is imported inside the tasks only, so the worker's parent process never touches CUDA.

Exactly-once for runs: `claim_run` atomically moves a run to `running` under a row lock and
counts the attempt; a redelivered message for a run that is finished, cancelled, or being trained
by a live worker is dropped; after `DS_MAX_ATTEMPTS` attempts the run is failed with the reason.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select, update

from core.db import session_scope, with_db_retry
from core.db.tables import TERMINAL_RUN_STATES, Artifact, Dataset, Model, Run, Status
from core.jobs import (
    DISTILL,
    INSPECT_MODEL,
    INSPECT_STUDENT,
    MEASURE_STUDENTS,
    SCAN_DATASET,
    TOKEN_LENGTHS,
    WAITING_KEY,
    send_task,
)
from core.settings import get_settings
from core.storage import get_store
from core.teacher_cache import cache_enabled, cache_key, cache_storage_key
from worker import gpus, sandbox
from worker.celery_app import celery_app
from worker.reporting import LostClaim, announce
from worker.webhooks import (  # also registers the deliver_webhook task
    enqueue_run_event,
    resend_unqueued_deliveries,
)

log = logging.getLogger(__name__)


def _stale_after() -> timedelta:
    return timedelta(seconds=get_settings().run_stale_s)


def _scratch() -> tempfile.TemporaryDirectory[str]:
    base = get_settings().data_dir / "scratch"
    base.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=base)


def _short_error(exc: BaseException) -> str:
    """The message a user sees: the exception's own words, not a traceback."""
    text = str(exc) or exc.__class__.__name__
    return text if len(text) < 2000 else text[:2000] + " ..."


# -- models and datasets ----------------------------------------------------------------------


Apply = Callable[[Any], None]


def _timed_out(exc: BaseException | None) -> bool:
    """Whether the task's soft time limit caused `exc` (directly or as a cause or context)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, SoftTimeLimitExceeded):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _process_upload(
    table: type[Model] | type[Dataset], row_id: int, work: Callable[[Path, Any], Apply]
) -> str:
    """Fetch an uploaded file into scratch, run `work(path, row)` on it here in the worker, and
    record the outcome. `work` returns a function that applies its results to the row. Any
    exception (a hostile or broken file, a missing dependency, the time limit) marks the row
    failed with the reason, so an upload never stays pending."""
    with session_scope() as s:
        row = s.get(table, row_id)
        if row is None:
            return "missing"
        row.status = Status.running.value
    error, apply = None, None
    try:
        with _scratch() as tmp:
            path = get_store().get_file(row.storage_key, Path(tmp) / f"upload.{row.format}")
            apply = work(path, row)
    except Exception as exc:  # noqa: BLE001 - the upload's fault, reported to the user
        if _timed_out(exc):  # also when the engine wrapped it ("the model's forward failed")
            error = f"took longer than the {get_settings().inspect_timeout_s}s limit"
        else:
            log.warning("%s %s failed: %s", table.__tablename__, row_id, exc)
            error = _short_error(exc)
    with session_scope() as s:
        row = s.get(table, row_id)
        if row is None:
            return "missing"
        if error is not None or apply is None:
            row.status, row.error = Status.failed.value, error
            return "failed"
        apply(row)
        row.status, row.error = Status.ready.value, None
    return "ready"


# the sandbox times the inspection itself; this backstop also covers starting its process
@celery_app.task(name=INSPECT_MODEL, soft_time_limit=get_settings().inspect_timeout_s + 300)
def inspect_model(model_id: int) -> str:
    """Load an uploaded model safely, run one dummy forward and record its layer table.

    Both happen in a child process with resource limits (`worker.sandbox`)."""

    def work(path: Path, model: Model) -> Apply:
        # in a child process with resource limits (worker/sandbox.py), in the scratch folder
        result = sandbox.run(
            "inspect",
            {
                "path": str(path),
                "format": model.format,
                "architecture": model.architecture,
                "kwargs": dict(model.arch_kwargs or {}),
            },
            workdir=path.parent,
            limits=sandbox.Limits.for_job("inspect"),
            timeout_s=get_settings().inspect_timeout_s,
        )
        inspection, card = result["inspection"], result["card"]

        def apply(row: Model) -> None:
            row.inspection = inspection
            row.card = {**(row.card or {}), **card}

        return apply

    return _process_upload(Model, model_id, work)


def _file_stem(name: str) -> str:
    """A dataset's name as a safe file stem (letters, digits, `._-`; at most 80 characters)."""
    stem = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)
    return stem.strip("._")[:80] or "dataset"


@celery_app.task(name=SCAN_DATASET, soft_time_limit=get_settings().inspect_timeout_s)
def scan_dataset(dataset_id: int) -> str:
    """Read an uploaded dataset (safely) and record its size, classes, input shape and preview."""

    def work(path: Path, ds: Dataset) -> Apply:
        from core.config import DatasetRef
        from worker.engine.tasks import dataset_task

        settings = get_settings()
        # messages name the file: call it after the dataset, not "upload.<format>"
        named = path.rename(path.with_name(f"{_file_stem(ds.name)}.{ds.format}"))
        ref = DatasetRef(path=str(named), format=ds.format, label_column=ds.label_column)
        # the decoded size is checked from headers before anything is decoded (DS_MAX_DECODED_MB)
        info = dataset_task(ds.format, named).describe(
            named,
            ref,
            max_entries=settings.max_zip_entries,
            max_uncompressed_bytes=settings.max_zip_uncompressed_mb * 1024 * 1024,
            max_decoded_bytes=settings.max_decoded_mb * 1024 * 1024,
        )

        def apply(row: Dataset) -> None:
            row.info = info

        return apply

    return _process_upload(Dataset, dataset_id, work)


@celery_app.task(name=INSPECT_STUDENT, soft_time_limit=60)
def inspect_student(
    architecture: str, kwargs: dict[str, Any], input_shape: list[int], num_classes: int
) -> dict[str, Any]:
    """The layer table of a zoo student, for the pair picker and run validation.

    Stored under its build arguments (`core.inspections`), where the API reads it (it
    never waits for this task); failures are stored too, with the reason, then raised."""
    from core import inspections
    from worker.engine.students import build_student
    from worker.engine.taps import inspect_model as inspect

    args = inspections.build_args(architecture, kwargs, input_shape, num_classes)
    try:
        module = build_student(architecture, input_shape, num_classes, **kwargs)
        result = inspect(module, input_shape)
    except Exception as exc:
        reason = "took longer than the 60s limit" if _timed_out(exc) else _short_error(exc)
        inspections.store_failed(args, reason)
        raise
    inspections.store_ready(args, result)
    return result


@celery_app.task(name=MEASURE_STUDENTS, soft_time_limit=get_settings().inspect_timeout_s)
def measure_students(
    candidates: list[list[Any]], input_shape: list[int], num_classes: int
) -> list[dict[str, Any]]:
    """The costs of a budget search's candidates (params, FLOPs, CPU latency at batch 1).

    Stored under its arguments (`core.inspections.BUDGETS`), where the API reads them and
    makes the table for a target (`core.budget.select`); a failure is stored, then raised."""
    from core import inspections
    from worker.engine.budget import measure

    args = [candidates, input_shape, num_classes]
    try:
        costs = measure([(str(a), dict(k)) for a, k in candidates], input_shape, num_classes)
    except Exception as exc:
        reason = "took longer than the limit" if _timed_out(exc) else _short_error(exc)
        inspections.BUDGETS.store_failed(args, reason)
        raise
    inspections.BUDGETS.store_ready(args, {"costs": costs})
    return costs


@celery_app.task(name=TOKEN_LENGTHS, soft_time_limit=get_settings().inspect_timeout_s)
def token_lengths(
    dataset_id: int, model_id: int, max_length: int | None, text_column: str
) -> dict[str, Any]:
    """A text dataset's token length histogram with a Hugging Face model's tokenizer (what the
    Datasets page asks for when a teacher is chosen: `describe_text` with the tokenizer).

    Stored under its arguments (`core.inspections.TOKEN_LENGTHS`), where the API reads it; a
    failure is stored, then raised."""
    from core import inspections

    args = [dataset_id, model_id, max_length, text_column]
    try:
        histogram = _token_lengths(dataset_id, model_id, max_length, text_column)
    except Exception as exc:
        reason = "took longer than the limit" if _timed_out(exc) else _short_error(exc)
        inspections.TOKEN_LENGTHS.store_failed(args, reason)
        raise
    inspections.TOKEN_LENGTHS.store_ready(args, histogram)
    return histogram


def _token_lengths(
    dataset_id: int, model_id: int, max_length: int | None, text_column: str
) -> dict[str, Any]:
    """Read the dataset as its text task reads it (the scan's bounds) and count each row's
    tokens with the checkpoint's tokenizer.json (unpacked with the checks of any HF upload)."""
    from core.config import DatasetRef
    from worker.engine.hf_teacher import read_tokenizer, tokenizer_vocab, unpack_checkpoint
    from worker.engine.tasks import dataset_task
    from worker.engine.tasks.text.data import TextData, describe_text

    with session_scope() as s:
        ds, model = s.get(Dataset, dataset_id), s.get(Model, model_id)
        if ds is None or model is None:
            raise ValueError("the dataset or the model no longer exists")
        d_key, d_format, d_name, label = ds.storage_key, ds.format, ds.name, ds.label_column
        m_key, m_name = model.storage_key, model.name
    settings, store = get_settings(), get_store()
    with _scratch() as tmp:
        path = store.get_file(d_key, Path(tmp) / f"{_file_stem(d_name)}.{d_format}")
        folder = unpack_checkpoint(store.get_file(m_key, Path(tmp) / "model.zip"), Path(tmp) / "hf")
        if tokenizer_vocab(folder, None) is None:
            raise ValueError(
                f"model {m_name} has no tokenizer.json: upload the checkpoint with its tokenizer"
            )
        ref = DatasetRef(
            path=str(path), format=d_format, label_column=label, text_column=text_column
        )
        data = dataset_task(d_format, path).load(
            path,
            ref,
            max_entries=settings.max_zip_entries,
            max_uncompressed_bytes=settings.max_zip_uncompressed_mb * 1024 * 1024,
            max_decoded_bytes=settings.max_decoded_mb * 1024 * 1024,
        )
        if not isinstance(data, TextData):
            raise ValueError(f"dataset {d_name} is not text: no token lengths to count")
        return dict(describe_text(data, read_tokenizer(folder), max_length)["token_lengths"])


# -- runs ---------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` of this machine runs; a killed pool process not yet reaped by
    its parent (a zombie, state Z in /proc) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc here: the signal check is all there is
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _alive_elsewhere(run: Run, me: str, now: datetime) -> bool:
    """Whether another live worker process holds this run (worker ids are `host:pid`)."""
    if run.status != Status.running.value or run.worker in (None, me):
        return False
    heartbeat = run.heartbeat_at
    if heartbeat is None:
        return False
    if heartbeat.tzinfo is None:
        heartbeat = heartbeat.replace(tzinfo=UTC)
    if now - heartbeat >= _stale_after():
        return False
    host, _, pid = run.worker.rpartition(":")
    if host == me.rpartition(":")[0] and pid.isdigit() and not _pid_alive(int(pid)):
        return False  # its process on this machine is gone: take over at once
    return True


class Heartbeat:
    """Marks a claimed run alive every `DS_HEARTBEAT_S` from a thread of the training process.

    It dies with the process, so a missing heartbeat means a lost worker, whatever the training
    loop is doing (a long epoch, evaluation, export).
    """

    def __init__(self, run_id: int, worker: str) -> None:
        self.run_id, self.worker = run_id, worker
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{run_id}")

    def _beat(self) -> None:
        while not self.stop.wait(get_settings().heartbeat_s):
            try:
                with session_scope() as s:
                    s.execute(
                        update(Run)
                        .where(Run.id == self.run_id, Run.worker == self.worker)
                        .values(heartbeat_at=datetime.now(UTC))
                    )
            except Exception:  # noqa: BLE001 - the database may be away; keep beating
                log.warning("heartbeat for run %s failed", self.run_id)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


@dataclass
class Claim:
    team_id: int
    config: dict[str, Any]
    attempt: int


def claim_run(run_id: int, worker: str) -> Claim | None:
    """Atomically take a run for this worker, or return None if it must not run here.

    A run cancelled before it started, or out of attempts, ends here (and its webhooks fire).
    """
    claim = _claim(run_id, worker)
    if claim is not None:
        announce(run_id)  # running, or ended here
    if claim == "ended":
        enqueue_run_event(run_id)
        return None
    return claim


def _claim(run_id: int, worker: str) -> Claim | str | None:
    settings = get_settings()
    with session_scope() as s:
        run = s.scalar(select(Run).where(Run.id == run_id).with_for_update())
        if run is None or run.status in TERMINAL_RUN_STATES:
            return None
        now = datetime.now(UTC)
        if run.cancel_requested:
            run.status, run.finished_at = Status.cancelled.value, now
            return "ended"
        if _alive_elsewhere(run, worker, now):
            log.info(
                "run %s is being trained by %s; dropping duplicate delivery", run_id, run.worker
            )
            return None
        if run.attempts >= settings.max_attempts:
            run.status, run.finished_at = Status.failed.value, now
            run.error = (
                f"gave up after {run.attempts} attempts (the worker was lost each time); "
                f"last error: {run.error or 'none recorded'}"
            )
            return "ended"
        run.attempts += 1
        run.status, run.worker, run.heartbeat_at = Status.running.value, worker, now
        if WAITING_KEY in (run.summary or {}):  # no longer waiting for a worker or GPUs
            run.summary = {k: v for k, v in run.summary.items() if k != WAITING_KEY}
        run.started_at = run.started_at or now
        return Claim(run.team_id, dict(run.config), run.attempts)


def _resolve_inputs(config: dict[str, Any], tmp: Path) -> tuple[Any, Path, Path, Path | None]:
    """Fetch the teacher, dataset and (for `source: model`) student files; fill the config with
    their formats. The config keeps its ids, so the run.yaml artifact names what the user chose."""
    from core.config import RunConfig

    store = get_store()
    with session_scope() as s:
        teacher = s.get(Model, config["teacher"]["model_id"])
        dataset = s.get(Dataset, config["dataset"]["dataset_id"])
        if teacher is None or dataset is None:
            raise ValueError("the run's teacher or dataset was deleted")
        config["teacher"].update(
            format=teacher.format,
            architecture=teacher.architecture,
            kwargs=teacher.arch_kwargs or {},
        )
        config["dataset"].update(format=dataset.format, label_column=dataset.label_column)
        student_model = None
        if config.get("student", {}).get("source") == "model":
            student_model = s.get(Model, config["student"]["model"]["model_id"])
            if student_model is None:
                raise ValueError("the run's student model was deleted")
            config["student"]["model"].update(
                format=student_model.format,
                architecture=student_model.architecture,
                kwargs=student_model.arch_kwargs or {},
            )
        t_key, t_fmt, d_key, d_fmt = (
            teacher.storage_key,
            teacher.format,
            dataset.storage_key,
            dataset.format,
        )
        s_key = student_model.storage_key if student_model else None
    teacher_path = store.get_file(t_key, tmp / f"teacher.{t_fmt}")
    dataset_path = store.get_file(d_key, tmp / f"dataset.{d_fmt}")
    student_path = store.get_file(s_key, tmp / "student_init.safetensors") if s_key else None
    return RunConfig.model_validate(config), teacher_path, dataset_path, student_path


def _other_teachers(config: dict[str, Any], tmp: Path) -> list[str]:
    """Scheme multi_teacher: fetch each of `config["teachers"]` and fill in its format (like
    the teacher's); their files, in order."""
    store, keys = get_store(), []
    with session_scope() as s:
        for i, spec in enumerate(config.get("teachers") or []):
            model = s.get(Model, spec["model_id"])
            if model is None:
                raise ValueError(f"the run's teachers[{i}] (model {spec['model_id']}) was deleted")
            spec.update(
                format=model.format,
                architecture=model.architecture,
                kwargs=model.arch_kwargs or {},
            )
            keys.append((model.storage_key, model.format))
    return [
        str(store.get_file(key, tmp / f"teacher{k}.{fmt}")) for k, (key, fmt) in enumerate(keys, 1)
    ]


def _teacher_cache_input(team_id: int, config: Any, tmp: Path) -> tuple[str | None, str | None]:
    """(the team's stored teacher-output cache for this run, fetched: its file or None; the
    cache's key) when the run uses one (`core/teacher_cache.py`), else (None, None). The key
    comes from the teacher's and the dataset's recorded sha256 (the engine hashes the files
    when a digest is missing)."""
    if not cache_enabled(config):
        return None, None
    with session_scope() as s:
        teacher = s.get(Model, config.teacher.model_id)
        dataset = s.get(Dataset, config.dataset.dataset_id)
        digests = (teacher.sha256 if teacher else "", dataset.sha256 if dataset else "")
    if not all(digests):
        return None, None
    key = cache_key(config, *digests)
    store, stored = get_store(), cache_storage_key(team_id, key)
    if not store.exists(stored):
        return None, key
    return str(store.get_file(stored, tmp / "teacher_cache_in.npz")), key


def checkpoint_key(team_id: int, run_id: int) -> str:
    return f"team-{team_id}/runs/{run_id}/checkpoint.pt"


GPU_POLL_S = 1.0  # how often a run waiting for GPUs tries again


def _lease_gpus(run_id: int, worker: str) -> gpus.Lease | None:
    """The run's GPUs on this worker, leased (`worker.gpus`): waits while fewer are free than
    it needs, with the run's summary saying so; a lease of no devices for a CPU run; None on a
    worker without GPUs, or when the run ended (or vanished) while it waited (its claim then
    drops it). TooFewGpus when the run needs more GPUs than this worker has."""
    devices = gpus.worker_devices()
    if not devices:
        return None
    with session_scope() as s:
        run = s.get(Run, run_id)
        training = dict((run.config or {}).get("training") or {}) if run is not None else None
    if training is None:
        return None
    need = gpus.needed(training, len(devices))
    pool = gpus.Pool(devices, gpus.lock_dir(get_settings().data_dir))
    said = None
    while (lease := pool.try_lease(need)) is None:
        message = gpus.waiting_message(need, pool.free(), len(devices), worker)
        note = message if message != said else None
        if not with_db_retry(functools.partial(_wait_note, run_id, note)):
            return None
        if message != said:
            log.info("run %s: %s", run_id, message)
            said = message
        time.sleep(GPU_POLL_S)
    return lease


def _wait_note(run_id: int, message: str | None) -> bool:
    """Whether the run still waits to be trained (not ended, not deleted); when it does and
    `message` is given, its summary says it (`WAITING_KEY`) while it is queued."""
    with session_scope() as s:
        run = s.get(Run, run_id)
        if run is None or run.status in TERMINAL_RUN_STATES:
            return False
        if message is not None and run.status == Status.queued.value:
            run.summary = {**(run.summary or {}), WAITING_KEY: message}
    return True


@celery_app.task(name=DISTILL, bind=True)
def distill(self, run_id: int) -> str:
    """Train one run end to end; resumable from its last checkpoint.

    The training itself runs in a child process with resource limits (`worker.sandbox`); this
    pool process leases the GPUs the run needs (`worker.gpus`), claims the run, fetches its
    inputs, answers the child's progress, cancellation and checkpoint calls with a
    `DbReporter`, and stores the results."""
    worker = f"{self.request.hostname or 'worker'}:{os.getpid()}"
    try:
        lease = _lease_gpus(run_id, worker)  # waits while too few of this worker's GPUs are free
    except gpus.TooFewGpus as exc:
        if with_db_retry(lambda: claim_run(run_id, worker)) is None:
            return "skipped"
        return _failed(run_id, worker, exc)
    try:
        return _train(run_id, worker, lease)
    finally:
        if lease is not None:
            lease.release()  # however the run ended; a crash of this process drops it too


def _train(run_id: int, worker: str, lease: gpus.Lease | None) -> str:
    """Claim the run and train it in the sandbox, on the leased GPUs (None: this worker has no
    GPUs, the environment is left as it is)."""
    from worker.reporting import DbReporter

    claim = with_db_retry(lambda: claim_run(run_id, worker))
    if claim is None:
        return "skipped"
    store = get_store()
    ckpt_key = checkpoint_key(claim.team_id, run_id)
    try:
        with Heartbeat(run_id, worker), _scratch() as tmp_str:
            tmp = Path(tmp_str)
            teacher_paths = _other_teachers(claim.config, tmp)
            config, teacher_path, dataset_path, student_path = _resolve_inputs(claim.config, tmp)
            cache_path, cache_key_ = _teacher_cache_input(claim.team_id, config, tmp)
            ckpt = tmp / "checkpoint.pt"
            if store.exists(ckpt_key):
                store.get_file(ckpt_key, ckpt)
            reporter = DbReporter(run_id, ckpt_key, worker)
            try:
                summary = sandbox.run(
                    "train",
                    {
                        "config": config.model_dump(mode="json"),
                        "teacher_path": str(teacher_path),
                        "dataset_path": str(dataset_path),
                        "out_dir": str(tmp / "out"),
                        "checkpoint_path": str(ckpt),
                        "student_path": str(student_path) if student_path else None,
                        "teacher_paths": teacher_paths,
                        "teacher_cache": cache_path,
                        "teacher_cache_key": cache_key_,
                    },
                    workdir=tmp,
                    handler=_reporting_handler(reporter, ckpt),
                    limits=sandbox.Limits.for_job("train", cuda=_may_use_cuda(config)),
                    env=lease.env if lease is not None else None,
                )
            finally:
                if lease is not None:
                    lease.release()  # the training process has ended: its GPUs are free
            reporter.flush()
            _check_artifact_names(summary, tmp / "out")
            _store_results(run_id, claim.team_id, worker, tmp / "out", summary)
    except sandbox.SandboxError as exc:
        if exc.kind != "Cancelled":
            return _failed(run_id, worker, exc)
        _finish(run_id, worker, Status.cancelled, None)
        announce(run_id)
        enqueue_run_event(run_id)
        return "cancelled"
    except LostClaim:
        log.warning("run %s: another worker resumed it; this copy stops", run_id)
        return "taken-over"
    except Exception as exc:  # noqa: BLE001 - the run fails with the reason; the message is acked
        return _failed(run_id, worker, exc)
    announce(run_id)
    enqueue_run_event(run_id)
    return "succeeded"


def _failed(run_id: int, worker: str, exc: Exception) -> str:
    log.error("run %s failed:\n%s", run_id, traceback.format_exc())
    _finish(run_id, worker, Status.failed, _short_error(exc))
    announce(run_id)
    enqueue_run_event(run_id)
    return "failed"


def _may_use_cuda(config: Any) -> bool:
    """Whether the run may train on CUDA here (then memory is limited as writable memory, not
    address space, which the driver reserves by the hundreds of GiB). No torch import."""
    return config.training.device != "cpu" and Path("/dev/nvidiactl").exists()


def _reporting_handler(reporter: Any, checkpoint: Path) -> sandbox.Handler:
    """Answers the training child's calls with the run's `DbReporter`."""

    def handle(name: str, args: Any) -> Any:
        if name == "on_step":
            reporter.on_step(SimpleNamespace(**args))
        elif name == "on_start":
            reporter.on_start(int(args[0]), int(args[1]))
        elif name == "on_epoch":
            reporter.on_epoch(int(args[0]), int(args[1]), dict(args[2]))
        elif name == "on_samples":
            reporter.on_samples(int(args[0]), args[1])
        elif name == "on_checkpoint":
            if Path(args[0]) != checkpoint or not _plain_file(checkpoint):  # nothing else
                raise ValueError(f"the training process sent an unexpected checkpoint {args[0]!r}")
            reporter.on_checkpoint(checkpoint, int(args[1]))
        elif name == "should_stop":
            return reporter.should_stop()
        else:
            raise ValueError(f"the training process made an unknown call {name!r}")
        return None

    return handle


def _plain_file(path: Path) -> bool:
    """A regular file, not a link the child made to a file of the worker's."""
    return path.is_file() and not path.is_symlink()


def _check_artifact_names(summary: dict[str, Any], out: Path) -> None:
    """Artifact names come from the child: plain files inside its output folder only."""
    for filename in summary.get("artifacts", {}).values():
        name = str(filename)
        if "/" in name or "\\" in name or name.startswith(".") or not _plain_file(out / name):
            raise ValueError(f"the training process reported an unexpected artifact {name!r}")


def _store_results(
    run_id: int, team_id: int, worker: str, out: Path, summary: dict[str, Any]
) -> None:
    """Upload every artifact, then record them and the summary in one transaction.

    If any upload fails, the ones already written are removed and nothing is recorded. The
    teacher-output cache (artifact `teacher_cache`) is the team's, kept under its key
    (`core.teacher_cache.cache_storage_key`) for later runs: a failure leaves it there.
    """
    store = get_store()
    written: list[tuple[str, str, Any]] = []
    shared: set[str] = set()

    def forget(stored: Any) -> None:
        if stored.key not in shared:
            store.delete(stored.key)

    try:
        for kind, filename in summary["artifacts"].items():
            key = f"team-{team_id}/runs/{run_id}/{filename}"
            if kind == "teacher_cache":
                key = cache_storage_key(team_id, str(summary["teacher_cache"]["key"]))
                shared.add(key)
            written.append((kind, filename, store.put_file(key, out / filename)))
    except BaseException:
        for _, _, stored in written:
            forget(stored)
        raise

    def record() -> None:
        with session_scope() as s:
            run = s.scalar(select(Run).where(Run.id == run_id).with_for_update())
            if run is None or run.worker != worker:
                raise LostClaim(f"run {run_id} was taken over by another worker")
            for kind, filename, stored in written:
                s.add(
                    Artifact(
                        team_id=team_id,
                        run_id=run_id,
                        kind=kind,
                        filename=filename,
                        storage_key=stored.key,
                        size_bytes=stored.size,
                        sha256=stored.sha256,
                    )
                )
            run.summary = {k: v for k, v in summary.items() if k != "artifacts"}
            run.status, run.error, run.finished_at = Status.succeeded.value, None, datetime.now(UTC)
            run.progress = 1.0

    try:
        with_db_retry(record)
    except BaseException:
        for _, _, stored in written:
            forget(stored)
        raise


def _finish(run_id: int, worker: str, status: Status, error: str | None) -> None:
    def write() -> None:
        with session_scope() as s:
            run = s.get(Run, run_id)
            if run is not None and run.worker == worker:
                run.status, run.error, run.finished_at = status.value, error, datetime.now(UTC)

    with_db_retry(write)


# -- recovery of runs whose worker died ----------------------------------------------------------


def recover_stale_runs() -> list[int]:
    """Re-queue runs marked running whose worker stopped sending heartbeats.

    A worker whose pool process dies gives its message back to the broker by itself
    (`task_reject_on_worker_lost`); a worker killed whole leaves the message unacknowledged until
    the broker's visibility timeout. This sweep covers that case: the run goes back to `queued`
    and a fresh message is sent. Duplicate messages are harmless: `claim_run` admits one.
    """
    cutoff = datetime.now(UTC) - _stale_after()
    with session_scope() as s:
        stale = s.execute(
            select(Run.id, Run.queue).where(
                Run.status == Status.running.value, Run.heartbeat_at < cutoff
            )
        ).all()
        recovered = []
        for run_id, queue in stale:
            moved = s.execute(
                update(Run)
                .where(
                    Run.id == run_id, Run.status == Status.running.value, Run.heartbeat_at < cutoff
                )
                .values(status=Status.queued.value, worker=None)
            ).rowcount
            if moved:
                recovered.append((run_id, queue))
    for run_id, queue in recovered:
        log.warning("run %s lost its worker; re-queued to resume from its checkpoint", run_id)
        announce(run_id)
        send_task(DISTILL, [run_id], queue)
    return [run_id for run_id, _ in recovered]


# The sweeps run in a thread of the worker's main process, which forks the pool processes. A
# fork while the sweep's thread holds a lock (SQLite's, the connection pool's, the broker
# client's) leaves the child that lock held by no thread: the new pool process hangs at its
# first connection (seen: a run re-queued after its pool process was killed never started). So
# a fork waits for the sweep in progress to end, and no sweep starts during a fork.
_NO_FORK_NOW = threading.Lock()
os.register_at_fork(
    before=_NO_FORK_NOW.acquire,
    after_in_parent=_NO_FORK_NOW.release,
    after_in_child=_NO_FORK_NOW.release,
)


def sweep_once(sweep: Callable[[], object]) -> None:
    """Run one sweep of the recovery loop, never across a fork; log (not raise) its error."""
    try:
        with _NO_FORK_NOW:
            sweep()
    except Exception:  # noqa: BLE001 - keep sweeping; the next round retries
        log.exception("%s failed", getattr(sweep, "__name__", sweep))


def _recovery_loop(stop: threading.Event) -> None:
    while not stop.wait(get_settings().recover_every_s):
        for sweep in (recover_stale_runs, resend_unqueued_deliveries):
            sweep_once(sweep)


_stop_recovery = threading.Event()


@signals.worker_ready.connect
def _start_recovery(**_: Any) -> None:
    threading.Thread(
        target=_recovery_loop, args=(_stop_recovery,), daemon=True, name="run-recovery"
    ).start()


@signals.worker_shutdown.connect
def _stop_recovery_loop(**_: Any) -> None:
    _stop_recovery.set()


@signals.worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    """A forked pool process must not share the parent's database connections."""
    from core.db import get_engine

    get_engine().dispose(close=False)


@signals.worker_process_init.connect
def _start_spare_sandbox(**_: Any) -> None:
    """The child process for the first upload or run starts importing torch now."""
    sandbox.prepare_spare()
