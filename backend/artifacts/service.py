"""Artifacts, and moving files between requests and the store.

Uploads are streamed into the store in 1 MiB chunks under a key the studio makes
(`storage.new_key`), never one taken from the request; over the limit is a 413 and nothing stays
behind. Downloads stream from the store.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.audit.service import audit
from backend.deps import Principal
from backend.errors import NotFound, TooLarge, Unavailable
from backend.teams.service import get_owned
from core import storage
from core.db.tables import Artifact, Run
from core.storage import CHUNK, Store, Stored

log = logging.getLogger(__name__)


def too_large_message(limit: int) -> str:
    return (
        f"file is larger than {limit // (1024 * 1024)} MiB; "
        "split it, or raise DS_MAX_UPLOAD_MB on the server"
    )


def chunks(fileobj: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    while chunk := fileobj.read(size):
        yield chunk


def store_upload(store: Store, key: str, fileobj: BinaryIO, limit: int) -> Stored:
    """Stream `fileobj` into the store under `key`; 413 over `limit` bytes (nothing is kept)."""
    try:
        return store.write_stream(key, chunks(fileobj), limit=limit)
    except storage.TooLarge as exc:
        raise TooLarge(too_large_message(exc.limit)) from exc
    except storage.StorageError as exc:  # e.g. its disk is full: nothing was kept
        raise Unavailable(
            f"{exc}; nothing was stored: retry later, or ask an admin to free space"
        ) from exc


def safe_filename(name: str, default: str = "download") -> str:
    """A plain ASCII file name for Content-Disposition (no paths, quotes or control characters)."""
    name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name.rsplit("/", 1)[-1]).strip("._")
    return name[:150] or default


def content_disposition(filename: str) -> str:
    ascii_name = safe_filename(filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def open_stream(store: Store, key: str, what: str) -> Iterator[bytes]:
    """The object's bytes as an iterator; 404 naming `what` when the store lost it, or when its
    key is not a key the studio makes (`..`, absolute: it is never opened, and the API log says
    so)."""
    try:
        found = store.exists(key)
    except storage.StorageError as exc:
        log.error("refused to open %s: %s", what, exc)
        found = False
    if not found:
        raise NotFound(f"the file of {what} is missing from the artifact store")
    return store.iter_bytes(key)


def list_for_run(session: Session, run: Run) -> list[Artifact]:
    return list(
        session.scalars(
            select(Artifact)
            .where(Artifact.run_id == run.id, Artifact.team_id == run.team_id)
            .order_by(Artifact.id)
        )
    )


def get_artifact(session: Session, artifact_id: int, team_id: int) -> Artifact:
    return get_owned(session, Artifact, artifact_id, team_id)


def download(
    session: Session, store: Store, principal: Principal, art: Artifact
) -> Iterator[bytes]:
    """The artifact's bytes; the download is recorded in the audit log."""
    body = open_stream(store, art.storage_key, f"artifact {art.id}")
    audit(
        session,
        principal,
        "artifact.download",
        "artifact",
        art.id,
        {"run_id": art.run_id, "kind": art.kind, "filename": art.filename},
    )
    session.commit()
    return body
