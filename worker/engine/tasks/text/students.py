"""Text students built from their teacher (catalog kind "text"): the teacher's transformers
architecture, shallower or narrower, tokenised with the teacher's tokenizer.

- `hf_layers` (DistilBERT, Sanh et al. 2019): the teacher's architecture with `layers` blocks,
  each initialised from a teacher block, the embeddings and the head copied. DistilBERT takes one
  block of two; here the blocks are evenly spaced and include the first and the last,
  `round(linspace(0, L - 1, layers))` of the teacher's L blocks, so any depth can be asked for.
- `hf_config`: a fresh (randomly initialised) config of the teacher's model type, narrower and
  shallower: `layers`, `hidden`, `heads`, `intermediate` (0: half the teacher's), same vocabulary,
  positions and head (classes), so the teacher's tokenizer and labels still apply. `size` starts
  them at a preset of the BERT miniatures (Turc et al. 2019: tiny, mini, small, medium; `SIZES`).

Model types name their sizes differently (BERT `num_hidden_layers`, GPT-2 `n_layer`, DistilBERT
`n_layers`); transformers' own `attribute_map` translates the standard names, so nothing here is
written per model type except the MLP width's key (`INTERMEDIATE_KEYS`).

The catalog's builders (`hf_layers`, `hf_config` below, called by the zoo without a teacher)
refuse with how to use them: these students exist only next to a Hugging Face teacher.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from worker.engine.tasks.text.models import Output, TokenModel, unwrap

if TYPE_CHECKING:
    from worker.engine.loading import LoadedModel

TEXT_STUDENTS = ("hf_layers", "hf_config", "hf_pruned")
INTERMEDIATE_KEYS = ("intermediate_size", "n_inner", "hidden_dim", "ffn_dim")
_STD = ("num_hidden_layers", "hidden_size", "num_attention_heads")


class TextStudentError(ValueError):
    """A text student cannot be built as asked (sizes that do not fit, no HF teacher)."""


def _refuse_without_teacher(name: str) -> nn.Module:
    raise TextStudentError(
        f"the student '{name}' is built from a Hugging Face teacher by a text task "
        "(text_classification, sentence_embedding, causal_lm); give the run such a teacher "
        "(a .zip of config.json, model.safetensors and tokenizer.json) and a text task"
    )


def hf_layers(input_shape: Any, num_classes: int, layers: int = 0) -> nn.Module:
    """The catalog's builder: refuses (built by `build_text_student` from the teacher)."""
    return _refuse_without_teacher("hf_layers")


def hf_config(
    input_shape: Any,
    num_classes: int,
    layers: int = 0,
    hidden: int = 0,
    heads: int = 0,
    intermediate: int = 0,
    size: str = "none",
) -> nn.Module:
    """The catalog's builder: refuses (built by `build_text_student` from the teacher)."""
    return _refuse_without_teacher("hf_config")


# hf_config's `size` presets: the BERT miniatures of Turc et al. 2019 (blocks, hidden width),
# with heads of 64 channels and an MLP 4x as wide
SIZES: dict[str, tuple[int, int]] = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
}


def preset_sizes(kwargs: dict[str, Any]) -> dict[str, int]:
    """hf_config's sizes: the `size` preset's where it names one, each replaced by the explicit
    size where that is not 0."""
    size = str(kwargs.get("size") or "none")
    if size != "none" and size not in SIZES:
        raise TextStudentError(f"hf_config: size {size!r} is not one of none, {', '.join(SIZES)}")
    layers, hidden = SIZES.get(size, (0, 0))
    preset = {
        "layers": layers,
        "hidden": hidden,
        "heads": hidden // 64,
        "intermediate": 4 * hidden,
    }
    return {k: int(kwargs.get(k) or 0) or v for k, v in preset.items()}


def hf_pruned(
    input_shape: Any,
    num_classes: int,
    layers: int = 0,
    hidden: int = 0,
    heads: int = 0,
    intermediate: int = 0,
    calibration_rows: int = 256,
) -> nn.Module:
    """The catalog's builder: refuses (built by `prune.pruned_student` from the teacher)."""
    return _refuse_without_teacher("hf_pruned")


# --------------------------------------------------------------------------------------------
# config sizes, by their standard names
# --------------------------------------------------------------------------------------------


def key_of(config: Any, name: str) -> str:
    """The config.json key holding the standard size `name` (`n_layer` for GPT-2's layers)."""
    return str(getattr(config, "attribute_map", {}).get(name, name))


def intermediate_key(config: Any) -> str | None:
    """The key of the MLP's inner width, None when the model type has none we know."""
    return next((k for k in INTERMEDIATE_KEYS if hasattr(config, k)), None)


def intermediate_of(config: Any) -> int:
    """The MLP's inner width (GPT-2's `n_inner` None means 4 x hidden)."""
    key = intermediate_key(config)
    value = getattr(config, key) if key else None
    return int(value) if value else 4 * int(config.hidden_size)


def picked_blocks(teacher_layers: int, layers: int) -> list[int]:
    """`layers` evenly spaced block indices of `teacher_layers`, the first and last included."""
    if not 1 <= layers <= teacher_layers:
        raise TextStudentError(
            f"the student's layers must be between 1 and the teacher's {teacher_layers}, "
            f"got {layers}"
        )
    return [int(i) for i in torch.linspace(0, teacher_layers - 1, layers).round().long()]


def block_list(hf: nn.Module, layers: int) -> tuple[str, nn.ModuleList]:
    """The ModuleList of the `layers` transformer blocks (found by length, any module path)."""
    for path, sub in hf.named_modules():
        if isinstance(sub, nn.ModuleList) and len(sub) == layers and path:
            return path, sub
    raise TextStudentError(
        f"{type(hf).__name__} has no list of {layers} blocks (its config's layer count); "
        "this architecture cannot be cut by layers: use the student hf_config"
    )


