"""Text datasets (`worker.engine.tasks.text.data`): each format read, each bad upload refused
naming the file, line and reason, tokenisation with the real MiniLM-L6 tokenizer (ids decode
back, loss on the completion only, truncation counted, a max length past the model's positions
refused) and the Datasets page's summary."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from tests.hf_helpers import minilm_folder
from worker.engine.datasets import DatasetError
from worker.engine.tasks.text.data import (
    IGNORE_INDEX,
    SAMPLE_CHARS,
    TextData,
    TextLimits,
    describe_text,
    read_text_dataset,
    token_lengths,
    tokenize,
)

MINILM_POSITIONS = 512


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(minilm_folder() / "tokenizer.json"))


def _jsonl(path: Path, records: Sequence[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# reading each format


def test_csv_classification_maps_labels_in_a_stable_order(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text(
        'text,label\n"good, really good",pos\nawful,neg\n\n"fine\non two lines",pos\n',
        encoding="utf-8",
    )
    data = read_text_dataset(path, "classification")
    assert data.texts == ["good, really good", "awful", "fine\non two lines"]
    assert data.classes == ["neg", "pos"]
    assert data.labels == [1, 0, 1]
    assert data.class_counts() == {"neg": 1, "pos": 2}


def test_jsonl_classification_with_named_columns_and_integer_labels(tmp_path: Path) -> None:
    records = [{"sentence": f"s{i}", "y": i % 11} for i in range(22)]
    data = read_text_dataset(
        _jsonl(tmp_path / "d.jsonl", records), "classification", text_column="sentence",
        label_column="y",
    )  # fmt: skip
    # integer names sort as numbers: "10" after "9", so index = the label's value
    assert data.classes == [str(i) for i in range(11)]
    assert data.labels == [i % 11 for i in range(22)]


def test_language_modelling_from_jsonl_and_txt(tmp_path: Path) -> None:
    jsonl = _jsonl(tmp_path / "c.jsonl", [{"text": "first doc"}, {"text": "second", "id": 2}])
    assert read_text_dataset(jsonl, "lm").texts == ["first doc", "second"]
    txt = tmp_path / "c.txt"
    txt.write_bytes("\ufeffone line\r\n\n   \ntwo lines é\n".encode())
    data = read_text_dataset(txt, "lm")
    assert data.kind == "lm" and data.texts == ["one line", "two lines é"]


def test_instruction_data(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "i.jsonl", [{"prompt": "2+2=", "completion": " 4"}])
    data = read_text_dataset(path, "instruction")
    assert data.texts == ["2+2="] and data.completions == [" 4"]


# ----------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize(
    ("name", "content", "kind", "expected"),
    [
        ("e.jsonl", '{"text": "a"}\n{"text": "  "}\n', "lm", "line 2: field 'text' is empty"),
        ("e.csv", "text,label\nok,a\n,b\n", "classification", "line 3: field 'text' is empty"),
        ("m.jsonl", '{"body": "a"}\n', "lm", "line 1 has no field 'text'; the fields are ['body']"),
        ("m.csv", "sentence,label\nx,a\n", "classification",
         "no field 'text'; the fields are ['label', 'sentence']"),
        ("m2.jsonl", '{"prompt": "p"}\n', "instruction", "no field 'completion'"),
        ("j.jsonl", '{"text": "a"}\n{"text": "b"\n', "lm", "line 2 is not valid JSON"),
        ("a.jsonl", '["text"]\n', "lm", "line 1 is a JSON list, not an object"),
        ("o.csv", "text,label\nx,a\ny,a\n", "classification", "only one class (['a'])"),
        ("f.csv", "text,label\nx,a,extra\n", "classification", "line 2 has 3 fields"),
        ("w.txt", "text\n", "instruction", "a instruction dataset is .jsonl, not '.txt'"),
        ("n.txt", "\n \n", "lm", "no rows"),
    ],
)  # fmt: skip
def test_bad_uploads_are_refused_naming_file_line_and_reason(
    tmp_path: Path, name: str, content: str, kind: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"^{name}: .*{re.escape(expected)}"):
        read_text_dataset(path, kind)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["bad.txt", "bad.jsonl", "bad.csv"])
def test_non_utf8_is_refused_with_its_line(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    head = b"text,label\n" if name.endswith(".csv") else b""
    first = b'{"text": "ok", "label": "a"}\n' if name.endswith(".jsonl") else b"ok,a\n"
    path.write_bytes(head + first + b"caf\xe9,b\n")
    line = 3 if name.endswith(".csv") else 2
    kind = "lm" if name.endswith(".txt") else "classification"
    with pytest.raises(DatasetError, match=rf"{name}: line {line} is not UTF-8"):
        read_text_dataset(path, kind)  # type: ignore[arg-type]


def test_limits_bound_size_rows_and_line_length(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("short\n" + "x" * 100 + "\nthird\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 2 is longer than"):
        read_text_dataset(path, "lm", limits=TextLimits(line_bytes=50))
    with pytest.raises(DatasetError, match="more than the limit of 2 rows"):
        read_text_dataset(path, "lm", limits=TextLimits(rows=2))
    with pytest.raises(DatasetError, match="more than the limit of"):
        read_text_dataset(path, "lm", limits=TextLimits(file_bytes=10))
    csv_path = tmp_path / "big.csv"
    csv_path.write_text('text,label\n"' + "y" * 100 + '",a\nz,b\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="big.csv: line 2 is not readable CSV"):
        read_text_dataset(csv_path, "classification", limits=TextLimits(line_bytes=50))


# ----------------------------------------------------------------------------------------------
# tokenisation with the real MiniLM-L6 tokenizer


def test_classification_ids_decode_back(tokenizer: Tokenizer) -> None:
    texts = ["The cat sat on the mat.", "Distillation makes small models good."]
    data = TextData("classification", texts, labels=[0, 1], classes=["a", "b"])
    out = tokenize(data, tokenizer, max_length=32, max_positions=MINILM_POSITIONS)
    assert out.truncated == 0
    assert out.labels.tolist() == [0, 1]
    for i, text in enumerate(texts):
        ids = out.input_ids[i][out.attention_mask[i].bool()].tolist()
        assert ids[0] == tokenizer.token_to_id("[CLS]")
        assert tokenizer.decode(ids) == text.lower()  # uncased: the text, lower-cased
    # the shorter row is padded with [PAD] and masked out
    short = int(out.attention_mask[0].sum())
    assert short < out.input_ids.shape[1]
    assert set(out.input_ids[0, short:].tolist()) == {tokenizer.token_to_id("[PAD]")}
    # the caller's tokenizer is left as it was
    assert tokenizer.truncation is not None and tokenizer.truncation["max_length"] == 128


def test_lm_labels_are_the_ids_with_padding_ignored(tokenizer: Tokenizer) -> None:
    data = TextData("lm", ["a b c d e f", "a b"])
    out = tokenize(data, tokenizer, max_length=16, max_positions=MINILM_POSITIONS)
    real = out.attention_mask.bool()
    assert torch.equal(out.labels[real], out.input_ids[real])
    assert (out.labels[~real] == IGNORE_INDEX).all() and (~real).any()


def test_instruction_labels_cover_the_completion_only(tokenizer: Tokenizer) -> None:
    data = TextData("instruction", ["what is two plus two?", "name a colour"],
                    completions=["four", "blue sky"])  # fmt: skip
    out = tokenize(data, tokenizer, max_length=32, max_positions=MINILM_POSITIONS)
    for i, completion in enumerate(data.completions or []):
        kept = out.labels[i][out.labels[i] != IGNORE_INDEX].tolist()
        # the completion's tokens and the [SEP] that closes it, nothing of the prompt
        assert tokenizer.decode(kept) == completion
        assert kept[-1] == tokenizer.token_to_id("[SEP]")
        assert (out.labels[i][out.attention_mask[i] == 0] == IGNORE_INDEX).all()
    assert out.completion_lost == 0


def test_truncation_is_counted_and_a_too_long_max_length_refused(tokenizer: Tokenizer) -> None:
    long = " ".join(["word"] * 40)
    data = TextData("lm", [long, "short", long])
    out = tokenize(data, tokenizer, max_length=10, max_positions=MINILM_POSITIONS)
    assert out.truncated == 2 and out.input_ids.shape == (3, 10)
    assert token_lengths(data, tokenizer) == [42, 3, 42]
    with pytest.raises(DatasetError, match="longer than the model's 512 positions"):
        tokenize(data, tokenizer, max_length=513, max_positions=MINILM_POSITIONS)
    prompt_heavy = TextData("instruction", [long], completions=[long])
    cut = tokenize(prompt_heavy, tokenizer, max_length=12, max_positions=MINILM_POSITIONS)
    assert cut.truncated == 1 and cut.completion_lost == 0  # longest_first keeps both parts
    # [CLS] word [SEP] [SEP]: no completion token is left to learn from, and that is counted
    short_answer = TextData("instruction", [long], completions=["yes no"])
    squeezed = tokenize(short_answer, tokenizer, max_length=4, max_positions=MINILM_POSITIONS)
    assert squeezed.completion_lost == 1 and (squeezed.labels == IGNORE_INDEX).all()


# ----------------------------------------------------------------------------------------------
# the Datasets page's summary


def test_summary_is_json_ready_with_samples_counts_and_histogram(
    tmp_path: Path, tokenizer: Tokenizer
) -> None:
    records = [{"text": ("long " * 100) if i == 0 else f"row {i}", "label": "ab"[i % 2]}
               for i in range(8)]  # fmt: skip
    data = read_text_dataset(_jsonl(tmp_path / "d.jsonl", records), "classification")
    summary = describe_text(data, tokenizer, max_length=16)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["kind"] == "classification" and summary["rows"] == 8
    assert len(summary["samples"]) == 5
    assert len(summary["samples"][0]["text"]) == SAMPLE_CHARS
    assert summary["samples"][1] == {"text": "row 1", "label": "b"}
    assert summary["class_counts"] == {"a": 4, "b": 4}
    hist = summary["token_lengths"]
    assert sum(hist["counts"]) == 8 and len(hist["edges"]) == len(hist["counts"]) + 1
    assert hist["max"] == 102 and hist["min"] == 4 and hist["over_max_length"] == 1
    plain = describe_text(TextData("instruction", ["p"], completions=["c"]))
    assert plain == {"kind": "instruction", "rows": 1,
                     "samples": [{"prompt": "p", "completion": "c"}]}  # fmt: skip
