"""Runs: check a run config against the team's models and datasets, queue it, follow it.

Creating a run checks, in this order, so the first message is the one to fix first:
1. references are by id (`path` is for the standalone CLI);
2. the teacher, dataset (and student model) exist in the caller's team (404) and are ready (409);
3. every layer pair names a teacher layer and a student layer that exist and can be matched (422).
Then the run is committed and DISTILL is queued; if the broker is down the row is removed (503).

No request waits for a worker: a zoo student's layer table (needed by `plan`, and by `create_run`
when there are layer pairs) comes from the store of them (`core.inspections`); when it is
not there yet, it is queued once and `StudentPending` raised (202: nothing saved, ask again).
The database connection is given back before the broker is asked.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from functools import cache
from itertools import groupby
from operator import gt, itemgetter, lt
from types import SimpleNamespace
from typing import Any, NamedTuple

import orjson
import yaml
from pydantic_core import from_json, to_json
from sqlalchemy import (
    Executable,
    Select,
    Text,
    bindparam,
    cast,
    delete,
    func,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.elements import TextClause

from backend import queue
from backend.audit.service import add_audited, audited_change, change_audited, entry_params
from backend.deps import Principal
from backend.errors import Conflict, Invalid, InvalidMany, NotFound
from backend.runs.schemas import RunOut
from backend.runs.teachers import check_teacher_pairs, ready_teachers
from backend.teams.service import (
    LAST_ID,
    MAX_LIMIT,
    decode_cursor,
    encode_cursor,
    get_owned,
    label,
)
from core import (
    events,
    inspections,
    pairing,  # torch-free, like config and catalog
)
from core.catalog.augment import image_ops_problem
from core.catalog.schemes import peer_layers
from core.clock import utcnow
from core.config import RunConfig, StudentSpec
from core.db import driver_rows, get_sessionmaker
from core.db.tables import (
    ROLLUP_WIDTHS,
    TERMINAL_RUN_STATES,
    AuditEntry,
    Dataset,
    Metric,
    MetricRollup,
    Model,
    Run,
    Status,
    Webhook,
)
from core.jobs import DISTILL, INSPECT_STUDENT, WAITING_KEY, gpu_queue, waiting_for_worker
from core.settings import get_settings
from core.split_point import split_layer
from core.webhooks.events import dispatch_run_event, hooks_to_tell

PATH_REFUSED = "the API takes model_id/dataset_id; 'path' is for the standalone CLI"
WAITING = (Status.pending.value, Status.queued.value, Status.running.value)
DEVICE_QUEUES = {"cpu": "cpu", "cuda": "gpu"}


# -- references -------------------------------------------------------------------------------


def refuse_paths(config: RunConfig) -> None:
    problems = []
    if config.teacher.path is not None:
        problems.append(("teacher.path", PATH_REFUSED, ["body", "teacher", "path"]))
    if config.dataset.path is not None:
        problems.append(("dataset.path", PATH_REFUSED, ["body", "dataset", "path"]))
    student_model = config.student.model
    if config.student.source == "model" and student_model is not None and student_model.path:
        problems.append(("student.model.path", PATH_REFUSED, ["body", "student", "model", "path"]))
    if problems:
        raise InvalidMany(problems)


def ready_model(session: Session, model_id: int, team_id: int) -> Model:
    """The team's model `model_id`, inspected and ready (404 / 409 otherwise)."""
    model = get_owned(session, Model, model_id, team_id)
    if model.archived:
        raise Conflict(
            f"model {model.id} is archived; bring it back with PATCH /api/v1/models/{model.id} "
            '{"archived": false}, or pick another model'
        )
    if model.status in WAITING:
        raise Conflict(f"model {model.id} is still being inspected; retry when its status is ready")
    if model.status != Status.ready.value:
        raise Conflict(
            f"model {model.id} failed inspection: {model.error or 'no reason recorded'}; "
            "upload a fixed file as a new version"
        )
    return model


def ready_dataset(session: Session, dataset_id: int, team_id: int) -> Dataset:
    dataset = get_owned(session, Dataset, dataset_id, team_id)
    if dataset.archived:
        raise Conflict(
            f"dataset {dataset.id} is archived; bring it back with PATCH "
            f'/api/v1/datasets/{dataset.id} {{"archived": false}}, or pick another dataset'
        )
    if dataset.status in WAITING:
        raise Conflict(
            f"dataset {dataset.id} is still being scanned; retry when its status is ready"
        )
    if dataset.status != Status.ready.value:
        raise Conflict(
            f"dataset {dataset.id} failed its scan: {dataset.error or 'no reason recorded'}; "
            "upload a fixed file"
        )
    return dataset


def inspection_of(model: Model) -> dict[str, Any]:
    if not model.inspection:
        raise Conflict(f"model {model.id} has no layer table; upload it again to re-inspect it")
    return model.inspection


# -- student inspections (zoo students are built by a worker: the API has no torch) -----------


class StudentPending(Exception):
    """A worker is building the student's layer table: nothing was saved; ask again (202)."""

    def __init__(self, job: str, architecture: str) -> None:
        super().__init__(
            f"a worker is building the layer table of the student '{architecture}'; nothing "
            f"was saved: send the same request again in {inspections.RETRY_AFTER_S}s"
        )
        self.job, self.architecture = job, architecture


def release_connection(session: Session) -> None:
    """End the request's transaction, so that its database connection goes back to the pool
    before the request talks to the broker (objects already loaded stay usable)."""
    session.commit()


def zoo_inspection(
    session: Session,
    architecture: str,
    kwargs: dict[str, Any],
    input_shape: list[int],
    num_classes: int,
) -> dict[str, Any]:
    """The layer table of a zoo student, from the store of them (`core.inspections`).

    Never waits for a worker: when it is not stored yet, it is queued (once) and StudentPending
    raised. The database connection is released first."""
    args = inspections.build_args(architecture, kwargs, input_shape, num_classes)
    release_connection(session)
    entry = inspections.lookup(args, INSPECT_STUDENT)
    if entry.status == "ready" and entry.inspection is not None:
        return entry.inspection
    if entry.status == "failed":
        raise Invalid(
            "student",
            f"could not build '{architecture}' with {kwargs or 'default parameters'} "
            f"for inputs {input_shape} and {num_classes} classes: {entry.error}",
            loc=["body", "student"],
        )
    raise StudentPending(inspections.job_id(args), architecture)


