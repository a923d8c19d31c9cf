"""`distill-studio train examples/lm_run.yaml`: the causal-LM example, run without a server on
the demo teacher (`tests.lm_helpers`), 1 epoch on the first lines of the demo corpus; it writes
what a studio run stores, with both perplexities, agreement, tokens/s and the samples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from tests.lm_helpers import lm_demo_files

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "lm_run.yaml"


def test_the_lm_example_runs_standalone(tmp_path: Path) -> None:
    demo = lm_demo_files()
    (tmp_path / "demo").mkdir()
    shutil.copy(demo.teacher, tmp_path / "demo" / "lm_teacher.zip")
    demo.write_text(tmp_path / "demo" / "lm_corpus.txt", 120)
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["training"].update(epochs=1, device="cpu")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["train", str(config), "--out", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["student_architecture"] == "hf_layers"
    assert 1 < summary["teacher_perplexity"] < summary["student_perplexity"] < 512  # vocabulary
    assert 0 < summary["next_token_agreement"] <= 1
    for who in ("teacher", "student"):
        assert summary[f"{who}_tokens_per_s"] > 0 and summary[f"{who}_tokens_per_s_b32"] > 0
    assert summary["student_params"] < summary["teacher_params"]
    files = {p.name for p in out.iterdir()}
    assert {"student.safetensors", "run.yaml", "evaluation.json", "predictions.json"} <= files
    samples = json.loads((out / "predictions.json").read_text())
    assert len(samples) == 4 and {"prompt", "reference", "teacher", "student"} <= set(samples[0])
    assert [e["epoch"] for e in samples[0]["epochs"]] == [0]  # the one epoch's continuation
    # and the terminal showed them as the epoch ended, the teacher's next to the student's
    assert "samples after epoch 0:" in result.stderr, result.stderr
    assert result.stderr.count("teacher: ") == result.stderr.count("student: ") == 4


def test_a_second_train_of_the_pair_replays_the_teacher_without_loading_it(
    tmp_path: Path,
) -> None:
    """examples/lm_cache_run.yaml (`training.teacher_cache: on`, a fresh student of the
    teacher's config) twice into one folder: the first `distill-studio train` records
    OUT/teacher_cache.npz with the teacher's evaluation, the second replays every batch and the
    evaluation without loading the teacher, and says so."""
    demo = lm_demo_files()
    (tmp_path / "demo").mkdir()
    shutil.copy(demo.teacher, tmp_path / "demo" / "lm_teacher.zip")
    demo.write_text(tmp_path / "demo" / "lm_corpus.txt", 60)
    doc = yaml.safe_load((EXAMPLE.parent / "lm_cache_run.yaml").read_text())
    assert doc["training"]["teacher_cache"] == "on"
    assert doc["student"]["architecture"] == "hf_config"
    doc["training"].update(epochs=1, device="cpu")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    runs = []
    for _ in range(2):
        result = CliRunner().invoke(
            app, ["train", str(config), "--out", str(out)], catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        runs.append((json.loads(result.stdout), result.stderr))
    (first, _), (second, said) = runs
    assert first["teacher_cache"]["teacher_loaded"] == "yes"
    assert second["teacher_cache"]["teacher_loaded"] == "no"
    assert second["teacher_cache"]["recorded_batches"] == 0
    assert second["teacher_perplexity"] == first["teacher_perplexity"]
    assert "training batches replayed without the teacher; the teacher was not loaded" in said
