"""Data augmentation, declared once: the type, default, range and help of every setting of a run
config's `augment` section (torch-free).

`core.config.AugmentSettings` builds its fields from `AUGMENT` (so the API validates with these
declarations), the New run form builds its "Augmentation" inputs from them, and the engine's
`worker/engine/augment.py` implements them as batch operations on the device the batch is on
(the GPU when there is one), after the task's batch and before any model sees it, so the
teacher and the student see the same augmented batch. Order on a training batch: flip, pad-crop,
random resized crop, TrivialAugment or RandAugment, then mixup or cutmix, then normalisation.
Validation and evaluation apply only the normalisation.

Image operations need image data ([N, C, H, W]); mixup and normalisation work on any float
inputs (tables: per feature). Mixup and cutmix turn the targets into soft targets (the mixed
one-hot vectors), which the cross-entropy reads as class probabilities; losses that need one
hard class per sample cannot take them (`HARD_LABEL_LOSSES`, `mixing_problem`). Only
classification augments its targets with its inputs so far; other tasks take only the
normalisation (`config_problem`).
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from core.catalog.training import Setting

Policy = Literal["none", "trivial", "rand"]
POLICIES: tuple[str, ...] = typing.get_args(Policy)

AUGMENT: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting(
            "flip",
            "bool",
            False,
            "Horizontal flip",
            "Mirror each image left-right with probability 0.5. Images only.",
        ),
        Setting(
            "pad_crop",
            "int",
            0,
            "Pad and crop (pixels)",
            "Pad each image by this many zero pixels on every side, then crop a random window "
            "of the original size (CIFAR's recipe: 4). 0: off. Images only.",
            ge=0,
            le=64,
        ),
        Setting(
            "resized_crop",
            "float",
            0.0,
            "Random resized crop (smallest area)",
            "Crop a random window of this share of the image's area up to all of it, aspect "
            "ratio 3/4 to 4/3, resized back to the input size (ImageNet's recipe: 0.08). "
            "0: off. Images only.",
            ge=0.0,
            le=1.0,
            step=0.01,
        ),
        Setting(
            "policy",
            "choice",
            "none",
            "Policy",
            "trivial: TrivialAugment (Müller & Hutter 2021), one random operation at a random "
            "magnitude per image; rand: RandAugment (Cubuk et al. 2020), `rand_ops` random "
            "operations at `rand_magnitude`. Operations: identity, brightness, contrast, "
            "colour, translate x/y, rotate, shear x/y. Images only.",
            choices=POLICIES,
        ),
        Setting(
            "rand_ops",
            "int",
            2,
            "RandAugment operations",
            "With policy rand: operations applied one after another to each image.",
            ge=1,
            le=8,
        ),
        Setting(
            "rand_magnitude",
            "int",
            9,
            "RandAugment magnitude",
            "With policy rand: the operations' strength, 0 (none) to 30 (the strongest).",
            ge=0,
            le=30,
        ),
        Setting(
            "mixup",
            "float",
            0.0,
            "Mixup alpha",
            "Mix each batch with a shuffled copy of itself, x = lam x_i + (1 - lam) x_j, lam ~ "
            "Beta(alpha, alpha) (Zhang et al. 2018; 0.2 to 1 is usual). The targets are mixed "
            "the same way (soft targets). 0: off.",
            ge=0.0,
            le=10.0,
            step=0.1,
        ),
        Setting(
            "cutmix",
            "float",
            0.0,
            "Cutmix alpha",
            "Paste a random box of a shuffled copy of the batch into each image, the box's area "
            "1 - lam, lam ~ Beta(alpha, alpha) (Yun et al. 2019; 1.0 is usual); targets mixed "
            "by area. With mixup too, each batch uses one of the two at random. 0: off. "
            "Images only.",
            ge=0.0,
            le=10.0,
            step=0.1,
        ),
        Setting(
            "mean",
            "floats",
            (),
            "Normalise: mean",
            "Per-channel (images) or per-feature (tables) mean subtracted from the inputs of "
            "both models in training, validation and evaluation, e.g. 0.4914,0.4822,0.4465 "
            "(CIFAR-10) or one value for all channels. Empty: no normalisation. The exported "
            "student expects inputs normalised the same way, as the teacher does.",
            max_items=4096,
        ),
        Setting(
            "std",
            "floats",
            (),
            "Normalise: std",
            "Per-channel (or per-feature) standard deviation the inputs are divided by, after "
            "the mean, e.g. 0.2470,0.2435,0.2616; as many values as the mean. Each > 0.",
            gt=0.0,
            max_items=4096,
        ),
    ]
}

# operations that need images [N, C, H, W]: each setting and the value that turns it off
IMAGE_OPS: dict[str, Any] = {
    "flip": False,
    "pad_crop": 0,
    "resized_crop": 0.0,
    "policy": "none",
    "cutmix": 0.0,
}

# losses that need one hard class index per sample (and so cannot take mixup/cutmix's soft
# targets); `logit_std` only with base 'dkd'
HARD_LABEL_LOSSES: dict[str, str] = {
    "dkd": "its target/non-target split needs one class per sample",
    "logit_std": "with base 'dkd' its target/non-target split needs one class per sample",
}


def image_ops(values: dict[str, Any]) -> list[str]:
    """The image-only settings that are on in `values` (an augment section as a dict)."""
    return [name for name, off in IMAGE_OPS.items() if values.get(name, off) != off]


def image_ops_problem(values: dict[str, Any], input_shape: list[int] | None) -> str | None:
    """Why these settings do not fit samples of `input_shape` (without the batch dimension):
    image operations on data that is not images [C, H, W], or a mean/std whose length is
    neither 1 nor the channels (features); None when they fit or the shape is unknown."""
    if not input_shape:
        return None
    on = image_ops(values)
    if on and len(input_shape) != 3:
        return (
            f"augment: {', '.join(on)} need images [C, H, W], but this dataset's samples are "
            f"{list(input_shape)}; turn them off (mixup and the mean/std normalisation work on "
            "any data)"
        )
    mean = list(values.get("mean") or [])
    width = input_shape[0]
    if mean and len(mean) not in (1, width):
        what = "channels" if len(input_shape) == 3 else "features"
        return (
            f"augment.mean has {len(mean)} values but the samples have {width} {what}; give "
            f"one value or {width}"
        )
    return None


def config_problem(config: Any) -> str | None:
    """Why a run config's augment section does not fit its task, losses or scheme; None when it
    fits. Only classification has its targets augmented with the inputs so far: another task
    (segmentation's masks would not move with a flipped image) takes only the normalisation."""
    aug = config.augment
    if config.task != "classification":
        random_ops = image_ops(aug.model_dump()) + (["mixup"] if aug.mixup else [])
        if random_ops:
            return (
                f"augment: {', '.join(random_ops)} change the inputs but not task "
                f"'{config.task}''s targets; for this task use only the normalisation "
                "(augment.mean/std)"
            )
        return None
    return mixing_problem(config)


def mixing_problem(config: Any) -> str | None:
    """Why a run config's losses or scheme cannot take mixup/cutmix's soft targets; None when
    they can (or nothing is mixed)."""
    aug = config.augment
    if not (aug.mixup or aug.cutmix):
        return None
    for i, loss in enumerate(config.losses):
        why = HARD_LABEL_LOSSES.get(loss.name)
        if why is None:
            continue
        if loss.name == "logit_std" and loss.resolved_params().get("base") != "dkd":
            continue
        return (
            f"losses[{i}] '{loss.name}' cannot train on mixup/cutmix's mixed targets ({why}); "
            "set augment.mixup and augment.cutmix to 0, or use another loss (ce, kd, ...)"
        )
    params = config.resolved_scheme_params()
    if config.scheme == "multi_teacher" and params.get("weighting") == "confidence":
        return (
            "scheme multi_teacher's confidence weighting reads each sample's one class, which "
            "mixup/cutmix's mixed targets do not have; set scheme_params.weighting to 'fixed', "
            "or augment.mixup and augment.cutmix to 0"
        )
    return None


def as_json() -> list[dict[str, Any]]:
    """The augmentation settings as plain JSON (served under `augment` by `GET /catalog`)."""
    return [s.as_json() for s in AUGMENT.values()]
