"""The causal-LM task (`worker.engine.tasks.text.lm`): next-token targets (shifted, padding and
instruction prompts masked), perplexity and agreement on hand-computed cases, ce on per-token
logits, validation and evaluation on a real (tiny, random) GPT-2 checkpoint with a BPE tokenizer
trained here, and the refusals: a teacher that is not a causal LM, a max length past the
teacher's positions, data without a token to predict."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from core.config import DatasetRef
from tests.hf_helpers import TINY_BERT, TINY_GPT2, tiny_members, write_zip
from worker.engine.datasets import DatasetError
from worker.engine.loading import load_model
from worker.engine.losses import LossContext, StepOutputs
from worker.engine.losses.ce import CrossEntropy
from worker.engine.tasks import IncompatibleDataError, build_task
from worker.engine.tasks.text.base import TokenData
from worker.engine.tasks.text.data import IGNORE_INDEX
from worker.engine.tasks.text.lm import (
    CausalLMTask,
    agreement_count,
    next_token_targets,
    perplexity,
    token_nll,
)
from worker.engine.tasks.text.lm_demo import EOS, train_tokenizer
from worker.engine.tasks.text.models import PAD

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 300
LINES = [
    "Return a new list containing all items from the iterable in ascending order.",
    "The optional key argument specifies a function of one argument.",
    "Raise a ValueError when the value is not present in the sequence.",
    "Open the file and return a stream; the mode defaults to reading text.",
    "Split the string at the first occurrence of the separator.",
    "A context manager that changes the working directory for its block.",
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny GPT-2 (random weights) and a tiny BERT, each with a BPE tokenizer of VOCAB."""
    root = tmp_path_factory.mktemp("lm")
    tok = train_tokenizer(LINES * 4, VOCAB)
    tokenizer = {"tokenizer.json": tok.to_str().encode()}
    gpt2 = {**TINY_GPT2, "vocab_size": VOCAB}
    bert = {**TINY_BERT, "vocab_size": VOCAB}
    return {
        "gpt2": write_zip(root / "gpt2.zip", {**tiny_members(gpt2), **tokenizer}),
        "bert": write_zip(root / "bert.zip", {**tiny_members(bert), **tokenizer}),
    }


def _teacher(checkpoints: dict[str, Path], name: str = "gpt2") -> tuple[CausalLMTask, Any]:
    task = build_task("causal_lm", max_length=24)
    assert isinstance(task, CausalLMTask)
    loaded = load_model(checkpoints[name], "hf")
    return task, replace(loaded, module=task.adapt_model(loaded.module, loaded))


def _data(task: CausalLMTask, path: Path) -> Any:
    return task.load(path, DatasetRef(path=str(path)))


