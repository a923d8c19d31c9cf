"""Hugging Face checkpoints as teachers (`worker.engine.hf_teacher`): the real MiniLM-L6 loads
to the same outputs transformers' own safetensors loading gives and is inspected into blocks;
each bad or hostile zip is refused with a message that says what to do."""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from core.hf import SUPPORTED_MODEL_TYPES, text_task_refusal
from tests.hf_helpers import (
    TINY_BERT,
    TINY_GPT2,
    folder_members,
    minilm_folder,
    tiny_members,
    write_zip,
)
from worker.engine.hf_teacher import inspect_hf, load_checkpoint, load_hf, model_classes
from worker.engine.loading import ModelLoadError, UnsafeModelError, load_model


@pytest.fixture(scope="module")
def minilm_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("minilm")
    return write_zip(tmp / "minilm.zip", folder_members(minilm_folder(), "all-MiniLM-L6-v2"))


@pytest.fixture(scope="module")
def minilm_inspection(minilm_zip: Path) -> dict:
    return inspect_hf(minilm_zip)


def test_minilm_loads_to_the_outputs_transformers_gives(minilm_zip: Path) -> None:
    from transformers import BertModel

    ours = load_model(minilm_zip, "hf").module
    theirs = BertModel.from_pretrained(str(minilm_folder()), use_safetensors=True).eval()
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 6251, 102]])
    with torch.no_grad():
        a = ours(input_ids=ids).last_hidden_state
        b = theirs(input_ids=ids).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert not any(p.requires_grad for p in ours.parameters())


def test_minilm_inspection_names_type_sizes_and_blocks(minilm_inspection: dict) -> None:
    insp = minilm_inspection
    assert insp["model_type"] == "bert" and insp["architecture"] == "BertModel"
    assert (insp["hidden_size"], insp["num_layers"], insp["num_heads"]) == (384, 6, 12)
    assert insp["max_positions"] == 512
    assert insp["vocab_size"] == insp["tokenizer_vocab_size"] == 30522
    assert 22_000_000 < insp["params"] < 23_000_000  # all-MiniLM-L6-v2: 22.7M
    assert [b["path"] for b in insp["blocks"]] == [f"encoder.layer.{i}" for i in range(6)]
    first = insp["blocks"][0]
    assert first["attention"] == ["encoder.layer.0.attention"]
    assert first["mlp"] == ["encoder.layer.0.intermediate", "encoder.layer.0.output"]
    assert insp["embeddings"] == ["embeddings"] and insp["head"] == ["pooler"]
    rows = {r["path"]: r for r in insp["layers"]}
    assert rows["encoder.layer.3.attention.self.query"]["block"] == 3
    assert rows["encoder.layer.3.attention.self.query"]["part"] == "attention"
    assert rows["encoder.layer.5.intermediate.dense"]["output_shape"] == [8, 1536]
    assert rows["embeddings.word_embeddings"]["params"] == 30522 * 384
    json.dumps(insp)  # stored as JSON


def test_a_gpt2_with_tied_head_loads_and_is_grouped(tmp_path: Path) -> None:
    insp = inspect_hf(write_zip(tmp_path / "gpt2.zip", tiny_members(TINY_GPT2)))
    assert insp["model_type"] == "gpt2" and insp["num_layers"] == 2
    assert [b["path"] for b in insp["blocks"]] == ["transformer.h.0", "transformer.h.1"]
    assert insp["blocks"][1]["attention"] == ["transformer.h.1.attn"]
    assert insp["blocks"][1]["mlp"] == ["transformer.h.1.mlp"]
    assert insp["output_shape"] == [8, 120]  # logits over the vocabulary
    assert "lm_head" in insp["head"]


def test_sharded_weights_with_their_index_load(tmp_path: Path) -> None:
    from safetensors.torch import load, save

    members = tiny_members(TINY_BERT)
    state = load(members.pop("model.safetensors"))
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half]}
    shards["model-00002-of-00002.safetensors"] = names[half:]
    for file, keys in shards.items():
        members[file] = save({k: state[k] for k in keys})
    weight_map = {k: f for f, keys in shards.items() for k in keys}
    members["model.safetensors.index.json"] = json.dumps({"weight_map": weight_map}).encode()
    loaded = load_checkpoint(write_zip(tmp_path / "sharded.zip", members))
    got = loaded.module.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in names)


# -- refusals -----------------------------------------------------------------------------------


def refused(tmp_path: Path, members: dict[str, bytes], error: type[Exception]) -> str:
    with pytest.raises(error) as info:
        load_hf(write_zip(tmp_path / "bad.zip", members))
    return str(info.value)


def test_no_config_json_is_refused(tmp_path: Path) -> None:
    members = tiny_members(TINY_BERT)
    del members["config.json"]
    assert "no config.json" in refused(tmp_path, members, ModelLoadError)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "training_args.bin", "sub/weights.ckpt"])
def test_pickled_members_are_refused_with_convert_to_safetensors(tmp_path: Path, name: str) -> None:
    members = {**tiny_members(TINY_BERT), name: b"\x80\x04K\x01."}
    message = refused(tmp_path, members, UnsafeModelError)
    assert name in message and "convert it to safetensors" in message


