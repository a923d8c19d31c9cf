"""Registering uploaded datasets: validate, store, insert, enqueue SCAN_DATASET.

The backend never parses the file; a worker scans it and fills `info`/`status`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePath
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import queue
from backend.artifacts.service import open_stream, store_upload
from backend.audit.service import audit
from backend.deps import Principal
from backend.errors import Conflict, Invalid
from backend.models.service import changes, clean_name, delete_file, in_use
from backend.teams.service import get_owned, page, scoped, with_tags
from core.db.tables import Dataset, Run, Status
from core.jobs import SCAN_DATASET
from core.settings import get_settings
from core.storage import Store, new_key

FORMATS = {
    "npz": "a NumPy .npz with arrays x (samples) and y (integer labels)",
    "zip": "a .zip of an image folder, one sub-folder per class (or of WebDataset .tar shards)",
    "tar": "a .tar of an image folder or WebDataset shards (<key>.jpg + <key>.cls)",
    "csv": "a .csv table with a label column (label_column, default 'label')",
    "parquet": "a .parquet table with a label column (label_column, default 'label')",
    "jsonl": "JSON lines of text: a text and a label field (text classification), a 'text' "
    "field (language modelling) or 'prompt' and 'completion' fields (instruction data)",
    "txt": "plain UTF-8 text, one document a line (language modelling, sentence embeddings)",
}
ACCEPTED = "; ".join(f"{fmt} ({what})" for fmt, what in FORMATS.items())


def pick_format(filename: str, given: str | None) -> str:
    ext = PurePath(filename or "").suffix.lower().lstrip(".")
    if given:
        if given not in FORMATS:
            raise Invalid(
                "format",
                f"'{given}' is not accepted; use one of: {ACCEPTED}",
                loc=["body", "format"],
            )
        if ext in FORMATS and ext != given:
            raise Invalid(
                "format",
                f"'{filename}' is named as {ext} but format={given} was given; rename "
                "the file or give the format it really has",
                loc=["body", "format"],
            )
        return given
    if ext not in FORMATS:
        raise Invalid(
            "format",
            f"cannot read '{filename}' as a dataset; accepted: {ACCEPTED}",
            loc=["body", "format"],
        )
    return ext


def create_dataset(
    session: Session,
    store: Store,
    principal: Principal,
    *,
    upload: BinaryIO,
    filename: str,
    name: str,
    format: str | None,
    label_column: str | None,
    description: str = "",
) -> Dataset:
    """Store the upload in the caller's team and queue a scan; nothing stays behind on failure."""
    name = clean_name(name)
    fmt = pick_format(filename, format)
    label = (label_column or "").strip() or "label"
    if len(label) > 100:
        raise Invalid("label_column", "give at most 100 characters", loc=["body", "label_column"])
    key = new_key(principal.team_id, "datasets", f"data.{fmt}")
    stored = store_upload(store, key, upload, get_settings().max_upload_bytes)
    try:
        dataset = Dataset(
            team_id=principal.team_id,
            name=name,
            format=fmt,
            label_column=label,
            storage_key=stored.key,
            size_bytes=stored.size,
            sha256=stored.sha256,
            status=Status.pending.value,
            created_by=principal.user.id,
            description=description or "",
        )
        session.add(dataset)
        session.flush()
        entry = audit(
            session,
            principal,
            "dataset.create",
            "dataset",
            dataset.id,
            {"name": name, "format": fmt},
        )
        session.commit()
        try:
            queue.enqueue(SCAN_DATASET, [dataset.id], queue="cpu")
        except queue.BrokerUnavailable:
            session.delete(entry)
            session.delete(dataset)
            session.commit()
            raise
    except BaseException:
        session.rollback()
        store.delete(key)
        raise
    return dataset


class LengthsPending(Exception):
    """A worker is counting the tokens: nothing to show yet; ask again (202)."""

    def __init__(self, job: str) -> None:
        from core import inspections

        super().__init__(
            "a worker is tokenising the dataset with the model's tokenizer; send the same "
            f"request again in {inspections.RETRY_AFTER_S}s"
        )
        self.job = job


