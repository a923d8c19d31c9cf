"""A Hugging Face transformer's inspection on the model page (format "hf"): its model type and
sizes, and its layers grouped as the worker grouped them (`worker.engine.hf_teacher`): the
embeddings, each block with its attention and MLP, and the head."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from client import Inspection
from ui import components as ui

PARTS = {"embeddings": "Embeddings", "head": "Head", "body": "Body", "other": "Other layers"}


def facts(inspection: Inspection) -> list[tuple[str, str]]:
    """(label, value) of the transformer's facts, in words."""
    get = inspection.model_extra or {}

    def num(key: str) -> str:
        value = get.get(key)
        return "—" if value is None else f"{value:,}"

    return [
        ("Model type", f"{get.get('model_type', '—')} ({get.get('architecture', '—')})"),
        ("Parameters", ui.fmt_count(inspection.params)),
        ("Layers", num("num_layers")),
        ("Hidden size", num("hidden_size")),
        ("Attention heads", num("num_heads")),
        ("Max positions", num("max_positions")),
        ("Vocabulary (model)", num("vocab_size")),
        ("Vocabulary (tokenizer)", num("tokenizer_vocab_size")),
    ]


def _frame(layers: list[Any]) -> pd.DataFrame:
    rows = [
        {
            "path": layer.path,
            "part": (layer.model_extra or {}).get("part"),
            "type": layer.type,
            "output": ui.fmt_shape(layer.output_shape),
            "params": layer.params,
        }
        for layer in layers
    ]
    return pd.DataFrame(rows, columns=["path", "part", "type", "output", "params"])


def show(inspection: Inspection, key: str) -> None:
    """The facts as metrics, then one expander for the embeddings, each block and the head."""
    shown = facts(inspection)
    for start in range(0, len(shown), 4):
        for col, (label, value) in zip(st.columns(4), shown[start : start + 4], strict=False):
            col.metric(label, value)
    extra = inspection.model_extra or {}
    if extra.get("tokenizer_vocab_size") is None:
        st.caption("No tokenizer.json in the checkpoint: text tasks will need one.")
    blocks = {b["index"]: b for b in extra.get("blocks") or []}
    groups: dict[Any, list[Any]] = {}
    for layer in inspection.layers:
        own = layer.model_extra or {}
        block = own.get("block")
        groups.setdefault(block if block is not None else own.get("part"), []).append(layer)
    config = {"params": st.column_config.NumberColumn("params", format="localized")}
    order = ["embeddings", "body", *sorted(blocks), "head", "other"]
    for group in [g for g in order if g in groups]:
        if isinstance(group, int):
            b = blocks[group]
            title = (
                f"Block {group} · `{b['path']}` · attention "
                f"{', '.join(f'`{p}`' for p in b['attention']) or '—'} · MLP "
                f"{', '.join(f'`{p}`' for p in b['mlp']) or '—'} · {b['params']:,} parameters"
            )
        else:
            title = f"{PARTS.get(str(group), str(group))} · {len(groups[group])} layers"
        with st.expander(title, expanded=False):
            st.dataframe(
                _frame(groups[group]), hide_index=True, column_config=config, key=f"{key}-{group}"
            )


NO_TASK = (
    "A Hugging Face transformer reads token ids, so it needs a text task; none of this studio's "
    "tasks reads text yet, so it cannot teach a run. Its blocks are listed below."
)
