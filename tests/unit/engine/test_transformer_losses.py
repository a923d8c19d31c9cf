"""The transformer feature and relation losses (hidden_mse, attention_kl, minilm_relations) and
the "blocks" layer mapping: hand values on small tensors, zero for a student equal to its
teacher, gradients to the student and the projection only, padding and the causal mask, the
uniform mapping, block taps on tiny BERT / GPT-2 / Llama behind `TokenModel`."""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import pytest
import torch
import transformers
from torch import Tensor, nn

from core import pairing
from core.config import DatasetRef, LossSpec, RunConfig
from tests.hf_helpers import TINY_BERT, TINY_GPT2, tiny_members, write_zip
from worker.engine.losses import DistillLoss, LossContext, StepOutputs, build_loss
from worker.engine.taps import FeatureTaps
from worker.engine.tasks.text.models import PAD, TokenModel
from worker.engine.trainer import Callbacks

pytestmark = pytest.mark.usefixtures("one_thread")

ATTENTION_LOSSES = ["attention_kl", "minilm_relations"]
ALL = ["hidden_mse", *ATTENTION_LOSSES]


class ToyAttention(nn.Module):
    """The smallest attention the readers accept: identity query/key/value projections, one
    head per `heads`, causal or not (Q = K = V = the input, so scores are x x^T / sqrt(d))."""

    def __init__(self, heads: int = 1, causal: bool = False) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Identity(), nn.Identity(), nn.Identity()
        self.num_attention_heads, self.is_causal = heads, causal

    def forward(self, x: Tensor) -> Tensor:
        return self.query(x) + self.key(x) + self.value(x)


def _built(name: str, s_mod: nn.Module, t_mod: nn.Module, shapes: Any, **params: Any) -> Any:
    ctx = LossContext(
        2,
        [shapes],
        10,
        pair_paths=[("s.attn", "t.attn")],
        student_modules=[s_mod],
        teacher_modules=[t_mod],
    )
    return build_loss(LossSpec(name=name, params=params), ctx)


def _toy_value(
    name: str, xs: Tensor, xt: Tensor, ids: Tensor | None = None, causal: bool = False, **p: Any
) -> Tensor:
    """The loss on one toy attention pair fed xs (student) and xt (teacher), [N, L, D]."""
    s_mod, t_mod = ToyAttention(causal=causal), ToyAttention(causal=causal)
    loss = _built(name, s_mod, t_mod, (tuple(xs.shape[1:]), tuple(xt.shape[1:])), **p)
    s_out, t_out = s_mod(xs), t_mod(xt)
    logits = torch.zeros(len(xs), 2)
    out = StepOutputs(logits, logits, torch.zeros(len(xs), dtype=torch.long), [s_out], [t_out])
    out.inputs = ids
    return loss(out)


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


# teacher tokens x = (1, 2) in one channel: scores x_i x_j = [[1, 2], [2, 4]]; student x = 0:
# uniform rows
XT, XS = torch.tensor([[[1.0], [2.0]]]), torch.zeros(1, 2, 1)
ROW0, ROW1 = _softmax([1.0, 2.0]), _softmax([2.0, 4.0])


def test_attention_kl_by_hand_and_with_the_causal_mask() -> None:
    want = (_kl(ROW0, [0.5, 0.5]) + _kl(ROW1, [0.5, 0.5])) / 2  # mean over the real queries
    assert _toy_value("attention_kl", XS, XT).item() == pytest.approx(want, rel=1e-5)
    # causal: query 0 sees only key 0 (KL 0); query 1 sees both
    causal = _kl(ROW1, [0.5, 0.5]) / 2
    assert _toy_value("attention_kl", XS, XT, causal=True).item() == pytest.approx(causal, rel=1e-5)