def token_lengths(
    session: Session,
    team_id: int,
    dataset_id: int,
    model_id: int,
    max_length: int | None,
    text_column: str,
) -> dict[str, Any]:
    """The token length histogram of the team's text dataset with the team's Hugging Face model's
    tokenizer, from the store a worker fills (`core.inspections.TOKEN_LENGTHS`); LengthsPending
    while a worker counts. The API never opens either file."""
    from backend.runs.service import ready_dataset, ready_model, release_connection
    from core import inspections
    from core.jobs import TOKEN_LENGTHS

    dataset = ready_dataset(session, dataset_id, team_id)
    model = ready_model(session, model_id, team_id)
    if model.format != "hf":
        raise Invalid(
            "model_id",
            f"model {model.id} is a {model.format} model without a tokenizer: pick a Hugging "
            "Face checkpoint (format hf) with its tokenizer.json",
            loc=["query", "model_id"],
        )
    if dataset.format not in ("csv", "jsonl", "txt"):
        raise Invalid(
            "dataset_id",
            f"dataset {dataset.id} is {dataset.format}, not text: token lengths need a .csv, "
            ".jsonl or .txt text dataset",
            loc=["path", "dataset_id"],
        )
    args: list[Any] = [dataset.id, model.id, max_length, text_column]
    release_connection(session)
    entry = inspections.TOKEN_LENGTHS.lookup(args, TOKEN_LENGTHS)
    if entry.status == "failed":
        raise Conflict(f"the tokens could not be counted: {entry.error}")
    if entry.status != "ready" or entry.inspection is None:
        raise LengthsPending(inspections.job_id(args))
    return {"dataset_id": dataset_id, "model_id": model_id, **entry.inspection}


def list_datasets(
    session: Session,
    team_id: int,
    *,
    limit: int,
    cursor: str | None,
    name: str | None,
    status: str | None,
    tags: list[str] | None = None,
    include_archived: bool = False,
) -> tuple[list[Dataset], str | None]:
    stmt = scoped(Dataset, team_id)
    if name:
        stmt = stmt.where(Dataset.name == name)
    if status:
        stmt = stmt.where(Dataset.status == status)
    if not include_archived:
        stmt = stmt.where(Dataset.archived.is_(False))
    stmt = with_tags(stmt, Dataset.tags, tags)
    return page(session, stmt, Dataset, limit, cursor)


def get_dataset(session: Session, dataset_id: int, team_id: int) -> Dataset:
    return get_owned(session, Dataset, dataset_id, team_id)


def update_dataset(
    session: Session, principal: Principal, dataset: Dataset, values: dict[str, Any]
) -> Dataset:
    """Change description, tags or archived (the fields given); audited as dataset.update."""
    changed = changes(dataset, values)
    if changed:
        audit(
            session,
            principal,
            "dataset.update",
            "dataset",
            dataset.id,
            {"name": dataset.name, "changes": changed},
        )
        session.commit()
    return dataset


def delete_dataset(
    session: Session, store: Store, principal: Principal, dataset: Dataset, archive: bool
) -> Dataset | None:
    """Archive the dataset (returned), or delete it and its file (None); 409 while runs use it."""
    if archive:
        if not dataset.archived:
            dataset.archived = True
            audit(
                session, principal, "dataset.archive", "dataset", dataset.id, {"name": dataset.name}
            )
            session.commit()
        return dataset
    runs = list(
        session.scalars(
            select(Run.id)
            .where(Run.team_id == dataset.team_id, Run.dataset_id == dataset.id)
            .order_by(Run.id)
        )
    )
    if runs:
        raise in_use(f"dataset {dataset.id}", f"/api/v1/datasets/{dataset.id}", runs)
    key = dataset.storage_key
    audit(session, principal, "dataset.delete", "dataset", dataset.id, {"name": dataset.name})
    session.delete(dataset)
    session.commit()
    delete_file(store, key)
    return None


def download(
    session: Session, store: Store, principal: Principal, dataset: Dataset
) -> Iterator[bytes]:
    body = open_stream(store, dataset.storage_key, f"dataset {dataset.id}")
    audit(session, principal, "dataset.download", "dataset", dataset.id, {"name": dataset.name})
    session.commit()
    return body