def _txt(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _instructions(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": line[:20], "completion": line[20:]} for line in LINES]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# targets


def test_next_token_targets_shift_left_and_end_unmasked_nowhere() -> None:
    labels = torch.tensor([[5, 6, 7, 8], [-100, -100, 3, 4], [9, 2, -100, -100]])
    assert next_token_targets(labels).tolist() == [
        [6, 7, 8, -100],
        [-100, 3, 4, -100],
        [2, -100, -100, -100],
    ]


def test_plain_text_targets_are_the_next_token_and_padding_is_masked(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    task, teacher = _teacher(checkpoints)
    data = task.fit_to_teacher(teacher, _data(task, _txt(tmp_path, LINES[:3])))
    assert isinstance(data, TokenData) and data.text.kind == "lm"
    for ids, targets in zip(data.ids, data.labels, strict=True):
        n = int((ids != PAD).sum())
        assert targets[: n - 1].tolist() == ids[1:n].tolist()  # position t predicts token t+1
        assert (targets[n - 1 :] == IGNORE_INDEX).all()  # the last token and the padding
    assert task.output_size(data) == VOCAB


def test_instruction_data_counts_the_completion_only(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    task, teacher = _teacher(checkpoints)
    path = _instructions(tmp_path)
    assert task.kind_of(path) == "instruction"
    data = task.fit_to_teacher(teacher, _data(task, path))
    tok = Tokenizer.from_str(teacher.tokenizer.to_str())
    tok.enable_truncation(24, strategy="longest_first")  # as the task tokenises (max_length)
    for i, (ids, targets) in enumerate(zip(data.ids, data.labels, strict=True)):
        prompt = tok.encode(LINES[i][:20], LINES[i][20:])
        first = prompt.sequence_ids.index(1)  # the completion's first token
        counted = (targets >= 0).nonzero().flatten().tolist()
        assert counted[0] == first - 1  # the prompt's last token predicts it
        assert all(t == IGNORE_INDEX for t in targets[: first - 1].tolist())  # prompt masked
        assert targets[counted].tolist() == ids[[c + 1 for c in counted]].tolist()
        assert tok.decode(targets[counted].tolist()) == tok.decode(prompt.ids[first:])


def test_kind_of_tells_text_from_instruction_data(tmp_path: Path) -> None:
    task = CausalLMTask()
    text = tmp_path / "docs.jsonl"
    text.write_text('{"text": "a prompt and completion in a text field"}\n', encoding="utf-8")
    assert task.kind_of(text) == "lm"
    assert task.kind_of(_txt(tmp_path, LINES)) == "lm"
    assert task.kind_of(_instructions(tmp_path)) == "instruction"
    # instruction data is this task's alone (the Datasets scan); plain text is any text task's
    assert CausalLMTask.recognizes(_instructions(tmp_path), "jsonl")
    assert not CausalLMTask.recognizes(text, "jsonl")


# ----------------------------------------------------------------------------------------------
# metrics on hand-computed cases


def test_perplexity_of_a_hand_computed_case() -> None:
    # vocabulary of 2: logits (0, ln 3) give p = (1/4, 3/4) at every position
    logits = torch.tensor([0.0, math.log(3.0)]).expand(1, 4, 2)
    targets = torch.tensor([[1, 1, 0, IGNORE_INDEX]])  # 3 counted: -ln(3/4) twice, -ln(1/4)
    nll, count = token_nll(logits, targets)
    assert count == 3
    assert nll == pytest.approx(-2 * math.log(0.75) - math.log(0.25), rel=1e-6)
    assert perplexity(nll, count) == pytest.approx((0.75 * 0.75 * 0.25) ** (-1 / 3), rel=1e-6)
    assert math.isnan(perplexity(0.0, 0))


def test_agreement_counts_same_argmax_on_counted_positions_only() -> None:
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])  # argmax 0, 1, 0
    teacher = torch.tensor([[[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]]])  # argmax 0, 0, 1
    assert agreement_count(student, teacher, torch.tensor([[0, 0, 0]])) == 1
    assert agreement_count(student, teacher, torch.tensor([[-100, 0, 0]])) == 0
    assert agreement_count(student, student, torch.tensor([[0, -100, 0]])) == 2


def test_ce_takes_per_token_logits_and_skips_ignored_positions() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, 3:] = IGNORE_INDEX
    loss = CrossEntropy(LossContext(num_classes=7))(StepOutputs(logits, logits, labels))
    keep = labels >= 0
    want = F.cross_entropy(logits[keep], labels[keep])
    assert float(loss) == pytest.approx(float(want), rel=1e-6)


# ----------------------------------------------------------------------------------------------
# validation and evaluation on a real checkpoint


def test_validate_and_evaluate_report_perplexity_agreement_speed_and_samples(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    task, teacher = _teacher(checkpoints)
    data = task.fit_to_teacher(teacher, _data(task, _txt(tmp_path, LINES)))
    train, val = task.split(data, 0.5, seed=0)
    cpu = torch.device("cpu")
    metrics = task.validate(teacher.module, val, 4, cpu, contextlib.nullcontext)
    assert metrics["val/agreement"] == 1.0  # the teacher agrees with itself
    assert metrics["val/perplexity"] == pytest.approx(math.exp(metrics["val/loss"]))
    assert teacher.module.training  # validation hands the model back in train mode
    teacher.module.eval()
    report = task.evaluate(teacher.module, teacher.module, val)
    assert report["teacher_perplexity"] == pytest.approx(report["student_perplexity"])
    assert report["teacher_perplexity"] == pytest.approx(metrics["val/perplexity"], rel=1e-5)
    assert report["next_token_agreement"] == 1.0 and report["tokens_per_s_method"] == "generate"
    for key in ("teacher_tokens_per_s", "teacher_tokens_per_s_b32", "student_tokens_per_s_b32"):
        assert report[key] > 0
    samples = report["samples"]
    assert len(samples) == len(val) and samples[0]["mime"] == "text/plain"
    first = samples[0]
    assert first["prompt"] and val.text.texts[0].startswith(first["prompt"] + first["reference"])
    assert first["teacher"] == first["student"]  # the same model, greedy
    assert [e["epoch"] for e in first["epochs"]] == [0]  # one validation so far
    assert first["epochs"][0]["student"] == first["student"]


# ----------------------------------------------------------------------------------------------
# refusals


def test_a_teacher_that_is_not_a_causal_lm_is_refused(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    task, teacher = _teacher(checkpoints, "bert")
    with pytest.raises(IncompatibleDataError, match="BertModel.*ForCausalLM|ForCausalLM.*Bert"):
        task.fit_to_teacher(teacher, _data(task, _txt(tmp_path, LINES)))


def test_a_max_length_past_the_teachers_positions_is_refused(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    task = build_task("causal_lm", max_length=TINY_GPT2["n_positions"] + 1)
    loaded = load_model(checkpoints["gpt2"], "hf")
    loaded = replace(loaded, module=task.adapt_model(loaded.module, loaded))
    with pytest.raises(IncompatibleDataError, match="longer than the model's 32 positions"):
        task.fit_to_teacher(loaded, _data(task, _txt(tmp_path, LINES)))


def test_data_without_a_token_to_predict_is_refused(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    task, teacher = _teacher(checkpoints)
    tok = teacher.tokenizer
    singles = [w for w in ("a", "b", "c", "x") if len(tok.encode(w).ids) == 1]
    assert singles
    with pytest.raises(DatasetError, match="no row has a text token to predict"):
        task.fit_to_teacher(teacher, _data(task, _txt(tmp_path, singles)))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no rows"):
        _data(task, empty)
    assert EOS in tok.get_vocab()
