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