def _shape_source(dataset: Dataset | None, teacher: Model) -> tuple[list[int], int]:
    """Input shape and number of classes the student is built for: the dataset's, else teacher's."""
    info = (dataset.info if dataset is not None else None) or {}
    shape, classes = info.get("input_shape"), info.get("num_classes")
    if shape and classes:
        return list(shape), int(classes)
    insp = teacher.inspection or {}
    shape = shape or insp.get("input_shape") or (teacher.arch_kwargs or {}).get("input_shape")
    classes = classes or insp.get("num_classes") or (teacher.arch_kwargs or {}).get("num_classes")
    if not shape or not classes:
        source = f"dataset {dataset.id}" if dataset is not None else f"model {teacher.id}"
        raise Conflict(
            f"{source} does not say its input shape and number of classes, which the student "
            "needs; give a dataset that was scanned successfully"
        )
    return list(shape), int(classes)


def student_inspection(
    session: Session, spec: StudentSpec, team_id: int, teacher: Model, dataset: Dataset | None
) -> dict[str, Any]:
    if spec.source == "model":
        assert spec.model is not None
        if spec.model.model_id is None:
            raise Invalid(
                "student.model.path", PATH_REFUSED, loc=["body", "student", "model", "path"]
            )
        return inspection_of(ready_model(session, spec.model.model_id, team_id))
    shape, classes = _shape_source(dataset, teacher)
    try:  # zoo, derived from the teacher, or the teacher's own architecture
        arch, kwargs = spec.zoo_architecture(teacher.architecture, dict(teacher.arch_kwargs or {}))
    except ValueError as exc:
        raise Invalid("student.source", str(exc), loc=["body", "student", "source"]) from exc
    kwargs = {k: v for k, v in kwargs.items() if k not in ("input_shape", "num_classes")}
    return zoo_inspection(session, arch, kwargs, shape, classes)


# -- layer pairs ------------------------------------------------------------------------------


def check_layer_pairs(config: RunConfig, teacher: dict[str, Any], student: dict[str, Any]) -> None:
    """Every pair names existing layers that can be matched, holding an attention where a loss
    reads one (attention_kl, minilm_relations); 422 listing each problem."""
    problems: list[tuple[str, str, list[str | int]]] = []
    for i, pair in enumerate(config.layer_pairs):
        where = f"layer_pairs[{i}]"
        t_layer = s_layer = None
        try:
            t_layer = pairing.find_layer(teacher, pair.teacher, "teacher")
        except ValueError as exc:
            problems.append((f"{where}.teacher", str(exc), ["body", "layer_pairs", i, "teacher"]))
        try:
            s_layer = pairing.find_layer(student, pair.student, "student")
        except ValueError as exc:
            problems.append((f"{where}.student", str(exc), ["body", "layer_pairs", i, "student"]))
        if t_layer is not None and s_layer is not None:
            message = pairing.check_pair(
                t_layer, s_layer, tap=pair.tap, student=student, task=config.task
            )
            if message:
                problems.append((where, message, ["body", "layer_pairs", i]))
    losses = [(spec.name, spec.pairs) for spec in config.losses]
    pairs = [(pair.teacher, pair.student) for pair in config.layer_pairs]
    for i, side, message in pairing.attention_pair_problems(losses, pairs, teacher, student):
        problems.append((f"layer_pairs[{i}].{side}", message, ["body", "layer_pairs", i, side]))
    if problems:
        raise InvalidMany(problems)


def check_peer_layers(layers: list[str], student: dict[str, Any]) -> None:
    """online's peer_layers are layers of the student with a tensor output; 422 otherwise."""
    where, loc = "scheme_params.peer_layers", ["body", "scheme_params", "peer_layers"]
    problems: list[tuple[str, str, list[str | int]]] = []
    for name in layers:
        try:
            row = pairing.find_layer(student, name, "student")
        except ValueError as exc:
            problems.append((where, str(exc), loc))
            continue
        if not row.get("output_shape"):
            problems.append((where, f"the student layer '{name}' has no tensor output", loc))
    if problems:
        raise InvalidMany(problems)


# -- creating runs ----------------------------------------------------------------------------


def check_augment(config: RunConfig, dataset: Dataset) -> None:
    """The augment section fits the dataset: image operations need images, the mean/std one
    value per channel or feature (or one for all); 422 naming the setting otherwise."""
    shape = (dataset.info or {}).get("input_shape")
    problem = image_ops_problem(config.augment.model_dump(), list(shape) if shape else None)
    if problem is not None:
        raise Invalid("", f"{problem} (dataset {dataset.id})", loc=["body", "augment"])


def queue_for(config: RunConfig) -> str:
    """`cpu`, or the GPU queue for the run's `training.gpus` (`gpu`, `gpu-N`): only workers with
    N GPUs or more consume `gpu-N`. On `cpu`, N > 1 trains as N CPU processes."""
    queue = DEVICE_QUEUES.get(config.training.device, get_settings().default_queue)
    return gpu_queue(config.training.gpus) if queue == "gpu" else queue


def queued_summary(config: RunConfig, queue: str) -> dict[str, Any]:
    """A new run's summary: on a `gpu-N` queue it says what the run waits for."""
    gpus = config.training.gpus
    return {WAITING_KEY: waiting_for_worker(gpus)} if queue == gpu_queue(gpus) != "gpu" else {}


# built once: a create's statement is built in about the time it takes to run. The teacher's
# layer table and card are the row's largest JSON: read (one statement more) only where a check
# reads them (layer pairs, a split point, another teacher's shapes)
_TEACHER_AND_DATASET = (
    select(Model, Dataset)
    .join(Dataset, true())
    .where(Model.id == bindparam("teacher"), Dataset.id == bindparam("dataset"))
    .options(defer(Model.inspection), defer(Model.card))
)


