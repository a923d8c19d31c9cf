"""The generation (image-to-image) task: its datasets and refusals, PSNR and SSIM, the student,
its losses, a short distillation with output and feature losses, and the exports."""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from core.catalog.tasks import task_losses, task_students
from core.config import RunConfig
from worker.engine.datasets import DatasetError
from worker.engine.losses.base import LossContext, StepOutputs
from worker.engine.losses.generation import ReconstructionL1, TargetL1
from worker.engine.students import build_student
from worker.engine.tasks import build_task, dataset_task
from worker.engine.tasks.base import IncompatibleDataError
from worker.engine.tasks.generation import GenerationTask
from worker.engine.tasks.generation.data import (
    GenData,
    describe_dataset,
    load_dataset,
    synthetic_digits,
    write_npz,
    write_zip,
)
from worker.engine.tasks.generation.metrics import psnr, ssim
from worker.engine.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> GenData:
    return synthetic_digits(48, seed=3)


def _png(array: np.ndarray, mode: str = "L") -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, format="PNG")
    return out.getvalue()


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


GREY = np.zeros((6, 8), np.uint8)


# ----------------------------------------------------------------------------------------------
# data


def test_synthetic_digits_are_noisy_inputs_of_clean_targets(digits: GenData) -> None:
    assert digits.x.shape == digits.y.shape == (48, 1, 16, 16)  # type: ignore[union-attr]
    assert 0.0 <= float(digits.x.min()) and float(digits.x.max()) <= 1.0
    assert 10.0 < float(psnr(digits.x, digits.y).mean()) < 20.0  # type: ignore[arg-type]
    again = synthetic_digits(48, seed=3)
    assert torch.equal(again.x, digits.x)


def test_npz_and_zip_read_the_same_data(digits: GenData, tmp_path: Path) -> None:
    from_npz = load_dataset(write_npz(digits, tmp_path / "d.npz"))
    from_zip = load_dataset(write_zip(digits, tmp_path / "d.zip"))
    assert torch.equal(from_npz.x, digits.x) and from_npz.out_channels == 1
    assert torch.allclose(from_zip.x, digits.x, atol=0.5 / 255 + 1e-6)  # PNG: 8 bits
    assert torch.allclose(from_zip.y, digits.y, atol=0.5 / 255 + 1e-6)  # type: ignore[arg-type]


def test_inputs_only_are_allowed(digits: GenData, tmp_path: Path) -> None:
    inputs_only = GenData(digits.x, None, 1)
    data = load_dataset(write_zip(inputs_only, tmp_path / "in.zip"))
    assert data.y is None and len(data) == 48
    info = describe_dataset(write_npz(inputs_only, tmp_path / "in.npz"))
    assert info["has_targets"] is False and info["target_shape"] is None
    assert info["preview"]["samples"][0]["label"] == "input (no target)"
    batch = GenerationTask().batch(data, torch.arange(4), torch.device("cpu"))
    assert batch.inputs.shape == (4, 1, 16, 16) and batch.targets.shape == (4, 0)


def test_the_scan_finds_the_generation_task(digits: GenData, tmp_path: Path) -> None:
    """dataset_task picks generation for its layouts, and leaves a classifier's .npz (x, y
    labels) and a segmentation .npz (x, masks) to their tasks."""
    npz, zipped = write_npz(digits, tmp_path / "g.npz"), write_zip(digits, tmp_path / "g.zip")
    assert isinstance(dataset_task("npz", npz), GenerationTask)
    assert isinstance(dataset_task("zip", zipped), GenerationTask)
    np.savez(tmp_path / "cls.npz", x=np.zeros((4, 1, 8, 8), np.float32), y=np.arange(4))
    assert type(dataset_task("npz", tmp_path / "cls.npz")).__name__ == "ClassificationTask"
    np.savez(tmp_path / "seg.npz", x=np.zeros((4, 1, 8, 8)), masks=np.zeros((4, 8, 8), np.uint8))
    assert type(dataset_task("npz", tmp_path / "seg.npz")).__name__ == "SegmentationTask"
    info = describe_dataset(zipped)
    assert info["task"] == "generation" and info["input_shape"] == [1, 16, 16]
    assert info["target_shape"] == [1, 16, 16] and info["num_samples"] == 48
    sample = info["preview"]["samples"][0]
    assert sample["label"] == "input | target"
    with Image.open(io.BytesIO(__import__("base64").b64decode(sample["data"]))) as img:
        assert img.size[0] > img.size[1]  # input and target side by side


