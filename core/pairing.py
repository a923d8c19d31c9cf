"""Layer pairs between a teacher and a student, checked on inspection tables (torch-free).

The backend imports this module to validate run configs against the stored inspections of both
models (`taps.inspect_model` output), so it imports nothing heavy. Shapes here exclude the batch
dimension: a 4D feature map (N, C, H, W) is a 3-element shape [C, H, W], a vector (N, D) is [D].

What a connector (`connectors.build_connector`) can bridge:
- map -> map: any channels (1x1 conv + BN) and any spatial size (pooling / interpolation);
- vector -> vector: any width (linear + BN);
- map -> vector: global average pooling then linear;
- sequence -> sequence ([L, D]): same length L, any width (linear on D).
A vector cannot become a spatial map.

Which layers auto-pairing suggests, and which a mismatched pair's error points to, is the task's
stage rule, named in its catalog entry (`core.catalog.tasks`, `TaskEntry.stage_rule` and its
`stage_hint`) and defined in `STAGE_RULES`; classification's is "spatial". The text tasks'
"blocks": a transformer's stages are its blocks, and student block i pairs with teacher block
round((i + 1) * L_t / L_s) - 1 (TinyBERT's uniform mapping); a pair names a block (its hidden
states) or a module inside it (its attention, for the attention losses).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.catalog import nearest
from core.catalog.tasks import DEFAULT as DEFAULT_TASK
from core.catalog.tasks import TASKS


def fmt_shape(shape: Sequence[int] | None) -> str:
    """[64,8,8] (compact, as the UI shows shapes)."""
    return "none" if shape is None else "[" + ",".join(str(int(s)) for s in shape) + "]"


def unknown_layer_message(path: str, paths: Sequence[str], side: str) -> str:
    """The error for an unknown module path, e.g. "layer 'layer9' not in teacher; nearest: ..."."""
    return f"layer '{path}' not in {side}; nearest: {', '.join(nearest(path, list(paths)))}"


def find_layer(inspection: dict[str, Any], path: str, side: str) -> dict[str, Any]:
    """The row of `path` in an inspection's layer table; ValueError naming the nearest paths."""
    for row in inspection.get("layers", []):
        if row["path"] == path:
            return row
    paths = [row["path"] for row in inspection.get("layers", [])]
    raise ValueError(unknown_layer_message(path, paths, side))


def shape_problem(
    student_shape: Sequence[int] | None, teacher_shape: Sequence[int] | None
) -> str | None:
    """Why no connector maps a student feature of `student_shape` to `teacher_shape`, or None."""
    if student_shape is None or teacher_shape is None:
        side = "student" if student_shape is None else "teacher"
        return f"the {side} layer has no tensor output to match"
    s, t = list(student_shape), list(teacher_shape)
    if (len(s), len(t)) in ((3, 3), (1, 1), (3, 1)):
        return None
    if len(s) == 1 and len(t) == 3:
        return "cannot rebuild a spatial map from a vector"
    if len(s) == 2 and len(t) == 2:
        if s[0] == t[0]:
            return None
        return f"sequence lengths differ ({s[0]} vs {t[0]}); pick layers with as many tokens"
    if sorted((len(s), len(t))) == [2, 3]:
        tokens, tokens_side = (s, "student") if len(s) == 2 else (t, "teacher")
        return (
            f"the {tokens_side} layer gives transformer tokens {fmt_shape(tokens)} "
            "([tokens, dim]) and the other a CNN map [C,H,W]; no connector maps one to the "
            "other: pair token layers with another transformer's token layers (as many tokens), "
            "or use logit losses (kd, dkd, ...) between a transformer and a CNN"
        )
    return (
        f"no connector maps a {len(s) + 1}D student feature to a {len(t) + 1}D teacher feature; "
        "pick layers whose outputs are both maps (N,C,H,W) or both vectors (N,D)"
    )


