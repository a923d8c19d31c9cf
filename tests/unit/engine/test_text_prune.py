"""Minitron pruning (worker/engine/tasks/text/prune.py) on tiny transformers models built here:
the importance scores find zeroed heads, channels and identity blocks, the pruned model has
the sizes asked for and a config transformers reloads, nothing pruned gives the teacher's
outputs, and the sizes a model cannot take are refused saying why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from torch import nn

from tests.hf_helpers import TINY_BERT, TINY_GPT2
from worker.engine.tasks.text.models import PAD
from worker.engine.tasks.text.prune import PruneError, family_of, importance, prune, shape_of

TINY_LLAMA: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 120,
    "hidden_size": 16,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
}
GPT2 = {**TINY_GPT2, "n_layer": 3, "n_head": 4}
BERT = {**TINY_BERT, "architectures": ["BertForSequenceClassification"], "num_hidden_layers": 3,
        "num_attention_heads": 4}  # fmt: skip
OTHERS = {
    "qwen2": {**TINY_LLAMA, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"},
    "mistral": {**TINY_LLAMA, "architectures": ["MistralForCausalLM"], "model_type": "mistral"},
    "roberta": {**BERT, "architectures": ["RobertaForMaskedLM"], "model_type": "roberta",
                "max_position_embeddings": 40},
    "distilbert": {"architectures": ["DistilBertForSequenceClassification"],
                   "model_type": "distilbert", "vocab_size": 120, "dim": 16, "n_layers": 3,
                   "n_heads": 4, "hidden_dim": 32, "max_position_embeddings": 32},
}  # fmt: skip


def build(config: dict[str, Any], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    hf_config = transformers.AutoConfig.for_model(config["model_type"], **kwargs)
    hf_config._attn_implementation = "eager"
    model = getattr(transformers, config["architectures"][0])(hf_config)
    return model.eval()  # type: ignore[no-any-return]


def token_ids(rows: int = 12, length: int = 10, seed: int = 1) -> torch.Tensor:
    ids = torch.randint(3, 110, (rows, length), generator=torch.Generator().manual_seed(seed))
    ids[0, 6:] = PAD  # a padded row: its padding must not count
    return ids


def outputs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    mask = ids != PAD
    with torch.no_grad():
        return model(input_ids=ids.clamp_min(0), attention_mask=mask.long()).logits  # type: ignore[no-any-return]


def value_rows(model: nn.Module, block: int, head: int) -> None:
    """Zero head `head`'s value projection in `block` (its output is then zero)."""
    cfg = model.config
    with torch.no_grad():
        if cfg.model_type == "gpt2":
            attn = model.transformer.h[block].attn
            d = cfg.n_embd // cfg.n_head
            cols = slice(2 * cfg.n_embd + head * d, 2 * cfg.n_embd + (head + 1) * d)
            attn.c_attn.weight[:, cols] = 0
            attn.c_attn.bias[cols] = 0
        elif cfg.model_type == "llama":
            d = cfg.hidden_size // cfg.num_attention_heads
            kv = head // (cfg.num_attention_heads // cfg.num_key_value_heads)  # its group's
            model.model.layers[block].self_attn.v_proj.weight[kv * d : (kv + 1) * d] = 0
        else:
            value = model.bert.encoder.layer[block].attention.self.value
            d = cfg.hidden_size // cfg.num_attention_heads
            value.weight[head * d : (head + 1) * d] = 0
            value.bias[head * d : (head + 1) * d] = 0


@pytest.mark.parametrize("config", [GPT2, TINY_LLAMA, BERT], ids=["gpt2", "llama", "bert"])
def test_a_zeroed_head_ranks_last(config: dict[str, Any]) -> None:
    model = build(config)
    value_rows(model, 1, 2)  # llama: key/value head 1 of 2, shared by query heads 2 and 3
    scores = importance(model, token_ids())
    assert scores.heads.shape == (3, 4)
    assert float(scores.heads[1, 2]) == 0.0 and int((scores.heads[1] > 0).sum()) >= 2
    assert float(scores.heads[0].min()) > 0  # other blocks untouched
    pruned, _, keep = prune(model, token_ids(), heads=2)
    if config is TINY_LLAMA:  # grouped-query attention: the zeroed group goes as a whole
        assert [int(i) for i in keep.kv_heads[1]] == [0]
        assert [int(i) for i in keep.heads[1]] == [0, 1]
        assert pruned.config.num_key_value_heads == 1
    else:
        assert 2 not in [int(i) for i in keep.heads[1]]
    assert shape_of(pruned).heads == 2


def test_a_zeroed_mlp_channel_and_an_identity_block_rank_last() -> None:
    model = build(GPT2)
    block = model.transformer.h
    with torch.no_grad():
        block[0].mlp.c_fc.weight[:, 5] = 0
        block[0].mlp.c_fc.bias[5] = 0
        for name in ("attn.c_proj", "mlp.c_proj"):  # block 1 adds nothing: its output is its input
            block[1].get_submodule(name).weight.zero_()
            block[1].get_submodule(name).bias.zero_()
    scores = importance(model, token_ids())
    assert int(scores.mlp[0].argmin()) == 5 and float(scores.mlp[0, 5]) == 0.0
    assert int(scores.blocks.argmin()) == 1 and float(scores.blocks[1]) < 1e-6
    pruned, _, keep = prune(model, token_ids(), layers=2, intermediate=40)
    assert keep.blocks == [0, 2]
    assert 5 not in [int(i) for i in keep.inter[0]]
    assert pruned.config.n_layer == 2 and pruned.config.n_inner == 40


