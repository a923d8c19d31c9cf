"""Students found for a budget: validate the request, look the candidates' costs up in the
store a worker fills (`core.inspections.BUDGETS`; the API has no torch), make the table.

The costs depend only on the candidates and the inputs, not on the target: another budget over
the same search space is answered from the store at once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from backend.errors import Conflict, Invalid
from backend.runs.service import ready_dataset, ready_model, release_connection
from backend.students.schemas import SearchIn
from core import budget, inspections
from core.jobs import MEASURE_STUDENTS


class SearchPending(Exception):
    """A worker is measuring the candidates: nothing to show yet; ask again (202)."""

    def __init__(self, job: str, tried: int) -> None:
        super().__init__(
            f"a worker is building and measuring {tried} candidate students; send the same "
            f"request again in {inspections.RETRY_AFTER_S}s"
        )
        self.job = job


def _inputs(session: Session, body: SearchIn, team_id: int, teacher: Any) -> tuple[list[int], int]:
    if body.input_shape and body.num_classes:
        return list(body.input_shape), int(body.num_classes)
    info: dict[str, Any] = {}
    if body.dataset_id is not None:
        info = ready_dataset(session, body.dataset_id, team_id).info or {}
    elif teacher is not None:
        info = {**(teacher.arch_kwargs or {}), **(teacher.inspection or {})}
    shape, classes = info.get("input_shape"), info.get("num_classes")
    if not shape or not classes:
        raise Invalid(
            "dataset_id",
            "the search needs the students' inputs: give dataset_id (a scanned dataset), a "
            "teacher that records them, or input_shape and num_classes",
        )
    return [int(d) for d in shape], int(classes)


def search(session: Session, team_id: int, body: SearchIn) -> dict[str, Any]:
    """The cost table for `body.target` (SearchPending while a worker measures)."""
    try:
        metric, bound = budget.parse_target(body.target.model_dump())
    except ValueError as exc:
        raise Invalid("target", str(exc), loc=["body", "target"]) from exc
    teacher = None
    if body.teacher_model_id is not None:
        teacher = ready_model(session, body.teacher_model_id, team_id)
    try:
        if body.architecture:
            candidates = budget.zoo_candidates(body.architecture, body.kwargs)
        elif teacher is not None:
            candidates = budget.derived_candidates(
                teacher.architecture,
                {
                    k: v
                    for k, v in (teacher.arch_kwargs or {}).items()
                    if k not in ("input_shape", "num_classes")
                },
            )
        else:
            raise ValueError(
                "give architecture (a zoo student with depth/width parameters) or "
                "teacher_model_id (students derived from a zoo teacher)"
            )
    except ValueError as exc:
        field = "architecture" if body.architecture or teacher is None else "teacher_model_id"
        raise Invalid(field, str(exc), loc=["body", field]) from exc
    shape, classes = _inputs(session, body, team_id, teacher)
    args = [[[a, k] for a, k in candidates], shape, classes]
    release_connection(session)
    entry = inspections.BUDGETS.lookup(args, MEASURE_STUDENTS)
    if entry.status == "failed":
        raise Conflict(f"the candidates could not be measured: {entry.error}")
    if entry.status != "ready" or entry.inspection is None:
        raise SearchPending(inspections.job_id(args), len(candidates))
    table = budget.select(entry.inspection["costs"], metric, bound)
    return {**table, "input_shape": shape, "num_classes": classes}
