"""New run: teacher, dataset and student; plan the layer pairs; losses; training; review; launch.

Every form is built from the catalog (`GET /api/v1/catalog`). The config is checked locally with
the same pydantic `RunConfig` the API and the engine use, shown as YAML, and can be pasted back.
The student is a zoo architecture, derived from a zoo teacher, the teacher's own architecture
(self-distillation) or a ready model of the team; layer pairs are checked against the plan's
layer tables with the engine's torch-free `pairing`, as the API checks them at launch.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st
from pydantic import ValidationError

from client import PLAN_TIMEOUT_S, Catalog, Model, Pending, PendingFn, Plan
from core import catalog as engine_catalog  # torch-free, like config and pairing
from core import pairing
from core.catalog.augment import AUGMENT
from core.catalog.tasks import DEFAULT as DEFAULT_TASK
from core.catalog.training import LOSS_WEIGHT, SEED, TRAINING, VAL_FRACTION, Setting
from core.config import AugmentSettings, DatasetRef, RunConfig, StudentSpec, TrainSettings
from core.hf import TEXT_TASKS
from ui import budget_finder
from ui import components as ui

TRAIN_DEFAULTS = TrainSettings().model_dump()
AUGMENT_DEFAULTS = AugmentSettings().model_dump()
STUDENT_DEFAULTS = StudentSpec().model_dump()
TAPS = ["output", "input"]
PAIR_COLUMNS = ["teacher", "student", "tap", "teacher_shape", "student_shape"]
STUDENT_SOURCES = {
    "zoo": "A zoo architecture",
    "derived": "Derived from the teacher",
    "teacher": "The teacher's architecture",
    "model": "A model of the team",
}
FROM_TEACHER = ("derived", "teacher")  # sources that need a zoo teacher
FITTING_SHOWN = 3  # student layers named as ones that would fit a teacher layer
TEXT_FORMATS = {"jsonl", "txt"}  # dataset formats only text tasks read
TEXT_COLUMN = DatasetRef.model_fields["text_column"]
BLOCK_COLUMNS = ["student", "teacher"]


# --------------------------------------------------------------------------------------------
# State helpers
# --------------------------------------------------------------------------------------------


def _pairs() -> list[dict[str, Any]]:
    return st.session_state.setdefault("nr_pairs", [])


def _set_pairs(pairs: list[dict[str, Any]]) -> None:
    st.session_state["nr_pairs"] = [
        {"teacher": p["teacher"], "student": p["student"], "tap": p.get("tap") or "output"}
        for p in pairs
    ]
    st.session_state["nr_pairs_ver"] = st.session_state.get("nr_pairs_ver", 0) + 1


def _plan() -> Plan | None:
    stored = st.session_state.get("nr_plan")
    return Plan.model_validate(stored["plan"]) if stored else None


def _plan_key(teacher: int | None, dataset: int | None, student: dict[str, Any]) -> str:
    return json.dumps([teacher, dataset, student], sort_keys=True, default=str)


def _plan_is_current(key: str) -> bool:
    stored = st.session_state.get("nr_plan")
    return stored is not None and stored["key"] == key


def _shapes(plan: Plan | None, tap: str = "output") -> tuple[dict[str, str], dict[str, str]]:
    """{path: shape} of the teacher's and the student's layers, at the `tap` side."""
    if plan is None:
        return {}, {}

    def shape(layer: Any) -> str:
        return ui.fmt_shape(layer.input_shape if tap == "input" else layer.output_shape)

    teacher = {layer.path: shape(layer) for layer in plan.teacher.layers}
    student = {layer.path: shape(layer) for layer in plan.student.layers}
    return teacher, student


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _sources() -> tuple[int | None, int | None, dict[int, Model]]:
    """(teacher id, dataset id, the team's ready models by id)."""
    models, datasets = ui.ready_models(), ui.ready_datasets()
    if not models or not datasets:
        missing = [
            what
            for what, items in (("a ready teacher model", models), ("a ready dataset", datasets))
            if not items
        ]
        ui.empty_state(
            f"You need {' and '.join(missing)} first — upload them on the Models and Datasets "
            f"pages, or {ui.DEMO_HINT}.",
            icon=":material/explore:",
        )
        st.stop()
    models_by_id = {m.id: m for m in models}
    datasets_by_id = {d.id: d for d in datasets}
    wanted = ui.query_id("teacher")  # from a model page's "Distil this teacher"
    if wanted is not None:
        del st.query_params["teacher"]
        if wanted in models_by_id:
            st.session_state["nr_teacher"] = wanted
    for key, ids in (("nr_teacher", models_by_id), ("nr_dataset", datasets_by_id)):
        if st.session_state.get(key) not in ids:
            st.session_state.pop(key, None)
    left, middle, right = st.columns([2, 2, 2])
    teacher = left.selectbox(
        "Teacher",
        list(models_by_id),
        key="nr_teacher",
        persist_state="session",
        format_func=lambda i: _model_label(models_by_id[i]),
        help="Ready models of your team. The teacher stays frozen during training.",
    )
    dataset = middle.selectbox(
        "Dataset",
        list(datasets_by_id),
        key="nr_dataset",
        persist_state="session",
        format_func=lambda i: _dataset_label(datasets_by_id[i]),
    )
    right.text_input(
        "Run name", key="nr_name", persist_state="session", placeholder="e.g. resnet8-kd-at"
    )
    return teacher, dataset, models_by_id


def _model_label(model: Any) -> str:
    params = f" · {ui.fmt_count(model.inspection.params)} params" if model.inspection else ""
    return f"#{model.id} {model.name} v{model.version}{params}"


def _dataset_label(dataset: Any) -> str:
    """'#3 name · 120 samples, 4 classes' (a text dataset: its rows, and classes if any)."""
    info = dataset.info
    if info is None:
        return f"#{dataset.id} {dataset.name}"
    rows = (
        info.num_samples if info.num_samples is not None else (info.model_extra or {}).get("rows")
    )
    classes = info.num_classes if info.num_classes is not None else len(info.classes or []) or None
    extra = f" · {rows} samples" + (f", {classes} classes" if classes is not None else "")
    return f"#{dataset.id} {dataset.name}{extra}"


def zoo_teacher_problem(teacher: Model | None) -> str | None:
    """Why no student can be built from `teacher`'s architecture (None when one can).

    The same check the API makes for sources "derived" and "teacher"
    (`catalog.same_architecture`): the teacher must be zoo weights whose parameters fit.
    """
    if teacher is None:
        return "choose a teacher first"
    if not teacher.architecture:
        return f"teacher {_model_label(teacher)} is a .pt2 graph with no zoo architecture"
    try:
        engine_catalog.same_architecture(teacher.architecture, dict(teacher.arch_kwargs))
    except ValueError as exc:
        return f"teacher {_model_label(teacher)}: {exc}"
    return None


def _student(
    catalog: Catalog, teacher: Model | None, models: dict[int, Model]
) -> tuple[dict[str, Any], str]:
    """The student spec of the run config (any source), and a short name for it."""
    s = st.session_state
    problem = zoo_teacher_problem(teacher)
    sources = [k for k in STUDENT_SOURCES if problem is None or k not in FROM_TEACHER]
    chosen = s.get("nr_student_source", "zoo")
    if chosen not in sources:
        if chosen in FROM_TEACHER:
            st.warning(
                f"The student was {STUDENT_SOURCES[chosen].lower()}, but {problem}. "
                "It is a zoo architecture again: pick one below, a model of the team, or a "
                "teacher uploaded as safetensors with its architecture.",
                icon=":material/warning:",
            )
        s["nr_student_source"] = "zoo"
    source = st.radio(
        "Student source",
        sources,
        key="nr_student_source",
        persist_state="session",
        horizontal=True,
        format_func=lambda k: STUDENT_SOURCES[k],
        help="Derived and the teacher's architecture need a teacher whose architecture is in "
        "the zoo (safetensors weights uploaded with an architecture).",
    )
    if problem is not None and teacher is not None:
        st.caption(
            f"Derived and self-distillation students need a zoo teacher; {problem}. Upload "
            "the teacher as safetensors weights with its architecture to build them from it."
        )
    if source == "derived":
        assert teacher is not None
        return _derived_student(teacher), "derived"
    if source == "teacher":
        assert teacher is not None
        arch, kwargs = engine_catalog.same_architecture(
            teacher.architecture, dict(teacher.arch_kwargs)
        )
        st.caption(
            f"Self-distillation: the student is **{arch}**{_kwargs_text(kwargs)}, the "
            "teacher's own architecture, with fresh weights."
        )
        return {"source": "teacher"}, f"self-{arch}"
    if source == "model":
        return _model_student(teacher, models)
    arch, kwargs = _zoo_student(catalog)
    return {"source": "zoo", "architecture": arch, "kwargs": kwargs}, arch


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    """' (width 0.5, depth 14)': an architecture's parameters, without the data's shape."""
    shown = [
        f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in kwargs.items()
        if k not in ("input_shape", "num_classes")
    ]
    return f" ({', '.join(shown)})" if shown else ""


def _derived_student(teacher: Model) -> dict[str, Any]:
    _defaults(
        {
            "nr_student.depth_factor": STUDENT_DEFAULTS["depth_factor"],
            "nr_student.width_factor": STUDENT_DEFAULTS["width_factor"],
        }
    )
    left, middle, right = st.columns([1, 1, 3], vertical_alignment="bottom")
    depth = left.number_input(
        "Depth factor",
        0.05,
        1.0,
        step=0.05,
        format="%g",
        key="nr_student.depth_factor",
        persist_state="session",
        help="The student's depth is the teacher's times this, snapped to a depth the "
        "architecture family allows.",
    )
    width = middle.number_input(
        "Width factor",
        0.05,
        1.0,
        step=0.05,
        format="%g",
        key="nr_student.width_factor",
        persist_state="session",
        help="The student's width (channels, hidden units) is the teacher's times this.",
    )
    try:
        arch, kwargs = engine_catalog.derived_architecture(
            teacher.architecture, dict(teacher.arch_kwargs), depth, width
        )
    except ValueError as exc:
        right.error(f"No student can be derived: {exc}. Change the factors.")
    else:
        right.markdown(f"The student is **{arch}**{_kwargs_text(kwargs)}.")
    return {"source": "derived", "depth_factor": float(depth), "width_factor": float(width)}


def _model_student(teacher: Model | None, models: dict[int, Model]) -> tuple[dict[str, Any], str]:
    s = st.session_state
    wanted = s.get("nr_student_model")
    if wanted not in models:
        if wanted is not None:
            st.warning(
                f"Model #{wanted} is not a ready model of your team; pick the student's model "
                "again.",
                icon=":material/warning:",
            )
        others = [i for i in models if teacher is None or i != teacher.id]
        s["nr_student_model"] = (others or list(models))[0]
    model_id = st.selectbox(
        "Student model",
        list(models),
        key="nr_student_model",
        persist_state="session",
        format_func=lambda i: _model_label(models[i]),
        help="A ready model of your team: the student starts from its weights and is trained; "
        "the teacher stays frozen.",
    )
    if teacher is not None and model_id == teacher.id:
        st.caption("The student starts as a copy of the teacher.")
    elif teacher is not None and teacher.format == models[model_id].format == "hf":
        _tokenizer_note(teacher.id, model_id)
    return {"source": "model", "model": {"model_id": model_id}}, models[model_id].name


def _tokenizer_vocab(model_id: int) -> int | None:
    """A Hugging Face model's tokenizer vocabulary, from its inspection (None: unknown)."""
    detail = ui.fetch(ui.client().model, model_id, stop=False)
    extra = (detail.inspection.model_extra or {}) if detail and detail.inspection else {}
    found = extra.get("tokenizer_vocab_size")
    return int(found) if isinstance(found, int) else None


def _tokenizer_note(teacher_id: int, student_id: int) -> None:
    """When the student's tokenizer is not the teacher's (their vocabularies differ): what the
    chosen text task does with it (sentence embeddings re-tokenise each batch for it; the other
    text tasks refuse it)."""
    mine, theirs = _tokenizer_vocab(teacher_id), _tokenizer_vocab(student_id)
    if mine is None or theirs is None or mine == theirs:
        return
    sizes = f"{theirs:,} tokens against the teacher's {mine:,}"
    if st.session_state.get("nr_task") == "sentence_embedding":
        st.info(
            f"The student has a tokenizer of its own ({sizes}): it reads each batch "
            "re-tokenised with it, and only losses on the sentence embeddings (embedding_mse, "
            "embedding_cosine) compare it to the teacher; no layer pairs.",
            icon=":material/translate:",
        )
    else:
        st.warning(
            f"The student's tokenizer is not the teacher's ({sizes}): this task compares the "
            "two token by token, so the run would be refused. Pick a student that shares the "
            "teacher's tokenizer, or the sentence_embedding task.",
            icon=":material/warning:",
        )


def _task(catalog: Catalog, dataset: int | None) -> str:
    """The run's task: a selector over the catalog's tasks when it has several, starting at
    the one the dataset's scan found (`info.task`); it narrows the students and losses offered."""
    names = [t.name for t in catalog.tasks] or ["classification"]
    if len(names) == 1:
        st.session_state["nr_task"] = names[0]
        return names[0]
    info = next((d.info for d in ui.ready_datasets() if d.id == dataset), None)
    found = getattr(info, "task", None)  # recorded by the scan (client models keep extra keys)
    if (
        st.session_state.get("nr_task_for") != dataset
        or st.session_state.get("nr_task") not in names
    ):
        st.session_state["nr_task"] = found if found in names else names[0]
        st.session_state["nr_task_for"] = dataset
    task = st.selectbox(
        "Task",
        names,
        key="nr_task",
        format_func=lambda n: entry.title if (entry := catalog.task(n)) else n,
        help="What the models predict; the students and losses below are the task's.",
    )
    return str(task)


def _offered(catalog: Catalog, key: str) -> list[str] | None:
    """The names of students or losses (`key`) the chosen task offers; None: all."""
    entry = catalog.task(st.session_state.get("nr_task") or "classification")
    return entry.extra.get(key) if entry is not None else None


def is_text_task(entry: Any) -> bool:
    """Whether a task (its catalog entry) reads text: named in `core.hf.TEXT_TASKS`, or reading a
    dataset format only text tasks read (.jsonl, .txt)."""
    if entry is None:
        return False
    formats = set(entry.extra.get("formats") or ())
    return entry.name in TEXT_TASKS or bool(TEXT_FORMATS & formats)


def _task_fields(catalog: Catalog) -> tuple[dict[str, Any], str | None]:
    """(the run config's `task_params`, `dataset.text_column`): inputs for every parameter of the
    chosen task's catalog entry (a text task's max_length, ...) and, for a text task, the
    dataset's text column (None for other tasks). A task without either shows nothing."""
    task = st.session_state.get("nr_task") or DEFAULT_TASK
    entry = catalog.task(task)
    text = is_text_task(entry)
    if entry is None or not (entry.params or text):
        return {}, None
    params: dict[str, Any] = {}
    if entry.params:
        params = ui.param_form(entry, f"nr_tp.{task}", columns=3, persist=True)
    column = None
    if text:
        st.session_state.setdefault("nr_text_column", TEXT_COLUMN.default)
        column = st.text_input(
            "Text column",
            key="nr_text_column",
            persist_state="session",
            help=f"{TEXT_COLUMN.description} A .csv's column or a .jsonl's field; .txt files "
            "and prompt/completion records need none.",
        )
    return params, (column or TEXT_COLUMN.default) if text else None


def _zoo_student(catalog: Catalog) -> tuple[str, dict[str, Any]]:
    offered = _offered(catalog, "students")
    names = [e.name for e in catalog.students if offered is None or e.name in offered]
    if st.session_state.get("nr_student") not in names:
        st.session_state["nr_student"] = names[0]
    left, right = st.columns([2, 3])
    with left:
        arch = st.selectbox(
            "Student architecture",
            names,
            key="nr_student",
            persist_state="session",
            format_func=lambda n: f"{catalog.student(n).title} ({n})",
        )
        entry = catalog.student(arch)
        ui.entry_help(entry)
    with right:
        kwargs = ui.param_form(entry, f"nr_student.{arch}", columns=2, persist=True)
    return arch, kwargs


def _building(slot: Any) -> PendingFn:
    """Progress in `slot` while a worker builds the student's layer table (the API said 202 and
    the client asks again until it is built, or PLAN_TIMEOUT_S pass)."""

    def show(pending: Pending, waited: float) -> None:
        slot.progress(
            min(waited / PLAN_TIMEOUT_S, 0.99),
            text=f"A worker is building the student's layer table… {waited:.0f}s "
            f"(gives up after {PLAN_TIMEOUT_S:.0f}s)",
        )

    return show


def _plan_section(teacher: int | None, dataset: int | None, student: dict[str, Any]) -> None:
    key = _plan_key(teacher, dataset, student)
    stored = st.session_state.get("nr_plan")
    stale = stored is not None and stored["key"] != key
    label = "Plan again" if stale else "Plan"
    row = st.container(horizontal=True, vertical_alignment="center", gap="medium")
    clicked = row.button(
        label,
        icon=":material/explore:",
        type="primary" if stored is None or stale else "secondary",
        key="nr_plan_btn",
    )
    if stale:
        row.warning("Teacher, dataset or student changed since the plan — plan again.")
    elif stored is None:
        row.caption(
            "Inspect teacher and student side by side and suggest layer pairs at "
            "the ends of their resolution stages."
        )
    if clicked:
        slot = st.empty()
        with st.spinner("Inspecting teacher and student…"):
            plan = ui.fetch(
                ui.client().plan, teacher, dataset, student, stop=False, on_pending=_building(slot)
            )
        slot.empty()
        if plan is not None:
            st.session_state["nr_plan"] = {"key": key, "plan": plan.model_dump(mode="json")}
            _adopt_pairs(plan)
            st.rerun()
    plan = _plan()
    if plan is not None:
        _plan_tables(plan)


def _adopt_pairs(plan: Plan) -> None:
    """Keep the current pairs if they all exist in the new plan, else take the suggested ones."""
    teacher, student = _shapes(plan)
    current = _pairs()
    if current and all(p["teacher"] in teacher and p["student"] in student for p in current):
        _set_pairs(current)
    else:
        _set_pairs([p.model_dump() for p in plan.suggested_pairs])


def _plan_tables(plan: Plan) -> None:
    left, right = st.columns(2)
    ratio = (plan.teacher_params or 0) / plan.student_params if plan.student_params else None
    for col, title, insp, params in (
        (left, "Teacher", plan.teacher, plan.teacher_params),
        (right, "Student", plan.student, plan.student_params),
    ):
        with col, st.container(border=True):
            st.markdown(f"**{title}**")
            m1, m2, m3 = st.columns(3)
            m1.metric("Parameters", ui.fmt_count(params if params is not None else insp.params))
            m2.metric("FLOPs", ui.fmt_count(insp.flops))
            m3.metric("Output", ui.fmt_shape(insp.output_shape))
            frame = ui.layers_frame(insp).drop(columns=["input"])
            st.dataframe(
                frame,
                placeholder=ui.MISSING_CELL,
                hide_index=True,
                height=280,
                key=f"nr_layers_{title}",
                column_config={"params": st.column_config.NumberColumn(format="localized")},
            )
    if ratio:
        st.caption(f"The student has **{ratio:.1f}×** fewer parameters than the teacher.")


def pair_problems(plan: Plan, pairs: list[dict[str, Any]]) -> list[str]:
    """Why each layer pair cannot be matched, as "pair i: ..." with both shapes and the student
    layers that would fit (empty when every pair fits). The checks of the API at launch."""
    teacher = plan.teacher.model_dump(mode="json")
    student = plan.student.model_dump(mode="json")
    problems: list[str] = []
    for i, pair in enumerate(pairs):
        tap = pair.get("tap") or "output"
        missing = [side for side in ("teacher", "student") if not pair.get(side)]
        if missing:
            problems.append(
                f"pair {i}: choose a {' and a '.join(missing)} layer, or delete the row"
            )
            continue
        try:
            t_layer = pairing.find_layer(teacher, pair["teacher"], "teacher")
            s_layer = pairing.find_layer(student, pair["student"], "student")
        except ValueError as exc:
            problems.append(f"pair {i}: {exc}")
            continue
        message = pairing.check_pair(t_layer, s_layer, tap=tap)
        if message:
            problems.append(f"pair {i}: {message}; {_fitting(student, t_layer, tap)}")
    return problems


def attention_problems(
    plan: Plan, pairs: list[dict[str, Any]], losses: list[dict[str, Any]]
) -> list[str]:
    """The pairs a chosen loss reads an attention from (attention_kl, minilm_relations) whose
    layer holds none, as "pair i: ..."; the API's check at launch."""
    problems = pairing.attention_pair_problems(
        [(loss["name"], loss.get("pairs")) for loss in losses],
        [(pair.get("teacher") or "", pair.get("student") or "") for pair in pairs],
        plan.teacher.model_dump(mode="json"),
        plan.student.model_dump(mode="json"),
    )
    return [f"pair {i}: {message}" for i, _, message in problems]


def _fitting(student: dict[str, Any], teacher_layer: dict[str, Any], tap: str) -> str:
    """The deepest student layers a connector could match to `teacher_layer`."""
    key = "input_shape" if tap == "input" else "output_shape"
    target = teacher_layer.get(key)
    fits = [
        row
        for row in student.get("layers", [])
        if pairing.shape_problem(row.get(key), target) is None
    ]
    if not fits:
        return "no student layer fits it: pick another teacher layer"
    shown = ", ".join(
        f"{row['path']} {pairing.fmt_shape(row[key])}" for row in fits[-FITTING_SHOWN:]
    )
    return f"student layers that would fit: {shown}"


def _pairs_section() -> list[str]:
    """The pairs table; returns the pairs' problems against the plan (empty without a plan)."""
    plan = _plan()
    pairs = _pairs()
    shapes = {tap: _shapes(plan, tap) for tap in TAPS}
    st.caption(
        "Each pair matches a teacher feature to a student feature. Connectors (1×1 conv "
        "or linear) are added when channels differ, pooling when sizes differ."
    )
    frame = pd.DataFrame(
        [
            {
                **p,
                "teacher_shape": shapes[p.get("tap") or "output"][0].get(p["teacher"], "?"),
                "student_shape": shapes[p.get("tap") or "output"][1].get(p["student"], "?"),
            }
            for p in pairs
        ],
        columns=PAIR_COLUMNS,
    )
    if plan is None:
        if pairs:
            st.dataframe(frame, hide_index=True)
        st.info(
            "Plan first to choose layer pairs from the two models' layers.",
            icon=":material/explore:",
        )
        return []
    t_shapes, s_shapes = shapes["output"]
    key = f"nr_pairs_editor_{st.session_state.get('nr_pairs_ver', 0)}"
    st.data_editor(
        frame,
        key=key,
        num_rows="dynamic",
        hide_index=False,
        on_change=_apply_edits,
        args=(key,),
        width="stretch",
        column_config={
            "teacher": st.column_config.SelectboxColumn(
                "teacher layer", options=list(t_shapes), required=True
            ),
            "student": st.column_config.SelectboxColumn(
                "student layer", options=list(s_shapes), required=True
            ),
            "tap": st.column_config.SelectboxColumn(
                "tap", options=TAPS, default="output", required=True, width="small"
            ),
            "teacher_shape": st.column_config.TextColumn("teacher shape", disabled=True),
            "student_shape": st.column_config.TextColumn("student shape", disabled=True),
        },
    )
    problems = pair_problems(plan, pairs)
    if problems:
        st.warning(
            "**These layer pairs cannot fit** — no connector maps the student feature to the "
            "teacher's, and the launch would be refused. Pick a fitting student layer in the "
            "table, or delete the pair:\n\n" + "\n".join(f"- {p}" for p in problems),
            icon=":material/warning:",
        )
    buttons = st.container(horizontal=True, gap="small")  # sized to their labels, never cut
    if buttons.button("Suggested pairs", icon=":material/auto_awesome:", key="nr_pairs_reset"):
        _set_pairs([p.model_dump() for p in plan.suggested_pairs])
        st.rerun()
    if buttons.button("Clear pairs", icon=":material/clear_all:", key="nr_pairs_clear"):
        _set_pairs([])
        st.rerun()
    return problems


def blocks_of(inspection: Any) -> list[dict[str, Any]]:
    """A transformer's blocks from its inspection (`blocks`: index, path, attention, mlp,
    params, as `worker.engine.hf_teacher` records them); [] for models without blocks."""
    if inspection is None:
        return []
    blocks = (inspection.model_extra or {}).get("blocks") or []
    return [b for b in blocks if isinstance(b, dict) and b.get("path")]


def even_mapping(teacher: list[str], student: list[str]) -> list[dict[str, Any]]:
    """Student block m of S (from 1) learns from teacher block round(m * T / S) of T: TinyBERT's
    uniform layer mapping (`core.pairing.uniform_block_pairs`), shallowest student block first,
    so the blocks spread over the teacher's depth and the last blocks pair."""
    if not teacher or not student:
        return []
    pairs = reversed(pairing.uniform_block_pairs(teacher, student))
    return [{"teacher": t, "student": s, "tap": "output"} for t, s in pairs]


def _inspection(model: Model | None) -> Any:
    """A model's inspection with its layer table (the list of models may leave it out)."""
    if model is None:
        return None
    if blocks_of(model.inspection):
        return model.inspection
    cache = st.session_state.setdefault("_nr_inspections", {})
    if model.id not in cache:
        detail = ui.fetch(ui.client().model, model.id, stop=False)
        cache[model.id] = detail.inspection if detail is not None else None
    return cache[model.id]


def _student_blocks(
    plan: Plan | None, student: dict[str, Any], models: dict[int, Model]
) -> list[dict[str, Any]]:
    """The student's blocks: from the current plan's student inspection, else, for a student
    that is a model of the team, from that model's inspection ([] until planned)."""
    if plan is not None and (found := blocks_of(plan.student)):
        return found
    model_id = (student.get("model") or {}).get("model_id")
    if student.get("source") == "model" and model_id in models:
        return blocks_of(_inspection(models[model_id]))
    return []


def _blocks_frame(blocks: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [
        {
            "block": b.get("index"),
            "path": b["path"],
            "attention": ", ".join(b.get("attention") or []),
            "mlp": ", ".join(b.get("mlp") or []),
            "params": b.get("params"),
        }
        for b in blocks
    ]
    return pd.DataFrame(rows, columns=["block", "path", "attention", "mlp", "params"])


def _blocks_section(
    teacher: Model | None, student: dict[str, Any], models: dict[int, Model], current: bool
) -> None:
    """Layer mapping by blocks, for transformer teachers: the teacher's and the student's blocks
    (attention, MLP) side by side and a table of student block -> teacher block pairs, picked
    from the blocks like image layer pairs (or spread evenly); each row is a layer pair."""
    t_blocks = blocks_of(_inspection(teacher))
    if not t_blocks:
        return
    s_blocks = _student_blocks(_plan() if current else None, student, models)
    st.markdown("**Layer mapping by blocks**")
    st.caption(
        "Each row makes the student block learn from a teacher block (hidden states; the "
        "feature losses below use these pairs). *Map evenly* spreads the student's blocks over "
        "the teacher's depth, the last onto the last."
    )
    left, right = st.columns(2)
    config = {"params": st.column_config.NumberColumn(format="localized")}
    left.markdown(f"Teacher · {len(t_blocks)} blocks")
    left.dataframe(
        _blocks_frame(t_blocks), hide_index=True, key="nr_blocks_t", column_config=config
    )
    right.markdown(f"Student · {len(s_blocks)} blocks" if s_blocks else "Student")
    if not s_blocks:
        right.info(
            "Plan to see the student's blocks (a student model of the team shows them at once).",
            icon=":material/explore:",
        )
        return
    right.dataframe(
        _blocks_frame(s_blocks), hide_index=True, key="nr_blocks_s", column_config=config
    )
    t_paths, s_paths = [b["path"] for b in t_blocks], [b["path"] for b in s_blocks]
    mapped = [p for p in _pairs() if p["teacher"] in t_paths and p["student"] in s_paths]
    key = f"nr_blocks_editor_{st.session_state.get('nr_pairs_ver', 0)}"
    st.data_editor(
        pd.DataFrame(mapped, columns=BLOCK_COLUMNS),
        key=key,
        num_rows="dynamic",
        on_change=_apply_block_edits,
        args=(key, t_paths, s_paths),
        width="stretch",
        column_config={
            "student": st.column_config.SelectboxColumn(
                "student block", options=s_paths, required=True
            ),
            "teacher": st.column_config.SelectboxColumn(
                "teacher block", options=t_paths, required=True
            ),
        },
    )
    if st.button("Map evenly", icon=":material/linear_scale:", key="nr_blocks_even"):
        others = [p for p in _pairs() if p not in mapped]
        _set_pairs(others + even_mapping(t_paths, s_paths))
        st.rerun()


def _apply_block_edits(key: str, teacher: list[str], student: list[str]) -> None:
    """Fold the block table's edits into `nr_pairs`: its rows replace the pairs between blocks,
    the other pairs stay."""
    edits = st.session_state.get(key) or {}
    pairs = _pairs()
    mapped = [dict(p) for p in pairs if p["teacher"] in teacher and p["student"] in student]
    others = [p for p in pairs if not (p["teacher"] in teacher and p["student"] in student)]
    for index, change in (edits.get("edited_rows") or {}).items():
        mapped[int(index)].update({k: v for k, v in change.items() if k in BLOCK_COLUMNS})
    for added in edits.get("added_rows") or []:
        mapped.append({"teacher": added.get("teacher"), "student": added.get("student")})
    deleted = {int(i) for i in edits.get("deleted_rows") or []}
    kept = [p for i, p in enumerate(mapped) if i not in deleted and p.get("teacher")]
    _set_pairs(others + [p for p in kept if p.get("student")])


def _apply_edits(key: str) -> None:
    """Fold the data editor's edits into `nr_pairs` (and refresh the shape columns)."""
    edits = st.session_state.get(key) or {}
    pairs = [dict(p) for p in _pairs()]
    for index, change in (edits.get("edited_rows") or {}).items():
        row = pairs[int(index)]
        row.update({k: v for k, v in change.items() if k in ("teacher", "student", "tap")})
    for added in edits.get("added_rows") or []:
        pairs.append(
            {
                "teacher": added.get("teacher"),
                "student": added.get("student"),
                "tap": added.get("tap") or "output",
            }
        )
    deleted = {int(i) for i in edits.get("deleted_rows") or []}
    kept = [p for i, p in enumerate(pairs) if i not in deleted]
    _set_pairs([p for p in kept if p.get("teacher") or p.get("student")])


def _losses(catalog: Catalog) -> list[dict[str, Any]]:
    pairs = _pairs()
    offered = _offered(catalog, "losses")
    usable = [
        e
        for e in catalog.losses
        if (pairs or not e.needs_pairs) and (offered is None or e.name in offered)
    ]
    names = [e.name for e in usable]
    chosen = st.session_state.get("nr_losses")
    if chosen is None:
        chosen = [n for n in ("ce", "kd") if n in names]
    st.session_state["nr_losses"] = [n for n in chosen if n in names]
    selected = st.multiselect(
        "Losses",
        names,
        key="nr_losses",
        persist_state="session",
        format_func=lambda n: f"{catalog.loss(n).title} ({n})",
        help="The training loss is the weighted sum of these terms.",
    )
    if not pairs and any(e.needs_pairs for e in catalog.losses):
        feature = ", ".join(e.title for e in catalog.losses if e.needs_pairs)
        st.caption(f"Feature losses ({feature}) need layer pairs: plan and keep at least one pair.")
    if not selected:
        st.warning("Choose at least one loss (e.g. cross-entropy and KD).")
    return [_loss_form(catalog, name, len(pairs)) for name in selected]


def _loss_form(catalog: Catalog, name: str, n_pairs: int) -> dict[str, Any]:
    entry = catalog.loss(name)
    with st.container(border=True):
        head, weight_col = st.columns([3, 1])
        head.markdown(f"**{entry.title}** · `{name}` · {entry.kind}")
        with head:
            ui.entry_help(entry)
        weight_key = f"nr_loss.{name}.weight"
        if weight_key not in st.session_state:
            st.session_state[weight_key] = float(entry.extra.get("default_weight", 1.0))
        weight = _setting_input(weight_col, LOSS_WEIGHT, weight_key, help_=False)
        task = catalog.task(st.session_state.get("nr_task") or DEFAULT_TASK)
        start = task.extra.get("loss_params", {}).get(name) if task is not None else None
        params = (
            ui.param_form(entry, f"nr_loss.{name}", start, persist=True) if entry.params else {}
        )  # starting at the task's values (generation: the critic on raw images)
        spec: dict[str, Any] = {"name": name, "weight": weight, "params": params}
        if entry.needs_pairs and n_pairs:
            pairs_key = f"nr_loss.{name}.pairs"
            options = list(range(n_pairs))
            labels = [f"{i}: {p['teacher']} → {p['student']}" for i, p in enumerate(_pairs())]
            st.session_state[pairs_key] = [
                i for i in st.session_state.get(pairs_key, []) if i in options
            ]
            subset = st.multiselect(
                "pairs",
                options,
                key=pairs_key,
                persist_state="session",
                placeholder="all pairs",
                format_func=lambda i: labels[i],
                help="Which layer pairs this loss uses; leave empty for all of them.",
            )
            if subset:
                spec["pairs"] = subset
    return spec


def _training(
    catalog: Catalog, teacher: Model | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training settings, {'scheme', 'scheme_params', 'seed', 'val_fraction'}).

    Every input is built from the training settings declared in `core.catalog.training` (the
    run config validates with the same declarations): choices, ranges, defaults and help.
    """
    _defaults(
        {
            **{f"nr_t.{name}": value for name, value in TRAIN_DEFAULTS.items()},
            "nr_t.step_milestones": ",".join(f"{m:g}" for m in TRAIN_DEFAULTS["step_milestones"]),
            "nr_seed": SEED.default,
            "nr_val_fraction": VAL_FRACTION.default,
            "nr_scheme": catalog.schemes[0].name if catalog.schemes else "offline",
        }
    )

    def field(where: Any, name: str) -> Any:
        return _setting_input(where, TRAINING[name], f"nr_t.{name}")

    t: dict[str, Any] = {}
    for row in (
        ("epochs", "batch_size", "optimizer", "lr"),
        ("momentum", "weight_decay", "schedule", "device"),
    ):
        for where, name in zip(st.columns(4), row, strict=True):
            t[name] = field(where, name)
    if t["schedule"] == "step":
        c = st.columns(4)
        spec = TRAINING["step_milestones"]
        text = c[0].text_input(
            spec.title, key="nr_t.step_milestones", persist_state="session", help=spec.help
        )
        t["step_milestones"] = _floats(text)
        t["step_gamma"] = field(c[1], "step_gamma")
    with st.expander("Advanced", icon=":material/tune:"):
        c = st.columns(4)
        t["amp"] = field(c[0], "amp")
        t["checkpoint_every"] = field(c[1], "checkpoint_every")
        t["log_every"] = field(c[2], "log_every")
        seed = _setting_input(c[3], SEED, "nr_seed")
        c = st.columns(4)
        val = _setting_input(c[0], VAL_FRACTION, "nr_val_fraction")
        t["qat"] = field(c[1], "qat")  # quantization-aware training: int8 student too
        t["grad_accumulation"] = field(c[2], "grad_accumulation")
        t["channels_last"] = field(c[3], "channels_last")
        c = st.columns(4)
        t["compile"] = field(c[0], "compile")
        t["data_workers"] = field(c[1], "data_workers")  # batches read in worker processes
        t["gpus"] = field(c[2], "gpus")  # one job on N GPUs (torch.distributed)
        c = st.columns(4)
        t["teacher_cache"] = field(c[0], "teacher_cache")  # replay the teacher's top-k outputs
        t["teacher_cache_top_k"] = field(c[1], "teacher_cache_top_k")
    scheme, scheme_params = _scheme(catalog, teacher)
    misc = {"scheme": scheme, "seed": int(seed), "val_fraction": float(val)}
    return t, {**misc, "scheme_params": scheme_params}


def _augment() -> dict[str, Any]:
    """The run's augment section, from a collapsed "Augmentation" expander whose inputs are
    built from `core.catalog.augment` (types, ranges, defaults, help); only the settings that
    differ from no augmentation go into the config."""
    _defaults(
        {
            f"nr_aug.{name}": _numbers_text(value) if isinstance(value, list) else value
            for name, value in AUGMENT_DEFAULTS.items()
        }
    )
    values: dict[str, Any] = {}
    names = list(AUGMENT)
    with st.expander("Augmentation", icon=":material/auto_awesome:"):
        st.caption(
            "Applied to each training batch on the worker's device before the teacher and the "
            "student see it (both see the same batch): flip, pad-crop, resized crop, policy, "
            "then mixup or cutmix, then the normalisation, which validation and evaluation "
            "apply too. Image operations need image data."
        )
        for start in range(0, len(names), 4):
            for where, name in zip(st.columns(4), names[start : start + 4], strict=False):
                spec, key = AUGMENT[name], f"nr_aug.{name}"
                if spec.type == "floats":
                    text = where.text_input(
                        spec.title, key=key, persist_state="session", help=spec.help
                    )
                    values[name] = _numbers(text, spec.title)
                else:
                    values[name] = _setting_input(where, spec, key)
    return {k: v for k, v in values.items() if v != AUGMENT_DEFAULTS[k]}


def _numbers_text(values: list[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _numbers(text: str, title: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        st.error(f"{title}: give numbers separated by commas, e.g. 0.5,0.4,0.3.")
        return []


def _scheme(catalog: Catalog, teacher: Model | None = None) -> tuple[str, dict[str, Any]]:
    """The scheme picker and the chosen scheme's fields (its catalog parameters)."""
    schemes = [s.name for s in catalog.schemes] or ["offline"]
    scheme = st.selectbox(
        "Scheme",
        schemes,
        key="nr_scheme",
        persist_state="session",
        format_func=lambda n: _scheme_label(catalog, n),
    )
    entry = catalog.scheme(scheme)
    if entry is None:
        return scheme, {}
    ui.entry_help(entry)
    if scheme == "multi_teacher":
        _teachers_fields(teacher)
    if scheme == "split" and teacher is not None:  # lists leave the layer table out
        detail = teacher if teacher.inspection is not None else ui.client().model(teacher.id)
        if detail.inspection is not None:
            return scheme, _split_fields(entry, detail)
    params = ui.param_form(entry, f"nr_scheme.{scheme}", persist=True) if entry.params else {}
    return scheme, params


def _teachers_fields(teacher: Model | None) -> None:
    """`multi_teacher`'s other teachers: a multiselect of the team's ready models (the run's
    teacher left out) and each one's fixed weight; their layer pairs come from pasted YAML."""
    models = {m.id: m for m in ui.ready_models() if teacher is None or m.id != teacher.id}
    key = "nr_teachers"
    st.session_state[key] = [i for i in st.session_state.get(key, []) if i in models]
    chosen = st.multiselect(
        "Other teachers",
        list(models),
        key=key,
        persist_state="session",
        format_func=lambda i: _model_label(models[i]),
        placeholder="pick 1 to 7 more teachers",
        help="Teachers besides the one above (same inputs and classes); each is frozen. "
        "Their weights count when weighting is fixed (all weights are normalised to sum 1).",
    )
    for where, model_id in zip(st.columns(4) * 2, chosen, strict=False):
        wkey = f"nr_teachers.{model_id}.weight"
        st.session_state.setdefault(wkey, 1.0)
        where.number_input(
            f"Weight of {models[model_id].name}",
            0.0,
            100.0,
            key=wkey,
            persist_state="session",
            step=0.1,
            format="%g",
        )


def _chosen_teachers() -> list[dict[str, Any]]:
    """The run config's `teachers` from the form (pairs kept from pasted YAML)."""
    pairs = st.session_state.get("nr_teachers.pairs", {})
    return [
        {
            "model_id": i,
            "weight": float(st.session_state.get(f"nr_teachers.{i}.weight", 1.0)),
            **({"pairs": pairs[i]} if pairs.get(i) else {}),
        }
        for i in st.session_state.get("nr_teachers", [])
    ]


def _split_fields(entry: Any, teacher: Model) -> dict[str, Any]:
    """`split`'s fields: the split point as a select of the teacher's layers that output feature
    maps (empty: the end of its first spatial stage), the other parameters as usual."""
    assert teacher.inspection is not None
    shapes = {
        layer.path: ui.fmt_shape(layer.output_shape)
        for layer in teacher.inspection.layers
        if layer.output_shape is not None and len(layer.output_shape) == 3
    }
    first = next((s.end for s in teacher.inspection.stages if s.resolution and s.end), None)
    key = "nr_scheme.split.split_at"
    options = ["", *shapes]
    current = st.session_state.get(key)
    if current is not None and current not in options:  # e.g. pasted YAML naming another layer
        options.append(str(current))
    spec = next(p for p in entry.params if p.name == "split_at")
    split_at = st.selectbox(
        "Split point (teacher layer)",
        options,
        key=key,
        persist_state="session",
        format_func=lambda p: f"{p} {shapes.get(p, '')}" if p else f"default: {first or '—'}",
        help=spec.help,
    )
    rest = entry.model_copy(update={"params": [p for p in entry.params if p.name != "split_at"]})
    return {"split_at": split_at, **ui.param_form(rest, "nr_scheme.split", persist=True)}


def _setting_input(where: Any, spec: Setting, key: str, *, help_: bool = True) -> Any:
    """One input for a setting of `core.catalog.training`: a selectbox over its choices, a
    checkbox, or a number input within its range (an exclusive bound moved in by its margin)."""
    common: dict[str, Any] = {"key": key, "persist_state": "session"}
    if help_ and spec.help:
        common["help"] = spec.help
    if spec.type == "choice":
        return where.selectbox(spec.title, list(spec.choices or ()), **common)
    if spec.type == "bool":
        return where.checkbox(spec.title, **common)
    lo, hi = spec.form_range()
    if spec.type == "int":
        return where.number_input(spec.title, lo, hi, **common)
    return where.number_input(spec.title, lo, hi, step=spec.step, format="%g", **common)


def _scheme_label(catalog: Catalog, name: str) -> str:
    entry = catalog.scheme(name)
    return f"{entry.title} ({name})" if entry else name


def _defaults(values: dict[str, Any]) -> None:
    for key, value in values.items():
        st.session_state.setdefault(key, value)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        st.error("Milestones: give numbers separated by commas, e.g. 0.5,0.75.")
        return []


# --------------------------------------------------------------------------------------------
# Review, YAML and launch
# --------------------------------------------------------------------------------------------


def _config(
    teacher: int | None,
    dataset: int | None,
    student: dict[str, Any],
    student_name: str,
    losses: list[dict],
    training: dict,
    misc: dict,
) -> dict[str, Any]:
    name = st.session_state.get("nr_name") or (
        f"{student_name}-{'-'.join(loss['name'] for loss in losses)}"
    )
    return {
        "name": name,
        **(
            {"task": task}
            if (task := st.session_state.get("nr_task")) not in (None, DEFAULT_TASK)
            else {}
        ),
        "teacher": {"model_id": teacher},
        "student": student,
        "dataset": {"dataset_id": dataset, "val_fraction": misc["val_fraction"]},
        "layer_pairs": [dict(p) for p in _pairs()],
        "losses": losses,
        "scheme": misc["scheme"],
        "scheme_params": misc["scheme_params"],
        **({"teachers": _chosen_teachers()} if misc["scheme"] == "multi_teacher" else {}),
        "training": training,
        "seed": misc["seed"],
    }


def validation_errors(config: dict[str, Any]) -> list[str]:
    """The run config's problems, each naming the field (empty when it is valid)."""
    try:
        RunConfig.model_validate(config)
    except ValidationError as exc:
        return [
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: "
            f"{err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        ]
    return []


def _load_yaml() -> None:
    """Fill the form from pasted YAML (an on_click callback: runs before the widgets)."""
    text = st.session_state.get("nr_yaml", "")
    try:
        cfg = RunConfig.from_yaml(text)
    except ValidationError as exc:
        st.session_state["nr_yaml_error"] = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        return
    except Exception as exc:  # noqa: BLE001 - YAML syntax errors of any kind
        st.session_state["nr_yaml_error"] = f"not valid YAML: {exc}"
        return
    paths = [
        where
        for where, ref in (
            ("teacher", cfg.teacher),
            ("dataset", cfg.dataset),
            ("student.model", cfg.student.model if cfg.student.source == "model" else None),
        )
        if ref is not None and ref.path is not None
    ]
    if paths:
        st.session_state["nr_yaml_error"] = (
            f"{', '.join(p + '.path' for p in paths)}: the studio takes ids of your team's "
            "models and datasets (model_id, dataset_id); 'path' is for the standalone CLI"
        )
        return
    st.session_state.pop("nr_yaml_error", None)
    _fill_form(cfg)
    st.session_state["nr_flash"] = "Loaded the pasted config into the form below."


def _fill_form(cfg: RunConfig) -> None:
    s = st.session_state
    s["nr_name"] = cfg.name
    if cfg.teacher.model_id is not None:
        s["nr_teacher"] = cfg.teacher.model_id
    if cfg.dataset.dataset_id is not None:
        s["nr_dataset"] = cfg.dataset.dataset_id
    s["nr_val_fraction"] = cfg.dataset.val_fraction
    s["nr_task"], s["nr_task_for"] = cfg.task, cfg.dataset.dataset_id
    student = cfg.student
    s["nr_student_source"] = student.source
    if student.source == "zoo":
        s["nr_student"] = student.architecture
        for key, value in student.kwargs.items():
            s[f"nr_student.{student.architecture}.{key}"] = value
    elif student.source == "derived":
        s["nr_student.depth_factor"] = student.depth_factor
        s["nr_student.width_factor"] = student.width_factor
    elif student.source == "model" and student.model is not None:
        s["nr_student_model"] = student.model.model_id
    _set_pairs([p.model_dump() for p in cfg.layer_pairs])
    s["nr_losses"] = [loss.name for loss in cfg.losses]
    for loss in cfg.losses:
        s[f"nr_loss.{loss.name}.weight"] = float(loss.weight)
        s[f"nr_loss.{loss.name}.pairs"] = list(loss.pairs or [])
        for key, value in loss.params.items():
            s[f"nr_loss.{loss.name}.{key}"] = value
    for key, value in cfg.training.model_dump().items():
        s[f"nr_t.{key}"] = ",".join(f"{m:g}" for m in value) if key == "step_milestones" else value
    for key, value in cfg.augment.model_dump().items():
        s[f"nr_aug.{key}"] = _numbers_text(value) if isinstance(value, list) else value
    s["nr_scheme"] = cfg.scheme
    others = [t for t in cfg.teachers if t.model_id is not None]
    s["nr_teachers"] = [t.model_id for t in others]
    s["nr_teachers.pairs"] = {t.model_id: [p.model_dump() for p in t.pairs] for t in others}
    for t in others:
        s[f"nr_teachers.{t.model_id}.weight"] = float(t.weight)
    for key, value in cfg.scheme_params.items():
        s[f"nr_scheme.{cfg.scheme}.{key}"] = value
    s["nr_seed"] = cfg.seed
    for key, value in cfg.task_params.items():
        s[f"nr_tp.{cfg.task}.{key}"] = value
    s["nr_text_column"] = cfg.dataset.text_column


def _review(config: dict[str, Any], pair_errors: list[str]) -> None:
    errors = validation_errors(config) + [f"layer_pairs: {problem}" for problem in pair_errors]
    if errors:
        st.error("Fix these before launching:\n\n" + "\n".join(f"- {e}" for e in errors))
        st.code(json.dumps(config, indent=2), language="json")
        return
    yaml_text = RunConfig.model_validate(config).to_yaml()
    st.code(yaml_text, language="yaml", height=320)
    left, right = st.columns([1, 1])
    left.download_button(
        "Download run.yaml",
        yaml_text,
        file_name=f"{config['name']}.yaml",
        mime="application/x-yaml",
        icon=":material/save:",
        key="nr_download",
    )
    right.caption(
        "Run it without the studio: `distill-studio train run.yaml` "
        "(with local `path`s instead of ids)."
    )
    if st.button(
        "Launch run",
        type="primary",
        icon=":material/rocket_launch:",
        key="nr_launch",
        width="stretch",
    ):
        slot = st.empty()
        with st.spinner("Queueing the run…"):
            run = ui.fetch(ui.client().create_run, config, stop=False, on_pending=_building(slot))
        slot.empty()
        if run is not None:
            st.session_state["run_flash"] = f"Run **{run.name}** queued on `{run.queue}`."
            ui.go("run", id=run.id)


def _paste_yaml() -> None:
    with st.expander("Paste a run config (YAML)", icon=":material/content_paste:"):
        st.text_area(
            "YAML",
            key="nr_yaml",
            persist_state="session",
            height=220,
            placeholder="name: my-run\nteacher: {model_id: 1}\n…",
        )
        st.button(
            "Load into the form", on_click=_load_yaml, key="nr_yaml_load", icon=":material/input:"
        )
        if error := st.session_state.get("nr_yaml_error"):
            st.error(f"Could not load the YAML: {error}")


# --------------------------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------------------------

st.title("New run")
catalog = ui.catalog()
_paste_yaml()
if flash := st.session_state.pop("nr_flash", None):
    st.success(flash)

st.subheader("1 · Teacher and data")
teacher_id, dataset_id, ready = _sources()
_task(catalog, dataset_id)
task_params, text_column = _task_fields(catalog)

st.subheader("2 · Student")
budget_finder.finder(catalog, ready.get(teacher_id), dataset_id)  # fills the fields below
student_spec, student_name = _student(catalog, ready.get(teacher_id), ready)

st.subheader("3 · Plan and layer pairs")
_plan_section(teacher_id, dataset_id, student_spec)
planned = _plan_is_current(_plan_key(teacher_id, dataset_id, student_spec))
_blocks_section(ready.get(teacher_id), student_spec, ready, planned)
pair_errors = _pairs_section()
if not planned:
    pair_errors = []  # checked against an older plan: the API checks them at launch

st.subheader("4 · Losses")
losses = _losses(catalog)
if planned and (plan := _plan()) is not None:
    pair_errors += attention_problems(plan, _pairs(), losses)

st.subheader("5 · Training")
training, misc = _training(catalog, ready.get(teacher_id) if teacher_id else None)
augment = _augment()

st.subheader("6 · Review and launch")
config = _config(teacher_id, dataset_id, student_spec, student_name, losses, training, misc)
if augment:  # only a run that augments carries the section
    config["augment"] = augment
if task_params:  # only a task with parameters carries them (image tasks have none)
    config["task_params"] = task_params
if text_column is not None:
    config["dataset"]["text_column"] = text_column
_review(config, pair_errors)
budget_finder.sweep(config)  # the best budget candidates, one run each, as a comparison