@pytest.mark.parametrize(
    "config",
    [GPT2, TINY_LLAMA, BERT, *OTHERS.values()],
    ids=["gpt2", "llama", "bert", *OTHERS],
)
def test_nothing_pruned_gives_the_teachers_outputs(config: dict[str, Any]) -> None:
    model = build(config)
    ids = token_ids()
    same, _, _ = prune(model, ids, calibration_rows=5)
    assert type(same) is type(model)
    assert torch.equal(outputs(same.eval(), ids), outputs(model, ids))
    assert all(p.requires_grad for p in same.parameters())


@pytest.mark.parametrize(
    ("config", "sizes", "want"),
    [
        (GPT2, {"layers": 2, "heads": 2, "intermediate": 24}, (2, 8, 2, 2, 24)),
        (TINY_LLAMA, {"layers": 1, "hidden": 12, "heads": 2, "intermediate": 8}, (1, 12, 2, 1, 8)),
        (BERT, {"layers": 2, "hidden": 12, "intermediate": 16}, (2, 12, 3, 3, 16)),
        (OTHERS["distilbert"], {"heads": 1}, (3, 4, 1, 1, 32)),
    ],
    ids=["gpt2", "llama", "bert", "distilbert"],
)
def test_pruned_sizes_and_config_reload(
    tmp_path: Path, config: dict[str, Any], sizes: dict[str, int], want: tuple[int, ...]
) -> None:
    model = build(config)
    ids = token_ids()
    pruned, _, _ = prune(model, ids, **sizes)
    shape = shape_of(pruned)
    assert (shape.layers, shape.hidden, shape.heads, shape.kv_heads, shape.intermediate) == want
    assert shape.head_dim == shape_of(model).head_dim
    assert outputs(pruned.eval(), ids).shape[:-1] == outputs(model, ids).shape[:-1]
    pruned.save_pretrained(tmp_path, safe_serialization=True)
    loaded = type(pruned).from_pretrained(tmp_path).eval()
    assert torch.allclose(outputs(loaded, ids), outputs(pruned, ids), atol=1e-6)


def test_sizes_a_model_cannot_take_are_refused() -> None:
    ids = token_ids()
    with pytest.raises(PruneError, match="multiple of 2"):
        prune(build(TINY_LLAMA), ids, heads=3)
    with pytest.raises(PruneError, match="hidden = heads x 4"):
        prune(build(BERT), ids, hidden=12, heads=2)
    with pytest.raises(PruneError, match="between 1 and the teacher's 3"):
        prune(build(GPT2), ids, layers=5)
    electra = transformers.ElectraModel(
        transformers.ElectraConfig(
            vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=8, embedding_size=8,
        )
    )  # fmt: skip
    with pytest.raises(PruneError, match="cannot prune a electra model; it prunes bert"):
        prune(electra, ids)


def test_block_importance_drops_a_block_no_worse_than_a_typical_choice() -> None:
    """On the trained demo GPT-2 (4 blocks, `tests.lm_helpers`), the 3 blocks Minitron keeps
    lose less next-token loss on held-out lines than the median of all four 3-block choices
    (measured: kept 4.791 nats, the choices 4.792 / 4.792 / 5.55 / 5.55; teacher 4.786). Width
    is not asserted: on this tiny model the activation ranking of heads and hidden channels
    measured no better than random picks (heads 2 of 4: 5.43 vs 5.26-5.42)."""
    from itertools import combinations

    from tests.lm_helpers import lm_demo_files
    from worker.engine.hf_teacher import load_hf
    from worker.engine.tasks.text.prune import Keep, build_pruned, target_shape

    demo = lm_demo_files()
    teacher = load_hf(demo.teacher)
    rows = [teacher.tokenizer.encode(line).ids[:48] for line in demo.lines(160)]
    ids = torch.full((len(rows), max(map(len, rows))), PAD)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    calibration, held = ids[:80], ids[80:]

    def loss(model: nn.Module) -> float:
        logits = outputs(model.eval(), held)[:, :-1]
        targets = held[:, 1:].masked_fill(held[:, 1:] == PAD, -100)
        return float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets))

    hf = teacher.module
    pruned, _, _ = prune(hf, calibration, layers=3)
    shape = shape_of(hf)
    every = torch.arange(shape.hidden)
    heads = [torch.arange(shape.heads)] * 3
    inter = [torch.arange(shape.intermediate)] * 3
    target = target_shape(shape, family_of(hf), layers=3)
    choices = sorted(
        loss(build_pruned(hf, Keep(list(kept), every, heads, heads, inter), target))
        for kept in combinations(range(shape.layers), 3)
    )
    assert loss(pruned) <= (choices[1] + choices[2]) / 2
