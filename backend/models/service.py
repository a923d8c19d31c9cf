"""Registering uploaded models: validate, store, insert (next version of the name), enqueue.

The backend never opens the file: a worker inspects it (INSPECT_MODEL) and fills
`inspection`/`status`. If anything fails on the way, the stored object is deleted and nothing is
left in the database.
"""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import PurePath
from typing import Any, BinaryIO

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend import queue
from backend.artifacts.service import open_stream, store_upload, too_large_message
from backend.audit.service import audit
from backend.deps import Principal
from backend.errors import ApiError, Conflict, Invalid, TooLarge
from backend.json_depth import depth_problem
from backend.teams.service import get_owned, page, scoped, with_tags
from core import catalog
from core.db.tables import Artifact, AuditEntry, Dataset, Model, Run, Status
from core.hf import PICKLE_SUFFIXES
from core.jobs import INSPECT_MODEL
from core.settings import get_settings
from core.storage import CHUNK, Store, Stored, new_key

log = logging.getLogger(__name__)

FORMATS = {".pt2": "pt2", ".safetensors": "safetensors", ".onnx": "onnx", ".zip": "hf"}
ZOO_SHAPE_KEYS = ("input_shape", "num_classes")
KWARGS_EXAMPLE = '{"input_shape": [3, 32, 32], "num_classes": 10}'


def clean_name(name: str, field: str = "name") -> str:
    name = name.strip()
    if not name or len(name) > 200:
        raise Invalid(field, "give 1 to 200 characters", loc=["body", field])
    return name


# .pt, .pth, .pkl, .pickle, .ckpt; a .bin (pytorch_model.bin) too unless a format is declared
# (ONNX and other files are sometimes named .bin)
PICKLE_EXTS = PICKLE_SUFFIXES - {".bin"}


def pick_format(filename: str, given: str | None) -> str:
    ext = PurePath(filename or "").suffix.lower()
    if ext in PICKLE_EXTS or (ext == ".bin" and not given):
        raise Invalid(
            "format",
            f"'{filename}' is a pickled checkpoint, which could run code when loaded, so "
            "the studio never opens one; export the model with torch.export.save (.pt2) or save "
            "its weights with safetensors (a Hugging Face checkpoint: convert it to "
            "safetensors and upload its folder as a .zip)",
            loc=["body", "format"],
        )
    if given:
        if given not in FORMATS.values():
            raise Invalid(
                "format",
                f"'{given}' is not accepted; use pt2 (a torch.export archive), "
                "safetensors (weights of a catalog architecture), onnx (a single-file ONNX "
                "teacher) or hf (a Hugging Face checkpoint folder as a .zip)",
                loc=["body", "format"],
            )
        if ext in FORMATS and FORMATS[ext] != given:
            raise Invalid(
                "format",
                f"'{filename}' is named as {FORMATS[ext]} but format={given} was given; "
                "rename the file or give the format it really has",
                loc=["body", "format"],
            )
        return given
    if ext not in FORMATS:
        raise Invalid(
            "format",
            f"cannot tell the format of '{filename}'; upload a .pt2, .safetensors or .onnx "
            "file, a Hugging Face checkpoint folder as a .zip, or give "
            "format=pt2|safetensors|onnx|hf",
            loc=["body", "format"],
        )
    return FORMATS[ext]


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """The `kwargs` form field: a JSON object, shallow (DS_MAX_JSON_DEPTH) and finite."""
    if text is None or not text.strip():
        return {}
    if (problem := depth_problem(text)) is not None:
        raise Invalid("kwargs", problem, loc=["body", "kwargs"])
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise Invalid(
            "kwargs",
            f"not valid JSON ({exc}); give an object like {KWARGS_EXAMPLE}",
            loc=["body", "kwargs"],
        ) from None
    if not isinstance(value, dict):
        raise Invalid(
            "kwargs", f"must be a JSON object like {KWARGS_EXAMPLE}", loc=["body", "kwargs"]
        )
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows; give a finite number")


def _is_shape(value: Any) -> bool:
    return (
        isinstance(value, list)
        and 1 <= len(value) <= 4
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    )