def student_config(config: Any, sizes: dict[str, int], picked: list[int]) -> Any:
    """A copy of `config` with the standard `sizes` set (by their model type's keys); lists
    with one entry per block (e.g. `layer_types`) keep the `picked` blocks' entries."""
    teacher_layers = int(config.num_hidden_layers)
    values = copy.deepcopy(config.to_dict())
    for key, value in list(values.items()):
        if isinstance(value, list) and len(value) == teacher_layers > 1:
            values[key] = [value[i] for i in picked]
    for name, size in sizes.items():
        key = intermediate_key(config) if name == "intermediate" else key_of(config, name)
        if key:
            values[key] = size
    new = type(config).from_dict(values)
    new._attn_implementation = "eager"  # attention maps reach forward hooks (as the teacher)
    return new


# --------------------------------------------------------------------------------------------
# the two students
# --------------------------------------------------------------------------------------------


def layer_student(hf: nn.Module, layers: int) -> tuple[nn.Module, list[int]]:
    """The teacher's architecture with `layers` blocks copied from evenly spaced teacher blocks
    (embeddings, norms and head copied as they are); returns it and the teacher blocks used."""
    config: Any = cast(Any, hf).config
    teacher_layers = int(config.num_hidden_layers)
    picked = picked_blocks(teacher_layers, layers)
    base, _ = block_list(hf, teacher_layers)
    student = type(hf)(student_config(config, {"num_hidden_layers": layers}, picked))
    own, source = student.state_dict(), hf.state_dict()
    prefix = f"{base}."
    state = {}
    for key in own:
        name = key
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            name = f"{prefix}{picked[int(index)]}.{rest}"
        state[key] = source[name].detach().clone()
    student.load_state_dict(state)
    return student, picked


def half(value: int) -> int:
    return max(1, int(value) // 2)


def config_student(hf: nn.Module, sizes: dict[str, int]) -> nn.Module:
    """A fresh model of the teacher's class and model type with the given sizes (0: half the
    teacher's); heads must divide the hidden width (the key/value heads follow the heads)."""
    config: Any = cast(Any, hf).config
    teacher = {
        "layers": int(config.num_hidden_layers),
        "hidden": int(config.hidden_size),
        "heads": int(config.num_attention_heads),
        "intermediate": intermediate_of(config),
    }
    want = {k: int(sizes.get(k) or 0) or half(v) for k, v in teacher.items()}
    if want["hidden"] % want["heads"]:
        raise TextStudentError(
            f"hf_config: hidden {want['hidden']} is not divisible by heads {want['heads']}; "
            "give a hidden width that is a multiple of the heads"
        )
    if want["layers"] > teacher["layers"]:
        raise TextStudentError(
            f"hf_config: layers {want['layers']} is more than the teacher's {teacher['layers']}"
        )
    picked = picked_blocks(teacher["layers"], want["layers"])
    new = {
        "num_hidden_layers": want["layers"],
        "hidden_size": want["hidden"],
        "num_attention_heads": want["heads"],
        "intermediate": want["intermediate"],
    }
    new_config = student_config(config, new, picked)
    kv = getattr(config, "num_key_value_heads", None)
    if kv:  # grouped-query attention: as many query heads per key/value head as the teacher
        groups = max(1, teacher["heads"] // int(kv))
        new_config.num_key_value_heads = (
            want["heads"] // groups if want["heads"] % groups == 0 else want["heads"]
        )
    if getattr(new_config, "head_dim", None):
        new_config.head_dim = want["hidden"] // want["heads"]
    return type(hf)(new_config)


def build_text_student(
    architecture: str,
    kwargs: dict[str, Any],
    teacher: LoadedModel,
    output: Output,
    data: Any = None,
) -> nn.Module:
    """The text student `architecture` (`TEXT_STUDENTS`) from `kwargs`, built from the teacher
    (`teacher.module` a `TokenModel`), as a `TokenModel` giving `output`; it keeps
    `arch`/`arch_kwargs` (the run's description) and `tokenizer` (the teacher's, exported with
    the student). `data` (a `TokenData`): hf_pruned's calibration token ids."""
    hf: Any = unwrap(teacher.module)
    if not hasattr(hf, "config"):
        raise TextStudentError(
            f"the student '{architecture}' is built from a Hugging Face teacher; this teacher "
            f"is {teacher.format}"
        )
    if architecture == "hf_pruned":  # Minitron: measured on the run's token ids (prune.py)
        from worker.engine.tasks.text.prune import pruned_student

        if data is None:
            raise TextStudentError("hf_pruned measures importance on the run's token ids")
        return pruned_student(kwargs, teacher, data, output)
    if architecture == "hf_layers":
        layers = int(kwargs.get("layers") or 0) or half(int(hf.config.num_hidden_layers))
        built, picked = layer_student(hf, layers)
        arch_kwargs: dict[str, Any] = {"layers": layers}
    elif architecture == "hf_config":
        sizes = preset_sizes(kwargs)
        built, picked = config_student(hf, sizes), []
        arch_kwargs = {**sizes, "size": str(kwargs.get("size") or "none")}
    else:
        raise TextStudentError(
            f"'{architecture}' is not a text student ({', '.join(TEXT_STUDENTS)})"
        )
    built.train()
    built.requires_grad_(True)
    student: Any = TokenModel(built, output)  # with the attributes a zoo student carries
    student.arch = architecture
    student.arch_kwargs = arch_kwargs
    student.teacher_blocks = picked  # hf_layers: the teacher block each block started from
    student.tokenizer = teacher.tokenizer
    return cast(nn.Module, student)
