"""What the transformer losses share: the real tokens of a batch, the queries, keys and values an
attention module computed in the last forward, and a KL between masked token distributions.

Real tokens (`token_mask`): a text task's batch is token ids [N, L] padded with -1
(`tasks.text.models.PAD`); the losses read it from `StepOutputs.inputs`. Any other input (images,
a ViT's patches) means every position is real.

Reading Q, K, V (`AttentionReader`): a layer pair names a transformer block or its attention
module; the reader finds inside it the first module with query/key/value projections: children
`query`/`key`/`value` (BERT, RoBERTa), `q_lin`/`k_lin`/`v_lin` (DistilBERT),
`q_proj`/`k_proj`/`v_proj` (Llama, Mistral, Qwen2), or one fused projection `c_attn` (GPT-2) /
`qkv` (the zoo's ViT) whose output splits in three equal parts (`core.pairing.attention_children`,
which the API also uses to refuse a pair without attention before a run is queued). Forward
hooks on the projections keep their outputs of the latest forward, and a pre-hook on the
attention module keeps the rotary `position_embeddings` (cos, sin) the Llama family passes it,
so queries and keys are rotated as the model rotates them. Heads: the module's `head_dim` / `attention_head_size`, else its width
over `num_attention_heads` / `num_heads` / `n_heads` / `n_head` / `heads`; grouped-query keys and
values (fewer heads) repeat to the query heads as the model does. Causal: the module's
`is_causal` (GPT-2 and the Llama family True, BERT False). The hooks hold the reader weakly and
are removed once the reader (its loss) is gone.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from core.pairing import attention_children

HEAD_COUNTS = ("num_attention_heads", "num_heads", "n_heads", "n_head", "heads")
HEAD_DIMS = ("head_dim", "attention_head_size")


def token_mask(inputs: Tensor | None, n: int, length: int, device: torch.device) -> Tensor:
    """[n, length] bool, True at real tokens: ids >= 0 for integer ids [n, length], else all."""
    if inputs is not None and not inputs.is_floating_point() and tuple(inputs.shape) == (n, length):
        return inputs >= 0
    return torch.ones(n, length, dtype=torch.bool, device=device)


def key_mask(real: Tensor, causal: bool) -> Tensor:
    """[N, 1, L, L] bool: which keys j a query i may attend to (real, and j <= i when causal)."""
    valid = real[:, None, None, :]
    if causal:
        length = real.shape[1]
        order = torch.ones(length, length, dtype=torch.bool, device=real.device).tril()
        valid = valid & order
    return valid


def masked_kl(t_scores: Tensor, s_scores: Tensor, valid: Tensor, real: Tensor) -> Tensor:
    """Mean over (sample, head, real query) of KL(softmax(t) || softmax(s)) over the valid keys.

    Scores [N, H, L, L] (query i, key j); `valid` [N, 1|H, L, L] the keys each query sees; `real`
    [N, L] the real queries.
    """
    weights = real[:, None, :].float()
    total = _kl_sum(t_scores, s_scores, valid, weights)
    return total / (weights.sum() * s_scores.shape[1]).clamp_min(1.0)


def _kl_sum(t_scores: Tensor, s_scores: Tensor, valid: Tensor, weights: Tensor) -> Tensor:
    """The sum over (sample, head, real query) of the KLs `masked_kl` averages."""
    low = torch.finfo(torch.float32).min
    t_log = t_scores.float().masked_fill(~valid, low).log_softmax(-1)
    s_log = s_scores.float().masked_fill(~valid, low).log_softmax(-1)
    terms = torch.where(valid, t_log.exp() * (t_log - s_log), torch.zeros_like(t_log))
    return (terms.sum(-1) * weights).sum()


# Score entries ([N, h, L, L]) one chunk of heads may hold: 2^23 float32 values, 32 MB.
CHUNK_ELEMENTS = 1 << 23
Heads = tuple[Tensor, Tensor, float]  # per-head queries and keys [N, H, L, d], and the scale


def scores_of(heads: Heads) -> Tensor:
    """Attention logits q k^T * scale, [N, H, L, L], in float32."""
    q, k, scale = heads
    return (q.float() @ k.float().transpose(-1, -2)) * scale


def _chunks(n: int, length: int) -> int:
    """Heads per chunk: as many as keep a chunk's scores within `CHUNK_ELEMENTS`."""
    return max(1, CHUNK_ELEMENTS // max(1, n * length * length))


def heads_kl(t: Heads, s: Heads, valid: Tensor, real: Tensor) -> Tensor:
    """`masked_kl` of the two sides' attention (or relation) maps, given their per-head queries
    and keys, with as many heads on each side.

    Long sequences make the maps large (N * H * L^2 values; at N 16, 12 heads and 2,048 tokens,
    3.2 GB a map in float32, and the KL holds several). So when they exceed `CHUNK_ELEMENTS`
    the heads are taken a chunk at a time, each chunk recomputed in the backward pass
    (activation checkpointing): memory holds one chunk's maps. Values and gradients are the
    unchunked ones (up to the order of float additions)."""
    n, h, length, _ = s[0].shape
    step = _chunks(n, length)
    weights = real[:, None, :].float()
    total = torch.zeros((), device=s[0].device)
    for i in range(0, h, step):
        heads = slice(i, i + step)
        args = (t[0][:, heads], t[1][:, heads], s[0][:, heads], s[1][:, heads], t[2], s[2])
        total = total + _run(step < h, _chunk_kl, *args, valid, weights)
    return total / (weights.sum() * h).clamp_min(1.0)


def _chunk_kl(
    tq: Tensor, tk: Tensor, sq: Tensor, sk: Tensor, t_scale: float, s_scale: float,
    valid: Tensor, weights: Tensor,
) -> Tensor:  # fmt: skip
    return _kl_sum(scores_of((tq, tk, t_scale)), scores_of((sq, sk, s_scale)), valid, weights)


def mean_map_log(heads: Heads, valid: Tensor) -> Tensor:
    """log of the head-averaged attention distribution, [N, 1, L, L] (for sides with different
    head counts), the heads summed a chunk at a time as in `heads_kl`."""
    q, k, scale = heads
    n, h, length, _ = q.shape
    step = _chunks(n, length)
    total = torch.zeros(n, 1, length, length, device=q.device)
    for i in range(0, h, step):
        total = total + _run(
            step < h, _chunk_probs, q[:, i : i + step], k[:, i : i + step], scale, valid
        )
    return (total / h).clamp_min(1e-30).log()


def _chunk_probs(q: Tensor, k: Tensor, scale: float, valid: Tensor) -> Tensor:
    low = torch.finfo(torch.float32).min
    return scores_of((q, k, scale)).masked_fill(~valid, low).softmax(-1).sum(1, keepdim=True)


def _run(chunked: bool, fn: Any, *args: Any) -> Tensor:
    """fn(*args); recomputed in the backward pass when the heads come in several chunks."""
    return checkpoint(fn, *args, use_reentrant=False) if chunked else fn(*args)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary position embedding (Su et al. RoFormer 2021) as transformers applies it:
    x cos + rotate_half(x) sin, with x [N, H, L, d] and cos, sin [N, L, d]."""
    half = x.shape[-1] // 2
    turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.unsqueeze(1) + turned * sin.unsqueeze(1)


def _find(module: nn.Module) -> tuple[nn.Module, dict[str, nn.Module]] | None:
    """The first module (itself included) with q/k/v projections, and them by role."""
    for sub in module.modules():
        children = dict(sub.named_children())
        roles = attention_children(list(children))
        if roles is not None:
            return sub, {role: children[name] for role, name in roles.items()}
    return None


def _int_attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    """The first of `names` the module, else its transformers `config`, holds as a positive int
    (Llama's attention keeps its head count only in the config)."""
    for owner in (module, getattr(module, "config", None)):
        for name in names:
            value = getattr(owner, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


class AttentionReader:
    """The Q, K, V of the attention inside `module` in its latest forward (module docstring)."""

    def __init__(self, module: nn.Module | None, where: str) -> None:
        self.where = where  # "student layer 'encoder.layer.1'", for messages
        self.captured: dict[str, Any] = {}
        found = _find(module) if module is not None else None
        self.problem = None if found else f"{where} holds no attention with q/k/v projections"
        self.attention: nn.Module | None = found[0] if found else None
        self.causal = bool(getattr(self.attention, "is_causal", False))
        self.scaling = getattr(self.attention, "scaling", None)
        handles = []
        if found:
            ref = weakref.ref(self)
            for role, proj in found[1].items():
                handles.append(proj.register_forward_hook(_keep(ref, role)))
            handles.append(found[0].register_forward_pre_hook(_keep_rotary(ref), with_kwargs=True))
        weakref.finalize(self, _remove, handles)

    def check(self) -> None:
        """ValueError naming the layer when it holds no attention."""
        if self.problem:
            raise ValueError(
                f"{self.problem}; pair a transformer block (e.g. encoder.layer.3, "
                "model.layers.3) or its attention module"
            )

    def projections(self) -> tuple[Tensor, Tensor, Tensor]:
        """The projections' outputs [N, L, D_q], [N, L, D_k], [N, L, D_v] of the last forward."""
        self.check()
        if "qkv" in self.captured:
            q, k, v = self.captured["qkv"].chunk(3, dim=-1)
        elif all(r in self.captured for r in "qkv"):
            q, k, v = (self.captured[r] for r in "qkv")
        else:
            raise RuntimeError(f"the attention in {self.where} did not run in the last forward")
        return q, k, v

    def head_dim(self, width: int) -> int:
        """Channels per head: the module's own figure, else the width over its head count."""
        assert self.attention is not None
        dim = _int_attr(self.attention, HEAD_DIMS)
        heads = _int_attr(self.attention, HEAD_COUNTS)
        dim = dim or (width // heads if heads else None)
        if not dim or width % dim:
            raise ValueError(
                f"cannot tell the heads of the attention in {self.where} (width {width}); it "
                f"names neither {HEAD_DIMS} nor {HEAD_COUNTS}"
            )
        return dim

    def scores(self) -> Tensor:
        """Attention logits Q K^T * scale per query head, [N, H, L, L] (scale: the module's
        `scaling`, else 1/sqrt(head dim)); keys rotated and repeated as the model does."""
        return scores_of(self.heads())

    def heads(self) -> Heads:
        """Per-head queries and keys [N, H, L, d] of the last forward, keys rotated and repeated
        as the model does, and the scale of their products (`scores`)."""
        q, k, _ = self.projections()
        d = self.head_dim(q.shape[-1])
        qh, kh = _heads(q, d), _heads(k, d)
        rotary = self.captured.get("rotary")
        if rotary is not None:
            if rotary[0].shape[-1] != d:
                raise ValueError(
                    f"the attention in {self.where} rotates {rotary[0].shape[-1]} of its {d} "
                    "channels per head (partial rotary embeddings), which attention_kl does "
                    "not reproduce; use hidden_mse or minilm_relations on this model"
                )
            qh, kh = rotate(qh, *rotary), rotate(kh, *rotary)
        if kh.shape[1] != qh.shape[1]:  # grouped-query attention
            kh = kh.repeat_interleave(qh.shape[1] // kh.shape[1], dim=1)
        scale = self.scaling if isinstance(self.scaling, float) else 1.0 / math.sqrt(d)
        return qh, kh, scale

    def clear(self) -> None:
        """Forget the last forward's tensors (they hold its graph)."""
        self.captured.clear()


def _heads(x: Tensor, dim: int) -> Tensor:
    """[N, L, H * dim] -> [N, H, L, dim]."""
    n, length, width = x.shape
    return x.reshape(n, length, width // dim, dim).transpose(1, 2)


def _keep(ref: weakref.ref[AttentionReader], role: str) -> Any:
    def hook(_mod: nn.Module, _args: Any, output: Any) -> None:
        reader = ref()
        if reader is not None and isinstance(output, Tensor):
            reader.captured[role] = output

    return hook


def _keep_rotary(ref: weakref.ref[AttentionReader]) -> Any:
    def hook(_mod: nn.Module, _args: Any, kwargs: dict[str, Any]) -> None:
        reader = ref()
        rotary = kwargs.get("position_embeddings")
        if reader is not None:
            reader.captured["rotary"] = tuple(rotary) if isinstance(rotary, tuple) else None

    return hook


def _remove(handles: list[Any]) -> None:
    for handle in handles:
        handle.remove()