def create_run(session: Session, principal: Principal, config: RunConfig) -> Run:
    """Validate `config` against the team's models and datasets, save the run and queue it."""
    refuse_paths(config)
    team_id = principal.team_id
    assert config.teacher.model_id is not None and config.dataset.dataset_id is not None
    # the teacher and the dataset in one statement, into the session's identity map (held here:
    # it keeps rows only while they are referenced), where `get_owned` finds them by primary
    # key without a statement each (one absent: it looks, and answers 404); joined on true:
    # each side is one row by its key, so the product is wanted (and SQLAlchemy is told so)
    held = session.execute(
        _TEACHER_AND_DATASET,
        {"teacher": config.teacher.model_id, "dataset": config.dataset.dataset_id},
    ).all()
    teacher = ready_model(session, config.teacher.model_id, team_id)
    dataset = ready_dataset(session, config.dataset.dataset_id, team_id)
    del held
    others = ready_teachers(session, config, team_id, teacher, ready_model)  # multi_teacher
    check_augment(config, dataset)
    student_insp = None
    if config.student.source == "model":  # the student model must exist and be ready, pairs or not
        student_insp = student_inspection(session, config.student, team_id, teacher, dataset)
    if any(t.pairs for t in config.teachers):
        check_teacher_pairs(config, others, None)  # the teachers' side first: no worker needed
        if student_insp is None:
            student_insp = student_inspection(session, config.student, team_id, teacher, dataset)
        check_teacher_pairs(config, others, student_insp)
    if config.layer_pairs:
        teacher_insp = inspection_of(teacher)
        if student_insp is None:  # a zoo student: only built (by a worker) when pairs need it
            student_insp = student_inspection(session, config.student, team_id, teacher, dataset)
        check_layer_pairs(config, teacher_insp, student_insp)
    layers = peer_layers(config.scheme_params.get("peer_layers", ""))
    if config.scheme == "online" and layers:  # the peers' layers must be the student's
        if student_insp is None:
            student_insp = student_inspection(session, config.student, team_id, teacher, dataset)
        check_peer_layers(layers, student_insp)
    if config.scheme == "split":  # the split point must be a feature map of this teacher
        split_at = str(config.resolved_scheme_params()["split_at"])
        try:
            split_layer(inspection_of(teacher), split_at)
        except ValueError as exc:
            where = "scheme_params.split_at"
            message = str(exc).removeprefix(f"{where}: ")
            raise Invalid(where, message, loc=["body", "scheme_params", "split_at"]) from None
    student_model_id = (
        config.student.model.model_id
        if (config.student.source == "model" and config.student.model is not None)
        else None
    )
    run = Run(
        team_id=team_id,
        name=config.name,
        config=config.model_dump(mode="json"),
        status=Status.queued.value,
        queue=queue_for(config),
        summary=queued_summary(config, queue_for(config)),
        teacher_model_id=teacher.id,
        student_model_id=student_model_id,
        dataset_id=dataset.id,
        created_by=principal.user.id,
        created_at=utcnow(),
    )
    detail = {
        "name": run.name,
        "teacher_model_id": teacher.id,
        "dataset_id": dataset.id,
        "student_model_id": student_model_id,
        "queue": run.queue,
    }
    entry_id = add_audited(session, principal, run, "run.create", "run", detail)
    try:
        queue.enqueue(DISTILL, [run.id], queue=run.queue)
    except queue.BrokerUnavailable:  # nothing saved: the run goes, then its entry (a session
        # in autocommit, `write_as`, commits each: the run first, never left without its entry)
        session.execute(delete(Run).where(Run.id == run.id))
        session.execute(delete(AuditEntry).where(AuditEntry.id == entry_id))
        session.commit()
        raise
    return run


def plan(
    session: Session,
    team_id: int,
    teacher_model_id: int,
    dataset_id: int | None,
    student: StudentSpec,
) -> dict[str, Any]:
    """Teacher and student inspections side by side, with suggested layer pairs."""
    teacher = ready_model(session, teacher_model_id, team_id)
    teacher_insp = inspection_of(teacher)
    dataset = ready_dataset(session, dataset_id, team_id) if dataset_id is not None else None
    student_insp = student_inspection(session, student, team_id, teacher, dataset)
    suggested = pairing.suggest_pairs(teacher_insp, student_insp)
    return {
        "teacher": teacher_insp,
        "student": student_insp,
        "suggested_pairs": suggested,
        "teacher_params": teacher_insp.get("params"),
        "student_params": student_insp.get("params"),
    }


# -- reading and cancelling -------------------------------------------------------------------


# Reads of runs are the API's most frequent requests (pages and scripts poll them): they select
# plain columns (no ORM objects, no identity map) and write the response JSON once, here, with
# orjson (a page of 20 runs in a fifth of the time pydantic-core takes): `config` and `summary`
# go in as the JSON text the database holds (`orjson.Fragment`: never decoded and encoded
# again); naive stamps (SQLite hands them back so) are UTC, as `UtcDateTime` stores them, and
# go out as `RunOut` writes them ("Z"); non-finite floats go out as null. The router returns
# these bytes as they are.

_JSON_FIELDS = ("summary", "config")
RUN_FIELDS = tuple(f for f in RunOut.model_fields if f not in _JSON_FIELDS)
RUN_COLUMNS = (
    *(getattr(Run, f) for f in RUN_FIELDS),
    *(cast(getattr(Run, f), Text).label(f) for f in _JSON_FIELDS),  # the stored JSON text
    Run.team_id,
)
_NOT_JSON = ("NaN", "Infinity")  # what Python's json writes for non-finite floats
_AS_RUN_OUT = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z


def _raw_json(value: str | None) -> orjson.Fragment:
    """Stored JSON text as it can go out: as it is, unless it holds a non-finite float (SQLite
    stores what Python's json writes), which goes out as null like every other value."""
    if value is None:
        return orjson.Fragment(b"{}")
    if any(word in value for word in _NOT_JSON):
        return orjson.Fragment(to_json(from_json(value, allow_inf_nan=True), inf_nan_mode="null"))
    return orjson.Fragment(value)


def _run_dict(row: Sequence[Any]) -> dict[str, Any]:
    """`RunOut` of a row of `RUN_COLUMNS`, for orjson (`_AS_RUN_OUT`)."""
    fields = dict(zip(RUN_FIELDS, row, strict=False))
    n = len(RUN_FIELDS)
    fields["summary"] = _raw_json(row[n])
    fields["config"] = _raw_json(row[n + 1])
    return fields


def run_json(row: Sequence[Any]) -> bytes:
    """The `RunOut` JSON of a row of `RUN_COLUMNS`."""
    return orjson.dumps(_run_dict(row), option=_AS_RUN_OUT)


def list_runs(
    session: Session,
    team_id: int,
    *,
    limit: int,
    cursor: str | None,
    status: str | None,
    teacher_model_id: int | None,
    q: str | None,
) -> tuple[list[Any], str | None]:
    """Rows of `RUN_COLUMNS` of the team's runs, newest first, at most `limit` after `cursor`;
    and the next cursor (as `teams.service.page`)."""
    limit = max(1, min(limit, MAX_LIMIT))
    values: dict[str, Any] = {"team": team_id, "limit": limit + 1}
    if status:
        values["status"] = status
    if teacher_model_id is not None:
        values["teacher"] = teacher_model_id
    if q:  # name contains q, any case; its / % _ escaped by /
        escaped = q.lower().replace("/", "//").replace("%", "/%").replace("_", "/_")
        values["q"] = f"%{escaped}%"
    # ids below the cursor's, or up to the largest there can be: the bound plans the list from
    # the (team_id, id) index, never as a sort of the whole team (see `page`)
    if cursor:
        values["before"] = decode_cursor(cursor)
    else:
        values["last"] = LAST_ID
    rows = driver_rows(session.connection(), _list_statement(frozenset(values)), values)
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1][0]) if more and rows else None


