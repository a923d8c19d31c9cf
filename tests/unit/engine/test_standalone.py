"""`distill-studio train run.yaml --out DIR`: the API's run config, run without a server.

A small teacher is trained on the digits in a few seconds (the demo's is bigger and takes longer)
and saved where examples/digits_run.yaml expects it; the example then runs for 2 epochs through
the CLI and must write what a studio run stores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from cli.main import app
from core.config import RunConfig
from worker.engine.export import export_pt2, save_safetensors
from worker.engine.loading import load_model
from worker.engine.pipeline import build_run_student
from worker.engine.tasks.classification.data import (
    default_split,
    digits_data,
    load_dataset,
    split,
)
from worker.engine.trainer import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "digits_run.yaml"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """demo/digits_teacher.pt2 (+ .safetensors, a zoo teacher) and demo/digits.npz."""
    root = tmp_path_factory.mktemp("standalone")
    (root / "demo").mkdir()
    data = digits_data()
    config = RunConfig.model_validate(
        {
            "teacher": {"path": "-"},
            "dataset": {"path": "-"},
            "student": {"architecture": "resnet8", "kwargs": {"width": 1.0}},
            "losses": [{"name": "ce"}],
            "training": {"epochs": 2, "lr": 0.1, "device": "cpu"},
        }
    )
    teacher = train(config, nn.Identity(), *default_split(data)).student.cpu().eval()
    export_pt2(teacher, data.input_shape, root / "demo" / "digits_teacher.pt2")
    save_safetensors(teacher, root / "demo" / "digits_teacher.safetensors")
    np.savez(root / "demo" / "digits.npz", x=data.x.numpy(), y=data.y.numpy())
    return root


def _write(folder: Path, name: str, **changes: object) -> Path:
    """The example run config with `changes` (dotted keys) applied, saved in `folder`."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        node[key] = value
    path = folder / name
    path.write_text(yaml.safe_dump(doc))
    return path


def _run(*args: str) -> object:
    return CliRunner().invoke(app, ["train", *args], catch_exceptions=False)


def test_example_runs_standalone_and_writes_the_studio_artifacts(folder: Path) -> None:
    config = _write(folder, "run.yaml", training__epochs=2)
    out = folder / "out"
    result = _run(str(config), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "train" in result.stderr and "epoch 1:" in result.stderr  # the progress bar and epochs
    summary = json.loads(result.stdout)
    files = {"student.safetensors", "student.pt2", "student.onnx", "run.yaml", "evaluation.json"}
    assert files <= {p.name for p in out.iterdir()}
    assert not (out / "checkpoint.pt").exists()
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["student_top1"] == summary["student_top1"] > 0.3
    assert evaluation["epochs"] == 2 and evaluation["teacher_size_bytes"] > 0
    assert evaluation["teacher_cpu_latency_b64_ms"] > 0 and evaluation["latency_threads"] == 1
    assert evaluation["latency_form"] == "pt2"  # a .pt2 teacher: the student timed as its .pt2
    # run.yaml names the files relative to the output folder, so it runs again from there
    saved = RunConfig.from_yaml((out / "run.yaml").read_text())
    assert (out / saved.teacher.path).resolve() == (folder / "demo/digits_teacher.pt2").resolve()
    assert saved.model_dump(exclude={"teacher", "dataset"}) == RunConfig.from_yaml(
        config.read_text()
    ).model_dump(exclude={"teacher", "dataset"})
    # the ONNX student agrees with the PyTorch one on the held-out split it was evaluated on
    val = split(load_dataset(folder / "demo/digits.npz"), 0.2, saved.seed)[1]
    student = load_model(out / "student.safetensors", "safetensors").module
    session = ort.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"input": val.x.numpy()})
    with torch.inference_mode():
        torch_logits = student(val.x).numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4, rtol=1e-4)
    top1 = float((onnx_logits.argmax(1) == val.y.numpy()).mean())
    assert top1 == pytest.approx(evaluation["student_top1"], abs=1e-6)