def test_a_bin_checkpoint_alone_is_refused_before_anything_else(tmp_path: Path) -> None:
    members = {"config.json": json.dumps(TINY_BERT).encode(), "pytorch_model.bin": b"x"}
    assert "convert it to safetensors" in refused(tmp_path, members, UnsafeModelError)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("auto_map", {"AutoModel": "modeling_evil.EvilModel"}),
        ("trust_remote_code", True),
    ],
)
def test_remote_code_configs_are_refused(tmp_path: Path, key: str, value: object) -> None:
    members = tiny_members(TINY_BERT)
    members["config.json"] = json.dumps({**TINY_BERT, key: value}).encode()
    message = refused(tmp_path, members, UnsafeModelError)
    assert key in message and "remote code" in message


def test_python_files_are_refused(tmp_path: Path) -> None:
    members = {**tiny_members(TINY_BERT), "modeling_evil.py": b"import os"}
    assert "remote code" in refused(tmp_path, members, UnsafeModelError)


def test_unknown_model_type_is_refused_naming_the_supported(tmp_path: Path) -> None:
    members = tiny_members(TINY_BERT)
    members["config.json"] = json.dumps({**TINY_BERT, "model_type": "t5"}).encode()
    message = refused(tmp_path, members, ModelLoadError)
    assert "'t5' is not supported" in message
    assert all(t in message for t in SUPPORTED_MODEL_TYPES)


def test_an_architecture_of_another_model_type_is_refused(tmp_path: Path) -> None:
    members = tiny_members(TINY_BERT)
    members["config.json"] = json.dumps({**TINY_BERT, "architectures": ["os.system"]}).encode()
    message = refused(tmp_path, members, ModelLoadError)
    assert "'os.system' is not a bert model" in message and "BertModel" in message


def test_tokenizer_bigger_than_the_embedding_is_refused_with_both_numbers(tmp_path: Path) -> None:
    members = tiny_members(TINY_BERT)  # vocab_size 120
    members["tokenizer.json"] = (minilm_folder() / "tokenizer.json").read_bytes()  # 30522
    message = refused(tmp_path, members, ModelLoadError)
    assert "30522 tokens" in message and "vocab_size is 120" in message


def test_weights_of_other_shapes_are_refused_naming_them(tmp_path: Path) -> None:
    members = tiny_members({**TINY_BERT, "hidden_size": 32, "intermediate_size": 64})
    members["config.json"] = json.dumps(TINY_BERT).encode()  # says hidden 16
    message = refused(tmp_path, members, ModelLoadError)
    assert "shape mismatches" in message and "file [120, 32] vs config [120, 16]" in message


def test_weights_of_another_model_are_refused_naming_missing_tensors(tmp_path: Path) -> None:
    members = tiny_members(TINY_GPT2)
    members["config.json"] = json.dumps(TINY_BERT).encode()
    message = refused(tmp_path, members, ModelLoadError)
    assert "missing (e.g. embeddings" in message and "unexpected" in message


def test_no_weights_is_refused(tmp_path: Path) -> None:
    members = tiny_members(TINY_BERT)
    del members["model.safetensors"]
    assert "has no weights" in refused(tmp_path, members, ModelLoadError)


@pytest.mark.parametrize("name", ["../config.json", "/etc/config.json", "a\\..\\config.json"])
def test_traversal_names_are_refused(tmp_path: Path, name: str) -> None:
    members = {**tiny_members(TINY_BERT), name: b"{}"}
    assert name in refused(tmp_path, members, UnsafeModelError)


def test_symbolic_links_are_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "link.zip", tiny_members(TINY_BERT))
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo("tokenizer.json")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeModelError, match="symbolic link"):
        load_hf(path)


def test_a_zip_bomb_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in tiny_members(TINY_BERT).items():
            zf.writestr(name, data)
        zf.writestr("README.md", b"\0" * (64 << 20))  # 64 MiB of zeros packs ~1000x
    with pytest.raises(UnsafeModelError, match="zip bomb"):
        load_hf(path)


def test_a_shard_index_naming_a_path_outside_is_refused(tmp_path: Path) -> None:
    members = tiny_members(TINY_BERT)
    members.pop("model.safetensors")
    index = {"weight_map": {"embeddings.word_embeddings.weight": "../../etc/x.safetensors"}}
    members["model.safetensors.index.json"] = json.dumps(index).encode()
    assert "beside the index" in refused(tmp_path, members, UnsafeModelError)


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.zip"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(ModelLoadError, match="not a readable zip"):
        load_hf(path)


def test_model_classes_are_the_families_own() -> None:
    assert "BertModel" in model_classes("bert")
    assert "LlamaForCausalLM" in model_classes("llama")
    assert all(n.startswith("Qwen2") for n in model_classes("qwen2"))


def test_the_image_tasks_refuse_a_transformer_teacher_naming_the_tasks() -> None:
    from core.catalog import TASKS

    message = text_task_refusal("model 3 ('minilm')", "classification")
    assert message is not None and "needs a text task" in message
    assert all(name in message for name in TASKS)


def test_distill_studio_train_refuses_a_transformer_teacher_for_an_image_task(
    tmp_path: Path,
) -> None:
    """The run-config door: `distill-studio train run.yaml` with the checkpoint's .zip."""
    import numpy as np
    import yaml
    from typer.testing import CliRunner

    from cli.main import app

    write_zip(tmp_path / "bert.zip", tiny_members(TINY_BERT))
    np.savez(tmp_path / "data.npz", x=np.zeros((8, 4), np.float32), y=np.arange(8) % 2)
    config = {
        "teacher": {"path": "bert.zip"},
        "dataset": {"path": "data.npz"},
        "student": {"architecture": "mlp"},
        "training": {"epochs": 1, "device": "cpu", "export_onnx": False},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "the teacher is a Hugging Face transformer" in result.output
    assert "needs a text task" in result.output and "classification" in result.output