@pytest.mark.parametrize(
    ("files", "match"),
    [
        (
            {"inputs/a.png": _png(GREY), "targets/a.png": _png(np.zeros((6, 7), np.uint8))},
            r"the target 'targets/a.png' is 7x6 but its input 'inputs/a.png' is 8x6",
        ),
        (
            {"inputs/a.png": _png(GREY), "inputs/b.png": _png(GREY), "targets/a.png": _png(GREY)},
            r"the input 'inputs/b.png' has no target",
        ),
        (
            {"inputs/a.png": _png(GREY), "targets/a.png": _png(GREY), "targets/c.png": _png(GREY)},
            r"the target 'targets/c.png' has no input",
        ),
        (
            {"inputs/a.png": b"not a png", "targets/a.png": _png(GREY)},
            r"'inputs/a.png' is not a readable image",
        ),
        (
            {"inputs/a.png": _png(GREY), "inputs/b.png": _png(np.zeros((4, 4), np.uint8))},
            r"'inputs/b.png' is 4x4 but 'inputs/a.png' is 8x6",
        ),
        ({"images/a.png": _png(GREY)}, r"no images found; zip inputs/"),
        ({"../inputs/a.png": _png(GREY)}, r"contains '\.\.'"),
    ],
)
def test_zip_refusals_name_the_file_and_the_reason(
    tmp_path: Path, files: dict[str, bytes], match: str
) -> None:
    with pytest.raises(DatasetError, match=match):
        load_dataset(_zip(tmp_path / "bad.zip", files))


def test_npz_refusals(tmp_path: Path) -> None:
    x = np.zeros((4, 1, 8, 8), np.float32)
    cases = [
        ({"y": x}, r"missing array 'x'"),
        ({"x": x, "y": np.zeros((4, 1, 8, 6), np.float32)}, r"targets are 8x6 .* inputs are 8x8"),
        ({"x": x, "y": np.zeros((3, 1, 8, 8), np.float32)}, r"x has 4 images but y has 3"),
        ({"x": x[:, 0, 0]}, r"x must be images"),
    ]
    for arrays, match in cases:
        np.savez(tmp_path / "bad.npz", **arrays)  # type: ignore[arg-type]
        with pytest.raises(DatasetError, match=match):
            load_dataset(tmp_path / "bad.npz")
    np.savez(tmp_path / "big.npz", x=x, y=x)
    with pytest.raises(DatasetError, match="decodes to"):
        load_dataset(tmp_path / "big.npz", max_decoded_bytes=100)


# ----------------------------------------------------------------------------------------------
# metrics


def test_psnr_by_hand() -> None:
    a = torch.zeros(2, 1, 4, 4)
    b = torch.full((2, 1, 4, 4), 0.1)
    assert torch.allclose(psnr(a, b), torch.full((2,), 20.0, dtype=torch.float64))  # 10 log10(100)
    assert float(psnr(a, a)[0]) == pytest.approx(100.0)


def test_ssim_of_identical_images_is_one() -> None:
    x = torch.rand(3, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert float(ssim(x, 1 - x).mean()) < 0  # an inverted image: negative structure


def test_ssim_of_constant_images_is_the_luminance_term() -> None:
    """Constant images have no variance: SSIM = (2ab + C1) / (a^2 + b^2 + C1)."""
    a, b, c1 = 0.5, 0.25, 0.01**2
    got = ssim(torch.full((1, 1, 12, 12), a), torch.full((1, 1, 12, 12), b))
    assert float(got[0]) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)


def test_ssim_equals_a_hand_computed_single_window() -> None:
    """On 11x11 images there is one window: its Gaussian-weighted statistics written out."""
    rng = np.random.default_rng(1)
    x, y = rng.random((11, 11)), rng.random((11, 11))
    r = np.arange(11) - 5.0
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2
    cxy = (w * x * y).sum() - mx * my
    c1, c2 = 0.01**2, 0.03**2
    want = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    got = ssim(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None])
    assert float(got[0]) == pytest.approx(want, rel=1e-9)