def test_derived_student_from_a_zoo_teacher(folder: Path) -> None:
    """A safetensors teacher carries its architecture: derive a half-depth, half-width student."""
    config = _write(
        folder,
        "derived.yaml",
        teacher__path="demo/digits_teacher.safetensors",
        student={"source": "derived", "depth_factor": 0.5, "width_factor": 0.5},
        training__epochs=1,
        training__export_onnx=False,
    )
    result = _run(str(config), "--out", str(folder / "derived"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # resnet8 (width 1): depth 4 -> 8 (the smallest ResNet), width 0.5
    assert summary["student_architecture"] == "resnet8"
    assert summary["student_kwargs"] == {"width": 0.5, "input_shape": [1, 8, 8], "num_classes": 10}
    assert summary["student_params"] * 3 < summary["teacher_params"]
    assert not (folder / "derived" / "student.onnx").exists()
    assert summary["latency_form"] == "eager"  # a zoo teacher is an eager module, like the student
    assert "onnx_export_error" not in summary


def test_self_distillation_student_is_a_fresh_copy_of_the_teacher(folder: Path) -> None:
    teacher_file = folder / "demo/digits_teacher.safetensors"
    config = RunConfig.model_validate(
        {
            "teacher": {"path": str(teacher_file)},
            "dataset": {"path": "-"},
            "student": {"source": "teacher"},
        }
    )
    teacher = load_model(teacher_file, "safetensors")
    data = load_dataset(folder / "demo/digits.npz")
    student = build_run_student(config, teacher, data)
    assert (student.arch, student.arch_kwargs) == ("resnet8", {"width": 1.0})
    t_state, s_state = teacher.module.state_dict(), student.state_dict()
    assert {k: v.shape for k, v in s_state.items()} == {k: v.shape for k, v in t_state.items()}
    assert not torch.equal(s_state["conv1.weight"], t_state["conv1.weight"])  # re-initialised
    assert all(p.requires_grad for p in student.parameters())
    again = build_run_student(config, teacher, data)  # seeded with the run's seed
    assert torch.equal(again.state_dict()["conv1.weight"], s_state["conv1.weight"])


def test_errors_say_what_to_do(folder: Path) -> None:
    derived_pt2 = _write(folder, "bad.yaml", student={"source": "derived"})
    result = _run(str(derived_pt2), "--out", str(folder / "bad"))
    assert result.exit_code == 1
    assert (
        "derived students need a teacher whose architecture is in the zoo (upload it as "
        "safetensors with architecture=...)" in result.stderr
    )
    studio = _write(folder, "studio.yaml", teacher={"model_id": 3})
    result = _run(str(studio), "--out", str(folder / "bad"))
    assert result.exit_code == 1 and "pass --teacher FILE" in result.stderr


def test_an_augmented_run_through_the_cli(folder: Path) -> None:
    """`augment` in run.yaml: pad-crop, TrivialAugment and mixup on the digits, kept in the
    run.yaml the run writes."""
    augment = {"pad_crop": 1, "policy": "trivial", "mixup": 0.2}
    config = _write(
        folder, "augment.yaml", augment=augment, training__epochs=1, training__export_onnx=False
    )
    result = _run(str(config), "--out", str(folder / "augment"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["student_top1"] > 0.1
    saved = RunConfig.from_yaml((folder / "augment" / "run.yaml").read_text())
    assert saved.augment.model_dump(include=set(augment)) == augment
    table = _write(folder, "augment_bad.yaml", augment={"mixup": 0.2}, losses=[{"name": "dkd"}])
    refused = _run(str(table), "--out", str(folder / "augment_bad"))
    assert refused.exit_code != 0 and "'dkd' cannot train on mixup" in refused.output


def test_a_second_cli_run_replays_the_teacher_cache_of_the_first(folder: Path) -> None:
    """`training.teacher_cache: on` in run.yaml: the first run writes OUT/teacher_cache.npz,
    the next run into the same folder replays every batch and computes the same losses."""
    config = _write(
        folder,
        "cached.yaml",
        augment={"flip": True},
        losses=[{"name": "ce"}, {"name": "kd"}],
        layer_pairs=[],
        training__epochs=1,
        training__export_onnx=False,
        training__teacher_cache="on",
    )
    summaries = []
    for _ in range(2):
        result = _run(str(config), "--out", str(folder / "cached"))
        assert result.exit_code == 0, result.output
        summaries.append(json.loads(result.stdout))
    first, second = (s["teacher_cache"] for s in summaries)
    assert first["recorded_batches"] > 0 and first["replayed_batches"] == 0
    assert second == {**first, "recorded_batches": 0, "replayed_batches": first["recorded_batches"]}
    assert (folder / "cached" / "teacher_cache.npz").stat().st_size == first["size_bytes"]
    assert summaries[0]["student_top1"] == summaries[1]["student_top1"]


def test_a_run_on_webdataset_shards_in_a_tar(folder: Path) -> None:
    """`--dataset shards.tar`: the digits as WebDataset samples (`<key>.png` + `<key>.cls`),
    read from the tar by the run."""
    import io
    import tarfile

    from PIL import Image

    data = digits_data()
    path = folder / "digits_shards.tar"
    with tarfile.open(path, "w") as tf:
        for i, (x, y) in enumerate(zip(data.x, data.y, strict=True)):
            png = io.BytesIO()
            pixels = (x[0].numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels, "L").save(png, format="PNG")
            for name, blob in ((f"{i:05d}.png", png.getvalue()), (f"{i:05d}.cls", b"%d" % y)):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tf.addfile(info, io.BytesIO(blob))
    config = _write(folder, "shards.yaml", training__epochs=1, training__export_onnx=False)
    out = folder / "shards"
    result = _run(str(config), "--out", str(out), "--dataset", str(path))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["student_top1"] > 0.1  # one epoch
    saved = RunConfig.from_yaml((out / "run.yaml").read_text())
    assert saved.dataset.path is not None and saved.dataset.path.endswith("digits_shards.tar")


def test_a_run_on_two_processes_through_the_cli(folder: Path) -> None:
    """`training.gpus: 2` in run.yaml on CPU: 2 gloo processes (the DDP path), one progress
    report per epoch (rank 0's), the usual artifacts. The device is `cpu`, not `auto`: on a
    one-GPU machine `auto` means that GPU, and 2 of them are refused (seen on an H200)."""
    config = _write(
        folder,
        "ddp.yaml",
        training__epochs=1,
        training__gpus=2,
        training__device="cpu",
        training__export_onnx=False,
    )
    out = folder / "ddp"
    result = _run(str(config), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stderr.count("epoch 0:") == 1  # metrics reported once
    assert json.loads(result.stdout)["student_top1"] > 0.1  # one epoch
    assert RunConfig.from_yaml((out / "run.yaml").read_text()).training.gpus == 2
    assert {"student.safetensors", "student.pt2"} <= {p.name for p in out.iterdir()}