def check_pair(
    teacher_layer: dict[str, Any],
    student_layer: dict[str, Any],
    tap: str = "output",
    *,
    student: dict[str, Any] | None = None,
    task: str = DEFAULT_TASK,
) -> str | None:
    """None when a connector can bridge the two layers, else a message with both shapes.

    `tap` selects the layers' "output" or (first) "input" shape. When the teacher layer is of
    the kind `task`'s stage rule groups into stages and the student layer is not, the message
    says which student layers would fit (the entry's `stage_hint`); give the student's
    inspection as `student` to have it name the deepest stage end.
    """
    key = "input_shape" if tap == "input" else "output_shape"
    t_shape, s_shape = teacher_layer.get(key), student_layer.get(key)
    problem = shape_problem(s_shape, t_shape)
    if problem is None:
        return None
    message = (
        f"teacher layer '{teacher_layer['path']}' {fmt_shape(t_shape)} vs student layer "
        f"'{student_layer['path']}' {fmt_shape(s_shape)}: {problem}"
    )
    entry = TASKS[task]
    rule = STAGE_RULES[entry.stage_rule]
    if rule.staged(t_shape) and not rule.staged(s_shape):
        message += f"; pick a student layer {entry.stage_hint}"
        ends = rule.ends(student) if student else []
        if ends:
            row = find_layer(student or {}, ends[-1], "student")
            message += f" such as {row['path']} {fmt_shape(row['output_shape'])}"
    return message


# -- attention inside a paired layer (attention_kl, minilm_relations) ---------------------------

ATTENTION_PROJECTIONS = (  # query, key, value children by architecture family
    ("query", "q_lin", "q_proj"),  # BERT and RoBERTa; DistilBERT; Llama, Mistral, Qwen2
    ("key", "k_lin", "k_proj"),
    ("value", "v_lin", "v_proj"),
)
FUSED_ATTENTION = ("c_attn", "qkv", "qkv_proj", "query_key_value", "Wqkv")  # one projection


def attention_children(children: Sequence[str]) -> dict[str, str] | None:
    """The child names of a module's query/key/value projections by role ("q", "k", "v"), or
    {"qkv": name} for one fused projection; None when the children hold no attention."""
    fused = next((n for n in FUSED_ATTENTION if n in children), None)
    if fused is not None:
        return {"qkv": fused}
    found = {
        role: next((n for n in names if n in children), None)
        for role, names in zip("qkv", ATTENTION_PROJECTIONS, strict=True)
    }
    if any(name is None for name in found.values()):
        return None
    return {role: name for role, name in found.items() if name is not None}


def attention_pair_problems(
    losses: Sequence[tuple[str, Sequence[int] | None]],
    pairs: Sequence[tuple[str, str]],
    teacher: dict[str, Any],
    student: dict[str, Any],
) -> list[tuple[int, str, str]]:
    """(pair index, side, message) for each side of a layer pair that a loss reads an attention
    from (`LossEntry.reads_attention`: attention_kl, minilm_relations) whose layer holds none
    (`attention_problem`). `losses` are (name, the pairs it reads: None for all), `pairs`
    (teacher path, student path); a layer missing from its table is left to `find_layer`."""
    from core.catalog.losses import LOSSES

    readers: dict[int, str] = {}  # pair index -> the first loss that reads its attention
    for name, chosen in losses:
        entry = LOSSES.get(name)
        if entry is not None and entry.reads_attention:
            for i in range(len(pairs)) if chosen is None else chosen:
                readers.setdefault(i, name)
    problems = []
    for i, name in sorted(readers.items()):
        if i >= len(pairs):
            continue
        for side, inspection, path in zip(
            ("teacher", "student"), (teacher, student), pairs[i], strict=True
        ):
            known = any(row["path"] == path for row in inspection.get("layers", []))
            if known and (why := attention_problem(inspection, path, side)):
                problems.append((i, side, f"{why} ({name} reads it)"))
    return problems


def attention_problem(inspection: dict[str, Any], path: str, side: str) -> str | None:
    """None when the layer `path` of an inspection's layer table is, or holds, an attention
    with query/key/value projections (what attention_kl and minilm_relations read); else why
    not, naming the layers that would do. The engine's reader finds the same attention
    (`losses.attention`)."""
    paths = [row["path"] for row in inspection.get("layers", [])]
    children: dict[str, list[str]] = {}
    for p in paths:
        parent, _, name = p.rpartition(".")
        children.setdefault(parent, []).append(name)
    holders = [
        parent
        for parent, names in children.items()
        if attention_children(names) is not None and parent  # the model itself is no layer
    ]
    if any(h == path or h.startswith(f"{path}.") for h in holders):
        return None
    outermost = [h for h in holders if not any(h.startswith(f"{o}.") for o in holders)]
    hint = f" such as {', '.join(outermost[:3])}" if outermost else ""
    return (
        f"the {side} layer '{path}' holds no attention with query/key/value projections; pair "
        f"a transformer block or its attention module{hint}"
    )


