"""Every table of the studio (SQLAlchemy 2.0 typed models).

Teams own everything: models, datasets, runs and artifacts carry a `team_id`, and every query in
the services is scoped by the caller's team.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


class Role(str, enum.Enum):  # noqa: UP042 - plain str values in JSON and SQL
    owner = "owner"
    admin = "admin"
    member = "member"
    viewer = "viewer"


class Status(str, enum.Enum):  # noqa: UP042 - plain str values in JSON and SQL
    """Life cycle of anything a worker processes (model inspection, dataset scan, run)."""

    pending = "pending"
    queued = "queued"
    running = "running"
    ready = "ready"  # models and datasets
    succeeded = "succeeded"  # runs
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_RUN_STATES = (Status.succeeded.value, Status.failed.value, Status.cancelled.value)

BigId = BigInteger().with_variant(Integer, "sqlite")
Stamp = DateTime(timezone=True)
EMPTY_LIST = text("'[]'")
EMPTY_OBJECT = text("'{}'")


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_superuser: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)
    memberships: Mapped[list[Membership]] = relationship(back_populates="user")


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "team_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(20), default=Role.member.value)
    user: Mapped[User] = relationship(back_populates="memberships")
    team: Mapped[Team] = relationship()


class ApiToken(Base):
    """A bearer token. Only a keyed hash of the secret is stored; `prefix` lets people recognise it."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100), default="token")
    prefix: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(Stamp)
    expires_at: Mapped[datetime | None] = mapped_column(Stamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Stamp)