def test_minilm_relations_by_hand_sum_q_k_v() -> None:
    """Q = K = V here, so the three relations are the same KL: 3 times attention_kl's (one
    relation head over the one channel, scale 1/sqrt(1))."""
    want = 3 * (_kl(ROW0, [0.5, 0.5]) + _kl(ROW1, [0.5, 0.5])) / 2
    got = _toy_value("minilm_relations", XS, XT, relation_heads=1)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_hidden_mse_by_hand_over_real_tokens() -> None:
    """Equal widths: the projection starts as the identity; the padded third token does not
    count: mean over 2 tokens x 2 channels."""
    hs = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [50.0, 50.0]]])
    ht = torch.tensor([[[0.0, 2.0], [2.0, 1.0], [-9.0, 7.0]]])
    ids = torch.tensor([[4, 9, PAD]])
    loss = build_loss(LossSpec(name="hidden_mse"), LossContext(2, [((3, 2), (3, 2))]))
    out = StepOutputs(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1), [hs], [ht])
    out.inputs = ids
    assert loss(out).item() == pytest.approx((1 + 0 + 4 + 1) / 4)


@pytest.mark.parametrize("name", ATTENTION_LOSSES)
def test_padding_changes_nothing(name: str) -> None:
    """A padded third token with any features gives the value of the two real tokens."""
    params = {"relation_heads": 1} if name == "minilm_relations" else {}
    plain = _toy_value(name, XS, XT, **params)
    xs = torch.cat([XS, torch.full((1, 1, 1), 7.0)], 1)
    xt = torch.cat([XT, torch.full((1, 1, 1), -3.0)], 1)
    padded = _toy_value(name, xs, xt, torch.tensor([[5, 6, PAD]]), **params)
    assert padded.item() == pytest.approx(plain.item(), rel=1e-6)


def test_attention_kl_averages_heads_when_their_counts_differ() -> None:
    """Teacher 2 heads, student 1: the KL between the head-averaged maps (here the teacher's
    heads are the same, so its average is the one-head map)."""
    s_mod, t_mod = ToyAttention(heads=1), ToyAttention(heads=2)
    loss = _built("attention_kl", s_mod, t_mod, ((2, 1), (2, 2)))
    xt = XT.repeat(1, 1, 2)  # each head's one channel is XT (head dim 1: scale 1)
    s_out, t_out = s_mod(XS), t_mod(xt)
    logits = torch.zeros(1, 2)
    value = loss(StepOutputs(logits, logits, torch.zeros(1), [s_out], [t_out]))
    want = (_kl(ROW0, [0.5, 0.5]) + _kl(ROW1, [0.5, 0.5])) / 2
    assert value.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("name", ["attention_kl", "minilm_relations"])
def test_a_pair_without_attention_is_refused_when_the_loss_is_built(name: str) -> None:
    """Before training starts (the trainer builds the losses first), naming the layer."""
    with pytest.raises(ValueError, match="student layer 's.attn' holds no attention"):
        _built(name, nn.Linear(2, 2), ToyAttention(), ((2,), (2, 2)))
    with pytest.raises(ValueError, match="teacher layer 't.attn' holds no attention"):
        _built(name, ToyAttention(), nn.Sequential(nn.Linear(2, 2)), ((2, 2), (2,)))


def test_relation_heads_must_divide_the_widths() -> None:
    with pytest.raises(ValueError, match="relation_heads 3 does not divide"):
        _toy_value("minilm_relations", torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), relation_heads=3)


# ---- real transformers models behind TokenModel ----------------------------------------------

BERT = {k: v for k, v in TINY_BERT.items() if k not in ("architectures", "model_type")}
GPT2 = {k: v for k, v in TINY_GPT2.items() if k not in ("architectures", "model_type")}
LLAMA = {
    "vocab_size": 120,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
}
MODELS: dict[str, tuple[Any, Any, dict[str, Any], str]] = {
    "bert": (transformers.BertConfig, transformers.BertModel, BERT, "encoder.layer"),
    "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel, GPT2, "transformer.h"),
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, LLAMA, "model.layers"),
}