def _is_map(shape: Sequence[int] | None) -> bool:
    """A 4-D feature map (N, C, H, W): [C, H, W] without the batch."""
    return shape is not None and len(shape) == 3


def _map_stage_ends(inspection: dict[str, Any] | None) -> list[str]:
    """End layers of the spatial (4D) stages, shallow to deep."""
    stages = (inspection or {}).get("stages", [])
    return [s["end"] for s in stages if s.get("resolution") is not None and s.get("end")]


def _penultimate(inspection: dict[str, Any]) -> str | None:
    """The feature layer just before the classifier: the head's last row that is not the end."""
    heads = [s for s in inspection.get("stages", []) if s.get("resolution") is None]
    if not heads or not heads[-1]["layers"]:
        return None
    end = heads[-1]["end"]
    candidates = [
        p
        for p in heads[-1]["layers"]
        if p != end and not p.startswith(end + ".") and not end.startswith(p + ".")
    ]
    if not candidates:
        return None
    path = candidates[-1]
    while "." in path and path.rsplit(".", 1)[0] in candidates:
        path = path.rsplit(".", 1)[0]  # the outermost module that produced this feature
    return path


def _map_stages(inspection: dict[str, Any]) -> list[tuple[tuple[int, ...], str]]:
    """(resolution, end) of the spatial stages, shallow to deep."""
    stages = inspection.get("stages", [])
    return [(tuple(s["resolution"]), s["end"]) for s in stages if s.get("resolution") and s["end"]]


def _token_blocks(inspection: dict[str, Any]) -> list[tuple[str, int]]:
    """(path, tokens) of a transformer's numbered blocks, shallow to deep (`token_blocks`)."""
    return token_blocks(inspection.get("layers", []))


