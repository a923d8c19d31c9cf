"""Minitron pruning: a transformers model made smaller by activation importance, then distilled.

Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge Distillation"
(Minitron): one forward pass of the teacher over a calibration set (the run's token ids, at most
`calibration_rows` rows, in batches, no gradient) scores every prunable unit by the activations
it produces, and the pruned model keeps the top-scoring units with the teacher's weights sliced
to them; the student is then distilled from the teacher as any other.

Importance (per the paper's activation-based estimates; token positions masked to the real
tokens, `A` an activation, `b` a calibration row, `t` a token):

- attention head h of block l: F(h) = sum_b sqrt(sum_t ||A_bth||^2), A the head's slice of the
  input of the attention's output projection (the heads' outputs, concatenated);
- MLP channel i of block l: F(i) = sum_b sqrt(sum_t A_bti^2), A the input of the MLP's down
  projection (the intermediate activations after the non-linearity, gated for llama-style);
- embedding (hidden) channel j: the same sum over the outputs of every LayerNorm / RMSNorm of
  the model, added up (the residual stream is one set of channels for all blocks);
- block l (depth): the mean over real tokens of 1 - cos(x_in, x_out) between the block's input
  and output hidden states (block importance, as the paper's depth ranking and ShortGPT); the
  blocks that change the stream least are dropped.

Heads and MLP channels are ranked per block (every block keeps the same number, each its own
best ones: the config has one size for all blocks); hidden channels once for the model.
Grouped-query attention (llama, mistral, qwen2 with fewer key/value heads): a key/value head
and the query heads sharing it are kept or dropped together, scored by the sum of those query
heads' scores; `heads` must then be a multiple of the group size (refused otherwise).

The pruned model is built from the teacher's config with the new sizes (`layers`, `hidden`,
`heads`, `intermediate`; head size unchanged) as a plain transformers model of the teacher's
class, and filled by slicing each of the teacher's tensors along its hidden / head /
intermediate axes (`_RULES`: q/k/v/o, MLP up/gate/down, embeddings, norms, pooler and heads).
In bert, roberta, distilbert and gpt2 the attention width is the hidden size (heads x head
size), so `hidden` and `heads` go together there: give one, the other follows; both must agree.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from worker.engine.tasks.base import IncompatibleDataError
from worker.engine.tasks.text.models import PAD, Output, TokenModel, unwrap

if TYPE_CHECKING:
    from worker.engine.loading import LoadedModel

H, Q, KV, QKV, INTER = "hidden", "q", "kv", "qkv", "inter"
Axes = tuple[str | None, ...]
DEFAULT_CALIBRATION_ROWS = 256
CALIBRATION_BATCH = 16


class PruneError(IncompatibleDataError):
    """A pruning the model cannot take (unsupported type, sizes out of range or inconsistent)."""


@dataclass(frozen=True)
class Family:
    """How one model type names its sizes and tensors.

    `sizes`: the config keys of layers, hidden, heads, kv_heads (llama-style) and intermediate;
    `attn_out` / `mlp_down`: block-relative names of the modules whose inputs are the heads'
    outputs and the intermediate activations; `rules`: (key pattern, the axis of each dim).
    """

    sizes: dict[str, str]
    attn_out: str
    mlp_down: str
    rules: tuple[tuple[str, Axes], ...]
    coupled: bool = False  # attention width == hidden size (heads x head size)


_NORM: tuple[tuple[str, Axes], ...] = (
    (r"(LayerNorm|layer_norm|ln_\w+|norm)\.(weight|bias)$", (H,)),
)
_HEADS: tuple[tuple[str, Axes], ...] = (  # task heads reading the hidden state
    (r"(pooler|transform|classifier|lm_head|pre_classifier|vocab_transform)\.dense\.weight$",
     (H, H)),
    (r"(pooler|transform|classifier|lm_head)\.dense\.bias$", (H,)),
    (r"(pre_classifier|vocab_transform)\.weight$", (H, H)),
    (r"(pre_classifier|vocab_transform)\.bias$", (H,)),
    (r"(vocab_layer_norm)\.(weight|bias)$", (H,)),
    (r"(lm_head|score|classifier|decoder|out_proj|qa_outputs|vocab_projector)\.weight$",
     (None, H)),
    (r"_embeddings\.weight$|embed_tokens\.weight$|wte\.weight$|wpe\.weight$", (None, H)),
)  # fmt: skip
_LLAMA = Family(
    {
        "layers": "num_hidden_layers",
        "hidden": "hidden_size",
        "heads": "num_attention_heads",
        "kv_heads": "num_key_value_heads",
        "intermediate": "intermediate_size",
    },
    "self_attn.o_proj",
    "mlp.down_proj",
    (
        (r"q_proj\.weight$", (Q, H)),
        (r"q_proj\.bias$", (Q,)),
        (r"(k_proj|v_proj)\.weight$", (KV, H)),
        (r"(k_proj|v_proj)\.bias$", (KV,)),
        (r"o_proj\.weight$", (H, Q)),
        (r"o_proj\.bias$", (H,)),
        (r"(gate_proj|up_proj)\.weight$", (INTER, H)),
        (r"(gate_proj|up_proj)\.bias$", (INTER,)),
        (r"down_proj\.weight$", (H, INTER)),
        (r"down_proj\.bias$", (H,)),
        *_NORM,
        *_HEADS,
    ),
)
_BERT = Family(
    {
        "layers": "num_hidden_layers",
        "hidden": "hidden_size",
        "heads": "num_attention_heads",
        "intermediate": "intermediate_size",
    },
    "attention.output.dense",
    "output.dense",
    (
        (r"attention\.self\.(query|key|value)\.weight$", (Q, H)),
        (r"attention\.self\.(query|key|value)\.bias$", (Q,)),
        (r"attention\.output\.dense\.weight$", (H, Q)),
        (r"attention\.output\.dense\.bias$", (H,)),
        (r"intermediate\.dense\.weight$", (INTER, H)),
        (r"intermediate\.dense\.bias$", (INTER,)),
        (r"layer\.\d+\.output\.dense\.weight$", (H, INTER)),
        (r"layer\.\d+\.output\.dense\.bias$", (H,)),
        *_NORM,
        *_HEADS,
    ),
    coupled=True,
)
_DISTILBERT = Family(
    {"layers": "n_layers", "hidden": "dim", "heads": "n_heads", "intermediate": "hidden_dim"},
    "attention.out_lin",
    "ffn.lin2",
    (
        (r"attention\.(q_lin|k_lin|v_lin)\.weight$", (Q, H)),
        (r"attention\.(q_lin|k_lin|v_lin)\.bias$", (Q,)),
        (r"attention\.out_lin\.weight$", (H, Q)),
        (r"attention\.out_lin\.bias$", (H,)),
        (r"ffn\.lin1\.weight$", (INTER, H)),
        (r"ffn\.lin1\.bias$", (INTER,)),
        (r"ffn\.lin2\.weight$", (H, INTER)),
        (r"ffn\.lin2\.bias$", (H,)),
        *_NORM,
        *_HEADS,
    ),
    coupled=True,
)
_GPT2 = Family(  # Conv1D weights are [in, out]
    {"layers": "n_layer", "hidden": "n_embd", "heads": "n_head", "intermediate": "n_inner"},
    "attn.c_proj",
    "mlp.c_proj",
    (
        (r"attn\.c_attn\.weight$", (H, QKV)),
        (r"attn\.c_attn\.bias$", (QKV,)),
        (r"attn\.c_proj\.weight$", (Q, H)),
        (r"attn\.c_proj\.bias$", (H,)),
        (r"mlp\.c_fc\.weight$", (H, INTER)),
        (r"mlp\.c_fc\.bias$", (INTER,)),
        (r"mlp\.c_proj\.weight$", (INTER, H)),
        (r"mlp\.c_proj\.bias$", (H,)),
        *_NORM,
        *_HEADS,
    ),
    coupled=True,
)
FAMILIES: dict[str, Family] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "bert": _BERT,
    "roberta": _BERT,
    "distilbert": _DISTILBERT,
    "gpt2": _GPT2,
}


# --------------------------------------------------------------------------------------------
# the model's shape
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A model's prunable sizes."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.heads // self.kv_heads


def family_of(hf: nn.Module) -> Family:
    """The pruning rules of the model's type; refuses the types without them."""
    model_type = str(getattr(hf.config, "model_type", ""))
    if model_type not in FAMILIES:
        raise PruneError(
            f"hf_pruned cannot prune a {model_type or type(hf).__name__} model; it prunes "
            f"{', '.join(sorted(FAMILIES))}. Pick another student (fewer layers, a narrower "
            "config) for this teacher"
        )
    return FAMILIES[model_type]


