"""A text student exported as a Hugging Face checkpoint zip (worker/engine/tasks/text/export_hf.py):
`transformers` loads the unzipped folder with `from_pretrained` and `load_hf` reads the zip back
as a teacher, both giving the student's outputs; tied weights, class names, the teacher's
tokenizer files, a pruned GQA student and the real MiniLM-L6 round trip."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from tests.hf_helpers import (
    TINY_BERT,
    TINY_GPT2,
    folder_members,
    minilm_folder,
    tiny_members,
    write_zip,
)
from worker.engine.hf_teacher import load_hf
from worker.engine.tasks.text.export_hf import FILENAME, HfExportError, export_hf
from worker.engine.tasks.text.models import PAD, TokenModel
from worker.engine.tasks.text.prune import prune

TOKENIZER_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}


def word_tokenizer(size: int = 100) -> Tokenizer:
    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(size - 1)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def teacher_zip(tmp_path: Path, config: dict[str, Any], name: str = "teacher.zip") -> Path:
    members = {
        **tiny_members(config),
        "tokenizer.json": word_tokenizer().to_str().encode(),
        "tokenizer_config.json": json.dumps(TOKENIZER_CONFIG).encode(),
    }
    return write_zip(tmp_path / name, members)


def ids() -> torch.Tensor:
    out = torch.randint(1, 100, (3, 9), generator=torch.Generator().manual_seed(3))
    out[1, 5:] = PAD
    return out


def run(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)  # type: ignore[no-any-return]


def unzip(path: Path, dest: Path) -> Path:
    with zipfile.ZipFile(path) as zf:
        zf.extractall(dest)
    return dest


def hf_outputs(model: Any, x: torch.Tensor) -> torch.Tensor:
    mask = x != PAD
    with torch.no_grad():
        return model(input_ids=x.clamp_min(0), attention_mask=mask.long()).logits  # type: ignore[no-any-return]


def test_a_gpt2_student_round_trips_through_from_pretrained_and_load_hf(tmp_path: Path) -> None:
    teacher = load_hf(teacher_zip(tmp_path, TINY_GPT2))
    student = TokenModel(teacher.module).eval()
    out = tmp_path / "out"
    out.mkdir()
    assert export_hf(student, out, teacher.tokenizer, tmp_path / "teacher.zip") == {
        "student_hf": FILENAME
    }
    assert [p.name for p in out.iterdir()] == [FILENAME]  # no folder left behind
    folder = unzip(out / FILENAME, tmp_path / "unzipped")
    names = sorted(p.name for p in folder.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(
        names
    )
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    assert (config["n_layer"], config["n_embd"]) == (2, 16)
    want = run(student, ids())
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert torch.allclose(hf_outputs(loaded, ids()), want, atol=1e-6)
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()  # tied
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert tok("w3 w7")["input_ids"] == [4, 8]
    again = load_hf(out / FILENAME)  # a later run's teacher
    assert again.format == "hf" and again.tokenizer.get_vocab() == teacher.tokenizer.get_vocab()
    assert torch.allclose(run(TokenModel(again.module), ids()), want, atol=1e-6)


def test_a_classifier_names_its_classes(tmp_path: Path) -> None:
    config = {**TINY_BERT, "architectures": ["BertForSequenceClassification"], "num_labels": 3}
    teacher = load_hf(teacher_zip(tmp_path, config))
    student = TokenModel(teacher.module).eval()
    export_hf(student, tmp_path, teacher.tokenizer, None, ["neg", "neu", "pos"])
    folder = unzip(tmp_path / FILENAME, tmp_path / "unzipped")
    assert json.loads((folder / "config.json").read_text())["id2label"] == {
        "0": "neg", "1": "neu", "2": "pos"
    }  # fmt: skip
    assert not (folder / "tokenizer_config.json").exists()  # no teacher zip given: tokenizer.json
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert torch.allclose(hf_outputs(loaded, ids()), run(student, ids()), atol=1e-6)
    again = load_hf(tmp_path / FILENAME)
    assert again.num_classes == 3 and again.config["id2label"]["2"] == "pos"


def test_a_pruned_llama_student_loads_back(tmp_path: Path) -> None:
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 120,
        "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32,
    }  # fmt: skip
    teacher = load_hf(teacher_zip(tmp_path, config))
    pruned, _, _ = prune(TokenModel(teacher.module), ids(), layers=2, heads=2, hidden=12)
    student = TokenModel(pruned).eval()
    export_hf(student, tmp_path, teacher.tokenizer, tmp_path / "teacher.zip")
    again = load_hf(tmp_path / FILENAME)
    assert (again.config["num_hidden_layers"], again.config["num_key_value_heads"]) == (2, 1)
    assert again.config["hidden_size"] == 12 and again.config["head_dim"] == 4
    assert torch.allclose(run(TokenModel(again.module), ids()), run(student, ids()), atol=1e-5)


def test_the_real_minilm_round_trips_with_its_tokenizer_files(tmp_path: Path) -> None:
    teacher_path = write_zip(tmp_path / "minilm.zip", folder_members(minilm_folder(), "minilm"))
    teacher = load_hf(teacher_path)
    student = TokenModel(teacher.module, "mean_pool").eval()
    export_hf(student, tmp_path, teacher.tokenizer, teacher_path)
    with zipfile.ZipFile(tmp_path / FILENAME) as zf:
        names = set(zf.namelist())
    assert {"tokenizer.json", "tokenizer_config.json", "vocab.txt"} <= names
    again = load_hf(tmp_path / FILENAME)
    x = torch.tensor([teacher.tokenizer.encode("a studio that distils models").ids])
    assert torch.allclose(run(TokenModel(again.module, "mean_pool"), x), run(student, x), atol=1e-5)


def test_a_model_that_is_not_a_transformer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HfExportError, match="not a transformers model"):
        export_hf(torch.nn.Linear(3, 2), tmp_path)


@pytest.mark.slow
def test_a_causal_lm_run_prunes_exports_and_its_student_teaches_the_next_run(
    tmp_path: Path,
) -> None:
    """run_distillation end to end: an hf_pruned student (Minitron) of a tiny GPT-2, its
    student_hf.zip holding the trained weights, read back by load_hf as the next run's teacher."""
    from safetensors.torch import load_file

    from tests.unit.engine.lm_support import GPT2, corpus, lm_config
    from worker.engine.pipeline import run_distillation
    from worker.engine.tasks.text.lm_demo import train_tokenizer

    lines = list(corpus())
    tokenizer = train_tokenizer(lines, GPT2["vocab_size"])
    members = {**tiny_members(GPT2), "tokenizer.json": tokenizer.to_str().encode()}
    teacher = write_zip(tmp_path / "teacher.zip", members)
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(lines[:24]) + "\n", encoding="utf-8")
    pruned = {"layers": 1, "heads": 1, "intermediate": 24, "calibration_rows": 16}
    config = lm_config(losses=[{"name": "kd"}], epochs=1)
    config = config.model_copy(
        update={"student": config.student.model_copy(update={"architecture": "hf_pruned",
                                                              "kwargs": pruned})}
    )  # fmt: skip
    result = run_distillation(config, teacher, text, tmp_path / "run1")
    assert result["student_architecture"] == "hf_pruned"
    assert result["artifacts"]["student_hf"] == FILENAME
    for kind in ("student_pt2",):  # written, or why not said (ONNX: test_students)
        error = result.get(f"{kind.removeprefix('student_')}_export_error")
        assert (kind in result["artifacts"]) != bool(error), (kind, error)
    student = load_hf(tmp_path / "run1" / FILENAME)
    assert (student.config["n_layer"], student.config["n_head"]) == (1, 1)
    assert (student.config["n_embd"], student.config["n_inner"]) == (8, 24)
    trained = load_file(str(tmp_path / "run1" / "student.safetensors"))
    state = student.module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.items() if k in state)
    config2 = config.model_copy(
        update={"student": config.student.model_copy(update={"architecture": "hf_layers",
                                                              "kwargs": {"layers": 1}}),
                "training": config.training.model_copy(update={"export_onnx": False})}
    )  # fmt: skip
    again = run_distillation(config2, tmp_path / "run1" / FILENAME, text, tmp_path / "run2")
    assert again["artifacts"]["student_hf"] == FILENAME and again["epochs"] == 1