def check_zoo(architecture: str | None, kwargs: dict[str, Any]) -> str:
    """Validate a catalog architecture with its kwargs (+ input_shape, num_classes) for weights."""
    if not architecture:
        raise Invalid(
            "architecture",
            "safetensors weights need the catalog architecture they belong to, "
            f"e.g. resnet8; the catalog has: {', '.join(catalog.STUDENTS)}",
            loc=["body", "architecture"],
        )
    entry = catalog.STUDENTS.get(architecture)
    if entry is None:
        raise Invalid(
            "architecture",
            f"unknown architecture '{architecture}'; nearest: "
            f"{', '.join(catalog.nearest(architecture, list(catalog.STUDENTS)))}",
            loc=["body", "architecture"],
        )
    missing = [k for k in ZOO_SHAPE_KEYS if k not in kwargs]
    if missing:
        raise Invalid(
            "kwargs",
            f"safetensors weights need {' and '.join(missing)}, e.g. {KWARGS_EXAMPLE}",
            loc=["body", "kwargs"],
        )
    if not _is_shape(kwargs["input_shape"]):
        raise Invalid(
            "kwargs.input_shape",
            "must be a list of 1 to 4 positive whole numbers, e.g. [3, 32, 32]",
            loc=["body", "kwargs"],
        )
    classes = kwargs["num_classes"]
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise Invalid(
            "kwargs.num_classes", "must be a positive whole number, e.g. 10", loc=["body", "kwargs"]
        )
    errors = entry.check_params({k: v for k, v in kwargs.items() if k not in ZOO_SHAPE_KEYS})
    if errors:
        raise Invalid("kwargs", "; ".join(errors), loc=["body", "kwargs"])
    return architecture


def next_version(session: Session, team_id: int, name: str) -> int:
    latest = session.scalar(
        select(func.max(Model.version)).where(Model.team_id == team_id, Model.name == name)
    )
    return (latest or 0) + 1


CHECKPOINT_FILES_EXAMPLE = "config.json, model.safetensors, tokenizer.json"


def checkpoint_names(filenames: list[str], format: str | None) -> list[str]:
    """The member names of a Hugging Face checkpoint uploaded as its files (422 when they are
    not one: another format, a pickle, no config.json, the same name twice). Only the names are
    read here; the worker checks the files themselves, as it does a .zip."""
    if format not in (None, "", "hf"):
        raise Invalid(
            "format",
            f"several files are one Hugging Face checkpoint (format=hf), not format={format}; "
            "upload other models one file at a time",
            loc=["body", "format"],
        )
    names = [PurePath((f or "").replace("\\", "/")).name for f in filenames]
    for original, member in zip(filenames, names, strict=True):
        odd = any(ord(c) < 32 or c == "\x7f" for c in member) or len(member) > 200
        if odd or not member or (member.startswith(".") and member != ".gitattributes"):
            raise Invalid(
                "file", f"'{original}' is not a checkpoint file name", loc=["body", "file"]
            )
        if PurePath(member).suffix.lower() in PICKLE_SUFFIXES:
            pick_format(member, None)  # the pickle refusal, naming the file
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise Invalid("file", f"'{twice[0]}' was given twice", loc=["body", "file"])
    if "config.json" not in names:
        raise Invalid(
            "file",
            "a Hugging Face checkpoint's files must include config.json (with "
            f"{CHECKPOINT_FILES_EXAMPLE}); upload them all, or the folder as a .zip",
            loc=["body", "file"],
        )
    return names


def bundle(uploads: list[BinaryIO], names: list[str], limit: int) -> BinaryIO:
    """The files as one uncompressed zip in a temporary file (413 past `limit` bytes in all)."""
    out = tempfile.TemporaryFile()
    total = 0
    try:
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for upload, member in zip(uploads, names, strict=True):
                with zf.open(member, "w", force_zip64=True) as dest:
                    while chunk := upload.read(CHUNK):
                        total += len(chunk)
                        if total > limit:
                            raise TooLarge(too_large_message(limit))
                        dest.write(chunk)
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out


def create_model(
    session: Session,
    store: Store,
    principal: Principal,
    *,
    upload: BinaryIO,
    filename: str,
    name: str,
    format: str | None,
    architecture: str | None,
    kwargs: str | None,
    description: str = "",
    more: list[tuple[BinaryIO, str]] | None = None,
) -> Model:
    """Store the upload as the next version of `name` in the caller's team and queue inspection.

    `more`: the other files of a Hugging Face checkpoint uploaded as its files; with `upload`
    they are stored as one zip, as if the folder had been zipped."""
    name = clean_name(name)
    if more:
        names = checkpoint_names([filename, *(f for _, f in more)], format)
        upload = bundle([upload, *(u for u, _ in more)], names, get_settings().max_upload_bytes)
        filename, format = "checkpoint.zip", "hf"
    fmt = pick_format(filename, format)
    arch_kwargs = parse_kwargs(kwargs)
    architecture = (architecture or "").strip() or None
    if fmt == "safetensors":
        architecture = check_zoo(architecture, arch_kwargs)
    key = new_key(principal.team_id, "models", f"model.{fmt}")
    try:
        stored = store_upload(store, key, upload, get_settings().max_upload_bytes)
    finally:
        if more:
            upload.close()  # the bundle's temporary file
    fields = {
        "name": name,
        "description": description or "",
        "format": fmt,
        "architecture": architecture,
        "arch_kwargs": arch_kwargs,
        "card": {"source": "upload", "format": fmt, "size_bytes": stored.size},
    }
    return _insert_and_inspect(session, store, principal, stored, fields, "model.create", {})


