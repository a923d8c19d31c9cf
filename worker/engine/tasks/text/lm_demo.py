"""The causal-LM demo: a tiny GPT-2 trained in seconds on real English text found on every
machine with Python, saved as a safe Hugging Face checkpoint (`CausalLMTask.demo`, the tests, the
benchmarks).

- the corpus (`docstring_corpus`): the paragraphs of the docstrings of a fixed list of standard
  library modules (`CORPUS_MODULES`), read with `ast` (nothing is imported or run), whitespace
  collapsed, in file order; the same Python version gives the same lines;
- the tokenizer (`train_tokenizer`): byte-level BPE (GPT-2's scheme) trained with `tokenizers`
  on the teacher's lines, `<|endoftext|>` its one special token;
- the teacher (`train_teacher`): `DEMO_CONFIG`, a 4-block GPT-2 of width 64, trained with AdamW
  on the teacher's lines for `steps` steps;
- the split: every `DATA_EVERY`-th line is the distillation dataset (`lm_corpus.txt`), the
  others teach the teacher, so a run distils and validates on text the teacher never saw.

`make_lm_demo` writes out_dir/lm_teacher.zip (config.json, model.safetensors, tokenizer.json)
and out_dir/lm_corpus.txt (one paragraph a line).
"""

from __future__ import annotations

import ast
import json
import re
import sysconfig
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

CORPUS_MODULES = (
    "argparse", "collections/__init__", "textwrap", "json/__init__", "json/decoder",
    "json/encoder", "string", "shutil", "pathlib", "tempfile", "csv", "datetime", "functools",
    "heapq", "bisect", "random", "statistics", "fractions", "calendar", "difflib",
    "logging/__init__", "zipfile", "tarfile", "configparser", "email/message", "http/client",
    "urllib/parse", "inspect", "typing", "dataclasses", "enum", "contextlib", "subprocess",
    "threading", "queue", "unittest/case", "doctest", "pprint", "gettext", "locale", "codecs",
    "ftplib", "smtplib", "imaplib", "mailbox", "sched", "shlex", "optparse", "pickle", "copy",
    "weakref", "abc", "numbers", "operator", "glob", "fnmatch", "filecmp", "ipaddress", "socket",
    "selectors", "asyncio/events", "asyncio/tasks", "asyncio/streams", "concurrent/futures/_base",
    "multiprocessing/pool", "xml/dom/minidom", "html/parser", "trace", "pdb", "timeit",
    "cProfile", "pstats", "tokenize", "ast", "dis", "pydoc", "site", "sysconfig", "platform",
)  # fmt: skip
DEMO_CONFIG: dict[str, Any] = {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "n_embd": 64,
    "n_layer": 4,
    "n_head": 4,
    "n_positions": 128,
    "n_inner": 256,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
}
EOS = "<|endoftext|>"
VOCAB = 512
DATA_EVERY = 3  # every 3rd line is the distillation dataset; the others teach the teacher
MIN_CHARS, MAX_CHARS = 40, 400
TRAIN_LENGTH = 64  # tokens per training row of the teacher
TRAIN_BATCH = 16


def _paragraphs(source: str) -> list[str]:
    """The prose paragraphs of every docstring in `source` (code examples left out)."""
    out: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        doc = ast.get_docstring(node)
        for block in re.split(r"\n\s*\n", doc or ""):
            text = " ".join(block.split())
            if MIN_CHARS <= len(text) <= MAX_CHARS and ">>>" not in text and text.isascii():
                out.append(text)
    return out


def docstring_corpus(modules: tuple[str, ...] = CORPUS_MODULES) -> list[str]:
    """The docstring paragraphs of the standard library `modules` (module doc), duplicates
    dropped, in order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen: dict[str, None] = {}
    for name in modules:
        path = stdlib / f"{name}.py"
        if path.is_file():
            for text in _paragraphs(path.read_text(encoding="utf-8", errors="replace")):
                seen.setdefault(text, None)
    if len(seen) < 200:
        raise RuntimeError(f"found only {len(seen)} docstring paragraphs under {stdlib}")
    return list(seen)


def split_corpus(lines: list[str]) -> tuple[list[str], list[str]]:
    """(the teacher's lines, the distillation dataset's lines): every DATA_EVERY-th line goes
    to the dataset."""
    return (
        [t for i, t in enumerate(lines) if i % DATA_EVERY],
        [t for i, t in enumerate(lines) if i % DATA_EVERY == 0],
    )


def train_tokenizer(lines: list[str], vocab: int = VOCAB) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` of `vocab` tokens trained on `lines`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def _rows(lines: list[str], tokenizer: Any, length: int) -> torch.Tensor:
    """The lines' tokens joined by EOS and cut into rows of `length` tokens."""
    eos = tokenizer.token_to_id(EOS)
    ids: list[int] = []
    for enc in tokenizer.encode_batch(lines):
        ids.extend([*enc.ids, eos])
    n = len(ids) // length
    return torch.tensor(ids[: n * length], dtype=torch.long).reshape(n, length)


def train_teacher(
    lines: list[str],
    tokenizer: Any,
    steps: int,
    seed: int = 0,
    config: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """A GPT-2 of `config` (DEMO_CONFIG) trained on `lines` for `steps` AdamW steps (batches of
    TRAIN_BATCH rows of TRAIN_LENGTH tokens drawn at random, cosine learning rate from 3e-3), in
    eval mode."""
    import transformers

    torch.manual_seed(seed)
    eos = tokenizer.token_to_id(EOS)
    spec = {**(config or DEMO_CONFIG), "vocab_size": tokenizer.get_vocab_size()}
    spec.update(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    kwargs = {k: v for k, v in spec.items() if k not in ("model_type", "architectures")}
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kwargs))
    rows = _rows(lines, tokenizer, TRAIN_LENGTH)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = rows[torch.randint(len(rows), (TRAIN_BATCH,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def save_checkpoint(model: Any, tokenizer: Any, path: Path) -> Path:
    """`model` (a transformers model) and `tokenizer` as a checkpoint zip: config.json,
    model.safetensors, tokenizer.json."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(
            json.dumps({"eos_token": EOS, "model_max_length": model.config.n_positions})
        )
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in ("config.json", "model.safetensors", "tokenizer.json",
                         "tokenizer_config.json"):  # fmt: skip
                zf.write(folder / name, name)
    return path


def make_lm_demo(out_dir: Path, seed: int = 0, steps: int = 300) -> tuple[Path, Path]:
    """Train the demo teacher; write out_dir/lm_teacher.zip and out_dir/lm_corpus.txt.
    Returns (teacher path, data path)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher_lines, data_lines = split_corpus(docstring_corpus())
    tokenizer = train_tokenizer(teacher_lines)
    model = train_teacher(teacher_lines, tokenizer, steps, seed)
    teacher_path = save_checkpoint(model, tokenizer, out_dir / "lm_teacher.zip")
    data_path = out_dir / "lm_corpus.txt"
    data_path.write_text("\n".join(data_lines) + "\n", encoding="utf-8")
    return teacher_path, data_path