def shape_of(hf: nn.Module) -> Shape:
    """The teacher's sizes from its config."""
    fam, config = family_of(hf), hf.config
    get: dict[str, Any] = {role: getattr(config, key, None) for role, key in fam.sizes.items()}
    hidden, heads, layers = int(get["hidden"]), int(get["heads"]), int(get["layers"])
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    inter = get["intermediate"] or 4 * hidden  # gpt2's n_inner None: 4 x n_embd
    return Shape(layers, hidden, heads, int(get.get("kv_heads") or heads), head_dim, int(inter))


def target_shape(
    teacher: Shape,
    fam: Family,
    layers: int = 0,
    hidden: int = 0,
    heads: int = 0,
    intermediate: int = 0,
) -> Shape:
    """The pruned sizes (0 keeps the teacher's), checked: each at most the teacher's, heads a
    multiple of the query group, and hidden = heads x head size where the two are coupled."""
    if fam.coupled:
        if hidden and not heads:
            heads = hidden // teacher.head_dim
        if heads and not hidden:
            hidden = heads * teacher.head_dim
        if (hidden or heads) and hidden != heads * teacher.head_dim:
            raise PruneError(
                f"this model's attention is as wide as its hidden size (heads x "
                f"{teacher.head_dim}); hidden {hidden} and heads {heads} disagree: give one of "
                f"them, or hidden = heads x {teacher.head_dim}"
            )
    want = {
        "layers": layers or teacher.layers,
        "hidden": hidden or teacher.hidden,
        "heads": heads or teacher.heads,
        "intermediate": intermediate or teacher.intermediate,
    }
    for name, value in want.items():
        most = getattr(teacher, name)
        if not 1 <= value <= most:
            raise PruneError(f"hf_pruned {name} must be between 1 and the teacher's {most}")
    if want["heads"] % teacher.group:
        raise PruneError(
            f"the teacher shares each key/value head among {teacher.group} query heads "
            f"(grouped-query attention); heads must be a multiple of {teacher.group}"
        )
    kv = want["heads"] // teacher.group
    return Shape(
        want["layers"], want["hidden"], want["heads"], kv, teacher.head_dim, want["intermediate"]
    )


