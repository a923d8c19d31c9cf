"""Text tasks (issue 12): text students built from a Hugging Face teacher (blocks copied exactly,
narrower fresh configs), tokenisation and batching, refusals, and the tasks' metrics on
hand-made cases. Tiny transformers models built here; no mocks."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from core.config import DatasetRef, LossSpec
from core.hf import text_task_refusal
from tests.hf_helpers import TINY_BERT, TINY_GPT2, tiny_members, write_zip
from tests.text_helpers import write_jsonl
from worker.engine.datasets import DatasetError
from worker.engine.hf_teacher import load_hf
from worker.engine.loading import LoadedModel
from worker.engine.losses import LossContext, build_loss
from worker.engine.losses.base import StepOutputs
from worker.engine.tasks import IncompatibleDataError, build_task, dataset_task
from worker.engine.tasks.text.classification import agreement
from worker.engine.tasks.text.embedding import mean_cosine, neighbour_agreement
from worker.engine.tasks.text.models import PAD, Output, TokenModel, plain, unwrap
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


def test_hf_config_sizes_start_at_the_bert_miniatures(tmp_path: Path) -> None:
    """`size` presets (Turc et al. 2019): tiny = 2 blocks x 128 with 2 heads and a 512 MLP, of
    the teacher's type and vocabulary; an explicit size overrides the preset's; a preset
    deeper than the teacher is refused."""
    teacher = loaded(tmp_path, BERT4, "mean_pool")
    tiny = build_text_student("hf_config", {"size": "tiny"}, teacher, "mean_pool")
    c = unwrap(tiny).config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads) == (2, 128, 2)
    assert c.intermediate_size == 512 and c.vocab_size == unwrap(teacher.module).config.vocab_size
    assert tiny.arch_kwargs == {  # type: ignore[attr-defined]
        "layers": 2, "hidden": 128, "heads": 2, "intermediate": 512, "size": "tiny",
    }  # fmt: skip
    assert tiny(torch.tensor([[5, 6, PAD]])).shape == (1, 128)
    one = build_text_student("hf_config", {"size": "mini", "layers": 1}, teacher, "mean_pool")
    assert (unwrap(one).config.num_hidden_layers, unwrap(one).config.hidden_size) == (1, 256)
    with pytest.raises(TextStudentError, match="layers 8 is more than the teacher's 4"):
        build_text_student("hf_config", {"size": "medium"}, teacher, "mean_pool")
    with pytest.raises(TextStudentError, match="size 'huge' is not one of"):
        build_text_student("hf_config", {"size": "huge"}, teacher, "mean_pool")


# --------------------------------------------------------------------------------------------
# tasks: fitting, batching, refusals
# --------------------------------------------------------------------------------------------

TEXTS = [f"w{i} w{i + 1} w{i + 2}" + " w7" * (i % 4) for i in range(12)]


def _write_labelled(path: Path, labels: list[str], texts: list[str] = TEXTS) -> Path:
    rows = [{"text": t, "label": y} for t, y in zip(texts, labels, strict=True)]
    return write_jsonl(path, rows)


def _ref(path: Path, **kw: Any) -> DatasetRef:
    return DatasetRef(path=str(path), **kw)


def _fit(task_name: str, tmp: Path, config: dict[str, Any], data: Path, **params: Any) -> Any:
    task = build_task(task_name, **{"max_length": 16, **params})
    teacher = load_hf(checkpoint(tmp, config))
    teacher = replace(teacher, module=task.adapt_model(teacher.module, teacher))
    return task, teacher, task.fit_to_teacher(teacher, task.load(data, _ref(data)))


def test_text_classification_maps_labels_to_the_teachers_classes_and_records_its_logits(
    tmp_path: Path,
) -> None:
    labels = ["pos", "neg"] * 6
    data_file = _write_labelled(tmp_path / "d.jsonl", labels)
    task, teacher, data = _fit("text_classification", tmp_path, BERT_CLS, data_file, max_length=8)
    assert data.text.classes == ["neg", "pos"] and task.output_size(data) == 2
    assert data.labels.tolist() == [1, 0] * 6  # id2label: 0 neg, 1 pos
    assert data.teacher is not None and data.teacher.shape == (12, 2)
    with torch.no_grad():
        assert torch.allclose(data.teacher[:3], teacher.module(data.ids[:3]), atol=1e-5)
    # the word tokenizer adds no special tokens: rows of 3..6 ids, a batch cut to its longest
    batch = task.batch(data, torch.tensor([0, 4]), torch.device("cpu"))
    assert batch.inputs.shape == (2, 3) and batch.targets.tolist() == [1, 1]
    assert (data.ids[3] == PAD).sum() == 0 and int((data.ids[0] != PAD).sum()) == 3
    train, val = task.split(data, 0.25, seed=0)
    assert len(train) == 9 and len(val) == 3 and val.teacher is not None and len(val.teacher) == 3
    same = task.evaluate(teacher.module, teacher.module, val)
    assert same["agreement"] == 1.0 and same["teacher_accuracy"] == same["student_accuracy"]
    assert len(same["samples"]) == 3 and set(same["samples"][0]) == {
        "text",
        "label",
        "teacher",
        "student",
    }
    metrics = task.validate(teacher.module, val, 4, torch.device("cpu"), nullcontext)
    assert set(metrics) == {"val/accuracy", "val/agreement", "val/loss"}
    assert metrics["val/agreement"] == 1.0


def test_integer_labels_are_the_teachers_indices(tmp_path: Path) -> None:
    data_file = _write_labelled(tmp_path / "d.jsonl", ["1", "0"] * 6)
    _, _, data = _fit("text_classification", tmp_path, BERT_CLS, data_file, max_length=8)
    assert data.labels.tolist() == [1, 0] * 6 and data.text.classes == ["neg", "pos"]


@pytest.mark.parametrize(
    ("config", "labels", "params", "error"),
    [
        ({**TINY_GPT2}, ["a", "b"] * 6, {}, "sequence-classification head"),
        (BERT4, ["a", "b"] * 6, {}, "sequence-classification head"),
        (BERT_CLS, ["neg", "other"] * 6, {}, r"labels \['other'\] are not the teacher's"),
        (BERT_CLS, ["neg", "pos"] * 6, {"max_length": 64}, "longer than the model's 32"),
    ],
)
def test_text_classification_refusals(
    tmp_path: Path, config: dict[str, Any], labels: list[str], params: dict[str, Any], error: str
) -> None:
    data_file = _write_labelled(tmp_path / "d.jsonl", labels)
    with pytest.raises(IncompatibleDataError, match=error):
        _fit("text_classification", tmp_path, config, data_file, **params)


def test_empty_texts_are_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [{"text": "w1 w2", "label": "a"}, {"text": "  ", "label": "b"}])
    with pytest.raises(DatasetError, match="line 2: field 'text' is empty"):
        build_task("text_classification").load(path, _ref(path))
    txt = tmp_path / "e.csv"
    txt.write_text("text\nw1 w2\n\nw3\n")
    csv_rows = build_task("sentence_embedding").load(txt, _ref(txt))
    assert csv_rows.texts == ["w1 w2", "w3"]  # a blank line is no row in a csv


def test_a_student_with_another_tokenizer_reads_the_batch_retokenised(tmp_path: Path) -> None:
    """Sentence embeddings (text-level outputs) take a student with its own tokenizer: it
    reads each batch of the teacher's ids decoded and encoded with its tokenizer, exactly what
    its tokenizer makes of the text; its exports read its own ids. A task whose losses compare
    tokens (classification logits per token set, LM logits) refuses it, saying why."""
    data_file = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in TEXTS])
    task, _, data = _fit("sentence_embedding", tmp_path, BERT4, data_file)
    same = load_hf(checkpoint(tmp_path, BERT4, "same.zip", seed=1))
    shared = task.adapt_model(same.module, same)
    assert isinstance(shared, TokenModel) and shared.retokenize is None
    reversed_words = word_tokenizer(WORDS[::-1])
    other = load_hf(checkpoint(tmp_path, BERT4, "o.zip", tok=reversed_words))
    student = task.adapt_model(other.module, other)
    assert isinstance(student, TokenModel) and student.retokenize is not None
    batch = task.batch(data, torch.arange(4), torch.device("cpu")).inputs
    theirs = student.retokenize(batch)
    for row, text in zip(theirs, TEXTS[:4], strict=True):
        assert [int(t) for t in row if t >= 0] == reversed_words.encode(text).ids
    assert not torch.equal(theirs[:, : batch.shape[1]], batch)  # other ids for the same words
    own = plain(student)
    assert own.retokenize is None and own.hf is student.hf
    with torch.no_grad():
        assert torch.allclose(student.eval()(batch), own.eval()(theirs), atol=1e-6)
    assert task.export_module(student, (16,)).retokenize is None
    # its cost and latency are measured as deployed: on its own ids, without the bridge
    native, native_ids = task.native_inputs(student, batch)
    assert native.retokenize is None and native.hf is student.hf
    assert torch.equal(native_ids, theirs)
    assert task.native_inputs(shared, batch)[0] is shared
    assert task.native_inputs(shared, batch)[1] is batch

    labelled = _write_labelled(tmp_path / "l.jsonl", ["pos", "neg"] * 6)
    cls_task, _, _ = _fit("text_classification", tmp_path, BERT_CLS, labelled)
    other_cls = load_hf(checkpoint(tmp_path, BERT_CLS, "oc.zip", tok=reversed_words))
    with pytest.raises(IncompatibleDataError, match="tokenizer differs from the teacher's"):
        cls_task.adapt_model(other_cls.module, other_cls)


def test_models_of_the_wrong_kind_are_refused(tmp_path: Path) -> None:
    data_file = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in TEXTS])
    with pytest.raises(IncompatibleDataError, match="encoder checkpoint without a head"):
        _fit("sentence_embedding", tmp_path, BERT_CLS, data_file)
    image = LoadedModel(torch.nn.Linear(3, 2), (3,), 2, "pt2")
    with pytest.raises(IncompatibleDataError, match="needs Hugging Face checkpoints"):
        build_task("text_classification").adapt_model(image.module, image)
    assert text_task_refusal("the teacher", "classification") is not None
    assert text_task_refusal("the teacher", "sentence_embedding") is None
    with pytest.raises(IncompatibleDataError, match="'resnet8' takes images or tables"):
        build_task("sentence_embedding").build_student("resnet8", {}, image, None)


def test_uploads_land_on_the_text_tasks(tmp_path: Path) -> None:
    labelled = _write_labelled(tmp_path / "l.jsonl", ["a", "b"] * 6)
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in TEXTS])
    lines = tmp_path / "t.txt"
    lines.write_text("\n".join(TEXTS))
    words = tmp_path / "w.csv"
    words.write_text("review,label\nsome words here,a\nmore words,b\n")
    numbers = tmp_path / "n.csv"
    numbers.write_text("f1,f2,label\n0.5,1.5,a\n0.1,0.2,b\n")
    found = {
        p.name: type(dataset_task(p.suffix[1:], p)).__name__
        for p in (labelled, texts, lines, words, numbers)
    }
    assert found == {
        "l.jsonl": "TextClassificationTask",
        "t.jsonl": "SentenceEmbeddingTask",
        "t.txt": "SentenceEmbeddingTask",
        "w.csv": "TextClassificationTask",
        "n.csv": "ClassificationTask",
    }


# --------------------------------------------------------------------------------------------
# metrics and losses on hand-made cases
# --------------------------------------------------------------------------------------------


def test_neighbour_agreement_and_cosine_by_hand() -> None:
    teacher = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    # nearest by the teacher: 0<->1, 2<->3; the student swaps row 0's neighbour to 3
    student = torch.tensor([[0.6, 0.4], [1.0, 0.0], [0.0, 1.0], [0.45, 0.55]])
    got = neighbour_agreement(student, teacher, k=2)
    # row 0: student nearest 3 (teacher's 1 is 2nd), row 1: 0 ok, row 2: 3 ok, row 3: 0 (not 2)
    assert got["neighbour_top1"] == pytest.approx(2 / 4)
    assert got["neighbour_top5"] == pytest.approx(4 / 4)
    assert mean_cosine(teacher, teacher) == pytest.approx(1.0)
    assert mean_cosine(-teacher, teacher) == pytest.approx(-1.0)
    assert agreement(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 1.0]] * 2)) == 0.5


def test_embedding_losses_by_hand() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    t = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    out = StepOutputs(s, t, torch.zeros(2, 0))
    mse = build_loss(LossSpec(name="embedding_mse"), LossContext(2))(out)
    cos = build_loss(LossSpec(name="embedding_cosine"), LossContext(2))(out)
    assert float(mse.detach()) == pytest.approx((1 + 1 + 0 + 1) / 4)
    assert float(cos.detach()) == pytest.approx(((1 - 0) + (1 - 1)) / 2)
    cos.backward()
    assert s.grad is not None
    with pytest.raises(ValueError, match="hf_config with hidden=2"):
        build_loss(LossSpec(name="embedding_mse"), LossContext(2))(
            StepOutputs(torch.zeros(2, 3), t, torch.zeros(2, 0))
        )


def test_the_example_input_stays_inside_a_small_vocabulary(tmp_path: Path) -> None:
    """Evaluation times both models on the task's example input: with a teacher of 30 tokens
    the ids stay below 30."""
    small = word_tokenizer(WORDS[:26])
    config = {**BERT4, "vocab_size": 30}
    task = build_task("sentence_embedding", max_length=16)
    teacher = load_hf(checkpoint(tmp_path, config, tok=small))
    teacher = replace(teacher, module=task.adapt_model(teacher.module, teacher))
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in TEXTS])
    task.fit_to_teacher(teacher, task.load(path, _ref(path)))
    example = task.example_input((16,))
    assert example.shape == (2, 16) and int(example.max()) < 30
    assert teacher.module(example).shape == (2, 16)


def test_a_student_with_its_own_tokenizer_is_timed_on_its_own_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate() times and counts a student with its own tokenizer as deployed: the plain
    model on its own token ids of the example texts, never the teacher's ids through the bridge
    (which would time the re-tokenising too); the teacher on the teacher's ids."""
    from worker.engine import evaluate as evaluation

    data_file = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in TEXTS])
    task, teacher, data = _fit("sentence_embedding", tmp_path, BERT4, data_file)
    other = load_hf(checkpoint(tmp_path, BERT4, "o.zip", tok=word_tokenizer(WORDS[::-1])))
    student = task.adapt_model(other.module, other)
    seen: list[tuple[str, Any, torch.Tensor]] = []
    real = evaluation.latency_ms

    def spy(modules: dict[str, Any], shape: Any, batch: int = 1, **kw: Any) -> dict[str, float]:
        for key, module in modules.items():
            rows = (kw.get("examples") or {}).get(key, kw.get("example"))
            seen.append((key, module, rows))
        return real(modules, shape, batch, **{**kw, "runs": 2, "budget_s": 0.2})

    monkeypatch.setattr(evaluation, "latency_ms", spy)
    evaluation.evaluate(teacher.module, student, data, task.input_shape(data), task=task)
    example = task.example_input(task.input_shape(data))
    timed = [(m, rows) for key, m, rows in seen if key == "student"]
    assert timed and all(m.retokenize is None and m.hf is student.hf for m, _ in timed)
    assert all(torch.equal(rows, student.retokenize(example)) for _, rows in timed)
    assert all(torch.equal(rows, example) for key, _, rows in seen if key == "teacher")
