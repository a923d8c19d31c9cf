"""Data augmentation as batch operations on the device the batch is on (the GPU when there is
one), applied by the trainer after the task's batch and before any model sees it, so the
teacher and the student see the same augmented batch. The run config's `augment` section
(`core.catalog.augment` declares each setting) picks the operations.

Order on a training batch x [N, C, H, W] (float): flip -> pad-crop -> random resized crop ->
TrivialAugment / RandAugment -> mixup or cutmix -> normalisation. Validation and evaluation
apply only the normalisation (`Augmenter.eval_inputs`, `Augmenter.eval_data`).

- flip: x[..., ::-1] for each image with probability 1/2.
- pad-crop (padding p): zero-pad by p on every side and crop an H x W window at a random
  offset (dy, dx) in [0, 2p]^2; offset (p, p) is the identity (CIFAR's recipe, He et al. 2016).
- random resized crop (Szegedy et al. 2015): a window of area s * H * W, s ~ U[min, 1], aspect
  ratio r with log r ~ U[log 3/4, log 4/3], clipped to the image, at a uniform position,
  resized back to H x W by bilinear sampling (`affine_grid` / `grid_sample`, border values
  at the edges).
- TrivialAugment (Müller & Hutter, ICCV 2021): each image gets one operation drawn uniformly
  from {identity, brightness, contrast, colour, translate x, translate y, rotate, shear x,
  shear y} at a magnitude m ~ U[0, 1] with a random sign; RandAugment (Cubuk et al. 2020):
  `ops` such rounds at the fixed magnitude M / 30. A photometric factor is f = 1 + 0.9 m
  (brightness: f x; contrast: mu + f (x - mu), mu the image's mean; colour: g + f (x - g), g
  the grey image); geometric operations shift by up to 0.45 of the size, rotate by up to 30
  degrees, shear by up to 0.3, filling with zeros. Values are not clipped (the data's range is
  the dataset's).
- mixup (Zhang et al., ICLR 2018): lam ~ Beta(a, a), x = lam x + (1 - lam) x[perm],
  q = lam onehot(y) + (1 - lam) onehot(y[perm]).
- cutmix (Yun et al., ICCV 2019): lam ~ Beta(a, a); a box of area (1 - lam) H W (clipped to the
  image) at a uniform centre takes x[perm]'s pixels; lam is recomputed from the clipped area and
  q mixed by it. With both mixup and cutmix, each batch uses one of them with probability 1/2.
- normalisation: (x - mean) / std per channel (dim 1), for images and tables alike.

Mixup and cutmix give soft targets q [N, classes] (float), which `F.cross_entropy` reads as class
probabilities; the distillation losses compare teacher and student on the same mixed input.

Determinism: every random draw of batch b of epoch e comes from generators seeded with
`augment_seed(seed, e, b)`, so the same config gives the same augmentations and a run resumed
at batch b replays exactly what an uninterrupted run would have drawn there (the trainer's
permutation rule, one level down).
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from core.catalog.augment import image_ops, image_ops_problem
from core.config import AugmentSettings
from worker.engine.tasks.base import Batch

_STRIDE = 1_000_003
_SALT = 0x5EED_A06  # keeps these streams apart from the permutation's
_FACTOR = 0.9  # photometric: f = 1 +- 0.9 m
_TRANSLATE = 0.45  # share of the size
_ROTATE = math.radians(30.0)
_SHEAR = 0.3
OPS = (
    "identity",
    "brightness",
    "contrast",
    "colour",
    "translate_x",
    "translate_y",
    "rotate",
    "shear_x",
    "shear_y",
)


def augment_seed(seed: int, epoch: int, batch: int) -> int:
    """The seed of batch `batch` of epoch `epoch`'s augmentations."""
    return ((seed * _STRIDE + epoch) * _STRIDE + batch + _SALT) % (2**63 - 1)


def generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _uniform(n: int, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=gen, device=device)