@cache
def _list_statement(given: frozenset[str]) -> Select[Any]:
    """The list's statement for the filters `given`, with bind parameters: built once for each
    combination (building a statement costs more than running it)."""
    stmt = select(*RUN_COLUMNS).where(Run.team_id == bindparam("team"))
    if "status" in given:
        stmt = stmt.where(Run.status == bindparam("status"))
    if "teacher" in given:
        stmt = stmt.where(Run.teacher_model_id == bindparam("teacher"))
    if "q" in given:
        stmt = stmt.where(func.lower(Run.name).like(bindparam("q"), escape="/"))
    if "before" in given:
        stmt = stmt.where(Run.id < bindparam("before"))
    else:
        stmt = stmt.where(Run.id <= bindparam("last"))
    return stmt.order_by(Run.id.desc()).limit(bindparam("limit"))


def runs_page_json(rows: list[Any], next_cursor: str | None) -> bytes:
    """The `Page[RunOut]` JSON of `list_runs`."""
    items = [_run_dict(row) for row in rows]
    return orjson.dumps({"items": items, "next_cursor": next_cursor}, option=_AS_RUN_OUT)


class RunRef(NamedTuple):
    """A run by id and the team it is read for: known to be that team's (`run_ref`), or checked
    by the statements that read it (`metrics`)."""

    id: int
    team_id: int


# by primary key, then the team (other teams' ids answer 404 like missing ones); built once:
# building a statement per request costs more than running it
_RUN_BY_ID = select(*RUN_COLUMNS).where(Run.id == bindparam("id"))
_TEAM_OF_RUN = select(Run.team_id).where(Run.id == bindparam("id"))


def _readable(session: Session, run_id: int, team_id: int, stmt: Select[Any]) -> Any:
    rows = driver_rows(session.connection(), stmt, {"id": run_id})
    row = rows[0] if rows else None
    if row is None or row[-1] != team_id:
        raise NotFound(f"{label(Run)} {run_id} not found")
    return row


def run_for_read_json(session: Session, run_id: int, team_id: int) -> bytes:
    """The `RunOut` JSON of the team's run `run_id` (404 otherwise)."""
    return run_json(_readable(session, run_id, team_id, _RUN_BY_ID))


def run_ref(session: Session, run_id: int, team_id: int) -> RunRef:
    """The team's run `run_id` (404 otherwise), by primary key, without its config."""
    _readable(session, run_id, team_id, _TEAM_OF_RUN)
    return RunRef(run_id, team_id)


def get_run(session: Session, run_id: int, team_id: int) -> Run:
    return get_owned(session, Run, run_id, team_id)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


MAX_POINTS = 10_000  # the most points per series one request may ask for
MIN_POINTS = 4  # M4 keeps up to four points per bucket
# The first statement of each metrics read holds the team check: a run of another team reads
# as one without points (evaluated once, by the runs' primary key), so a read of a run with
# points needs no look-up of the run before it (see `metrics`)
OF_TEAM = "EXISTS (SELECT 1 FROM runs WHERE runs.id = :run AND runs.team_id = :team)"
SERIES_NAMES = text(
    f"""
    WITH RECURSIVE names(name) AS (
        SELECT MIN(name) FROM metrics WHERE run_id = :run AND {OF_TEAM}
        UNION ALL
        SELECT (SELECT MIN(m.name) FROM metrics m WHERE m.run_id = :run AND m.name > names.name)
        FROM names WHERE names.name IS NOT NULL
    )
    SELECT name,
        (SELECT MIN(m.step) FROM metrics m
         WHERE m.run_id = :run AND m.name = names.name AND m.step > :since),
        (SELECT MAX(m.step) FROM metrics m WHERE m.run_id = :run AND m.name = names.name)
    FROM names WHERE name IS NOT NULL
    """
)  # a skip scan of the primary key: a few index look-ups per series, however long they are


_IN_BUCKET = (
    "FROM metrics m WHERE m.run_id = :run AND m.name = :name "
    "AND m.step >= buckets.lo AND m.step < buckets.lo + :width"
)
M4_BUCKETS = text(
    f"""
    WITH RECURSIVE buckets(lo) AS (
        SELECT CAST(:lo AS BIGINT)
        UNION ALL
        SELECT lo + :width FROM buckets WHERE lo + :width <= :hi
    )
    SELECT
        (SELECT MIN(m.step) {_IN_BUCKET}),
        (SELECT MAX(m.step) {_IN_BUCKET}),
        (SELECT m.step {_IN_BUCKET} ORDER BY m.value, m.step LIMIT 1),
        (SELECT m.step {_IN_BUCKET} ORDER BY m.value DESC, m.step LIMIT 1)
    FROM buckets
    """
)  # the first, last, lowest and highest point of each bucket of `width` steps (M4)


