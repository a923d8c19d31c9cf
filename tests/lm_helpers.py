"""The tiny causal-LM teacher for the tests and the benchmarks (`lm_demo.make_lm_demo`: a 4-block
GPT-2 with a BPE tokenizer, trained on standard-library docstrings), built once and reused.

`lm_demo_files()` trains it the first time and keeps it in the temp folder under a key of the
demo's source and the library versions (a changed demo or library trains a new one); later calls,
in this session or the next, reuse the files. Written to a fresh folder and renamed into place,
so parallel sessions never read half-written files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

TEACHER, CORPUS = "lm_teacher.zip", "lm_corpus.txt"


@dataclass(frozen=True)
class LmDemo:
    """The demo's files: the teacher checkpoint zip and the distillation corpus (.txt)."""

    teacher: Path
    corpus: Path

    def lines(self, n: int | None = None) -> list[str]:
        """The corpus's first `n` lines (all when None)."""
        lines = self.corpus.read_text(encoding="utf-8").splitlines()
        return lines if n is None else lines[:n]

    def spread(self, n: int) -> list[str]:
        """`n` lines evenly spaced over the corpus (every module's, not the first few's)."""
        lines = self.lines()
        return lines[:: max(1, len(lines) // n)][:n]

    def write_text(self, path: Path, n: int) -> Path:
        """The corpus's first `n` lines as a .txt dataset."""
        path.write_text("\n".join(self.lines(n)) + "\n", encoding="utf-8")
        return path

    def write_instruction(self, path: Path, n: int) -> Path:
        """The corpus's first `n` lines as prompt/completion pairs (.jsonl): the first half of
        each line's words is the prompt, the rest the completion."""
        rows = []
        for line in self.lines(n):
            words = line.split()
            half = max(1, len(words) // 2)
            rows.append(
                {"prompt": " ".join(words[:half]), "completion": " " + " ".join(words[half:])}
            )
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path


def _key() -> str:
    import tokenizers
    import torch
    import transformers

    from worker.engine.tasks.text import lm_demo

    digest = hashlib.sha256(Path(lm_demo.__file__).read_bytes())
    for part in (platform.python_version(), torch.__version__, transformers.__version__,
                 tokenizers.__version__):  # fmt: skip
        digest.update(part.encode())
    return digest.hexdigest()[:16]


@functools.cache
def lm_demo_files() -> LmDemo:
    """The demo teacher and corpus (trained once; see the module docstring)."""
    from worker.engine.tasks.text.lm_demo import make_lm_demo

    folder = Path(tempfile.gettempdir()) / f"ds-lm-demo-{_key()}"
    if not (folder / TEACHER).is_file() or not (folder / CORPUS).is_file():
        fresh = Path(tempfile.mkdtemp(prefix="ds-lm-demo-new-"))
        make_lm_demo(fresh)
        try:
            os.replace(fresh, folder)
        except OSError:  # another session put it there first
            shutil.rmtree(fresh, ignore_errors=True)
    return LmDemo(folder / TEACHER, folder / CORPUS)
