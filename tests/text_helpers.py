"""Real text for the text-task tests, from files every machine with Python has: the first
sentences of the docstrings of standard-library packages, read with `ast` (nothing imported or
run), in file order, deduplicated: the same Python version gives the same corpus.

- `sentences(package, n)`: up to `n` first sentences of the docstrings of `package`'s modules,
  functions and classes;
- `embedding_corpus(n)`: sentences of several packages interleaved (a sentence_embedding set);
- `labelled_texts(n)`: sentences of two packages, `email` and `asyncio`, labelled by the package
  they come from (a two-class text_classification set).
"""

from __future__ import annotations

import ast
import json
import re
import sysconfig
from pathlib import Path
from typing import Any

MIN_CHARS, MAX_CHARS = 30, 200
EMBEDDING_PACKAGES = ("email", "asyncio", "json", "http", "logging", "unittest", "xml", "urllib")


def _first_sentence(doc: str) -> str | None:
    paragraph = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
    text = " ".join(paragraph.split())
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    ok = MIN_CHARS <= len(sentence) <= MAX_CHARS and sentence[0].isalpha()
    return sentence if ok and " " in sentence else None


def sentences(package: str, n: int) -> list[str]:
    """Up to `n` distinct first sentences of docstrings in the standard-library `package`."""
    root = Path(sysconfig.get_paths()["stdlib"]) / package
    files = sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]
    out: dict[str, None] = {}
    for file in files:
        if "test" in file.parts[-2:] or "tests" in file.parts:
            continue
        tree = ast.parse(file.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef):
                doc = ast.get_docstring(node)
                sentence = _first_sentence(doc) if doc else None
                if sentence:
                    out.setdefault(sentence)
                    if len(out) >= n:
                        return list(out)
    return list(out)


def embedding_corpus(n: int = 300) -> list[str]:
    """`n` sentences (fewer if the machine lacks some), the packages' sentences interleaved."""
    per = [sentences(p, n) for p in EMBEDDING_PACKAGES]
    mixed: dict[str, None] = {}
    for i in range(n):
        for group in per:
            if i < len(group):
                mixed.setdefault(group[i])
    return list(mixed)[:n]


def labelled_texts(n: int = 120) -> list[tuple[str, str]]:
    """(text, package) rows, `n // 2` of each of email and asyncio, interleaved."""
    email, aio = sentences("email", n // 2), sentences("asyncio", n // 2)
    rows = []
    for a, b in zip(email, aio, strict=False):
        rows += [(a, "email"), (b, "asyncio")]
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


CLASSIFIER_CONFIG: dict[str, Any] = {
    "architectures": ["BertForSequenceClassification"],
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "id2label": {"0": "asyncio", "1": "email"},
    "label2id": {"asyncio": 0, "email": 1},
}


def word_tokenizer(texts: list[str]) -> Any:
    """A lower-cased word-level BERT-style tokenizer ([CLS] text [SEP]) of `texts`' words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    for text in texts:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(text.lower()):
            vocab.setdefault(word, len(vocab))
    tok.model = models.WordLevel(vocab, unk_token="[UNK]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tok


def train_classifier_teacher(path: Path, rows: list[tuple[str, str]], steps: int = 30) -> Path:
    """A 4-block BERT classifier of `rows` (text, label in CLASSIFIER_CONFIG's id2label), trained
    here with Adam on all rows (seeded), saved as a Hugging Face checkpoint zip at `path`."""
    import io
    import zipfile

    import torch
    import transformers
    from safetensors.torch import save

    texts = [t for t, _ in rows]
    tok = word_tokenizer(texts)
    config = {**CLASSIFIER_CONFIG, "vocab_size": tok.get_vocab_size()}
    kwargs = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(
        transformers.AutoConfig.for_model("bert", **kwargs)
    )
    enc = tok.encode_batch(texts)
    width = min(max(len(e.ids) for e in enc), 32)
    ids = torch.zeros(len(enc), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        n = min(len(e.ids), width)
        ids[i, :n], mask[i, :n] = torch.tensor(e.ids[:n]), 1
    labels = torch.tensor([config["label2id"][y] for _, y in rows])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("model.safetensors", save(state))
        zf.writestr("tokenizer.json", tok.to_str())
    path.write_bytes(buf.getvalue())
    return path