# --------------------------------------------------------------------------------------------
# importance
# --------------------------------------------------------------------------------------------


@dataclass
class Importance:
    """The activation scores (module doc): heads [layers, heads], mlp [layers, intermediate],
    hidden [hidden], blocks [layers] (mean cosine distance)."""

    heads: Tensor
    mlp: Tensor
    hidden: Tensor
    blocks: Tensor
    rows: int = 0


def blocks_of(hf: nn.Module, layers: int) -> tuple[str, nn.ModuleList]:
    """The path and ModuleList of the transformer blocks (`layers` long, holding attention)."""
    from worker.engine.hf_teacher import _blocks_list

    found = _blocks_list(hf, layers)
    if found is None:
        raise PruneError(f"no list of {layers} transformer blocks found in {type(hf).__name__}")
    return found


def _row_norms(act: Tensor, mask: Tensor) -> Tensor:
    """sum_b sqrt(sum_t act_bt^2) over the real tokens, per trailing channel."""
    act = act.float() * mask.unsqueeze(-1)
    return act.pow(2).sum(1).sqrt().sum(0)


def _hidden_of(value: Any) -> Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value  # type: ignore[no-any-return]


@contextmanager
def _hooks(handles: list[Any]) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def importance(hf: nn.Module, ids: Tensor, batch_size: int = CALIBRATION_BATCH) -> Importance:
    """Score heads, MLP channels, hidden channels and blocks on token ids [N, L] (padding
    `PAD`) with one forward per batch, no gradient (module doc)."""
    fam, shape = family_of(hf), shape_of(hf)
    _, blocks = blocks_of(hf, shape.layers)
    heads = torch.zeros(shape.layers, shape.heads)
    mlp = torch.zeros(shape.layers, shape.intermediate)
    hidden = torch.zeros(shape.hidden)
    dist, tokens = torch.zeros(shape.layers), torch.zeros(())
    mask = torch.ones(1, 1, dtype=torch.bool)

    def on_heads(layer: int) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            act = args[0].reshape(*args[0].shape[:2], shape.heads, shape.head_dim)
            heads[layer] += _row_norms(act.float().norm(dim=-1), mask)

        return hook

    def on_mlp(layer: int) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            mlp[layer] += _row_norms(args[0], mask)

        return hook

    def on_block(layer: int) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            x_in = args[0] if args else kwargs["hidden_states"]
            cos = torch.cosine_similarity(x_in.float(), _hidden_of(out).float(), dim=-1)
            dist[layer] += ((1 - cos) * mask).sum()

        return hook

    def on_norm(_m: nn.Module, _args: Any, out: Tensor) -> None:
        if out.shape[-1] == shape.hidden:
            hidden.add_(_row_norms(out, mask))

    handles: list[Any] = []
    for i, block in enumerate(blocks):
        handles.append(block.get_submodule(fam.attn_out).register_forward_pre_hook(on_heads(i)))
        handles.append(block.get_submodule(fam.mlp_down).register_forward_pre_hook(on_mlp(i)))
        handles.append(block.register_forward_hook(on_block(i), with_kwargs=True))
    for module in hf.modules():
        if _is_norm(module):
            handles.append(module.register_forward_hook(on_norm))
    device = next(hf.parameters()).device
    was_training = hf.training
    hf.eval()
    with _hooks(handles), torch.no_grad():
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size].to(device)
            mask = batch != PAD
            tokens += mask.sum().cpu()
            hf(input_ids=batch.clamp_min(0), attention_mask=mask.long())
    hf.train(was_training)
    return Importance(heads, mlp, hidden, dist / tokens.clamp_min(1), len(ids))


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm) or name.endswith(("RMSNorm", "LayerNorm"))


