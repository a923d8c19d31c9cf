"""Text datasets: uploads read under bounds, tokenised with the teacher's tokenizer, described.

Three kinds of upload, all read as UTF-8 without executing anything:
- `classification`: `.csv` or `.jsonl` with a text column and a label column; label names map to
  class indices in sorted order (numerically when every name is an integer), so a run and its
  teacher agree on the indices whatever order the rows come in;
- `lm` (language modelling): `.jsonl` with a `text` field, or `.txt` with one document per
  non-empty line;
- `instruction`: `.jsonl` with `prompt` and `completion` fields; the loss is on the completion.

Bounded like the other readers (`worker.engine.datasets`): the file's size, its rows and each
line's (or CSV field's) length are held to `TextLimits` while reading, so a hostile file is refused
before it fills memory. Every refusal is a `DatasetError` naming the file, the line and the reason.

`tokenize` turns the texts into padded tensors with a `tokenizers.Tokenizer` (the teacher's
`tokenizer.json`) at a max length the caller sets; rows cut to that length are counted and
reported (`Tokenized.truncated`), never cut silently. `describe_text` is the Datasets page's
summary: kind, rows, sample rows, class counts and a token length histogram.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from worker.engine.datasets import DatasetError, MiB, size_text

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TextKind = Literal["classification", "lm", "instruction"]
KINDS: tuple[TextKind, ...] = ("classification", "lm", "instruction")
IGNORE_INDEX = -100  # label of a position the loss skips (torch's cross_entropy default)
SAMPLE_ROWS = 5  # rows shown on the Datasets page
SAMPLE_CHARS = 200  # each shown text is cut to this many characters
HISTOGRAM_BINS = 20


@dataclass(frozen=True)
class TextLimits:
    """What a text upload may take: bytes on disk, rows, bytes in one line (or CSV field)."""

    file_bytes: int = 1024 * MiB
    rows: int = 2_000_000
    line_bytes: int = 1 * MiB


@dataclass
class TextData:
    """Texts read from an upload. `texts` are the documents, the texts to classify or the
    prompts; `labels`/`classes` for classification; `completions` for instruction data."""

    kind: TextKind
    texts: list[str]
    labels: list[int] | None = None
    classes: list[str] | None = None
    completions: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def class_counts(self) -> dict[str, int]:
        """Rows per class name, in class index order (classification only)."""
        if self.labels is None or self.classes is None:
            return {}
        counts = Counter(self.labels)
        return {name: counts[i] for i, name in enumerate(self.classes)}


# ----------------------------------------------------------------------------------------------
# bounded reading


def _check_size(path: Path, limits: TextLimits) -> None:
    if not path.is_file():
        raise DatasetError(f"dataset file '{path}' does not exist")
    size = path.stat().st_size
    if size > limits.file_bytes:
        raise DatasetError(
            f"{path.name}: {size_text(size)}, more than the limit of "
            f"{size_text(limits.file_bytes)}; upload a smaller file"
        )


def _decode(raw: bytes, where: str, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{where}: line {line} is not UTF-8 (byte {exc.start + 1} of the line); "
            "save the file as UTF-8"
        ) from exc


def _lines(path: Path, limits: TextLimits) -> list[tuple[int, str]]:
    """The non-blank lines as (1-based line number, text without its line end); each line is
    read with a bounded `readline`, so an over-long one is refused without being held whole."""
    _check_size(path, limits)
    where = path.name
    out: list[tuple[int, str]] = []
    with path.open("rb") as f:
        number = 0
        while raw := f.readline(limits.line_bytes + 1):
            number += 1
            if len(raw) > limits.line_bytes and not raw.endswith(b"\n"):
                raise DatasetError(
                    f"{where}: line {number} is longer than {size_text(limits.line_bytes)}; "
                    "split it or check the line ends"
                )
            text = _decode(raw, where, number).rstrip("\r\n")
            if number == 1:
                text = text.removeprefix("\ufeff")  # a byte order mark some editors write
            if not text.strip():
                continue
            if len(out) >= limits.rows:
                raise DatasetError(
                    f"{where}: more than the limit of {limits.rows} rows; upload fewer"
                )
            out.append((number, text))
    if not out:
        raise DatasetError(f"{where}: the file has no rows")
    return out


def _jsonl_records(path: Path, limits: TextLimits) -> list[tuple[int, dict[str, Any]]]:
    where = path.name
    out: list[tuple[int, dict[str, Any]]] = []
    for number, text in _lines(path, limits):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{where}: line {number} is not valid JSON ({exc.msg} at column {exc.colno}); "
                "write one JSON object per line"
            ) from exc
        if not isinstance(record, dict):
            raise DatasetError(
                f"{where}: line {number} is a JSON {type(record).__name__}, not an object; "
                "write one JSON object per line"
            )
        out.append((number, record))
    return out


def _csv_records(path: Path, limits: TextLimits) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a CSV with a header, as (line number, {column: value}); quoted fields may span
    lines, each field held to `limits.line_bytes` characters."""
    _check_size(path, limits)
    where = path.name
    raw = path.read_bytes()  # bounded by the file size limit above
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DatasetError(f"{where}: line {line} is not UTF-8; save the file as UTF-8") from exc
    old_limit = csv.field_size_limit(limits.line_bytes)
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if not header:
            raise DatasetError(f"{where}: the file has no header line")
        columns = [c.strip() for c in header]
        out: list[tuple[int, dict[str, Any]]] = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                raise DatasetError(
                    f"{where}: line {reader.line_num} has {len(row)} fields but the header has "
                    f"{len(columns)}; quote texts that hold commas"
                )
            if len(out) >= limits.rows:
                raise DatasetError(
                    f"{where}: more than the limit of {limits.rows} rows; upload fewer"
                )
            out.append((reader.line_num, dict(zip(columns, row, strict=True))))
    except csv.Error as exc:
        raise DatasetError(f"{where}: line {reader.line_num} is not readable CSV ({exc})") from exc
    finally:
        csv.field_size_limit(old_limit)
    if not out:
        raise DatasetError(f"{where}: the file has no rows")
    return out