SMALL = {"vocab_size": 120, "hidden_size": 16, "num_hidden_layers": 2, "intermediate_size": 32}
GQA = {**SMALL, "num_attention_heads": 4, "num_key_value_heads": 2}
OTHERS: dict[str, tuple[Any, Any, dict[str, Any], str]] = {
    "roberta": (
        transformers.RobertaConfig,
        transformers.RobertaModel,
        {**SMALL, "num_attention_heads": 2},
        "encoder.layer",
    ),
    "distilbert": (
        transformers.DistilBertConfig,
        transformers.DistilBertModel,
        {"vocab_size": 120, "dim": 16, "n_layers": 2, "n_heads": 2, "hidden_dim": 32},
        "transformer.layer",
    ),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, GQA, "model.layers"),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, GQA, "model.layers"),
}


def _model(kind: str, seed: int = 0, **changes: Any) -> TokenModel:
    config_cls, model_cls, kwargs, _ = {**MODELS, **OTHERS}[kind]
    torch.manual_seed(seed)
    hf = model_cls(config_cls(**{**kwargs, **changes}))
    output = "logits" if hasattr(hf, "lm_head") or kind == "gpt2" else "mean_pool"
    return TokenModel(hf.eval(), output)


IDS = torch.tensor([[5, 17, 33, 8, 2], [9, 4, 71, PAD, PAD]])


def _run(
    name: str, student: nn.Module, teacher: nn.Module, pairs: list[tuple[str, str]], ids: Tensor
) -> tuple[DistillLoss, Tensor]:
    """Build `name` on the (student, teacher) block pairs as the trainer does (taps, shapes,
    modules), run both models on `ids` (the teacher without gradient) and return the loss and
    its value."""
    s_taps = FeatureTaps(student, [(s, "output") for s, _ in pairs], side="student")
    t_taps = FeatureTaps(teacher, [(t, "output") for _, t in pairs], side="teacher", detach=True)
    with s_taps, t_taps:
        with torch.no_grad():
            t_logits = teacher(ids)
        s_logits = student(ids)
        s_feats, t_feats = s_taps.features, t_taps.features
    ctx = LossContext(
        2,
        [(tuple(s.shape[1:]), tuple(t.shape[1:])) for s, t in zip(s_feats, t_feats, strict=True)],
        10,
        pair_paths=pairs,
        student_modules=s_taps.tapped_modules,
        teacher_modules=t_taps.tapped_modules,
    )
    params = {"relation_heads": 4} if name == "minilm_relations" else {}
    loss = build_loss(LossSpec(name=name, params=params), ctx)
    # the readers hook the attention now: run both models once more, as every later step does
    with s_taps, t_taps:
        with torch.no_grad():
            t_logits = teacher(ids)
        s_logits = student(ids)
        out = StepOutputs(
            s_logits, t_logits, torch.zeros(len(ids)), s_taps.features, t_taps.features
        )
    out.inputs = ids
    return loss, loss(out)


def _block(kind: str, i: int) -> str:
    return f"{({**MODELS, **OTHERS})[kind][3]}.{i}"


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("name", ALL)
def test_zero_when_the_student_is_its_teacher(kind: str, name: str) -> None:
    teacher = _model(kind)
    student = copy.deepcopy(teacher)
    pairs = [(_block(kind, 1), _block(kind, 1)), (_block(kind, 0), _block(kind, 0))]
    _, value = _run(name, student, teacher, pairs, IDS)
    assert value.item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_the_student_and_the_projection_only(kind: str, name: str) -> None:
    """A narrower, one-block student against the teacher's last block: the value is positive
    and its gradient reaches the student's parameters up to the paired block and the loss's
    projections, never the teacher."""
    hidden = "n_embd" if kind == "gpt2" else "hidden_size"
    layers = "n_layer" if kind == "gpt2" else "num_hidden_layers"
    heads = {"n_head": 2} if kind == "gpt2" else {"num_attention_heads": 2}
    if kind == "llama":
        heads["num_key_value_heads"] = 1
    teacher = _model(kind)
    student = _model(kind, seed=1, **{hidden: 8, layers: 1, **heads})
    loss, value = _run(name, student, teacher, [(_block(kind, 0), _block(kind, 1))], IDS)
    assert value.item() > 0
    value.backward()
    block = dict(student.named_modules())[_block(kind, 0)]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    own = list(loss.parameters())
    assert bool(own) == (name == "hidden_mse")
    assert all(p.grad is not None for p in own)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("name", ALL)