# --------------------------------------------------------------------------------------------
# what to keep
# --------------------------------------------------------------------------------------------


@dataclass
class Keep:
    """The teacher's units the pruned model keeps, in the teacher's order."""

    blocks: list[int]
    hidden: Tensor
    heads: list[Tensor]  # per kept block: query head indices
    kv_heads: list[Tensor]  # per kept block: key/value head indices
    inter: list[Tensor]  # per kept block: MLP channel indices


def _top(scores: Tensor, k: int) -> Tensor:
    """The indices of the k largest scores, in ascending index order (ties: lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)


def choose(scores: Importance, teacher: Shape, target: Shape) -> Keep:
    """The top units of each kind (module doc): blocks by cosine distance, hidden channels,
    and per kept block its key/value groups (GQA) or heads, and its MLP channels."""
    blocks = [int(i) for i in _top(scores.blocks, target.layers)]
    heads, kv_heads = [], []
    for b in blocks:
        groups = scores.heads[b].reshape(teacher.kv_heads, teacher.group).sum(1)
        kept_kv = _top(groups, target.kv_heads)
        kv_heads.append(kept_kv)
        heads.append((kept_kv[:, None] * teacher.group + torch.arange(teacher.group)).flatten())
    inter = [_top(scores.mlp[b], target.intermediate) for b in blocks]
    return Keep(blocks, _top(scores.hidden, target.hidden), heads, kv_heads, inter)


# --------------------------------------------------------------------------------------------
# the pruned model
# --------------------------------------------------------------------------------------------


def pruned_config(hf: nn.Module, target: Shape, blocks: list[int]) -> Any:
    """The teacher's config with the pruned sizes (and per-layer lists cut to kept blocks)."""
    fam = family_of(hf)
    config: Any = copy.deepcopy(hf.config)
    values = {
        "layers": target.layers,
        "hidden": target.hidden,
        "heads": target.heads,
        "kv_heads": target.kv_heads,
        "intermediate": target.intermediate,
    }
    for role, key in fam.sizes.items():
        setattr(config, key, values[role])
    if not fam.coupled:  # the head size stays the teacher's (qwen2 derives it otherwise)
        config.head_dim = target.head_dim
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) >= max(blocks) + 1:
        config.layer_types = [layer_types[b] for b in blocks]
    if isinstance(getattr(config, "max_window_layers", None), int):
        config.max_window_layers = min(config.max_window_layers, target.layers)
    return config


def _index(axis: str | None, size: int, keep: Keep, teacher: Shape, k: int) -> Tensor | None:
    """The teacher indices along one axis of a tensor of block slot `k` (None: all)."""
    d = teacher.head_dim
    if axis == H:
        return keep.hidden
    if axis == Q:
        return (keep.heads[k][:, None] * d + torch.arange(d)).flatten()
    if axis == KV:
        return (keep.kv_heads[k][:, None] * d + torch.arange(d)).flatten()
    if axis == QKV:
        q = (keep.heads[k][:, None] * d + torch.arange(d)).flatten()
        width = teacher.heads * d
        return torch.cat([q, q + width, q + 2 * width])
    if axis == INTER:
        return keep.inter[k]
    return None