def _field(record: dict[str, Any], name: str, where: str, line: int) -> str:
    """A record's field as a non-empty string; refuses a missing field (naming those there)
    and an empty or non-string value."""
    if name not in record:
        raise DatasetError(
            f"{where}: line {line} has no field '{name}'; the fields are {sorted(record)}"
        )
    value = record[name]
    if value is None or isinstance(value, dict | list):
        raise DatasetError(f"{where}: line {line}: field '{name}' must be a string, got {value!r}")
    value = str(value)
    if not value.strip():
        raise DatasetError(f"{where}: line {line}: field '{name}' is empty; remove the row")
    return value


def _encode_labels(names: list[str], where: str) -> tuple[list[int], list[str]]:
    """Label names -> indices in a stable order: numeric when all are integers, else sorted."""
    unique = set(names)
    try:
        classes = sorted(unique, key=int)
    except ValueError:
        classes = sorted(unique)
    if len(classes) < 2:
        raise DatasetError(
            f"{where}: the label column has only one class ({classes}); need at least 2"
        )
    lookup = {c: i for i, c in enumerate(classes)}
    return [lookup[n] for n in names], classes


def read_text_dataset(
    path: Path,
    kind: TextKind,
    *,
    text_column: str = "text",
    label_column: str = "label",
    limits: TextLimits | None = None,
) -> TextData:
    """Read a text upload of `kind` (see the module docstring for the formats)."""
    path, limits = Path(path), limits or TextLimits()
    where, suffix = path.name, path.suffix.lower()
    allowed = {"classification": (".csv", ".jsonl"), "lm": (".jsonl", ".txt"),
               "instruction": (".jsonl",)}  # fmt: skip
    if kind not in allowed:
        raise DatasetError(f"unknown text dataset kind '{kind}'; use one of {list(KINDS)}")
    if suffix not in allowed[kind]:
        raise DatasetError(
            f"{where}: a {kind} dataset is {' or '.join(allowed[kind])}, not '{suffix}'"
        )
    if kind == "lm" and suffix == ".txt":
        return TextData("lm", [text for _, text in _lines(path, limits)])
    records = _csv_records(path, limits) if suffix == ".csv" else _jsonl_records(path, limits)
    if kind == "lm":
        return TextData("lm", [_field(r, "text", where, n) for n, r in records])
    if kind == "instruction":
        prompts = [_field(r, "prompt", where, n) for n, r in records]
        completions = [_field(r, "completion", where, n) for n, r in records]
        return TextData("instruction", prompts, completions=completions)
    texts = [_field(r, text_column, where, n) for n, r in records]
    names = [_field(r, label_column, where, n).strip() for n, r in records]
    labels, classes = _encode_labels(names, where)
    return TextData("classification", texts, labels=labels, classes=classes)


# ----------------------------------------------------------------------------------------------
# tokenisation