def token_blocks(rows: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
    """(path, tokens) of a transformer's numbered blocks (`blocks.0`, `encoder.layer.1`,
    `model.layers.2`, ...) whose outputs are token maps [tokens, dim], shallow to deep: the
    longest run under one parent, in block order."""
    runs: dict[str, list[tuple[str, int]]] = {}
    for row in rows:
        shape, (parent, _, last) = row.get("output_shape"), row["path"].rpartition(".")
        if shape is not None and len(shape) == 2 and parent and last.isdigit():
            runs.setdefault(parent, []).append((row["path"], int(shape[0])))
    found = max(runs.values(), key=len, default=[])
    return sorted(found, key=lambda block: int(block[0].rpartition(".")[2]))


def _token_candidates(teacher: dict[str, Any], student: dict[str, Any]) -> list[tuple[str, str]]:
    """Two transformers with as many tokens: each student block with the teacher block at the
    same relative depth, deepest first."""
    t_blocks, s_blocks = _token_blocks(teacher), _token_blocks(student)
    if not t_blocks or not s_blocks or t_blocks[-1][1] != s_blocks[-1][1]:
        return []
    t_paths, s_paths = [p for p, _ in t_blocks], [p for p, _ in s_blocks]
    return uniform_block_pairs(t_paths, s_paths)


def uniform_block_pairs(teacher: Sequence[str], student: Sequence[str]) -> list[tuple[str, str]]:
    """(teacher block, student block), deepest first: student block i (0-based) with teacher
    block round((i + 1) * L_t / L_s) - 1, TinyBERT's uniform mapping g(m) = m * L_t / L_s
    (Jiao et al. 2020), so the last blocks pair and the others spread evenly."""
    m, n = len(teacher), len(student)
    return [(teacher[max(0, round((k + 1) * m / n) - 1)], student[k]) for k in reversed(range(n))]


def _spatial_candidates(teacher: dict[str, Any], student: dict[str, Any]) -> list[tuple[str, str]]:
    """The "spatial" stage rule: two transformers' blocks at the same relative depth; the ends
    of the stages both networks have at the same resolution, deepest first; when no resolution
    matches, the stage ends aligned from the end; the penultimate features when either network
    has no spatial stage (MLPs)."""
    tokens = _token_candidates(teacher, student)
    if tokens:
        return tokens
    s_by_res = dict(_map_stages(student))
    candidates = [
        (t_end, s_by_res[res]) for res, t_end in reversed(_map_stages(teacher)) if res in s_by_res
    ]
    if not candidates:
        t_ends, s_ends = _map_stage_ends(teacher), _map_stage_ends(student)
        candidates = list(zip(reversed(t_ends), reversed(s_ends), strict=False))
    if not candidates:
        t_pen, s_pen = _penultimate(teacher), _penultimate(student)
        candidates = [(t_pen, s_pen)] if t_pen and s_pen else []
    return candidates


Inspection = dict[str, Any]


@dataclass(frozen=True)
class StageRule:
    """How a task's stages read on inspection tables (a task's entry names one by its key).

    staged: whether a layer's shape is of the kind the rule groups into stages;
    ends: a network's stage-end layers, shallow to deep;
    candidates: the (teacher, student) layer pairs auto-pairing tries, deepest first.
    """

    staged: Callable[[Sequence[int] | None], bool]
    ends: Callable[[Inspection | None], list[str]]
    candidates: Callable[[Inspection, Inspection], list[tuple[str, str]]]


def _is_tokens(shape: Sequence[int] | None) -> bool:
    """A token map (N, tokens, dim): [tokens, dim] without the batch."""
    return shape is not None and len(shape) == 2


def _block_paths(inspection: Inspection | None) -> list[str]:
    """A transformer's blocks, shallow to deep: a Hugging Face inspection's `blocks`
    (`hf_teacher.group_layers`), else its numbered token blocks (`token_blocks`)."""
    inspection = inspection or {}
    listed = [b["path"] for b in inspection.get("blocks") or [] if b.get("path")]
    return listed or [p for p, _ in _token_blocks(inspection)]


def _block_candidates(teacher: Inspection, student: Inspection) -> list[tuple[str, str]]:
    """The "blocks" stage rule: every student block with a teacher block by TinyBERT's uniform
    mapping (`uniform_block_pairs`), deepest first."""
    t_blocks, s_blocks = _block_paths(teacher), _block_paths(student)
    if not t_blocks or not s_blocks:
        return []
    return uniform_block_pairs(t_blocks, s_blocks)


STAGE_RULES: dict[str, StageRule] = {
    "spatial": StageRule(_is_map, _map_stage_ends, _spatial_candidates),
    "blocks": StageRule(_is_tokens, _block_paths, _block_candidates),
}


def suggest_pairs(
    teacher: dict[str, Any],
    student: dict[str, Any],
    max_pairs: int = 3,
    *,
    task: str = DEFAULT_TASK,
) -> list[dict[str, Any]]:
    """Stage-end pairs, deepest first when choosing, returned shallow to deep.

    The candidates come from `task`'s stage rule (its catalog entry's `stage_rule`); for
    classification ("spatial") every resolution both networks have is paired (the ends of their
    stages at that resolution, deepest first); when none matches, the spatial stages are aligned
    from the end (the last teacher stage with the last student stage, and so on), and when
    either network has no spatial stage (MLPs) the penultimate features are paired instead. Two
    transformers with as many tokens (ViT, DeiT) pair their blocks at the same relative depth. At most `max_pairs`, keeping
    only pairs `check_pair` accepts.
    """
    candidates = STAGE_RULES[TASKS[task].stage_rule].candidates(teacher, student)
    pairs: list[dict[str, Any]] = []
    for t_path, s_path in candidates:
        if len(pairs) >= max_pairs:
            break
        t_row = find_layer(teacher, t_path, "teacher")
        s_row = find_layer(student, s_path, "student")
        if check_pair(t_row, s_row, task=task) is None:
            pairs.append(
                {
                    "teacher": t_path,
                    "student": s_path,
                    "teacher_shape": t_row["output_shape"],
                    "student_shape": s_row["output_shape"],
                }
            )
    return pairs[::-1]
