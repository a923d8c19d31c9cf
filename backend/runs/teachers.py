"""A multi_teacher run's other teachers (`RunConfig.teachers`), checked before queueing.

Each must be the caller's team's (404 otherwise, as for the run's `teacher`), ready (409), and
fit the run's teacher: the same input shape and output (classes), read from the inspections
the studio stored when each model was uploaded (the API never opens a model file). A teacher
that differs is refused (422) naming both teachers and how they differ; each teacher's `pairs`
must name layers that exist in that teacher and in the student. Every teacher must read what
the run's task reads: a Hugging Face transformer (format "hf") needs a text task
(`core.hf.text_task_refusal`), refused 422 otherwise.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from backend.errors import Invalid, InvalidMany
from core import pairing
from core.config import RunConfig
from core.db.tables import Model
from core.hf import text_task_refusal


def _io(model: Model) -> tuple[Any, Any]:
    insp = model.inspection or {}
    kwargs = model.arch_kwargs or {}
    shape = insp.get("input_shape") or kwargs.get("input_shape")
    out = insp.get("output_shape") or (
        [kwargs["num_classes"]] if kwargs.get("num_classes") else None
    )
    return (list(shape) if shape else None), (list(out) if out else None)


def ready_teachers(
    session: Session, config: RunConfig, team_id: int, teacher: Model, ready_model: Any
) -> list[Model]:
    """The run's other teachers, each ready and of the run teacher's inputs and classes.

    Every model of the run (teachers, and a student to start from) must read the task's inputs
    (`check_teacher_task`)."""
    check_teacher_task(config, teacher, ["body", "teacher", "model_id"])
    start = config.student.model if config.student.source == "model" else None
    if start is not None and start.model_id is not None:
        student = ready_model(session, start.model_id, team_id)
        check_teacher_task(config, student, ["body", "student", "model", "model_id"])
    if not config.teachers:
        return []
    problems: list[tuple[str, str, list[str | int]]] = []
    models = []
    want_in, want_out = _io(teacher)
    for i, spec in enumerate(config.teachers):
        where: list[str | int] = ["body", "teachers", i]
        if spec.model_id is None:
            problems.append((f"teachers[{i}].path", "the API takes model_id", [*where, "path"]))
            continue
        model = ready_model(session, spec.model_id, team_id)  # 404 / 409 like the teacher's
        check_teacher_task(config, model, [*where, "model_id"])
        models.append(model)
        got_in, got_out = _io(model)
        if got_in != want_in:
            problems.append(
                (
                    f"teachers[{i}]",
                    f"teacher model {model.id} ('{model.name}') takes inputs {got_in}, the run's "
                    f"teacher model {teacher.id} ('{teacher.name}') {want_in}: every teacher "
                    "must read the same inputs",
                    where,
                )
            )
        elif got_out != want_out:
            problems.append(
                (
                    f"teachers[{i}]",
                    f"teacher model {model.id} ('{model.name}') outputs {got_out} per sample "
                    f"({_classes(got_out)}), the run's teacher model {teacher.id} "
                    f"('{teacher.name}') {want_out} ({_classes(want_out)}): every teacher must "
                    "predict the same classes",
                    where,
                )
            )
    if problems:
        raise InvalidMany(problems)
    return models


def check_teacher_task(config: RunConfig, model: Model, loc: list[str | int]) -> None:
    """A model (teacher, or student at `student.model`) that reads something other than the
    task's inputs is refused (422)."""
    if model.format != "hf":
        return
    role = "student" if loc[1] == "student" else "teacher"
    refusal = text_task_refusal(f"model {model.id} ('{model.name}')", config.task, role)
    if refusal:
        raise Invalid(".".join(str(p) for p in loc[1:]), refusal, loc=loc)


def _classes(shape: list[int] | None) -> str:
    return f"{shape[-1]} classes" if shape else "unknown classes"


def check_teacher_pairs(
    config: RunConfig, models: list[Model], student: dict[str, Any] | None
) -> None:
    """Each other teacher's pairs name existing layers that can be matched (422 listing each)."""
    problems: list[tuple[str, str, list[str | int]]] = []
    for i, (spec, model) in enumerate(zip(config.teachers, models, strict=True)):
        for j, pair in enumerate(spec.pairs):
            where = f"teachers[{i}].pairs[{j}]"
            loc: list[str | int] = ["body", "teachers", i, "pairs", j]
            t_layer = s_layer = None
            try:
                t_layer = pairing.find_layer(model.inspection or {}, pair.teacher, "teacher")
            except ValueError as exc:
                problems.append((f"{where}.teacher", str(exc), [*loc, "teacher"]))
            if student is None:
                continue
            try:
                s_layer = pairing.find_layer(student, pair.student, "student")
            except ValueError as exc:
                problems.append((f"{where}.student", str(exc), [*loc, "student"]))
            if t_layer is not None and s_layer is not None:
                message = pairing.check_pair(
                    t_layer, s_layer, tap=pair.tap, student=student, task=config.task
                )
                if message:
                    problems.append((where, message, loc))
    if problems:
        raise InvalidMany(problems)