def _insert_and_inspect(
    session: Session,
    store: Store,
    principal: Principal,
    stored: Stored,
    fields: dict[str, Any],
    action: str,
    detail: dict[str, Any],
) -> Model:
    """Insert the model (next version of its name) with its audit entry, and queue inspection.

    Nothing stays behind when anything fails: not the row, the entry, nor the stored file.
    """
    try:
        model, entry = _insert(session, principal, stored, fields, action, detail)
        try:
            queue.enqueue(INSPECT_MODEL, [model.id], queue="cpu")
        except queue.BrokerUnavailable:
            session.delete(entry)
            session.delete(model)
            session.commit()
            raise
    except BaseException:
        session.rollback()
        store.delete(stored.key)
        raise
    return model


def _insert(
    session: Session,
    principal: Principal,
    stored: Stored,
    fields: dict[str, Any],
    action: str,
    detail: dict[str, Any],
    attempts: int = 5,
) -> tuple[Model, AuditEntry]:
    team_id, name = principal.team_id, fields["name"]
    for attempt in range(attempts):
        model = Model(
            team_id=team_id,
            version=next_version(session, team_id, name),
            storage_key=stored.key,
            size_bytes=stored.size,
            sha256=stored.sha256,
            status=Status.pending.value,
            created_by=principal.user.id,
            **fields,
        )
        session.add(model)
        try:
            session.flush()
            entry = audit(
                session,
                principal,
                action,
                "model",
                model.id,
                {"name": name, "version": model.version, **detail},
            )
            session.commit()
            return model, entry
        except IntegrityError:  # another upload of the same name took this version just now
            session.rollback()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def list_models(
    session: Session,
    team_id: int,
    *,
    limit: int,
    cursor: str | None,
    name: str | None,
    status: str | None,
    tags: list[str] | None = None,
    include_archived: bool = False,
) -> tuple[list[Model], str | None]:
    stmt = scoped(Model, team_id)
    if name:
        stmt = stmt.where(Model.name == name)
    if status:
        stmt = stmt.where(Model.status == status)
    if not include_archived:
        stmt = stmt.where(Model.archived.is_(False))
    stmt = with_tags(stmt, Model.tags, tags)
    return page(session, stmt, Model, limit, cursor)


def get_model(session: Session, model_id: int, team_id: int) -> Model:
    return get_owned(session, Model, model_id, team_id)


def download_name(model: Model) -> str:
    return f"{model.name}-v{model.version}.{model.format}"


# -- the registry: editing, deleting or archiving, registering a run's student ---------------


def changes(row: Any, values: dict[str, Any]) -> dict[str, list[Any]]:
    """Set `values` on `row`; return {field: [old, new]} for those that changed."""
    changed: dict[str, list[Any]] = {}
    for field, value in values.items():
        old = getattr(row, field)
        if old != value:
            changed[field] = [old, value]
            setattr(row, field, value)
    return changed


def update_model(
    session: Session, principal: Principal, model: Model, values: dict[str, Any]
) -> Model:
    """Change description, tags or archived (the fields given); audited as model.update."""
    changed = changes(model, values)
    if changed:
        audit(
            session,
            principal,
            "model.update",
            "model",
            model.id,
            {"name": model.name, "version": model.version, "changes": changed},
        )
        session.commit()
    return model


def dependent_runs(session: Session, model: Model) -> list[int]:
    """Ids of the runs that use the model as teacher or as the student they start from."""
    return list(
        session.scalars(
            select(Run.id)
            .where(
                Run.team_id == model.team_id,
                or_(Run.teacher_model_id == model.id, Run.student_model_id == model.id),
            )
            .order_by(Run.id)
        )
    )


def in_use(what: str, path: str, runs: list[int]) -> Conflict:
    shown = ", ".join(str(r) for r in runs[:10]) + (", ..." if len(runs) > 10 else "")
    return Conflict(
        f"{what} is used by run{'s' if len(runs) > 1 else ''} {shown}, so it cannot be deleted; "
        f"archive it instead (DELETE {path}?archive=true hides it from lists and new runs)"
    )


def delete_model(
    session: Session, store: Store, principal: Principal, model: Model, archive: bool
) -> Model | None:
    """Archive the model (returned), or delete it and its file (None); 409 while runs use it."""
    label = {"name": model.name, "version": model.version}
    if archive:
        if not model.archived:
            model.archived = True
            audit(session, principal, "model.archive", "model", model.id, label)
            session.commit()
        return model
    runs = dependent_runs(session, model)
    if runs:
        raise in_use(f"model {model.id}", f"/api/v1/models/{model.id}", runs)
    key = model.storage_key
    audit(session, principal, "model.delete", "model", model.id, label)
    session.delete(model)
    session.commit()
    delete_file(store, key)
    return None