def flip(x: Tensor, gen: torch.Generator) -> Tensor:
    """Each image mirrored left-right with probability 1/2."""
    mask = _uniform(x.shape[0], gen, x.device) < 0.5
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def pad_crop(
    x: Tensor, padding: int, gen: torch.Generator | None = None, offsets: Tensor | None = None
) -> Tensor:
    """Zero-pad by `padding` and crop each image's H x W window at `offsets` [N, 2] (dy, dx) in
    [0, 2 * padding], drawn from `gen` when not given; offsets (p, p) give x back."""
    n, _, h, w = x.shape
    if offsets is None:
        assert gen is not None
        offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=gen, device=x.device)
    c, wide = x.shape[1], w + 2 * padding
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # [N, H]
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # [N, W]
    # two gathers (rows, then columns): a plain contiguous [N, C, H, W] result
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, wide))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def _warp(x: Tensor, theta: Tensor, padding: str = "zeros") -> Tensor:
    """x sampled through the affine maps `theta` [N, 2, 3] (output -> input, in [-1, 1])."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def resized_crop(x: Tensor, min_scale: float, gen: torch.Generator) -> Tensor:
    """A random window of area share in [min_scale, 1], aspect 3/4 to 4/3, resized to H x W."""
    n, dev = x.shape[0], x.device
    area = min_scale + (1.0 - min_scale) * _uniform(n, gen, dev)
    log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * _uniform(n, gen, dev)
    ratio = log_r.exp()
    sw = (area * ratio).sqrt().clamp(max=1.0)  # window width / image width
    sh = (area / ratio).sqrt().clamp(max=1.0)
    cx = (2 * _uniform(n, gen, dev) - 1) * (1 - sw)  # centre, in [-1, 1] units
    cy = (2 * _uniform(n, gen, dev) - 1) * (1 - sh)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw, cx, sh, cy
    return _warp(x, theta, "border")  # the window lies inside: no black edge


def _grey(x: Tensor) -> Tensor:
    if x.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
        return (x * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def policy_round(x: Tensor, gen: torch.Generator, magnitude: float | None = None) -> Tensor:
    """One TrivialAugment round: each image gets one operation of `OPS` at a random magnitude
    (or at `magnitude` in [0, 1]: one RandAugment round), with a random sign."""
    n, dev = x.shape[0], x.device
    op = torch.randint(0, len(OPS), (n,), generator=gen, device=dev)
    m = _uniform(n, gen, dev) if magnitude is None else torch.full((n,), magnitude, device=dev)
    v = torch.where(_uniform(n, gen, dev) < 0.5, -m, m)

    def where(name: str, new: Tensor, old: Tensor) -> Tensor:
        return torch.where((op == OPS.index(name)).view(-1, 1, 1, 1), new, old)

    f = (1 + _FACTOR * v).view(-1, 1, 1, 1).to(x.dtype)
    x = where("brightness", x * f, x)
    mu = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    x = where("contrast", mu + f * (x - mu), x)
    g = _grey(x)
    x = where("colour", g + f * (x - g), x)
    theta = torch.eye(2, 3, device=dev).repeat(n, 1, 1)
    angle = v * _ROTATE
    rotate = op == OPS.index("rotate")
    theta[:, 0, 0] = torch.where(rotate, angle.cos(), theta[:, 0, 0])
    theta[:, 0, 1] = torch.where(rotate, -angle.sin(), theta[:, 0, 1])
    theta[:, 1, 0] = torch.where(rotate, angle.sin(), theta[:, 1, 0])
    theta[:, 1, 1] = torch.where(rotate, angle.cos(), theta[:, 1, 1])
    theta[:, 0, 1] = torch.where(op == OPS.index("shear_x"), v * _SHEAR, theta[:, 0, 1])
    theta[:, 1, 0] = torch.where(op == OPS.index("shear_y"), v * _SHEAR, theta[:, 1, 0])
    theta[:, 0, 2] = torch.where(op == OPS.index("translate_x"), 2 * _TRANSLATE * v, 0.0)
    theta[:, 1, 2] = torch.where(op == OPS.index("translate_y"), 2 * _TRANSLATE * v, 0.0)
    geometric = op >= OPS.index("translate_x")
    if bool(geometric.any()):
        x = torch.where(geometric.view(-1, 1, 1, 1), _warp(x, theta), x)
    return x


def one_hot(y: Tensor, num_classes: int) -> Tensor:
    if y.dim() != 1 or y.is_floating_point():
        raise ValueError(
            f"mixup/cutmix mix class labels [N], but this task's targets are {list(y.shape)} "
            f"{y.dtype}; set augment.mixup and augment.cutmix to 0"
        )
    return F.one_hot(y.long(), num_classes).float()


def mixup(x: Tensor, q: Tensor, lam: float, perm: Tensor) -> tuple[Tensor, Tensor]:
    """lam x + (1 - lam) x[perm] and the same mix of the soft targets q [N, classes]."""
    return lam * x + (1 - lam) * x[perm], lam * q + (1 - lam) * q[perm]


def cutmix_box(h: int, w: int, lam: float, rng: random.Random) -> tuple[int, int, int, int]:
    """(y1, y2, x1, x2): a box of area about (1 - lam) h w at a uniform centre, clipped."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = rng.randrange(h), rng.randrange(w)
    return (
        max(cy - ch // 2, 0),
        min(cy + ch // 2, h),
        max(cx - cw // 2, 0),
        min(cx + cw // 2, w),
    )


def cutmix(
    x: Tensor, q: Tensor, box: tuple[int, int, int, int], perm: Tensor
) -> tuple[Tensor, Tensor]:
    """x with `box` pasted from x[perm]; targets mixed by the box's share of the area."""
    y1, y2, x1, x2 = box
    out = x.clone()
    out[:, :, y1:y2, x1:x2] = x[perm][:, :, y1:y2, x1:x2]
    lam = 1.0 - (y2 - y1) * (x2 - x1) / (x.shape[2] * x.shape[3])
    return out, lam * q + (1 - lam) * q[perm]


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(x - mean) / std along dim 1 (channels or features)."""
    view = (1, -1) + (1,) * (x.dim() - 2)
    return (x - mean.to(x.device, x.dtype).view(view)) / std.to(x.device, x.dtype).view(view)


class Augmenter:
    """The `augment` section of a run, ready to apply; see the module docstring."""

    def __init__(self, spec: AugmentSettings, seed: int, num_classes: int | None = None) -> None:
        self.spec, self.seed, self.num_classes = spec, seed, num_classes
        self.mean = torch.tensor(spec.mean, dtype=torch.float32)
        self.std = torch.tensor(spec.std, dtype=torch.float32)
        self.images = image_ops(spec.model_dump())
        self.mixes = bool(spec.mixup or spec.cutmix)

    @property
    def normalizes(self) -> bool:
        return bool(self.spec.mean)

    @property
    def active(self) -> bool:
        """Whether a training batch is changed at all."""
        return bool(self.images or self.mixes or self.normalizes)

    def check(self, inputs: Tensor) -> None:
        """ValueError when the settings do not fit these inputs (a batch of the data)."""
        if not self.active:
            return
        problem = image_ops_problem(self.spec.model_dump(), list(inputs.shape[1:]))
        if problem is None and not inputs.is_floating_point():
            problem = (
                f"augment works on float inputs, but this task's inputs are {inputs.dtype}; "
                "leave the augment section out"
            )
        if problem is None and self.mixes and self.num_classes is None:
            problem = "mixup/cutmix need the number of classes; set them to 0"
        if problem is not None:
            raise ValueError(problem)

    def fit(self, inputs: Tensor, num_classes: int | None) -> None:
        """Take the task's class count (for mixed targets) and check a batch of the data's
        `inputs` fits the settings (ValueError saying what to change)."""
        self.num_classes = num_classes
        self.check(inputs)

    def __call__(self, batch: Batch, epoch: int, index: int) -> Batch:
        """A task's training batch, augmented (`train_batch` of its inputs and targets)."""
        if not self.active:
            return batch
        x, y = self.train_batch(batch.inputs, batch.targets, epoch, index)
        return dataclasses.replace(batch, inputs=x, targets=y)

    def train_batch(self, x: Tensor, y: Tensor, epoch: int, batch: int) -> tuple[Tensor, Tensor]:
        """The augmented inputs and targets of batch `batch` of epoch `epoch` (its own draws)."""
        if not self.active:
            return x, y
        s, spec = augment_seed(self.seed, epoch, batch), self.spec
        gen, rng = generator(s, x.device), random.Random(s)
        if spec.flip:
            x = flip(x, gen)
        if spec.pad_crop:
            x = pad_crop(x, spec.pad_crop, gen)
        if spec.resized_crop:
            x = resized_crop(x, spec.resized_crop, gen)
        if spec.policy == "trivial":
            x = policy_round(x, gen)
        elif spec.policy == "rand":
            for _ in range(spec.rand_ops):
                x = policy_round(x, gen, spec.rand_magnitude / 30)
        if self.mixes:
            assert self.num_classes is not None
            q = one_hot(y, self.num_classes)
            perm = torch.randperm(x.shape[0], generator=gen, device=x.device)
            use_mixup = spec.mixup > 0 and (spec.cutmix == 0 or rng.random() < 0.5)
            if use_mixup:
                x, y = mixup(x, q, rng.betavariate(spec.mixup, spec.mixup), perm)
            else:
                lam = rng.betavariate(spec.cutmix, spec.cutmix)
                x, y = cutmix(x, q, cutmix_box(x.shape[2], x.shape[3], lam, rng), perm)
        return self.eval_inputs(x), y

    def eval_inputs(self, x: Tensor) -> Tensor:
        """Inputs as validation and evaluation see them: normalised, nothing random."""
        return normalize(x, self.mean, self.std) if self.normalizes else x

    def eval_data(self, data: Any) -> Any:
        """A dataset (a dataclass with inputs `x`, e.g. `TensorData`) with normalised inputs;
        `data` itself when nothing is normalised."""
        if not self.normalizes:
            return data
        if not dataclasses.is_dataclass(data) or not hasattr(data, "x"):
            raise ValueError(
                "augment.mean/std normalise a dataset's inputs `x`, which this task's data does "
                "not have; leave them out"
            )
        return dataclasses.replace(data, x=normalize(data.x, self.mean, self.std))  # type: ignore[type-var]


def build_augmenter(spec: AugmentSettings, seed: int, num_classes: int | None) -> Augmenter:
    return Augmenter(spec, seed, num_classes)