def _axes(key: str, fam: Family) -> Axes | None:
    for pattern, axes in fam.rules:
        if re.search(pattern, key):
            return axes
    return None


def slice_state(
    hf: nn.Module, keep: Keep, teacher: Shape, new_state: dict[str, Tensor]
) -> dict[str, Tensor]:
    """The teacher's tensors sliced to the kept units, under the pruned model's keys; refuses a
    tensor whose axes the rules do not know and whose shape changed (naming it)."""
    fam = family_of(hf)
    base, _ = blocks_of(hf, teacher.layers)
    block_key = re.compile(rf"^{re.escape(base)}\.(\d+)\.")
    old_state = hf.state_dict()
    out: dict[str, Tensor] = {}
    for new_key, new_value in new_state.items():
        match = block_key.match(new_key)
        k = int(match.group(1)) if match else 0
        old_key = block_key.sub(f"{base}.{keep.blocks[k]}.", new_key, count=1) if match else new_key
        value = old_state[old_key]
        axes = _axes(new_key, fam)
        if axes is not None and len(axes) == value.dim():
            for dim, axis in enumerate(axes):
                index = _index(axis, value.shape[dim], keep, teacher, k)
                if index is not None:
                    value = value.index_select(dim, index.to(value.device))
        if value.shape != new_value.shape:
            raise PruneError(
                f"cannot slice the teacher's {old_key} {list(value.shape)} to the pruned "
                f"{list(new_value.shape)}; this {type(hf).__name__} layout is not supported"
            )
        out[new_key] = value.detach().clone().contiguous()
    return out


def build_pruned(hf: nn.Module, keep: Keep, target: Shape) -> nn.Module:
    """A plain transformers model of the teacher's class with the pruned config, its weights
    the teacher's sliced to `keep`."""
    config = pruned_config(hf, target, keep.blocks)
    pruned = type(hf)(config)
    state = slice_state(hf, keep, shape_of(hf), pruned.state_dict())
    pruned.load_state_dict(state, strict=True)
    tie = getattr(pruned, "tie_weights", None)
    if callable(tie):
        tie()
    device = next(hf.parameters()).device
    return pruned.to(device).train(hf.training)


def prune(
    model: nn.Module,
    ids: Tensor,
    layers: int = 0,
    hidden: int = 0,
    heads: int = 0,
    intermediate: int = 0,
    calibration_rows: int = DEFAULT_CALIBRATION_ROWS,
) -> tuple[nn.Module, Importance, Keep]:
    """Minitron-prune `model` (a transformers model, or a `TokenModel` around one) to the
    given sizes (0 keeps the teacher's), calibrated on the first `calibration_rows` rows of
    `ids`; (the pruned transformers model, the scores, what was kept)."""
    hf = unwrap(model)
    fam, teacher = family_of(hf), shape_of(hf)
    target = target_shape(teacher, fam, layers, hidden, heads, intermediate)
    if len(ids) == 0:
        raise PruneError("hf_pruned needs calibration rows; the dataset has none")
    scores = importance(hf, ids[: max(1, calibration_rows)])
    keep = choose(scores, teacher, target)
    pruned = build_pruned(hf, keep, target)
    pruned.requires_grad_(True)
    return pruned, scores, keep


def pruned_student(
    kwargs: dict[str, Any], teacher: LoadedModel, data: Any, output: Output
) -> TokenModel:
    """The catalog student `hf_pruned`: the teacher (`teacher.module`, a `TokenModel`) pruned to
    `kwargs` (layers, hidden, heads, intermediate: 0 keeps the teacher's; calibration_rows)
    on the token ids of `data` (a `TokenData`), as a `TokenModel` giving `output`, keeping
    `arch`/`arch_kwargs` (the run's description) and the teacher's `tokenizer` (exported with
    the student)."""
    sizes = {k: int(kwargs.get(k) or 0) for k in ("layers", "hidden", "heads", "intermediate")}
    rows = int(kwargs.get("calibration_rows") or DEFAULT_CALIBRATION_ROWS)
    pruned, _, keep = prune(teacher.module, data.ids, calibration_rows=rows, **sizes)
    pruned.train()
    student: Any = TokenModel(pruned, output)
    student.arch = "hf_pruned"
    student.arch_kwargs = {**sizes, "calibration_rows": rows}
    student.teacher_blocks = keep.blocks  # the teacher block each block was sliced from
    student.tokenizer = teacher.tokenizer
    return student