def test_padding_changes_nothing_on_real_models(kind: str, name: str) -> None:
    """The second row padded with two more tokens: the value is that of the batch cut to its
    longest row (what `TextTask.batch` feeds)."""
    teacher, student = _model(kind), _model(kind, seed=3)
    pairs = [(_block(kind, 1), _block(kind, 1))]
    padded = torch.cat([IDS, torch.full((2, 2), PAD)], 1)
    _, short = _run(name, student, teacher, pairs, IDS)
    _, long = _run(name, student, teacher, pairs, padded)
    assert long.item() == pytest.approx(short.item(), rel=1e-4)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("name", ["attention_kl", "minilm_relations"])
@pytest.mark.parametrize("student_heads", ["same", "one"])
def test_a_chunk_of_heads_at_a_time_gives_the_same_value_and_gradients(
    kind: str, name: str, student_heads: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long sequences take the maps a chunk of heads at a time, each chunk recomputed in the
    backward pass (`attention.heads_kl`). With `CHUNK_ELEMENTS` 1 every head is its own chunk:
    the value and the student's gradients are those of the whole maps, on a padded batch,
    causal models included, and with a one-head student (head-averaged maps)."""
    from worker.engine.losses import attention

    teacher = _model(kind)
    changes = {}
    if student_heads == "one":
        changes = {"n_head": 1} if kind == "gpt2" else {"num_attention_heads": 1}
        if kind == "llama":
            changes["num_key_value_heads"] = 1
    padded = torch.cat([IDS, torch.full((2, 2), PAD)], 1)
    results = []
    for chunk in (attention.CHUNK_ELEMENTS, 1):
        monkeypatch.setattr(attention, "CHUNK_ELEMENTS", chunk)
        student = _model(kind, seed=3, **changes)
        _, value = _run(name, student, teacher, [(_block(kind, 1), _block(kind, 1))], padded)
        value.backward()
        grads = [p.grad.clone() for p in student.parameters() if p.grad is not None]
        results.append((value.detach(), grads))
    (whole, whole_grads), (chunked, chunked_grads) = results
    assert whole.item() > 0
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)
    assert len(chunked_grads) == len(whole_grads) > 0
    for got, want in zip(chunked_grads, whole_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_the_causal_mask_is_applied_on_causal_models() -> None:
    """The readers take the causal flag from the attention module: GPT-2 and Llama causal,
    BERT not (the hand values above show what the flag masks)."""
    for kind, causal in (("bert", False), ("gpt2", True), ("llama", True)):
        teacher = _model(kind)
        loss, _ = _run(
            "attention_kl", copy.deepcopy(teacher), teacher, [(_block(kind, 0),) * 2], IDS
        )
        assert loss.readers[0][1].causal is causal


# ---- layer mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("teacher", "student", "want"),
    [
        (12, 4, [2, 5, 8, 11]),
        (6, 2, [2, 5]),
        (6, 3, [1, 3, 5]),
        (4, 4, [0, 1, 2, 3]),
        (2, 3, [0, 0, 1]),
    ],
)
def test_uniform_mapping(teacher: int, student: int, want: list[int]) -> None:
    """Student block i pairs with teacher block round((i + 1) * L_t / L_s) - 1, deepest first."""
    t = [f"t.{i}" for i in range(teacher)]
    s = [f"s.{i}" for i in range(student)]
    got = pairing.uniform_block_pairs(t, s)
    assert got == [(f"t.{w}", f"s.{i}") for i, w in reversed(list(enumerate(want)))]


def test_blocks_rule_on_hugging_face_inspections(tmp_path) -> None:
    """inspect_hf's stages are the blocks; the "blocks" rule pairs a 2-block student with a
    4-block teacher by the uniform mapping, block outputs being token maps."""
    from worker.engine.hf_teacher import inspect_hf

    t_zip = write_zip(tmp_path / "t.zip", tiny_members({**TINY_BERT, "num_hidden_layers": 4}))
    s_zip = write_zip(tmp_path / "s.zip", tiny_members(TINY_BERT, seed=1))
    teacher, student = inspect_hf(t_zip), inspect_hf(s_zip)
    assert [s["end"] for s in teacher["stages"]] == [f"encoder.layer.{i}" for i in range(4)]
    stage = teacher["stages"][2]
    assert stage["channels"] == 16 and "encoder.layer.2.attention.self.query" in stage["layers"]
    rows = {r["path"]: r for r in teacher["layers"]}
    assert (
        rows["encoder.layer.2.output.dense"]["stage"] == 2 and rows["embeddings"]["stage"] is None
    )
    rule = pairing.STAGE_RULES["blocks"]
    assert rule.candidates(teacher, student) == [
        ("encoder.layer.3", "encoder.layer.1"),
        ("encoder.layer.1", "encoder.layer.0"),
    ]
    assert rule.ends(student) == ["encoder.layer.0", "encoder.layer.1"]
    assert rule.staged(rows["encoder.layer.3"]["output_shape"])


@pytest.mark.parametrize("kind", MODELS)
def test_taps_on_blocks_give_the_hidden_states(kind: str) -> None:
    """Tapping block i behind TokenModel gives transformers' hidden_states[i + 1]; tapping an
    attention module whose forward returns a tuple gives its output tensor [N, L, H]."""
    model = _model(kind)
    attention = {"bert": "attention.self", "gpt2": "attn", "llama": "self_attn"}[kind]
    taps = [(_block(kind, 0), "output"), (f"{_block(kind, 1)}.{attention}", "output")]
    with FeatureTaps(model, taps) as tapped, torch.no_grad():
        model(IDS)
        block, attn = tapped.features
    mask = (IDS >= 0).long()
    with torch.no_grad():
        states = model.hf(
            input_ids=IDS.clamp_min(0), attention_mask=mask, output_hidden_states=True
        )
    torch.testing.assert_close(block, states.hidden_states[1])
    assert attn.shape == (*IDS.shape, 16)


@pytest.mark.parametrize("kind", [*MODELS, *OTHERS])
def test_the_readers_attention_is_the_models_own(kind: str) -> None:
    """softmax of the reader's scores under the key mask equals the attention probabilities
    transformers returns (eager attention, output_attentions) at the real queries: rotary
    embeddings (Llama, Mistral, Qwen2), grouped keys (2 key heads for 4 query heads), GPT-2's
    fused projection and causal mask, BERT's, RoBERTa's and DistilBERT's padding."""
    from worker.engine.losses.attention import AttentionReader, key_mask

    model = _model(kind)
    model.hf.config._attn_implementation = "eager"
    block = dict(model.named_modules())[_block(kind, 1)]
    reader = AttentionReader(block, "block")
    mask = IDS >= 0
    with torch.no_grad():
        out = model.hf(
            input_ids=IDS.clamp_min(0), attention_mask=mask.long(), output_attentions=True
        )
        scores = reader.scores()
    valid = key_mask(mask, reader.causal)
    mine = scores.masked_fill(~valid, float("-inf")).softmax(-1)
    theirs = out.attentions[1]
    real = mask[:, None, :, None].expand_as(mine)
    torch.testing.assert_close(mine[real], theirs[real], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", [*MODELS, *OTHERS])
def test_the_apis_attention_check_agrees_with_the_reader(kind: str) -> None:
    """`core.pairing.attention_problem`, the API's check on a layer table before a run is
    queued, refuses exactly the layers in which the engine's reader finds no attention."""
    from worker.engine.losses.attention import AttentionReader

    modules = {path: m for path, m in _model(kind).named_modules() if path}
    table = {"layers": [{"path": path} for path in modules]}
    for path, module in modules.items():
        api_ok = pairing.attention_problem(table, path, "teacher") is None
        assert api_ok == (AttentionReader(module, path).problem is None), path
    assert pairing.attention_problem(table, _block(kind, 1), "teacher") is None


# ---- through the trainer ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_a_trainer_run_lowers_each_loss_on_vit_blocks(name: str) -> None:
    """The trainer API with the loss alone, on the zoo's ViT (fused `attn.qkv`, 3 heads): a
    one-block student of width 24 learns the 2-block teacher's (width 48) last block; the
    loss falls over 4 epochs of 30 steps (every token is real: images). Runs with the loss
    alone also take the trainer's cut teacher forward (it stops after the tapped block)."""
    from tests.unit.engine.support import Epochs, small_digits
    from worker.engine.students import build_student
    from worker.engine.trainer import train

    train_data, val = small_digits(240)
    torch.manual_seed(0)
    teacher = build_student("deit_tiny", (1, 8, 8), 10, width=0.25, depth=2).eval()
    with torch.no_grad():  # sharp attention, as a trained model's (a fresh one's is uniform)
        for block in teacher.blocks:
            block.attn.qkv.weight.mul_(8.0)
    params = {"relation_heads": 4} if name == "minilm_relations" else {}
    config = RunConfig.model_validate(
        {
            "teacher": {"path": "unused.pt2"},
            "dataset": {"path": "unused.npz"},
            "student": {"architecture": "deit_tiny", "kwargs": {"width": 0.125, "depth": 1}},
            "layer_pairs": [{"teacher": "blocks.1", "student": "blocks.0"}],
            "losses": [{"name": name, "params": params}],
            "training": {
                "epochs": 4,
                "batch_size": 6,
                "lr": 0.003,
                "optimizer": "adamw",
                "device": "cpu",
            },  # fmt: skip
            "seed": 0,
        }
    )
    rec = Epochs()
    train(config, teacher, train_data, val, callbacks=rec)
    losses = [e["train/loss"] for e in rec.epochs]
    # measured: hidden_mse 0.075 -> 0.0048, attention_kl 0.100 -> 0.013, minilm 0.69 -> 0.068
    assert losses[0] > 1e-3 and losses[-1] < 0.3 * losses[0], losses


class _Reports(Callbacks):
    """Each step report's metrics (the per-term losses `loss/<name>` among them)."""

    def __init__(self) -> None:
        self.reports: list[dict[str, float]] = []

    def on_step(self, report: Any) -> None:
        self.reports.append(dict(report.metrics))


def test_a_causal_lm_run_lowers_every_transformer_term(tmp_path) -> None:
    """causal_lm through the trainer on real text (standard-library docstrings, BPE tokenizer
    trained on them): a 4-block GPT-2 (width 32, 4 heads) with sharp attention (the query and
    key columns of its fused c_attn times 10, as a trained model's; a fresh one attends almost
    uniformly) into a fresh 2-block hf_config student (width 16, 2 heads: attention_kl compares
    head-averaged maps), blocks paired by the uniform mapping, padded rows, causal masks; each
    term falls over 5 epochs (measured hidden_mse 0.028 -> 0.0023, attention_kl at weight 10
    3.19 -> 1.89, minilm_relations 2.68 -> 1.95)."""
    from worker.engine.hf_teacher import load_hf
    from worker.engine.tasks import build_task
    from worker.engine.tasks.text.lm_demo import CORPUS_MODULES, docstring_corpus, train_tokenizer
    from worker.engine.trainer import train

    lines = docstring_corpus(CORPUS_MODULES[:16])
    tokenizer = train_tokenizer(lines, 300)
    config = {**TINY_GPT2, "vocab_size": 300, "n_layer": 4, "n_embd": 32, "n_head": 4}
    members = {**tiny_members(config), "tokenizer.json": tokenizer.to_str().encode()}
    task = build_task("causal_lm", max_length=32)
    teacher = load_hf(write_zip(tmp_path / "t.zip", members))
    teacher = dataclasses.replace(teacher, module=task.adapt_model(teacher.module, teacher))
    with torch.no_grad():
        for block in teacher.module.transformer.h:
            block.attn.c_attn.weight[:, : 2 * 32].mul_(10.0)  # Conv1D [in, q | k | v]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines[:160]) + "\n", encoding="utf-8")
    data = task.fit_to_teacher(teacher, task.load(path, DatasetRef(path=str(path))))
    assert bool((data.ids == PAD).any())  # rows of different lengths: padding to mask
    train_data, val = task.split(data, 0.25, seed=0)
    kwargs = {"layers": 2, "hidden": 16, "heads": 2}
    student = task.build_student("hf_config", kwargs, teacher, train_data)
    blocks = [f"transformer.h.{i}" for i in range(4)]
    pairs = pairing.uniform_block_pairs(blocks, blocks[:2])
    assert pairs == [("transformer.h.3", "transformer.h.1"), ("transformer.h.1", "transformer.h.0")]
    run = RunConfig.model_validate(
        {
            "task": "causal_lm",
            "task_params": {"max_length": 32},
            "teacher": {"path": "unused.zip", "format": "hf"},
            "dataset": {"path": "unused.txt"},
            "student": {"architecture": "hf_config", "kwargs": kwargs},
            "layer_pairs": [{"teacher": t, "student": s} for t, s in pairs],
            "losses": [{"name": n, "weight": 10.0 if n == "attention_kl" else 1.0} for n in ALL],
            "training": {
                "epochs": 5,
                "batch_size": 8,
                "lr": 0.01,
                "optimizer": "adamw",
                "device": "cpu",
                "log_every": 5,
            },  # fmt: skip
            "seed": 0,
        }
    )
    rec = _Reports()
    train(run, teacher.module, train_data, val, student=student, task=task, callbacks=rec)
    first, last = rec.reports[0], rec.reports[-1]
    for name in ALL:
        assert last[f"loss/{name}"] < 0.8 * first[f"loss/{name}"], (name, first, last)


def test_a_text_classification_run_with_hidden_mse_and_attention_kl(tmp_path) -> None:
    """text_classification through the trainer on real sentences (docstrings of two standard
    packages, labelled by package): a 4-block BERT classifier with sharp attention (its query
    and key weights times 10, as a trained model's; a fresh one attends almost uniformly) into
    a 2-block hf_config student of width 8, ce + hidden_mse + attention_kl (weight 10) on the
    uniformly mapped blocks; both transformer terms fall over 3 epochs (measured hidden_mse
    2.19 -> 1.04, weighted attention_kl 2.52 -> 1.84) and the run validates."""
    from tests.text_helpers import labelled_texts, write_jsonl
    from worker.engine.hf_teacher import load_hf
    from worker.engine.tasks import build_task
    from worker.engine.tasks.text.lm_demo import train_tokenizer
    from worker.engine.trainer import train

    rows = labelled_texts(160)
    tokenizer = train_tokenizer([text for text, _ in rows], 300)
    config = {
        **TINY_BERT,
        "vocab_size": tokenizer.get_vocab_size(),
        "num_hidden_layers": 4,
        "architectures": ["BertForSequenceClassification"],
        "id2label": {"0": "email", "1": "asyncio"},
        "label2id": {"email": 0, "asyncio": 1},
    }
    members = {**tiny_members(config), "tokenizer.json": tokenizer.to_str().encode()}
    data_file = write_jsonl(tmp_path / "d.jsonl", [{"text": t, "label": y} for t, y in rows])
    task = build_task("text_classification", max_length=32)
    teacher = load_hf(write_zip(tmp_path / "t.zip", members))
    teacher = dataclasses.replace(teacher, module=task.adapt_model(teacher.module, teacher))
    with torch.no_grad():
        for layer in teacher.module.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(10.0)
            layer.attention.self.key.weight.mul_(10.0)
    data = task.fit_to_teacher(teacher, task.load(data_file, DatasetRef(path=str(data_file))))
    train_data, val = task.split(data, 0.25, seed=0)
    kwargs = {"layers": 2, "hidden": 8, "heads": 2}
    student = task.build_student("hf_config", kwargs, teacher, train_data)
    blocks = [f"bert.encoder.layer.{i}" for i in range(4)]
    pairs = pairing.uniform_block_pairs(blocks, blocks[:2])
    run = RunConfig.model_validate(
        {
            "task": "text_classification",
            "task_params": {"max_length": 32},
            "teacher": {"path": "unused.zip", "format": "hf"},
            "dataset": {"path": "unused.jsonl"},
            "student": {"architecture": "hf_config", "kwargs": kwargs},
            "layer_pairs": [{"teacher": t, "student": s} for t, s in pairs],
            "losses": [
                {"name": "ce"},
                {"name": "hidden_mse"},
                {"name": "attention_kl", "weight": 10.0},
            ],
            "training": {
                "epochs": 3,
                "batch_size": 8,
                "lr": 0.01,
                "optimizer": "adamw",
                "device": "cpu",
                "log_every": 5,
            },  # fmt: skip
            "seed": 0,
        }
    )
    rec = _Reports()
    result = train(run, teacher.module, train_data, val, student=student, task=task, callbacks=rec)
    first, last = rec.reports[0], rec.reports[-1]
    for name in ("hidden_mse", "attention_kl"):
        assert last[f"loss/{name}"] < 0.8 * first[f"loss/{name}"], (name, first, last)
    assert {"val/accuracy", "val/agreement"} <= set(result.history[-1])


def test_the_tinybert_example_pairs_blocks_by_the_uniform_mapping() -> None:
    """examples/lm_tinybert_run.yaml is a valid run config whose layer pairs are the uniform
    mapping of the demo's 4 teacher blocks onto the student's 2, with losses causal_lm offers."""
    from pathlib import Path

    import yaml

    from core.catalog.tasks import task_losses

    example = Path(__file__).resolve().parents[3] / "examples" / "lm_tinybert_run.yaml"
    run = RunConfig.model_validate(yaml.safe_load(example.read_text()))
    blocks = [f"transformer.h.{i}" for i in range(4)]
    want = pairing.uniform_block_pairs(blocks, blocks[:2])[::-1]
    assert [(p.teacher, p.student) for p in run.layer_pairs] == want
    assert {loss.name for loss in run.losses} <= set(task_losses("causal_lm"))
    assert set(ALL) <= {loss.name for loss in run.losses}


def test_the_readers_hooks_go_with_the_loss() -> None:
    """The hooks on the paired attention's projections are removed once the loss is gone, so a
    trained student leaves the run without them (exports, later runs)."""
    import gc

    teacher = _model("bert")
    student = copy.deepcopy(teacher)
    loss, _ = _run("attention_kl", student, teacher, [(_block("bert", 1),) * 2], IDS)
    query = dict(student.named_modules())[f"{_block('bert', 1)}.attention.self.query"]
    assert len(query._forward_hooks) == 1
    del loss
    gc.collect()
    assert len(query._forward_hooks) == 0
