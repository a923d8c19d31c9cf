"""Network augmentation: the `netaug` scheme (Cai, Gan, Lin, Han. Network Augmentation for Tiny
Deep Learning, ICLR 2022).

The tiny student is trained as a model of its own and, at the same time, as the leading slice
of wider models that share its weights ("reverse dropout"). Each step adds to the student's
configured losses (its task loss, the teacher's terms) the same configured logit losses of one
augmented model, sampled uniformly from `widths` (multipliers of the student's width, e.g.
1.5, 2, 3):

    L = L(W_tiny) + alpha * L([W_tiny, W_aug])

Every augmented model is the same zoo architecture built wider (`wider`: mlp `hidden`, the
resnet / wrn / vgg `width` times the multiplier). Its weights are assembled for each forward
(`torch.func.functional_call`): every parameter tensor is the leading slice of the widest
model's tensor (so all augmented widths share weights with each other, as in the paper's
supernet) whose leading slice `[:c_out, :c_in, ...]` is the student's own tensor: the same
tensor object, so the augmented loss's gradient reaches the student's weights directly. The
student module keeps its parameters, so taps, validation and export see the tiny model only;
the export is the tiny model and its weights are exactly the shared slice
(`NetAugScheme.augmented_state_dict`). BatchNorm running statistics are not shared: each
augmented width keeps its own (as slimmable networks do), the student's are the tiny model's.

The optimizer updates the student, the losses' modules and the widest model's parameters
(their leading slice is unused: the student's tensors stand there). A checkpoint holds the
student, the losses, every augmented model's state and the sampler's generator state, so a
resumed run samples the same widths as an uninterrupted one.

Layer pairs and feature losses apply to the tiny student as usual; the augmented term uses the
configured losses that read logits only (ce, kd, dkd, ...).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from worker.engine.schemes.base import StepView
from worker.engine.schemes.offline import OfflineScheme

SAMPLER_STRIDE = 104_729
WIDENABLE = ("mlp", "resnet", "wrn", "vgg")  # families whose channels slice from the front


def parse_widths(text: str | float | list[float]) -> list[float]:
    """`"1.5, 2, 3"` -> [1.5, 2.0, 3.0]; raises ValueError unless each is in (1, 8]."""
    items = text if isinstance(text, list) else str(text).replace(";", ",").split(",")
    try:
        widths = [float(w) for w in items if str(w).strip()]
    except ValueError:
        raise ValueError(
            f"netaug: widths must be numbers separated by commas (e.g. 1.5,2,3), got {text!r}"
        ) from None
    if not widths or any(not 1.0 < w <= 8.0 for w in widths):
        raise ValueError(
            f"netaug: every augmentation width is a multiple of the student's width in (1, 8] "
            f"(e.g. 1.5,2,3), got {text!r}"
        )
    return sorted(set(widths))


def wider(student: nn.Module, factor: float) -> nn.Module:
    """The student's zoo architecture with its width times `factor` (fresh weights).

    Raises ValueError for a student that is not a zoo/derived model of a family whose channels
    slice from the front (mlp, resnet, wrn, vgg), saying what would work.
    """
    from core import catalog
    from worker.engine.students import builder
    from worker.engine.students.resnet import ResNet, scaled_channels

    arch = getattr(student, "arch", None)
    shape, classes = getattr(student, "input_shape", None), getattr(student, "num_classes", None)
    entry = catalog.STUDENTS.get(arch or "")
    if entry is None or shape is None or classes is None:
        raise ValueError(
            "netaug builds wider twins of the student from its zoo architecture; this student "
            "has none (an uploaded or loaded module); use a zoo or derived student of "
            f"{', '.join(WIDENABLE)}"
        )
    if entry.family not in WIDENABLE:
        raise ValueError(
            f"netaug: '{arch}' ({entry.family}) cannot be widened by slicing its first channels "
            "(grouped or depthwise convolutions, channel shuffle); use a student of "
            f"{', '.join(WIDENABLE)}"
        )
    kwargs = dict(getattr(student, "arch_kwargs", {}))
    names = {p.name for p in entry.params}
    if "hidden" in names:  # mlp
        return builder(entry.name)(
            shape, classes, **{**kwargs, "hidden": round(kwargs["hidden"] * factor)}
        )
    if "width" in names:
        width = float(kwargs.get("width", entry.width or 1.0))
        return builder(entry.name)(shape, classes, **{**kwargs, "width": width * factor})
    if entry.family == "wrn":  # wrn_16_2 ...: the generic wrn of the same depth, wider
        width = float(entry.width or 1.0) * factor
        return builder("wrn")(shape, classes, depth=entry.depth, width=width)
    # resnet8x4, resnet32x4: channels (32, 64, 128, 256) times the factor
    return ResNet(
        int(entry.depth or 8), scaled_channels((32, 64, 128, 256), factor), shape, classes
    )


def _leading(shape: torch.Size) -> tuple[slice, ...]:
    return tuple(slice(0, int(s)) for s in shape)


class NetAugScheme(OfflineScheme):
    """The tiny student plus `alpha` times the loss of one augmented width per step."""

    def __init__(self, widths: str = "1.5,2,3", alpha: float = 1.0) -> None:
        super().__init__(widths=widths, alpha=alpha)
        self.widths = parse_widths(widths)
        self.alpha = float(alpha)
        self.augmented = nn.ModuleList()  # one model per width, the widest last
        self.sampler = torch.Generator()
        self.sampled: list[int] = []  # the width index of each step (for tests)

    def setup(self, teacher: nn.Module, student: nn.Module, losses: nn.ModuleList) -> None:
        super().setup(teacher, student, losses)
        seed = (torch.initial_seed() + SAMPLER_STRIDE) % 2**63
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.augmented = nn.ModuleList(wider(student, w) for w in self.widths)
        self.sampler.manual_seed(seed)
        ours = dict(student.named_parameters())
        widest = dict(self.augmented[-1].named_parameters())
        for w, model in zip(self.widths, self.augmented, strict=True):
            theirs = dict(model.named_parameters())
            bad = [
                k
                for k, p in ours.items()
                if k not in theirs
                or theirs[k].dim() != p.dim()
                or any(a < b for a, b in zip(theirs[k].shape, p.shape, strict=True))
                or any(a > b for a, b in zip(theirs[k].shape, widest[k].shape, strict=True))
            ]
            if bad or theirs.keys() != ours.keys():
                raise ValueError(
                    f"netaug: the student widened {w}x does not hold it as its first channels "
                    f"(layers {bad[:3] or sorted(theirs.keys() ^ ours.keys())[:3]}); try "
                    "other widths or a wider student"
                )
            if model is not self.augmented[-1]:
                model.requires_grad_(False)  # a frame only: its weights are the widest's slice
        with torch.no_grad():  # the widest model holds the student as its leading slice
            for k, p in ours.items():
                widest[k][_leading(p.shape)] = p
        self.augmented.train(student.training)

    def extra_modules(self) -> list[nn.Module]:
        return [self.augmented]

    def trained_modules(self) -> list[nn.Module]:
        return [self.student, self.losses, self.augmented]

    # -- the augmented model ---------------------------------------------------------------------

    def augmented_params(self, index: int) -> dict[str, Tensor]:
        """Width `index`'s parameters: the widest model's leading slices, whose own leading
        slice is the student's tensor (differentiable with respect to both)."""
        ours = dict(self.student.named_parameters())
        frame = dict(self.augmented[index].named_parameters())
        widest = dict(self.augmented[-1].named_parameters())
        params = {}
        for name, p in ours.items():
            w = widest[name][_leading(frame[name].shape)].clone()
            w[_leading(p.shape)] = p
            params[name] = w
        return params

    def augmented_forward(self, index: int, x: Tensor) -> Tensor:
        """Width `index`'s logits for `x`, with the shared weights."""
        out: Tensor = functional_call(self.augmented[index], self.augmented_params(index), (x,))
        return out

    def augmented_state_dict(self, index: int = -1) -> dict[str, Tensor]:
        """Width `index`'s parameters as they stand (detached; the widest by default)."""
        index = index % len(self.widths)
        return {k: v.detach().clone() for k, v in self.augmented_params(index).items()}

    def combine(self, values: dict[str, Tensor], view: StepView) -> dict[str, Tensor]:
        if not self.student.training or view.logit_terms is None:
            return values
        index = int(torch.randint(len(self.widths), (1,), generator=self.sampler))
        self.sampled.append(index)
        with view.autocast():
            logits = self.augmented_forward(index, view.inputs)
        terms = view.logit_terms(logits, self.augmented[index])
        return {**values, **{f"aug/{k}": self.alpha * v for k, v in terms.items()}}

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "augmented": [m.state_dict() for m in self.augmented],
            "sampler": self.sampler.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        models = state["augmented"]
        if len(models) != len(self.augmented):
            raise RuntimeError(
                f"the checkpoint holds {len(models)} augmented widths; this run has "
                f"{len(self.augmented)} ({self.widths})"
            )
        for model, sd in zip(self.augmented, models, strict=True):
            model.load_state_dict(sd)
        self.sampler.set_state(state["sampler"])