def test_pt2_and_onnx_exports_of_a_text_student_take_any_length(tmp_path: Path) -> None:
    """A text task leaves the sequence dimension dynamic (`TextTask.export_dims`): the .pt2
    and ONNX graphs traced on 16 tokens give the model's logits at 10 and 24 tokens too."""
    import numpy as np
    import onnxruntime as ort

    from worker.engine.export import export_onnx, export_pt2
    from worker.engine.tasks import build_task

    task = build_task("causal_lm", max_length=24)
    teacher = load_hf(teacher_zip(tmp_path, TINY_GPT2))
    student = TokenModel(teacher.module).eval()
    export_pt2(student, (24,), tmp_path / "s.pt2", task)
    export_onnx(student, (24,), tmp_path / "s.onnx", task)
    graph = torch.export.load(str(tmp_path / "s.pt2")).module()
    session = ort.InferenceSession(str(tmp_path / "s.onnx"))
    for length in (10, 24):
        x = torch.randint(0, 100, (3, length), generator=torch.Generator().manual_seed(length))
        want = run(student, x)
        assert torch.allclose(graph(x), want, atol=1e-5)
        got = session.run(None, {"input": x.numpy()})[0]
        assert np.allclose(got, want.numpy(), atol=1e-4)
    # every operator of the saved graph passes the studio's upload rules (GPT-2's attention
    # leaves an in-place `detach_` that the export takes out)
    from worker.engine.operators import graph_refusals

    saved = torch.export.load(str(tmp_path / "s.pt2"))
    assert list(graph_refusals(saved.graph_module)) == []
