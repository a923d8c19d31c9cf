"""`distill-studio train` runs the text examples (examples/text_classification_run.yaml,
examples/sentence_embedding_run.yaml) without a server: the files they name are written here
(a tiny BERT classifier trained on two packages' docstrings; a tiny BERT encoder standing in for
MiniLM, to stay fast), one epoch, and the studio's artifacts and the task's figures come out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from tests.hf_helpers import TINY_BERT, tiny_members, write_zip
from tests.text_helpers import (
    embedding_corpus,
    labelled_texts,
    train_classifier_teacher,
    word_tokenizer,
    write_jsonl,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _example(name: str, folder: Path) -> Path:
    """The example with one epoch, written into `folder` (its files are relative to it)."""
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    doc["training"].update(epochs=1, device="cpu")
    path = folder / name
    path.write_text(yaml.safe_dump(doc))
    return path


def _train(config: Path, out: Path) -> dict[str, object]:
    result = CliRunner().invoke(app, ["train", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    files = {p.name for p in out.iterdir()}
    assert {"student.safetensors", "run.yaml", "evaluation.json", "predictions.json"} <= files
    return json.loads((out / "evaluation.json").read_text())  # type: ignore[no-any-return]


def test_the_text_classification_example_runs(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    rows = labelled_texts(80)
    train_classifier_teacher(tmp_path / "demo/docs_classifier.zip", rows, steps=20)
    write_jsonl(tmp_path / "demo/docs.jsonl", [{"text": t, "label": y} for t, y in rows])
    evaluation = _train(_example("text_classification_run.yaml", tmp_path), tmp_path / "out")
    assert 0 <= float(evaluation["agreement"]) <= 1  # type: ignore[arg-type]
    assert {"teacher_accuracy", "student_accuracy", "teacher_ece", "student_ece"} <= set(evaluation)
    samples = json.loads((tmp_path / "out/predictions.json").read_text())
    assert samples[0]["label"] in ("email", "asyncio")


def test_the_sentence_embedding_example_runs(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    texts = embedding_corpus(64)
    tok = word_tokenizer(texts)
    config = {**TINY_BERT, "vocab_size": tok.get_vocab_size(), "max_position_embeddings": 64}
    members = {**tiny_members(config), "tokenizer.json": tok.to_str().encode()}
    write_zip(tmp_path / "demo/minilm.zip", members)
    (tmp_path / "demo/sentences.txt").write_text("\n".join(texts) + "\n")
    evaluation = _train(_example("sentence_embedding_run.yaml", tmp_path), tmp_path / "out")
    assert -1 <= float(evaluation["cosine"]) <= 1  # type: ignore[arg-type]
    top1, top5 = evaluation["neighbour_top1"], evaluation["neighbour_top5"]
    assert 0 <= top1 <= top5 <= 1  # type: ignore[operator]
    assert evaluation["student_flops"] > 0  # type: ignore[operator]  # measured on token ids
