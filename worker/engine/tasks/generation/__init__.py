"""Image-to-image generation (the seeds' GAN case, as GAN Compression, Li et al. 2020): the
teacher is a generator mapping images [N, C, H, W] to images [N, C', H, W] of the same size
(denoising, colourising, pix2pix-style), the student a narrower generator trained to produce
the same images.

The whole task lives in this package: the task (here), its datasets (`data`: .npz and .zip
readers, checks, the synthetic digits), its metrics (`metrics`: PSNR, SSIM) and its demo
(`demo`). Images are taken to lie in [0, 1] (uint8 uploads are read as / 255), the range PSNR
and SSIM are computed for.

- data: `data.GenData` (x [N, C, H, W], targets y [N, C', H, W] or None, and the teacher's
  outputs on every sample, recorded by `fit_to_teacher`), split by image;
- a batch: (x[idx], y[idx]); without targets the targets are an empty [n, 0] tensor, which the
  `target_l1` loss refuses with a message;
- validation: `val/psnr`, `val/ssim` of the student against the teacher's outputs (against the
  targets when the teacher's are not recorded, e.g. when a demo teacher is trained),
  `val/target_psnr`, `val/target_ssim` against the targets when the data has them, and
  `val/loss`: the mean L1 to the reference (teacher outputs, else targets);
- evaluation: both models on the held-out images: `student_psnr_vs_teacher`,
  `student_ssim_vs_teacher`, and with targets `teacher_psnr`, `teacher_ssim`, `student_psnr`,
  `student_ssim` against them (the teacher side by side with its student); `samples`: the first
  validation images with the input, the target, and each model's output (PNG, base64), which
  the pipeline writes as the `predictions` artifact;
- export example: a batch of 2 random images; the export is the student itself;
- inspection: an output [C', H, W] (an image) gives `out_channels`; anything else is refused;
- stages: the "spatial" rule.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from worker.engine.evaluate import predict
from worker.engine.tasks.base import Autocast, Batch, IncompatibleDataError, Task
from worker.engine.tasks.generation.data import (
    GenData,
    describe_dataset,
    is_generation,
    load_dataset,
    png,
    scale_for,
    split,
    to_rgb,
)
from worker.engine.tasks.generation.metrics import psnr, ssim

if TYPE_CHECKING:
    from core.config import DatasetRef
    from worker.engine.loading import LoadedModel

_VAL_BATCH = 128
SAMPLES = 4  # validation images drawn with both models' outputs in the evaluation


def prediction_samples(
    data: GenData, outputs: dict[str, Tensor], n: int = SAMPLES
) -> list[dict[str, Any]]:
    """The first `n` images: the input, the target (`truth`, when the data has them) and each
    model's output (`outputs[who]`: [N, C', H, W]) as base64 PNGs, each model's captioned with
    its PSNR against the target (or, for the student, the teacher) (the run page's and
    Compare's predictions side by side)."""
    scale = scale_for(data, 96)
    samples = []
    for i in range(min(n, len(data))):
        sample: dict[str, Any] = {"index": i, "mime": "image/png"}
        sample["input"] = png(to_rgb(data.x[i]), scale)
        if data.y is not None:
            sample["truth"] = png(to_rgb(data.y[i]), scale)
        for who, out in outputs.items():
            sample[who] = png(to_rgb(out[i]), scale)
            if data.y is not None:
                value = float(psnr(out[i : i + 1], data.y[i : i + 1])[0])
                sample[f"{who}_note"] = f"PSNR {value:.1f} dB vs the target"
            elif who != "teacher" and "teacher" in outputs:
                value = float(psnr(out[i : i + 1], outputs["teacher"][i : i + 1])[0])
                sample[f"{who}_note"] = f"PSNR {value:.1f} dB vs the teacher"
        samples.append(sample)
    return samples


def teacher_outputs(teacher: nn.Module, x: Tensor) -> Tensor:
    """The teacher's outputs on `x`, float32 on CPU, computed in batches."""
    with torch.inference_mode():
        return predict(teacher, x.float())


def fit_data_to_teacher(teacher: LoadedModel, data: GenData) -> GenData:
    """Check the teacher takes these images and outputs images of their size (and of the
    targets' channels); record its outputs on every sample (the validation reference)."""
    if tuple(teacher.input_shape) != tuple(data.input_shape):
        raise IncompatibleDataError(
            f"the teacher takes inputs of shape {list(teacher.input_shape)} but the dataset's "
            f"inputs are {list(data.input_shape)}; upload the images at the size and channels "
            "the teacher was trained on"
        )
    module = teacher.module
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            out = module(data.x[:1].float())
    finally:
        module.train(was_training)
    shape = list(getattr(out, "shape", []))[1:]
    h, w = data.input_shape[1:]
    if len(shape) != 3 or shape[1:] != [h, w]:
        raise IncompatibleDataError(
            f"the teacher outputs {shape or type(out).__name__} per image, not an image "
            f"[channels, {h}, {w}] at the input's size; image-to-image generation needs a "
            "teacher mapping [N, C, H, W] to [N, C', H, W]"
        )
    if data.y is not None and int(shape[0]) != int(data.y.shape[1]):
        raise IncompatibleDataError(
            f"the teacher outputs {shape[0]}-channel images but the dataset's targets have "
            f"{data.y.shape[1]} channels; upload targets with the teacher's channels, or none"
        )
    return replace(
        data, out_channels=int(shape[0]), teacher=teacher_outputs(module, data.x).contiguous()
    )


class GenerationTask(Task):
    """Images to images of the same size; see the module docstring."""

    def load(self, path: Path, ref: DatasetRef, **limits: Any) -> GenData:
        return load_dataset(Path(path), ref.format, **limits)

    def describe(self, path: Path, ref: DatasetRef, **limits: Any) -> dict[str, Any]:
        """Images, input and target shapes, a preview of input/target pairs."""
        return describe_dataset(Path(path), ref.format, **limits)

    @staticmethod
    def recognizes(path: Path, format: str | None) -> bool:
        """Whether an upload is laid out as image-to-image data (`data.is_generation`)."""
        return is_generation(Path(path), format)

    def fit_to_teacher(self, teacher: LoadedModel, data: GenData) -> GenData:
        return fit_data_to_teacher(teacher, data)

    def split(self, data: GenData, val_fraction: float, seed: int) -> tuple[GenData, GenData]:
        return split(data, val_fraction, seed)

    def input_shape(self, data: GenData) -> tuple[int, ...]:
        return data.input_shape

    def output_size(self, data: GenData) -> int:
        return data.out_channels

    def batch(self, data: GenData, idx: Tensor, device: torch.device) -> Batch:
        y = data.y[idx] if data.y is not None else data.x.new_empty(len(idx), 0)
        return Batch(data.x[idx].to(device), y.to(device))

    def inspect_output(self, output_shape: list[int] | None) -> dict[str, Any]:
        """`out_channels` of an image output [C', H, W]; anything else is refused."""
        if output_shape is None or len(output_shape) != 3:
            raise ValueError(
                f"the model outputs {output_shape if output_shape is not None else 'no tensor'}"
                " per sample; an image-to-image model outputs images [N, C', H, W] at its "
                "input's size"
            )
        return {"out_channels": int(output_shape[0])}

    def demo(self, out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
        """A small encoder-decoder denoiser on synthetic digits (`demo.make_demo`)."""
        from worker.engine.tasks.generation.demo import make_demo

        return make_demo(out_dir, seed)

    @torch.inference_mode()
    def validate(
        self,
        student: nn.Module,
        data: GenData,
        batch_size: int,
        device: torch.device,
        autocast: Autocast,
    ) -> dict[str, float]:
        """PSNR and SSIM against the teacher's outputs (else the targets) and the targets."""
        student.eval()
        sums: dict[str, float] = {}
        step = max(batch_size, _VAL_BATCH)
        for i in range(0, len(data), step):
            with autocast():
                out = student(data.x[i : i + step].to(device)).float().cpu()
            refs = {"": data.teacher if data.teacher is not None else data.y}
            if data.teacher is not None and data.y is not None:
                refs["target_"] = data.y
            for prefix, ref in refs.items():
                if ref is None:
                    continue
                r = ref[i : i + step].float()
                for name, value in (
                    ("psnr", psnr(out, r).sum()),
                    ("ssim", ssim(out, r).sum()),
                    ("loss", (out - r).abs().flatten(1).mean(1).sum()),
                ):
                    if not (prefix and name == "loss"):
                        key = f"val/{prefix}{name}"
                        sums[key] = sums.get(key, 0.0) + float(value)
        student.train()
        return {k: v / max(len(data), 1) for k, v in sums.items()}

    def evaluate(
        self, teacher: nn.Module, student: nn.Module, data: GenData, **options: Any
    ) -> dict[str, Any]:
        """student_psnr/ssim_vs_teacher; with targets teacher_ and student_ psnr and ssim."""
        t_out = teacher_outputs(teacher, data.x)
        s_out = teacher_outputs(student, data.x)
        result: dict[str, Any] = {
            "student_psnr_vs_teacher": float(psnr(s_out, t_out).mean()),
            "student_ssim_vs_teacher": float(ssim(s_out, t_out).mean()),
            "has_targets": data.y is not None,
        }
        if data.y is not None:
            for who, out in (("teacher", t_out), ("student", s_out)):
                result[f"{who}_psnr"] = float(psnr(out, data.y).mean())
                result[f"{who}_ssim"] = float(ssim(out, data.y).mean())
        result["samples"] = prediction_samples(data, {"teacher": t_out, "student": s_out})
        return result