def metrics(
    session: Session,
    run: Run | RunRef,
    names: list[str] | None,
    since_step: int | None,
    max_points: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Series of the run by name, ordered by step; only steps after `since_step` when given.
    None of them when `run` is not of `run.team_id` (the team check is in the statements).

    With `max_points`, a series with more points than that is downsampled in the database to at
    most `max_points` points by M4 (Jugel et al., "M4: A Visualization-Oriented Time Series Data
    Aggregation", VLDB 2014): its steps are cut into `max_points // 4` buckets of equal width
    and of each bucket the first, last, smallest and largest point are kept, so a line chart
    drawn from them shows every spike and dip of the whole series. Each series says how many
    points it has in all (`total`, after `since_step`) and whether it was `downsampled`.

    A whole series (no `since_step`) with rollups (`metric_rollups`, kept by the worker) is
    downsampled from those: its buckets are a multiple of a rollup width, so merging the rollup
    rows gives the exact M4 of every point without reading them (`_m4_rollups`). One too short
    for the rollups' buckets (under 16 steps a bucket: up to 4,000 steps at `max_points=1000`,
    such as a live run's) is downsampled from its chunks of JSON, a few rows (`_m4_chunks`).
    """
    if max_points is None:
        return _points(session, run, names, since_step)
    since = since_step if since_step is not None else -(2**31)
    spans = {
        name: (lo, hi)
        for name, lo, hi in _tuples(
            session, SERIES_NAMES, {"run": run.id, "team": run.team_id, "since": since}
        )
        if lo is not None and (not names or name in names)
    }
    small = [name for name, (lo, hi) in spans.items() if hi - lo + 1 <= max_points]
    series = _points(session, run, small, since_step) if small else {}
    for name, (lo, hi) in spans.items():
        if name not in series:
            found = None
            if since_step is None:  # a whole series: from what the worker keeps of it
                plan = rollup_buckets(lo, hi, max_points)
                found = (
                    _m4_rollups(session, run.id, name, lo, hi, max_points, plan)
                    if plan is not None
                    else _m4_chunks(session, run, name, max_points)
                )
            series[name] = found or _m4(session, run, name, lo, hi, max_points)
    return {name: series[name] for name in sorted(series)}


class Encoded(bytes):
    """A value already encoded as JSON (a series' points, as the database wrote them): sent as is
    by `metrics_json`."""


def _points(
    session: Session, run: Run | RunRef, names: list[str] | None, since_step: int | None
) -> dict[str, dict[str, Any]]:
    """Every point of the series (all of the run's when `names` is empty), each list already in
    JSON (`Encoded`), so that Python does not touch the points one by one.

    The database writes the arrays of steps and epochs (integers read the same anywhere).
    PostgreSQL writes the values too: `float8` text is the shortest that reads back as the same
    double (the engine sets `extra_float_digits`, `core.db.make_engine`),
    a whole number gets its ".0" so it stays a float, NaN and infinities are null. SQLite's own
    float text has 15 digits (it would change values), so there the values come as floats, one
    column, and pydantic_core encodes them.
    """
    values: dict[str, Any] = {"run": run.id, "team": run.team_id}
    if since_step is not None:
        values["since"] = since_step
    if names:
        values["names"] = names
    given = frozenset(values)
    postgres = session.get_bind().dialect.name == "postgresql"
    if since_step is None:  # a whole series: from its chunks of JSON, a few rows
        chunked = _chunked(session, _chunks_statement(given, postgres), values)
        if chunked is not None:
            return chunked
    groups = _tuples(session, _arrays_statement(given, postgres), values)
    if postgres:
        return {
            name: _encoded(steps, epochs, floats, total)
            for name, steps, epochs, total, floats in groups
        }
    floats = [row[0] for row in _tuples(session, _values_statement(given), values)]
    if sum(group[3] for group in groups) == len(floats):  # else written in between: rows
        series, first = {}, 0
        for name, steps, epochs, total in groups:
            encoded = to_json(floats[first : first + total], inf_nan_mode="null")
            series[name] = _encoded(steps, epochs, encoded, total)
            first += total
        return series
    return _point_rows(session, run.id, names, since_step)


def _chunked(
    session: Session, stmt: TextClause, values: dict[str, Any]
) -> dict[str, dict[str, Any]] | None:
    """The whole series from their chunks (`metric_chunks`: the JSON of up to `CHUNK_POINTS`
    points a row, kept by the worker), joined as they are; None when the chunks do not hold
    every point of the series asked for (points written without them: by an older worker, or
    by hand), so that the caller reads the points."""
    rows = _tuples(session, stmt, values)
    if not rows or sum(row[1] for row in rows) != rows[0][5]:
        return None
    series = {}
    for name, group in groupby(rows, itemgetter(0)):
        chunks = list(group)
        series[name] = _encoded(
            "[" + ",".join(row[2] for row in chunks) + "]",
            "[" + ",".join(row[3] for row in chunks) + "]",
            "[" + ",".join(row[4] for row in chunks) + "]",
            sum(row[1] for row in chunks),
        )
    return series


@cache
def _chunks_statement(given: frozenset[str], postgres: bool) -> TextClause:
    """The chunks of the series in name and step order, each with the count of the series'
    points in the table (an uncorrelated subquery: counted once, a range of its key)."""
    where = _where(given, postgres)
    stmt = text(
        "SELECT name, n, steps_json, epochs_json, values_json, "
        f"(SELECT count(*) FROM metrics WHERE {where}) "
        f"FROM metric_chunks WHERE {where} ORDER BY name, chunk"
    )
    return _names_bound(stmt, given, postgres)


def _encoded(
    steps: str | bytes, epochs: str | bytes, floats: str | bytes, total: int
) -> dict[str, Any]:
    def raw(array: str | bytes) -> Encoded:
        return Encoded(array.encode() if isinstance(array, str) else array)

    return {
        "steps": raw(steps),
        "values": raw(floats),
        "epochs": raw(epochs),
        "total": total,
        "downsampled": False,
    }


def _where(given: frozenset[str], postgres: bool) -> str:
    """The points' condition for the parameters `given` (a range of the primary key), with the
    team check. The names are one array parameter on PostgreSQL (`= ANY`, as PostgreSQL plans
    an `IN` list): the same statement for any number of them, which `core.db.driver_rows` can
    run on the driver; SQLite gets an `IN` list (`_names_bound`)."""
    where = f"run_id = :run AND {OF_TEAM}"
    if "names" in given:
        where += " AND name = ANY(:names)" if postgres else " AND name IN :names"
    if "since" in given:
        where += " AND step > :since"
    return where


def _json_number(column: str) -> str:
    """A float column as PostgreSQL text that JSON reads back as the same float: a whole number
    prints without ".0" (below 1e15; from there on with an exponent), so it gets one (and "-0"
    stays -0.0). NaN and infinities are not JSON: the caller maps or avoids them."""
    whole = f"{column} = trunc({column}) AND abs({column}) < 1e15"
    return f"{column}::text || CASE WHEN {whole} THEN '.0' ELSE '' END"


_PG_VALUE = (
    f"CASE WHEN value IN ('NaN', 'Infinity', '-Infinity') THEN 'null' "
    f"ELSE {_json_number('value')} END"
)


@cache
def _arrays_statement(given: frozenset[str], postgres: bool) -> TextClause:
    """Per series, in name order: its name, the JSON arrays of its steps and of its epochs and
    its count of points; on PostgreSQL also the array of its values.

    SQLite (before 3.44) has no ORDER BY inside an aggregate: its arrays follow the scan, which
    is in the order of the primary key (the table is stored in it), so by step within a name.
    """
    if postgres:
        columns = (
            "name, '[' || string_agg(step::text, ',' ORDER BY step) || ']', "
            "'[' || string_agg(epoch::text, ',' ORDER BY step) || ']', count(*), "
            f"'[' || string_agg({_PG_VALUE}, ',' ORDER BY step) || ']'"
        )
    else:
        columns = "name, json_group_array(step), json_group_array(epoch), count(*)"
    where = _where(given, postgres)
    stmt = text(f"SELECT {columns} FROM metrics WHERE {where} GROUP BY name ORDER BY name")
    return _names_bound(stmt, given, postgres)


@cache
def _values_statement(given: frozenset[str]) -> TextClause:
    """The values of the points, in the order of `_arrays_statement` (name, then step), on
    SQLite: PostgreSQL's arrays hold them."""
    stmt = text(f"SELECT value FROM metrics WHERE {_where(given, False)} ORDER BY name, step")
    return _names_bound(stmt, given, False)


def _names_bound(stmt: TextClause, given: frozenset[str], postgres: bool) -> TextClause:
    """`stmt` with its `names` parameter expanded into an `IN` list where `_where` has one."""
    if "names" in given and not postgres:
        return stmt.bindparams(bindparam("names", expanding=True))
    return stmt


def _point_rows(
    session: Session, run_id: int, names: list[str] | None, since_step: int | None
) -> dict[str, dict[str, Any]]:
    """Every point of the series read as plain rows (see `_points`)."""
    values: dict[str, Any] = {"run": run_id}
    if since_step is not None:
        values["since"] = since_step
    if names and len(names) == 1:  # one series (what pages and scripts ask): no name per row
        values["name"] = names[0]
        rows = _tuples(session, _points_statement(frozenset(values)), values)
        return {names[0]: _series(*zip(*rows, strict=True))} if rows else {}
    if names:
        values["names"] = names
    rows = _tuples(session, _points_statement(frozenset(values)), values)
    return {
        name: _series(*list(zip(*group, strict=True))[1:])
        for name, group in groupby(rows, itemgetter(0))
    }


def _tuples(session: Session, stmt: Executable, values: dict[str, Any]) -> list[Any]:
    """The rows of `stmt` as the database driver gives them: plain tuples, no `Row` per point
    (the points' columns are integers and floats, which SQLAlchemy hands on unchanged)."""
    return driver_rows(session.connection(), stmt, values)


def _series(
    steps: tuple[int, ...], epochs: tuple[int, ...], values: tuple[float, ...]
) -> dict[str, Any]:
    finite = math.isfinite(sum(values))  # one C loop; else NaN and infinities go out as None
    return {
        "steps": list(steps),
        "values": list(values)
        if finite
        else [v if -math.inf < v < math.inf else None for v in values],
        "epochs": list(epochs),
        "total": len(steps),
        "downsampled": False,
    }


@cache
def _points_statement(given: frozenset[str]) -> Select[Any]:
    """The points' statement for the parameters `given`, built once for each combination."""
    columns = (Metric.step, Metric.epoch, Metric.value)
    stmt = select(*columns) if "name" in given else select(Metric.name, *columns)
    stmt = stmt.where(Metric.run_id == bindparam("run"))
    if "name" in given:
        stmt = stmt.where(Metric.name == bindparam("name"))
    if "names" in given:
        stmt = stmt.where(Metric.name.in_(bindparam("names", expanding=True)))
    if "since" in given:
        stmt = stmt.where(Metric.step > bindparam("since"))
    return stmt.order_by(Metric.name, Metric.step)


def metrics_json(series: dict[str, dict[str, Any]]) -> bytes:
    """The `MetricsOut` JSON of `metrics` (its `Encoded` parts as they are)."""
    parts = []
    for name, fields in series.items():
        encoded = (
            b'"%s":%s'
            % (
                key.encode(),
                # orjson: NaN and infinities as null, as pydantic's `inf_nan_mode="null"`, in
                # half its time (a chart's three arrays: 0.06 ms less)
                value if isinstance(value, Encoded) else orjson.dumps(value),
            )
            for key, value in fields.items()
        )
        parts.append(to_json(name) + b":{" + b",".join(encoded) + b"}")
    return b'{"series":{' + b",".join(parts) + b"}}"


def plain(series: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`metrics` with its `Encoded` parts decoded: for a reader other than `metrics_json` (e.g.
    the live stream's event of missed points)."""
    return {
        name: {k: from_json(v) if isinstance(v, Encoded) else v for k, v in fields.items()}
        for name, fields in series.items()
    }


def _m4_chunks(
    session: Session, run: Run | RunRef, name: str, max_points: int
) -> dict[str, Any] | None:
    """The whole series `name` M4-downsampled from its chunks of JSON (`_chunked`): the buckets
    of `_m4` (from its first step, of `(last - first) // (max_points // 4) + 1` steps), each a
    slice of the points, its first, last, lowest and highest (the first step of equals) found
    by C loops. For series too short for the rollups' buckets, where `_m4` would probe each
    bucket in the database. None when the chunks do not hold every point, when the series has
    no more than `max_points` (sparse: all of them), or when a value is not finite (NaN and
    infinities are null in the chunks, and order apart): the caller then reads the points."""
    values = {"run": run.id, "team": run.team_id, "names": [name]}
    postgres = session.get_bind().dialect.name == "postgresql"
    whole = _chunked(session, _chunks_statement(frozenset(values), postgres), values)
    if whole is None or name not in whole:
        return None
    encoded = whole[name]
    steps, floats, epochs = (
        orjson.loads(memoryview(encoded[k])) for k in ("steps", "values", "epochs")
    )
    if len(steps) <= max_points or None in floats:
        return None
    lo = steps[0]
    width = (steps[-1] - lo) // (max_points // MIN_POINTS) + 1
    kept: set[int] = set()  # indexes of the points kept
    first = 0
    while first < len(steps):
        end = bisect_left(steps, lo + ((steps[first] - lo) // width + 1) * width, first)
        bucket = floats[first:end]
        low, high = bucket.index(min(bucket)), bucket.index(max(bucket))
        kept.update((first, end - 1, first + low, first + high))
        first = end
    order = sorted(kept)
    return {
        "steps": [steps[i] for i in order],
        "values": [floats[i] for i in order],
        "epochs": [epochs[i] for i in order],
        "total": encoded["total"],
        "downsampled": True,
    }


def _m4(
    session: Session, run: Run | RunRef, name: str, lo: int, hi: int, max_points: int
) -> dict[str, Any]:
    """The series `name` from step `lo` to `hi`, M4-downsampled to at most `max_points` points.

    The steps are cut into buckets of `width` steps; for each, four correlated subqueries on
    the primary key find its first and last step (one index look-up each) and the first step
    of its smallest and of its largest value (a range scan of the bucket, top-1); then the
    points at those steps are read by key. Every bucket is a range of the key, so nothing
    sorts or groups the whole series, and nothing but the chosen points leaves the database.
    """
    in_series = (Metric.run_id == run.id, Metric.name == name, Metric.step >= lo)
    total = session.scalar(select(func.count()).where(*in_series))
    if not total or total <= max_points:  # sparse (a value per epoch over many steps): all
        every = _points(session, run, [name], lo - 1)
        return every.get(name) or {"steps": [], "values": [], "epochs": [], "total": 0}
    width = (hi - lo) // (max_points // MIN_POINTS) + 1
    picked = session.execute(
        M4_BUCKETS, {"run": run.id, "name": name, "lo": lo, "hi": hi, "width": width}
    )
    steps = {step for row in picked for step in row if step is not None}
    rows = session.execute(
        select(Metric.step, Metric.epoch, Metric.value)
        .where(*in_series, Metric.step.in_(steps))
        .order_by(Metric.step)
    ).all()
    return {
        "steps": [r.step for r in rows],
        "values": [_finite(r.value) for r in rows],
        "epochs": [r.epoch for r in rows],
        "total": total,
        "downsampled": True,
    }


def rollup_buckets(lo: int, hi: int, max_points: int) -> tuple[int, int, int] | None:
    """(rollup width W, start, span) of a rollup read of steps `lo`..`hi` in `max_points // 4`
    buckets.

    W is the largest rollup width not above the even bucket width; `start` is `lo` rounded down
    to a multiple of W and `span` the steps from there to `hi`. Each bucket is a whole number
    of rollup buckets: rollup bucket b goes to bucket `(b * W - start) * count // span`, so the
    boundaries are the multiples of W at or below the even ones (buckets differ by at most W
    steps, and none is lost to rounding). None when the buckets are narrower than the
    narrowest rollup (a short series: its points are read).
    """
    count = max_points // MIN_POINTS
    fits = [w for w in ROLLUP_WIDTHS if w <= (hi - lo) // count + 1]
    if not fits:
        return None
    width = fits[-1]
    start = lo // width * width
    return width, start, hi + 1 - start


def _order(value: float) -> tuple[bool, float]:
    """Values as the databases order them: NaN above everything (PostgreSQL; SQLite has none)."""
    return (True, 0.0) if math.isnan(value) else (False, value)


def _nan_lt(a: float, b: float) -> bool:
    return _order(a) < _order(b)


def _nan_gt(a: float, b: float) -> bool:
    return _order(a) > _order(b)


_ROLLUP_ENDS = ("first", "last", "min", "max")
_ROLLUP_COLUMNS = [
    getattr(MetricRollup, f"{end}_{part}")
    for end in _ROLLUP_ENDS
    for part in ("step", "epoch", "value")
]


# the rollup rows of one width of a series, in step order; built once (building a statement
# per request costs more than running it)
_ROLLUP_ROWS = (
    select(MetricRollup.bucket, MetricRollup.n, *_ROLLUP_COLUMNS)
    .where(
        MetricRollup.run_id == bindparam("run"),
        MetricRollup.name == bindparam("name"),
        MetricRollup.width == bindparam("width"),
    )
    .order_by(MetricRollup.bucket)
)


# PostgreSQL: the same rows as one JSON array of their numbers, 14 a row (the columns are NOT
# NULL): a third of the API's CPU of reading them as rows, and less of the database's
_ROLLUP_JSON = text(
    "SELECT '[' || string_agg(concat_ws(',', "
    + ", ".join(
        _json_number(c.name) if c.name.endswith("_value") else c.name
        for c in _ROLLUP_ROWS.selected_columns
    )
    + "), ',' ORDER BY bucket) || ']' FROM metric_rollups "
    "WHERE run_id = :run AND name = :name AND width = :width"
)


def _rollup_rows(session: Session, values: dict[str, Any]) -> list[Any]:
    """The rows of `_ROLLUP_ROWS` as tuples; on PostgreSQL read through `_ROLLUP_JSON`, unless
    a value is NaN or infinite (not JSON): then as rows."""
    if session.get_bind().dialect.name == "postgresql":
        ((flat,),) = _tuples(session, _ROLLUP_JSON, values)
        if flat is None:
            return []
        try:
            numbers = orjson.loads(flat)
        except orjson.JSONDecodeError:  # NaN or an infinity among the values
            pass
        else:
            return list(zip(*[iter(numbers)] * len(_ROLLUP_ROWS.selected_columns), strict=True))
    return _tuples(session, _ROLLUP_ROWS, values)


def _m4_rollups(
    session: Session,
    run_id: int,
    name: str,
    lo: int,
    hi: int,
    max_points: int,
    plan: tuple[int, int, int],
) -> dict[str, Any] | None:
    """The whole series `name` (steps `lo`..`hi`) M4-downsampled from its rollups: the rows of
    one width (a range of their primary key, a few thousand at most) merged into the buckets
    of `plan` (`rollup_buckets`; first and last by step, lowest and highest by value, the first step of
    equals); the rollups hold each point's epoch and value, so no point is read. None when the
    series has no rollups that cover it (points written before them, by an older worker): the
    caller reads the points.
    """
    width, start, span = plan
    count = max_points // MIN_POINTS
    values = {"run": run_id, "name": name, "width": width}
    rows = _rollup_rows(session, values)
    if not rows or rows[0][2] != lo or rows[-1][5] != hi:
        return None  # none, or not kept up with the points: read them instead
    total = sum(map(itemgetter(1), rows))
    if total <= max_points:  # sparse (a value per epoch over many steps): all
        return None
    return _merged(rows, width, start, span, count) | {"total": total}  # of the series


def _merged(rows: list[Any], width: int, start: int, span: int, count: int) -> dict[str, Any]:
    """The M4 of rollup rows (`_ROLLUP_ROWS`) in the `count` buckets of `rollup_buckets`."""
    extremes = sum(map(itemgetter(10), rows)) + sum(map(itemgetter(13), rows))
    nan = math.isnan(extremes)  # a NaN among them (PostgreSQL): order as the database does
    lower, higher = (_nan_lt, _nan_gt) if nan else (lt, gt)
    points: dict[int, tuple[Any, Any]] = {}  # step -> (epoch, value)

    def keep(first: Any, last: Any, lowest: Any, highest: Any) -> None:
        points[first[2]] = (first[3], first[4])
        points[last[5]] = (last[6], last[7])
        points[lowest[8]] = (lowest[9], lowest[10])
        points[highest[11]] = (highest[12], highest[13])

    # rows in step order: each bucket is a run of them; the first of equal extremes is kept
    # (only a lower low or a higher high replaces it), which holds the first step of them
    first = last = lowest = highest = rows[0]
    bucket = (first[0] * width - start) * count // span
    for row in rows:
        if (b := (row[0] * width - start) * count // span) != bucket:
            keep(first, last, lowest, highest)
            bucket, first, lowest, highest = b, row, row, row
        else:
            if lower(row[10], lowest[10]):
                lowest = row
            if higher(row[13], highest[13]):
                highest = row
        last = row
    keep(first, last, lowest, highest)
    steps = sorted(points)
    values = [points[s][1] for s in steps]
    return {
        "steps": steps,
        "values": values if math.isfinite(extremes) else [_finite(v) for v in values],
        "epochs": [points[s][0] for s in steps],
        "downsampled": True,
    }


def cancel(session: Session, principal: Principal, run: Run) -> tuple[Run, bool]:
    """Cancel a run: queued ones at once (True), running ones by flag for the worker (False).

    A run cancelled at once never reaches a worker, so its webhooks are told from here.
    """
    if run.status not in TERMINAL_RUN_STATES and run.status != Status.running.value:
        now = utcnow()
        detail = {"name": run.name, "was": "queued"}
        params = {"run_id": run.id, "now": now}
        if change_audited(
            session, principal, _CANCEL_WAITING, params, "run.cancel", "run", run.id, detail
        ):
            # most teams have no webhook for it: then no second transaction records deliveries
            to_tell = hooks_to_tell(session, run.team_id, run.id, f"run.{Status.cancelled.value}")
            session.commit()
            set_committed_value(run, "status", Status.cancelled.value)  # what it wrote
            set_committed_value(run, "cancel_requested", True)
            set_committed_value(run, "finished_at", now)
            if to_tell:  # its deliveries in a transaction of their own (this session may be
                # in autocommit: `write_as`)
                with get_sessionmaker()() as deliveries:
                    dispatch_run_event(deliveries, run.id)
            events.publish_status(run)  # live streams learn it now (GET /runs/{id}/events)
            return run, True
        session.commit()
        session.refresh(run)  # a worker took it meanwhile, or it ended: as it is now
    if run.status in TERMINAL_RUN_STATES:
        raise Conflict(f"run {run.id} already {run.status}")
    detail = {"name": run.name, "was": run.status}
    params = {"run_id": run.id}
    change_audited(session, principal, _FLAG_CANCEL, params, "run.cancel", "run", run.id, detail)
    session.commit()
    session.refresh(run)
    return run, False


def cancel_waiting(session: Session, principal: Principal, run_id: int) -> bytes | None:
    """Cancel the caller's team's run `run_id` if it waits (queued, or pending a worker's plan),
    in one statement on PostgreSQL (`_CANCEL_WAITING_OF_TEAM`): the `RunOut` JSON of the run as
    it saved it. None where nothing changed (another team's run, or none; running or ended) or
    on SQLite: `cancel` then answers, after looking the run up. The caller may write runs."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    params = {"run_id": run_id, "team": principal.team_id, "now": utcnow()}
    params |= entry_params(principal, "run.cancel", "run")
    rows = driver_rows(session.connection(), _CANCEL_WAITING_OF_TEAM, params)
    if not rows:
        return None
    *row, hooked = rows[0]
    run = _run_dict(row)
    if hooked:  # the team has an active webhook: record the deliveries due (`cancel`)
        if hooks_to_tell(session, principal.team_id, run_id, f"run.{Status.cancelled.value}"):
            with get_sessionmaker()() as deliveries:
                dispatch_run_event(deliveries, run_id)
    events.publish_status(SimpleNamespace(**run))  # live streams learn it now
    return orjson.dumps(run, option=_AS_RUN_OUT)


# a cancel's UPDATEs, built once (`change_audited` saves each with its audit entry): a run that
# waits (queued, or pending a worker's plan) is cancelled at once; a running one is flagged for
# its worker
_CANCEL_WAITING = (
    update(Run)
    .where(
        Run.id == bindparam("run_id"),
        # no IN list to expand: `driver_rows` runs `cancel_waiting`'s form of it on the driver
        or_(Run.status == Status.queued.value, Run.status == Status.pending.value),
    )
    .values(
        status=Status.cancelled.value,
        cancel_requested=True,
        finished_at=bindparam("now", type_=Run.finished_at.type),
    )
    .execution_options(synchronize_session=False)
)
# `cancel_waiting`'s statement: `_CANCEL_WAITING` of the caller's team's run, the run as it
# saved it, its audit entry (its detail as `cancel` writes it), and whether the team has an
# active webhook (most have none: then nothing more is read); the team check is in the UPDATE
_WAITING_CANCELLED = (
    _CANCEL_WAITING.where(Run.team_id == bindparam("team")).returning(*RUN_COLUMNS).cte("cancelled")
)
_CANCEL_WAITING_OF_TEAM = audited_change(
    _WAITING_CANCELLED,
    func.json_build_object("name", _WAITING_CANCELLED.c.name, "was", "queued"),
).add_columns(
    select(Webhook.id)
    .where(Webhook.team_id == bindparam("team"), Webhook.active.is_(True))
    .exists()
    .label("hooked")
)
_FLAG_CANCEL = (
    update(Run)
    .where(Run.id == bindparam("run_id"))
    .values(cancel_requested=True)
    .execution_options(synchronize_session=False)
)


def retry(session: Session, principal: Principal, run: Run) -> Run:
    """A new run with the same config as a finished one (failed, cancelled or succeeded).

    The config is checked again like a new one: its teacher and dataset must still be ready."""
    if run.status not in TERMINAL_RUN_STATES:
        raise Conflict(
            f"run {run.id} is still {run.status}; wait until it ends, or cancel it first"
        )
    try:
        config = RunConfig.model_validate(run.config)
    except ValueError as exc:
        raise Invalid(
            "config",
            f"run {run.id}'s config is no longer valid ({str(exc).splitlines()[-1]}); "
            "download its YAML, fix it and launch it from New run",
            loc=["path", "run_id"],
        ) from None
    return create_run(session, principal, config)


def config_yaml(run: Run) -> str:
    try:
        return RunConfig.model_validate(run.config).to_yaml()
    except ValueError:  # a config saved under an older catalog: export it as it was stored
        return yaml.safe_dump(run.config, sort_keys=False)
