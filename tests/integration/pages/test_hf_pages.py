"""Hugging Face checkpoints on the pages: the Models page uploads a checkpoint .zip as format hf
(no architecture form), and the model page shows the transformer's inspection: its type and
sizes, and its layers by block (embeddings, each block's attention and MLP, the head), and
offers it as the teacher of a new run (the text tasks read token ids)."""

from __future__ import annotations

from pathlib import Path

import pytest

from client import Client
from tests.hf_helpers import TINY_GPT2, tiny_members, write_zip, zip_bytes
from tests.integration.pages.conftest import LiveApi
from tests.integration.pages.support import texts, update
from tests.integration.pages.test_run_workflow import Studio, _app, _seed
from worker.engine.hf_teacher import inspect_hf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studio(live_api: LiveApi) -> Studio:
    api = Client(live_api.url, live_api.token)
    return _seed(live_api.env, api, live_api.url, live_api.token, live_api.env.data_dir)


def test_the_models_page_uploads_a_checkpoint_zip(studio: Studio) -> None:
    at = _app(studio, "models.py")
    data = zip_bytes(tiny_members(TINY_GPT2))
    at.file_uploader(key="up_file").set_value(("tiny-gpt2.zip", data, "application/zip"))
    at.run()
    assert not at.exception and not at.error
    assert "up_arch" not in {s.key for s in at.selectbox}  # the config names the architecture
    at.text_input(key="up_name").set_value("gpt2-from-ui")
    at.button(key="up_submit").click().run()
    assert not at.exception
    assert "gpt2-from-ui" in texts(at.title)  # now on the model page
    models = Client(studio.url, studio.token).list_models().items
    assert next(m for m in models if m.name == "gpt2-from-ui").format == "hf"


def test_the_model_page_shows_type_sizes_and_blocks(studio: Studio, tmp_path: Path) -> None:
    path = write_zip(tmp_path / "tiny-gpt2.zip", tiny_members(TINY_GPT2))
    model = Client(studio.url, studio.token).upload_model(path, "tiny-gpt2")
    assert model.format == "hf"
    inspection = inspect_hf(path)  # what the worker records
    update("Model", model.id, status="ready", inspection=inspection)
    at = _app(studio, "model.py", id=model.id)
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Model type"] == "gpt2 (GPT2LMHeadModel)"
    assert (metrics["Layers"], metrics["Hidden size"], metrics["Attention heads"]) == (
        "2",
        "16",
        "2",
    )
    assert metrics["Vocabulary (model)"] == "120" and metrics["Vocabulary (tokenizer)"] == "—"
    labels = [e.label for e in at.expander]
    assert any(label.startswith("Embeddings") for label in labels), labels
    block = next(label for label in labels if label.startswith("Block 1"))
    assert "`transformer.h.1.attn`" in block and "`transformer.h.1.mlp`" in block
    assert any(label.startswith("Head") for label in labels), labels
    # text tasks read token ids now: the page offers the checkpoint as a teacher
    assert any(link.label == "Distil this teacher" for link in at.get("page_link"))