def delete_file(store: Store, key: str) -> None:
    """Remove a deleted row's file; a failure leaves an orphan in the store, logged."""
    try:
        store.delete(key)
    except Exception as exc:  # noqa: BLE001 - the row is gone; the file is only garbage now
        log.warning("could not delete %s from the artifact store: %s", key, exc)


def download(session: Session, store: Store, principal: Principal, model: Model) -> Iterator[bytes]:
    body = open_stream(store, model.storage_key, f"model {model.id}")
    audit(
        session,
        principal,
        "model.download",
        "model",
        model.id,
        {"name": model.name, "version": model.version},
    )
    session.commit()
    return body


def _card_from_run(
    run: Run, kwargs: dict[str, Any], dataset: Dataset | None, size: int, fmt: str = "safetensors"
) -> dict[str, Any]:
    summary = run.summary or {}
    info = (dataset.info if dataset is not None else None) or {}
    card = {
        "source": "run",
        "format": fmt,
        "input_shape": kwargs.get("input_shape"),
        "num_classes": kwargs.get("num_classes"),
        "classes": info.get("classes"),
        "accuracy": summary.get("student_top1"),
        "teacher_accuracy": summary.get("teacher_top1"),
        "agreement": summary.get("agreement"),
        "size_bytes": summary.get("student_size_bytes") or size,
        "params": summary.get("student_params"),
        "flops": summary.get("student_flops"),
        "latency_ms": summary.get("student_cpu_latency_ms"),
    }
    return {k: v for k, v in card.items() if v is not None}


HF_STUDENT = "student_hf"  # a text run's student as a Hugging Face checkpoint zip


def _run_artifact(session: Session, run: Run, kind: str) -> Artifact | None:
    """The run's latest artifact of `kind`, None without one."""
    return session.scalar(
        select(Artifact)
        .where(Artifact.run_id == run.id, Artifact.team_id == run.team_id, Artifact.kind == kind)
        .order_by(Artifact.id.desc())
    )


def register_run(
    session: Session,
    store: Store,
    principal: Principal,
    run: Run,
    *,
    name: str | None,
    description: str | None,
    tags: list[str],
) -> Model:
    """Register a succeeded run's student as a new model version: a text run's Hugging Face
    checkpoint zip (artifact `student_hf`, format hf) when it has one, else its safetensors
    (format safetensors, with the zoo architecture of its summary).

    The model is inspected by a worker like an upload (pending -> ready), then serves as a
    teacher, or as a student to start from, in later runs.
    """
    if run.status != Status.succeeded.value:
        raise Conflict(
            f"run {run.id} is {run.status}; only a succeeded run's student can be registered"
        )
    summary = run.summary or {}
    architecture, kwargs = summary.get("student_architecture"), summary.get("student_kwargs")
    artifact = _run_artifact(session, run, HF_STUDENT)
    fmt = "hf"
    if artifact is None:
        artifact, fmt = _run_artifact(session, run, "student_safetensors"), "safetensors"
        if artifact is None or not architecture or not isinstance(kwargs, dict):
            raise Conflict(
                f"run {run.id} has no student weights to register (student_safetensors artifact "
                "and student architecture in its summary); run it again"
            )
        try:
            check_zoo(architecture, dict(kwargs))
        except ApiError as exc:
            raise Conflict(f"run {run.id}'s student cannot be registered: {exc.detail}") from None
    kwargs = dict(kwargs) if isinstance(kwargs, dict) else {}
    name = clean_name(name or f"{run.name}-student")
    source = open_stream(store, artifact.storage_key, f"artifact {artifact.id}")
    stored = store.write_stream(new_key(principal.team_id, "models", f"model.{fmt}"), source)
    dataset = session.get(Dataset, run.dataset_id) if run.dataset_id is not None else None
    fields = {
        "name": name,
        "description": description
        if description is not None
        else f"Student of run {run.id} ({run.name}).",
        "format": fmt,
        "architecture": architecture if fmt == "safetensors" else None,
        "arch_kwargs": kwargs if fmt == "safetensors" else {},
        "card": _card_from_run(run, kwargs, dataset, stored.size, fmt),
        "tags": tags,
        "source_run_id": run.id,
        "lineage": {
            "source_run_id": run.id,
            "teacher_model_id": run.teacher_model_id,
            "dataset_id": run.dataset_id,
            "run_config": run.config,
        },
    }
    return _insert_and_inspect(
        session, store, principal, stored, fields, "model.register", {"run_id": run.id}
    )