class Model(Base):
    """An uploaded (or produced) model file and its inspection."""

    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("team_id", "name", "version"),
        Index("ix_models_team_id_id", "team_id", "id"),  # the list: by team, newest first
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer, default=1)
    description: Mapped[str] = mapped_column(Text, default="")
    format: Mapped[str] = mapped_column(String(20))  # pt2 | safetensors
    architecture: Mapped[str | None] = mapped_column(String(100))
    arch_kwargs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    storage_key: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigId, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(20), default=Status.pending.value)
    error: Mapped[str | None] = mapped_column(Text)
    inspection: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    card: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # accuracy, classes, ...
    # Lineage of a model produced by a run; a plain id (no FK) so it outlives the run row.
    source_run_id: Mapped[int | None] = mapped_column(Integer)
    # {"source_run_id", "teacher_model_id", "dataset_id", "run_config"} for registered students
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default=EMPTY_OBJECT)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list, server_default=EMPTY_LIST)
    archived: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_team_id_id", "team_id", "id"),)  # the list, newest first
    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(20))  # npz | zip | tar | csv | parquet
    label_column: Mapped[str] = mapped_column(String(100), default="label")
    storage_key: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigId, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(20), default=Status.pending.value)
    error: Mapped[str | None] = mapped_column(Text)
    info: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # samples, classes, input shape
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list, server_default=EMPTY_LIST)
    archived: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class Run(Base):
    __tablename__ = "runs"
    # the list: by team, newest (highest id) first, optionally by status (runs.service.list_runs)
    __table_args__ = (
        Index("ix_runs_team_id_id", "team_id", "id"),
        Index("ix_runs_team_id_status_id", "team_id", "status", "id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default=Status.queued.value, index=True)
    queue: Mapped[str] = mapped_column(String(20), default="cpu")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    throughput: Mapped[float | None] = mapped_column(Float)  # samples / s
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(Stamp)
    teacher_model_id: Mapped[int | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL")
    )
    # the registered model a student starts from (student.source "model"), for dependency checks
    student_model_id: Mapped[int | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL"), index=True
    )
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(Stamp)
    finished_at: Mapped[datetime | None] = mapped_column(Stamp)


class Metric(Base):
    """One value of one named series at one step; the key is (run, name, step): no duplicates.

    Compact, since a run may log a million points: no surrogate id and no timestamp, the primary
    key is the only index, and on SQLite the table is stored in it (WITHOUT ROWID). Reads of a
    series in step order, and incremental reads after a step, are ranges of that key.
    """

    __tablename__ = "metrics"
    __table_args__ = {"sqlite_with_rowid": False}
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    value: Mapped[float] = mapped_column(Float)


# steps per rollup bucket, each half the next: a read's buckets hold 1 to 2 rows of a width
ROLLUP_WIDTHS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class MetricRollup(Base):
    """The M4 summary of one bucket of a series: its steps `width * bucket` to
    `width * (bucket + 1) - 1` hold `n` points, the first and last at `first_step` and
    `last_step`, the lowest (first of equals) at `min_step` and the highest at `max_step`; each
    with its epoch and value, so a read needs nothing of the points.

    Kept for each width of `ROLLUP_WIDTHS` by the writer of the points (`worker/reporting.py`,
    upserted with each flush, rebuilt when a resumed run drops its later points; migration 0006
    filled them for points written before, 0008 those of width 16, 0009 the widths between).
    A downsampled read merges these rows into its own buckets (a multiple of a width): exact M4
    of every point from a few thousand rows (a 10,000-point series read as 1,000 points: 313
    rows of width 32).
    """

    __tablename__ = "metric_rollups"
    __table_args__ = {"sqlite_with_rowid": False}
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    width: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(Integer)
    first_step: Mapped[int] = mapped_column(Integer)
    first_epoch: Mapped[int] = mapped_column(Integer)
    first_value: Mapped[float] = mapped_column(Float)
    last_step: Mapped[int] = mapped_column(Integer)
    last_epoch: Mapped[int] = mapped_column(Integer)
    last_value: Mapped[float] = mapped_column(Float)
    min_step: Mapped[int] = mapped_column(Integer)
    min_epoch: Mapped[int] = mapped_column(Integer)
    min_value: Mapped[float] = mapped_column(Float)
    max_step: Mapped[int] = mapped_column(Integer)
    max_epoch: Mapped[int] = mapped_column(Integer)
    max_value: Mapped[float] = mapped_column(Float)


CHUNK_POINTS = 1024  # points per chunk of a series' JSON (the last chunk of a series fills up)


class MetricChunk(Base):
    """Up to `CHUNK_POINTS` consecutive points of a series as the JSON they are served as: the
    items of its arrays of steps, epochs and values (without the brackets; a value as the
    shortest text that reads back as the same double, NaN and infinities as null).

    A whole series is read as a few of these rows instead of one row per point (the fetch of
    1,000 point rows was most of a read's cost). Kept by the writer of the points
    (`worker/metric_chunks.py`: each flush appends to the series' last chunk, in the flush's
    transaction; a resume rebuilds the chunks from the first that held a dropped point; migration
    0007 filled them for points written before). The points stay the truth: a read uses chunks
    only when they hold as many points as the table (`backend/runs/service.py` `_chunked`).
    """

    __tablename__ = "metric_chunks"
    __table_args__ = {"sqlite_with_rowid": False}
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(Integer)
    first_step: Mapped[int] = mapped_column(Integer)
    last_step: Mapped[int] = mapped_column(Integer)
    steps_json: Mapped[str] = mapped_column(Text)
    epochs_json: Mapped[str] = mapped_column(Text)
    values_json: Mapped[str] = mapped_column(Text)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (Index("ix_artifacts_run_id_id", "run_id", "id"),)  # a run's, in order
    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(
        String(50)
    )  # student_safetensors | student_pt2 | config | ...
    filename: Mapped[str] = mapped_column(String(255))
    storage_key: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigId, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class AuditEntry(Base):
    """Who did what to which resource of a team, and when. Written in the change's transaction."""

    __tablename__ = "audit_entries"
    __table_args__ = (Index("ix_audit_entries_team_id_id", "team_id", "id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    username: Mapped[str] = mapped_column(String(100), default="")  # kept when the user goes
    action: Mapped[str] = mapped_column(String(50))  # model.create, run.cancel, ...
    resource_type: Mapped[str] = mapped_column(String(50))
    resource_id: Mapped[str | None] = mapped_column(String(100))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class Webhook(Base):
    """A URL a team wants told about run events; its signing secret is derived, never stored.

    secret = HMAC-SHA256(DS_SECRET_KEY, "webhook:" + secret_salt) (see core/signing.py).
    """

    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_team_id_id", "team_id", "id"),)  # a team's, in order
    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str] = mapped_column(Text, default="")
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    secret_salt: Mapped[str] = mapped_column(String(64))
    secret_prefix: Mapped[str] = mapped_column(String(20))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class WebhookDelivery(Base):
    """One event sent (or being sent) to one webhook, with the outcome of its last attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "run_id", "event"),
        Index("ix_webhook_deliveries_webhook_id_id", "webhook_id", "id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(50))
    run_id: Mapped[int | None] = mapped_column(Integer)  # no FK: the record outlives the run
    body: Mapped[str] = mapped_column(Text)  # the exact bytes signed and sent, every attempt
    status: Mapped[str] = mapped_column(
        String(20), default="pending"
    )  # pending|retrying|succeeded|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(Stamp)
    next_attempt_at: Mapped[datetime | None] = mapped_column(Stamp)
    delivered_at: Mapped[datetime | None] = mapped_column(Stamp)


class Comparison(Base):
    """A named set of runs a team looks at side by side (the Compare page); the first run is the
    baseline. Run ids are kept as a list: a deleted run just drops out of the view."""

    __tablename__ = "comparisons"
    __table_args__ = (Index("ix_comparisons_team_id_id", "team_id", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    run_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class Invitation(Base):
    """An invitation of a user (by username) to a team with a role, which only that user accepts
    or declines. Kept by username, not user id, so that inviting a name that does not exist
    looks exactly like inviting one that does (nobody learns the studio's usernames)."""

    __tablename__ = "invitations"
    __table_args__ = (
        Index("ix_invitations_username_status", "username", "status"),
        Index("ix_invitations_team_id_id", "team_id", "id"),  # a team's, newest first
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    username: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20), default=Role.member.value)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending|accepted|declined
    invited_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    invited_by_name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)
    answered_at: Mapped[datetime | None] = mapped_column(Stamp)