@dataclass
class Tokenized:
    """Token tensors [N, L] (L: the longest row, at most the max length) and what was cut.

    `labels`: [N] class indices for classification; [N, L] next-token targets otherwise
    (IGNORE_INDEX on padding, and on the prompt for instruction data). `truncated`: rows cut to
    the max length; `completion_lost`: instruction rows whose completion was cut away whole
    (they carry no loss)."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    max_length: int
    truncated: int = 0
    completion_lost: int = 0


def check_max_length(max_length: int, max_positions: int) -> None:
    """Refuse a max length the model cannot take (longer than its position embeddings)."""
    if max_length < 2:
        raise DatasetError(f"max length must be at least 2 tokens, got {max_length}")
    if max_length > max_positions:
        raise DatasetError(
            f"max length {max_length} is longer than the model's {max_positions} positions; "
            f"set it to {max_positions} or less"
        )


def _fresh(tokenizer: Tokenizer, max_length: int | None) -> Tokenizer:
    """A copy without padding, truncated to `max_length` (None: not truncated): the caller's
    tokenizer keeps its own settings."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    if max_length is None:
        copy.no_truncation()
    else:
        copy.enable_truncation(max_length, strategy="longest_first")
    return copy


def pad_id(tokenizer: Tokenizer) -> int:
    """The tokenizer's padding id: its padding setting, a known pad token, else 0 (padding is
    masked out either way)."""
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>", "</s>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0


def _inputs(data: TextData) -> list[Any]:
    if data.kind == "instruction":
        assert data.completions is not None
        return list(zip(data.texts, data.completions, strict=True))
    return list(data.texts)


def token_lengths(data: TextData, tokenizer: Tokenizer) -> list[int]:
    """Each row's length in tokens, special tokens included, before any truncation."""
    encodings = _fresh(tokenizer, None).encode_batch(_inputs(data))
    return [len(e.ids) for e in encodings]


def tokenize(
    data: TextData, tokenizer: Tokenizer, max_length: int, max_positions: int
) -> Tokenized:
    """`data` as padded token tensors of at most `max_length` tokens (see `Tokenized`)."""
    check_max_length(max_length, max_positions)
    encodings = _fresh(tokenizer, max_length).encode_batch(_inputs(data))
    width = max(len(e.ids) for e in encodings)
    ids = torch.full((len(encodings), width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(encodings), width), dtype=torch.long)
    targets = torch.full((len(encodings), width), IGNORE_INDEX, dtype=torch.long)
    truncated = lost = 0
    for i, enc in enumerate(encodings):
        n = len(enc.ids)
        truncated += bool(enc.overflowing)
        ids[i, :n] = torch.tensor(enc.ids, dtype=torch.long)
        mask[i, :n] = 1
        if data.kind == "instruction":
            # the loss starts at the completion's first token (its special tokens after it too)
            first = next((j for j, s in enumerate(enc.sequence_ids) if s == 1), None)
            if first is None:
                lost += 1
            else:
                targets[i, first:n] = ids[i, first:n]
        else:
            targets[i, :n] = ids[i, :n]
    if data.kind == "classification":
        assert data.labels is not None
        labels = torch.tensor(data.labels, dtype=torch.long)
    else:
        labels = targets
    return Tokenized(ids, mask, labels, max_length, truncated, lost)


# ----------------------------------------------------------------------------------------------
# the Datasets page's summary


def _cut(text: str) -> str:
    return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"


def length_histogram(lengths: list[int], bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Token lengths as `bins` equal-width bins: edges (bins + 1) and counts, JSON-ready."""
    values = np.asarray(lengths, dtype=np.int64)
    top = int(values.max())
    low = int(values.min())
    counts, edges = np.histogram(values, bins=bins, range=(low, max(top, low + 1)))
    return {
        "edges": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
        "min": low,
        "max": top,
        "mean": float(values.mean()),
    }


def describe_text(
    data: TextData, tokenizer: Tokenizer | None = None, max_length: int | None = None
) -> dict[str, Any]:
    """A JSON-ready summary for the Datasets page: kind, rows, the first rows (texts cut to
    SAMPLE_CHARS), class counts (classification) and, with a tokenizer, the token length
    histogram (and, with `max_length`, how many rows it would cut)."""
    rows: list[dict[str, Any]] = []
    for i in range(min(SAMPLE_ROWS, len(data))):
        if data.kind == "instruction":
            assert data.completions is not None
            rows.append({"prompt": _cut(data.texts[i]), "completion": _cut(data.completions[i])})
        elif data.kind == "classification":
            assert data.labels is not None and data.classes is not None
            rows.append({"text": _cut(data.texts[i]), "label": data.classes[data.labels[i]]})
        else:
            rows.append({"text": _cut(data.texts[i])})
    summary: dict[str, Any] = {"kind": data.kind, "rows": len(data), "samples": rows}
    if data.kind == "classification":
        assert data.classes is not None
        summary["classes"] = list(data.classes)
        summary["class_counts"] = data.class_counts()
    if tokenizer is not None:
        lengths = token_lengths(data, tokenizer)
        histogram = length_histogram(lengths)
        if max_length is not None:
            histogram["over_max_length"] = sum(n > max_length for n in lengths)
            histogram["max_length"] = max_length
        summary["token_lengths"] = histogram
    return summary