# ----------------------------------------------------------------------------------------------
# students, losses, teacher checks


def test_the_catalog_offers_generation_students_and_losses() -> None:
    assert task_students("generation") == ["gen_resnet"]
    assert "gen_resnet" not in task_students("classification")
    assert {"recon_l1", "target_l1", "fitnets"} <= set(task_losses("generation"))
    assert "recon_l1" not in task_losses("classification")
    assert "recon_l1" not in task_losses("segmentation")


@pytest.mark.parametrize(
    ("shape", "out", "kwargs"),
    [((3, 20, 28), 1, {"width": 0.25}), ((1, 16, 16), 3, {"downs": 3, "blocks": 0})],
)
def test_the_student_outputs_images_at_the_input_size(
    shape: tuple[int, int, int], out: int, kwargs: dict
) -> None:
    model = build_student("gen_resnet", shape, out, **kwargs).eval()
    assert model(torch.randn(2, *shape)).shape == (2, out, *shape[1:])
    with pytest.raises(ValueError, match="divisible by 4"):
        build_student("gen_resnet", (1, 18, 16), 1)


def test_a_student_derived_by_width_and_depth_from_a_zoo_generator() -> None:
    """A gen_resnet teacher (safetensors with its architecture) derives a narrower, shallower
    gen_resnet: width and residual blocks times the factors, the steps down kept."""
    from core.catalog import derived_architecture
    from worker.engine.students import derive_student

    kwargs = {"width": 1.0, "blocks": 4, "downs": 1, "input_shape": [3, 8, 8], "num_classes": 3}
    assert derived_architecture("gen_resnet", kwargs, 0.5, 0.25) == (
        "gen_resnet",
        {"width": 0.25, "blocks": 2, "downs": 1},
    )
    student = derive_student("gen_resnet", kwargs, 0.5, 0.25, (3, 8, 8), 3).eval()
    teacher = build_student("gen_resnet", (3, 8, 8), 3, width=1.0, blocks=4, downs=1)
    assert student(torch.rand(2, 3, 8, 8)).shape == (2, 3, 8, 8)
    count = sum(p.numel() for p in student.parameters())
    assert count < sum(p.numel() for p in teacher.parameters()) / 8


def test_losses_by_hand() -> None:
    ctx = LossContext(num_classes=1)
    s = torch.zeros(2, 1, 4, 4)
    t = torch.full((2, 1, 4, 4), 0.5)
    y = torch.full((2, 1, 4, 4), 0.25)
    assert float(ReconstructionL1(ctx)(StepOutputs(s, t, y))) == pytest.approx(0.5)
    assert float(TargetL1(ctx)(StepOutputs(s, t, y))) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="inputs only; use recon_l1"):
        TargetL1(ctx)(StepOutputs(s, t, torch.zeros(2, 0)))
    with pytest.raises(ValueError, match=r"images \[N, C, H, W\] of the same shape"):
        ReconstructionL1(ctx)(StepOutputs(s, torch.zeros(2, 3, 4, 4), y))


