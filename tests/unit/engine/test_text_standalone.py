"""`distill-studio train` runs the text examples (examples/text_classification_run.yaml,
examples/sentence_embedding_run.yaml) without a server: the files they name are written here
(a tiny BERT classifier trained on two packages' docstrings; a tiny BERT encoder standing in for
MiniLM, to stay fast), one epoch, and the studio's artifacts and the task's figures come out."""

from __future__ import annotations

import json
import re
import zipfile
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

    # attention_kl on a pair whose teacher layer holds no attention: refused before training
    doc = yaml.safe_load((tmp_path / "text_classification_run.yaml").read_text())
    doc["layer_pairs"] = [
        {"teacher": "bert.encoder.layer.1.output", "student": "bert.encoder.layer.1"}
    ]
    doc["losses"].append({"name": "attention_kl"})
    (tmp_path / "attention.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "refused"
    refused = CliRunner().invoke(
        app, ["train", str(tmp_path / "attention.yaml"), "--out", str(out)]
    )
    assert refused.exit_code == 1, refused.output
    assert "teacher layer 'bert.encoder.layer.1.output' holds no attention" in refused.output
    assert not (out / "checkpoint.pt").exists() and not (out / "student.safetensors").exists()


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


def test_a_sentence_embedding_student_with_its_own_tokenizer(tmp_path: Path) -> None:
    """A registered student whose tokenizer is not the teacher's (a byte-level BPE against the
    teacher's word-level one) learns the teacher's sentence embeddings: it reads each batch
    re-tokenised with its own tokenizer, and its Hugging Face export carries that tokenizer. A
    loss on token-level features (layer pairs) is refused for it, saying why."""
    import torch
    import transformers

    from worker.engine.tasks.text.lm_demo import train_tokenizer

    texts = embedding_corpus(96)
    words = word_tokenizer(texts)
    teacher = {**TINY_BERT, "vocab_size": words.get_vocab_size(), "max_position_embeddings": 64}
    write_zip(
        tmp_path / "teacher.zip",
        {**tiny_members(teacher), "tokenizer.json": words.to_str().encode()},
    )
    bpe = train_tokenizer(texts, 300)
    student = {**TINY_BERT, "vocab_size": 300, "max_position_embeddings": 64}
    write_zip(
        tmp_path / "student.zip",
        {**tiny_members(student, seed=1), "tokenizer.json": bpe.to_str().encode()},
    )
    (tmp_path / "sentences.txt").write_text("\n".join(texts) + "\n")
    doc = {
        "name": "own-tokenizer",
        "task": "sentence_embedding",
        "task_params": {"max_length": 32},
        "teacher": {"path": "teacher.zip", "format": "hf"},
        "dataset": {"path": "sentences.txt", "val_fraction": 0.25},
        "student": {"source": "model", "model": {"path": "student.zip", "format": "hf"}},
        "losses": [{"name": "embedding_mse"}, {"name": "embedding_cosine"}],
        "training": {
            "epochs": 3, "batch_size": 16, "optimizer": "adamw", "lr": 0.003, "device": "cpu",
            "export_onnx": False,
        },
    }  # fmt: skip
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["train", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((out / "evaluation.json").read_text())
    losses = [float(v) for v in re.findall(r"train/loss=([0-9.]+)", result.output)]
    cosines = [float(v) for v in re.findall(r"val/cosine=([-0-9.]+)", result.output)]
    print("own tokenizer: train/loss", losses, "val/cosine", cosines)
    assert len(losses) == 3 and losses[-1] < losses[0]  # it learns through its own tokens
    assert cosines[-1] > cosines[0]
    assert -1 <= evaluation["cosine"] <= 1
    with zipfile.ZipFile(out / "student_hf.zip") as zf:
        shipped = json.loads(zf.read("tokenizer.json"))
    assert shipped["model"]["type"] == "BPE"  # the student's tokenizer, not the teacher's
    folder = tmp_path / "student_hf"
    zipfile.ZipFile(out / "student_hf.zip").extractall(folder)
    model = transformers.AutoModel.from_pretrained(folder)
    assert model.config.vocab_size == 300
    ids = torch.tensor([bpe.encode(texts[0]).ids])
    assert model(input_ids=ids).last_hidden_state.shape[-1] == TINY_BERT["hidden_size"]

    doc["losses"] = [{"name": "hidden_mse"}]
    doc["layer_pairs"] = [{"teacher": "encoder.layer.1", "student": "encoder.layer.1"}]
    config.write_text(yaml.safe_dump(doc))
    refused = CliRunner().invoke(app, ["train", str(config), "--out", str(tmp_path / "out2")])
    assert refused.exit_code != 0
    assert "its own tokenizer" in refused.output and "hidden_mse" in refused.output


def test_a_bert_miniature_student_from_a_size_preset(tmp_path: Path) -> None:
    """`student: {architecture: hf_config, kwargs: {size: tiny}}` on a causal LM: a fresh
    2-block, 128-wide GPT-2 (Turc et al.'s BERT-Tiny shape, of the teacher's type) is trained
    and exported so."""
    from tests.unit.engine.lm_support import lm_run

    lm_run(tmp_path)  # writes the tiny GPT-2 teacher (teacher0.zip) and corpus.txt
    doc = {
        "task": "causal_lm",
        "task_params": {"max_length": 24},
        "teacher": {"path": "teacher0.zip", "format": "hf"},
        "dataset": {"path": "corpus.txt"},
        "student": {"architecture": "hf_config", "kwargs": {"size": "tiny"}},
        "losses": [{"name": "kd"}],
        "training": {"epochs": 1, "batch_size": 8, "device": "cpu", "export_onnx": False},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(doc))
    summary = _train(tmp_path / "run.yaml", tmp_path / "out")
    assert summary["student_params"] > summary["teacher_params"]  # 128 wide against 16
    with zipfile.ZipFile(tmp_path / "out" / "student_hf.zip") as zf:
        config = json.loads(zf.read("config.json"))
    assert (config["model_type"], config["n_layer"], config["n_embd"]) == ("gpt2", 2, 128)
    assert config["n_head"] == 2 and config["n_inner"] == 512
