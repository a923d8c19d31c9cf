"""Text tasks (issue 12): text students built from a Hugging Face teacher (blocks copied exactly,
narrower fresh configs), tokenisation and batching, refusals, and the tasks' metrics on
hand-made cases. Tiny transformers models built here; no mocks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from tests.hf_helpers import TINY_BERT, TINY_GPT2, tiny_members, write_zip
from worker.engine.hf_teacher import load_hf
from worker.engine.loading import LoadedModel
from worker.engine.tasks.text.models import PAD, Output, TokenModel, unwrap
from worker.engine.tasks.text.students import (
    TextStudentError,
    build_text_student,
    picked_blocks,
)

WORDS = [f"w{i}" for i in range(100)]


def word_tokenizer(words: list[str] = WORDS, extra: str = "") -> Tokenizer:
    """A word-level tokenizer: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, then `words`."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for w in [*words, *([extra] if extra else [])]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def checkpoint(
    tmp: Path, config: dict[str, Any], name: str = "t.zip", seed: int = 0, tok: Any = None
) -> Path:
    members = tiny_members(config, seed)
    members["tokenizer.json"] = (tok or word_tokenizer()).to_str().encode()
    return write_zip(tmp / name, members)


def loaded(tmp: Path, config: dict[str, Any], output: Output = "mean_pool") -> LoadedModel:
    """A checkpoint of `config` loaded as a teacher, behind `TokenModel`."""
    teacher = load_hf(checkpoint(tmp, config))
    return replace(teacher, module=TokenModel(teacher.module, output))


BERT4 = {**TINY_BERT, "num_hidden_layers": 4}
GPT4 = {**TINY_GPT2, "n_layer": 4}
BERT_CLS = {
    **BERT4,
    "architectures": ["BertForSequenceClassification"],
    "id2label": {"0": "neg", "1": "pos"},
    "label2id": {"neg": 0, "pos": 1},
}


# --------------------------------------------------------------------------------------------
# students
# --------------------------------------------------------------------------------------------


def test_picked_blocks_are_evenly_spaced_with_first_and_last() -> None:
    assert picked_blocks(12, 6) == [0, 2, 4, 7, 9, 11]
    assert picked_blocks(6, 2) == [0, 5]
    assert picked_blocks(4, 1) == [0]
    assert picked_blocks(4, 4) == [0, 1, 2, 3]
    with pytest.raises(TextStudentError, match="between 1 and the teacher's 4"):
        picked_blocks(4, 5)


@pytest.mark.parametrize(
    ("config", "blocks", "output"),
    [(BERT4, "encoder.layer", "mean_pool"), (GPT4, "transformer.h", "logits")],
)
def test_hf_layers_copies_the_picked_blocks_exactly(
    tmp_path: Path, config: dict[str, Any], blocks: str, output: Output
) -> None:
    teacher = loaded(tmp_path, config, output)
    student = build_text_student("hf_layers", {"layers": 2}, teacher, output)
    assert isinstance(student, TokenModel) and student.teacher_blocks == [0, 3]
    assert student.arch == "hf_layers" and student.arch_kwargs == {"layers": 2}
    hf = unwrap(student)
    assert hf.config.num_hidden_layers == 2 and type(hf) is type(unwrap(teacher.module))
    t_state, s_state = teacher.module.state_dict(), student.state_dict()
    for key, value in s_state.items():
        source = key
        for i, j in enumerate([0, 3]):
            if key.startswith(f"{blocks}.{i}."):
                source = f"{blocks}.{j}." + key[len(f"{blocks}.{i}.") :]
        assert torch.equal(value, t_state[source]), key
    assert all(p.requires_grad for p in student.parameters())
    ids = torch.tensor([[5, 6, 7, PAD], [8, 9, PAD, PAD]])
    assert student(ids).shape == teacher.module(ids).shape


def test_hf_layers_at_the_teachers_depth_is_the_teacher(tmp_path: Path) -> None:
    teacher = loaded(tmp_path, BERT_CLS, "logits")
    student = build_text_student("hf_layers", {"layers": 4}, teacher, "logits").eval()
    ids = torch.tensor([[5, 6, 7, PAD], [8, 9, 10, 11]])
    with torch.no_grad():
        assert torch.allclose(student(ids), teacher.module(ids), atol=1e-6)
    default = build_text_student("hf_layers", {}, teacher, "logits")
    assert unwrap(default).config.num_hidden_layers == 2  # half the teacher's


@pytest.mark.parametrize(("config", "width"), [(BERT4, 8), (GPT4, 120)])
def test_hf_config_is_a_fresh_narrower_model_of_the_teachers_type(
    tmp_path: Path, config: dict[str, Any], width: int
) -> None:
    output: Output = "mean_pool" if width == 8 else "logits"
    teacher = loaded(tmp_path, config, output)
    student = build_text_student("hf_config", {}, teacher, output)
    t, s = unwrap(teacher.module).config, unwrap(student).config
    assert (s.num_hidden_layers, s.hidden_size, s.num_attention_heads) == (2, 8, 1)
    assert s.vocab_size == t.vocab_size and s.model_type == t.model_type
    assert student(torch.tensor([[5, 6, PAD]])).shape[-1] == width
    sizes = {"layers": 1, "hidden": 12, "heads": 3, "intermediate": 20}
    wide = build_text_student("hf_config", sizes, teacher, output)
    assert unwrap(wide).config.num_hidden_layers == 1
    with pytest.raises(TextStudentError, match="not divisible by heads"):
        build_text_student("hf_config", {"hidden": 10, "heads": 3}, teacher, output)