class _Loaded:
    def __init__(self, module: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.module, self.input_shape = module, input_shape


def test_fit_to_teacher_checks_the_output_and_records_it(digits: GenData) -> None:
    task = GenerationTask()
    teacher = build_student("gen_resnet", (1, 16, 16), 1, width=0.25).eval()
    fitted = task.fit_to_teacher(_Loaded(teacher, (1, 16, 16)), digits)  # type: ignore[arg-type]
    assert fitted.teacher is not None and fitted.teacher.shape == digits.x.shape
    with torch.no_grad():
        assert torch.allclose(fitted.teacher[:4], teacher(digits.x[:4]), atol=1e-5)
    pooled = nn.Sequential(nn.Conv2d(1, 1, 3, 2, 1))
    with pytest.raises(IncompatibleDataError, match=r"not an image \[channels, 16, 16\]"):
        task.fit_to_teacher(_Loaded(pooled, (1, 16, 16)), digits)  # type: ignore[arg-type]
    rgb = nn.Conv2d(1, 3, 1)
    with pytest.raises(IncompatibleDataError, match="3-channel images but the dataset's targets"):
        task.fit_to_teacher(_Loaded(rgb, (1, 16, 16)), digits)  # type: ignore[arg-type]
    inputs_only = GenData(digits.x, None, 1)
    assert task.fit_to_teacher(_Loaded(rgb, (1, 16, 16)), inputs_only).out_channels == 3  # type: ignore[arg-type]
    with pytest.raises(IncompatibleDataError, match="takes inputs of shape"):
        task.fit_to_teacher(_Loaded(rgb, (3, 16, 16)), digits)  # type: ignore[arg-type]
    assert task.inspect_output([3, 16, 16]) == {"out_channels": 3}
    with pytest.raises(ValueError, match="outputs images"):
        task.inspect_output([10])


# ----------------------------------------------------------------------------------------------
# distillation, evaluation, export


def _config(losses: list, pairs: list | None = None, epochs: int = 2) -> RunConfig:
    return RunConfig.model_validate(
        {
            "task": "generation",
            "teacher": {"path": "unused.pt2"},
            "dataset": {"path": "unused.npz"},
            "student": {"architecture": "gen_resnet", "kwargs": {"width": 0.25, "blocks": 1}},
            "losses": losses,
            "layer_pairs": pairs or [],
            "training": {
                "epochs": epochs,
                "batch_size": 8,
                "lr": 0.01,
                "optimizer": "adamw",
                "device": "cpu",
                "export_onnx": False,
            },
        }
    )


def test_the_adversarial_critic_reads_raw_images_unless_the_run_says_otherwise() -> None:
    """generation's `loss_params`: the critic's `output` defaults to raw images here (softmax
    over an image's channels is meaningless), to softmax maps for segmentation."""
    from core.catalog.tasks import TASKS

    raw = _config([{"name": "target_l1"}, {"name": "adversarial", "params": {"width": 8}}])
    assert raw.losses[1].resolved_params()["output"] == "raw"
    assert raw.losses[1].params == {"output": "raw", "width": 8}
    chosen = _config(
        [{"name": "target_l1"}, {"name": "adversarial", "params": {"output": "softmax"}}]
    )
    assert chosen.losses[1].resolved_params()["output"] == "softmax"  # the run's own choice
    seg = RunConfig.model_validate(
        {**_config([{"name": "target_l1"}]).model_dump(), "task": "segmentation", "losses": [{"name": "ce"}, {"name": "adversarial"}],
         "student": {"architecture": "seg_fcn"}}
    )  # fmt: skip
    assert seg.losses[1].resolved_params()["output"] == "softmax"
    assert TASKS["generation"].as_json()["extra"]["loss_params"] == {
        "adversarial": {"output": "raw"}
    }


@pytest.mark.parametrize(
    ("losses", "pairs"),
    [
        ([{"name": "recon_l1"}, {"name": "target_l1"}], None),
        (
            [{"name": "recon_l1"}, {"name": "fitnets", "weight": 1.0}],
            [{"teacher": "blocks.2", "student": "blocks.0"}],
        ),
    ],
)
def test_distillation_runs_with_output_and_feature_losses(
    digits: GenData, losses: list, pairs: list | None
) -> None:
    """A width-1 teacher, a width-0.25 student: the output losses, and FitNets through a
    learned 1x1 connector between their residual blocks (64 vs 16 channels)."""
    task = build_task("generation")
    torch.manual_seed(0)
    teacher = build_student("gen_resnet", (1, 16, 16), 1, width=1.0).eval()
    data = task.fit_to_teacher(_Loaded(teacher, (1, 16, 16)), digits)  # type: ignore[arg-type]
    train_data, val_data = task.split(data, 0.25, 0)
    result = train(_config(losses, pairs), teacher, train_data, val_data, task=task)
    last = result.history[-1]
    assert {"val/psnr", "val/ssim", "val/loss", "val/target_psnr", "val/target_ssim"} <= set(last)
    assert math.isfinite(last["val/psnr"]) and -1.0 <= last["val/ssim"] <= 1.0
    report = task.evaluate(teacher, result.student, val_data)
    assert {"student_psnr_vs_teacher", "teacher_psnr", "student_psnr", "teacher_ssim"} <= set(
        report
    )
    drawn = report["samples"]  # the run page's input | target | teacher | student
    assert len(drawn) == 4 and {"input", "truth", "teacher", "student"} <= set(drawn[0])
    assert drawn[0]["student_note"].endswith("dB vs the target")


def test_a_run_with_the_adversarial_term(digits: GenData) -> None:
    """recon_l1 plus the engine-trained critic on raw images (teacher output real, student
    output fake, conditioned on the input) trains with the task; the critic stays out of the
    student (which is what exports)."""
    task = build_task("generation")
    torch.manual_seed(0)
    teacher = build_student("gen_resnet", (1, 16, 16), 1, width=0.5, blocks=1).eval()
    data = task.fit_to_teacher(_Loaded(teacher, (1, 16, 16)), digits)  # type: ignore[arg-type]
    train_data, val_data = task.split(data, 0.25, 0)
    adversarial = {"name": "adversarial", "weight": 0.1, "params": {"output": "raw", "width": 8}}
    config = _config([{"name": "recon_l1"}, adversarial], epochs=1)
    result = train(config, teacher, train_data, val_data, task=task)
    assert math.isfinite(result.history[-1]["val/psnr"])
    names = {n for n, _ in result.student.named_parameters()}
    assert not any("critic" in n for n in names)  # the student alone is exported
    assert task.evaluate(teacher, result.student, val_data)["student_psnr_vs_teacher"] > 0


def test_recon_l1_brings_the_student_to_the_teacher(digits: GenData) -> None:
    """Distilling the outputs raises the student's PSNR against the teacher over training."""
    task = build_task("generation")
    torch.manual_seed(0)
    teacher = build_student("gen_resnet", (1, 16, 16), 1, width=0.5, blocks=1).eval()
    inputs_only = GenData(digits.x, None, 1)
    data = task.fit_to_teacher(_Loaded(teacher, (1, 16, 16)), inputs_only)  # type: ignore[arg-type]
    train_data, val_data = task.split(data, 0.25, 0)
    result = train(
        _config([{"name": "recon_l1"}], epochs=6), teacher, train_data, val_data, task=task
    )
    first, last = result.history[0]["val/psnr"], result.history[-1]["val/psnr"]
    assert "val/target_psnr" not in result.history[-1]  # no targets: the teacher only
    assert last > first, (first, last)
    report = task.evaluate(teacher, result.student, val_data)
    assert "teacher_psnr" not in report and report["has_targets"] is False
    assert report["samples"][0]["student_note"].endswith("dB vs the teacher")


def test_exports_agree_with_pytorch(tmp_path: Path) -> None:
    """The .pt2 and ONNX exports of the student give its outputs (1e-4 on images in [0, 1]),
    on a batch of 3 (traced at 2: the batch is dynamic); safetensors restores the weights."""
    ort = pytest.importorskip("onnxruntime")
    from safetensors.torch import load_file

    from worker.engine.export import export_onnx, export_pt2, save_safetensors
    from worker.engine.loading import load_model

    task = GenerationTask()
    student = build_student("gen_resnet", (1, 16, 16), 2, width=0.25).eval()
    module = task.export_module(student, (1, 16, 16))
    export_pt2(module, (1, 16, 16), tmp_path / "s.pt2", task)
    export_onnx(module, (1, 16, 16), tmp_path / "s.onnx", task)
    save_safetensors(student, tmp_path / "s.safetensors")
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = student(x).numpy()
    got_pt2 = load_model(tmp_path / "s.pt2", "pt2").module(x).detach().numpy()
    got_onnx = ort.InferenceSession(str(tmp_path / "s.onnx")).run(None, {"input": x.numpy()})[0]
    assert got_onnx.shape == want.shape == (3, 2, 16, 16)
    assert np.allclose(got_pt2, want, atol=1e-4) and np.allclose(got_onnx, want, atol=1e-4)
    weights = load_file(str(tmp_path / "s.safetensors"))
    assert torch.equal(weights["head.weight"], student.state_dict()["head.weight"])
