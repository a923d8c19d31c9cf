"""Split computing by head network distillation (Matsubara, Baidya, Callegaro, Levorato, Singh.
Distilled Split Deep Neural Networks for Edge-Assisted Real-Time Systems. HotEdgeVideo 2019).

The teacher is cut at a layer `split_at` (a module path of its layer table; by default the end
of its first spatial stage, `core.split_point`). A small head H, an encoder that ends in a
bottleneck of `bottleneck` channels at the split point's resolution and a decoder back to the
split point's channels, replaces the teacher's layers up to `split_at` and learns to reproduce
the teacher's feature there:

    L = feature_weight * || H(x) - T_{<=split}(x) ||^2  (mean over elements)
        + the configured logit losses of the end-to-end output T_{>split}(H(x))

The teacher's tail T_{>split} stays frozen (no gradient, eval mode, never in the optimizer, never
in a checkpoint) and serves the rest: the deployed model is head + tail, the device runs the
encoder and sends the bottleneck (`bottleneck` x H x W values per sample: 4 bytes each as
float32, 1 as 8-bit), the server runs the decoder and the tail.

How the tail runs from a feature: the teacher (an eager zoo module or an unflattened `.pt2`
graph, whose submodules are called through `nn.Module.__call__`) runs with a forward hook on the
`split_at` module that returns the head's output instead of the module's, so the rest of the
graph computes on the head's feature. A split module that the forward calls more than once (a
reused module) cannot be cut this way and is refused at setup.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.split_point import bottleneck_bytes, split_layer
from worker.engine.schemes.base import Autocast, StepView
from worker.engine.schemes.offline import OfflineScheme, freeze

HEAD_ARTIFACTS = {"head_safetensors": "head.safetensors", "head_pt2": "head.pt2"}


def _block(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class SplitHead(nn.Module):
    """Encoder (3x3 convs, stride 2 until the split point's resolution, then a 1x1 conv to the
    `bottleneck` channels) and decoder (back to the split point's channels)."""

    def __init__(
        self, in_shape: tuple[int, ...], feature_shape: tuple[int, ...], bottleneck: int
    ) -> None:
        super().__init__()
        cin, rows, cols = (int(s) for s in in_shape)
        channels, height, width = (int(s) for s in feature_shape)
        hidden = min(max(channels // 2, bottleneck, 8), 64)
        layers = _block(cin, hidden)
        while rows > height and math.ceil(rows / 2) >= height:
            layers += _block(hidden, hidden, stride=2)
            rows, cols = math.ceil(rows / 2), math.ceil(cols / 2)
        if (rows, cols) != (height, width):
            layers.append(nn.AdaptiveAvgPool2d((height, width)))
        layers += _block(hidden, bottleneck, kernel=1)
        self.encoder = nn.Sequential(*layers)
        self.decoder = nn.Sequential(
            *_block(bottleneck, hidden), nn.Conv2d(hidden, channels, 3, 1, 1)
        )
        self.bottleneck, self.feature_shape = int(bottleneck), (channels, height, width)
        self.input_shape = tuple(int(s) for s in in_shape)
        self.quantize = False  # eval only: the bottleneck rounded to 8 bits, as it is sent

    def forward(self, x: Tensor) -> Tensor:
        z = self.encoder(x)
        if self.quantize:
            z = quantize_8bit(z)
        return self.decoder(z)


def quantize_8bit(z: Tensor) -> Tensor:
    """z (>= 0, after ReLU) rounded to 256 levels per sample between 0 and its max, and back."""
    scale = z.flatten(1).amax(dim=1).clamp_min(1e-8).view(-1, *([1] * (z.dim() - 1))) / 255.0
    return torch.round(z / scale).clamp(0, 255) * scale


class SplitModel(nn.Module):
    """The deployed model: `head`, then the frozen `teacher` from `split_at` on."""

    def __init__(self, head: SplitHead, teacher: nn.Module, split_at: str) -> None:
        super().__init__()
        self.head, self.teacher, self.split_at = head, teacher, split_at
        # not registered as a child: its parameters are the teacher's, listed once
        self._cut: list[nn.Module] = [dict(teacher.named_modules())[split_at]]
        self.last_feature: Tensor | None = None
        self.arch = ""  # not a zoo architecture: the run's student is not registered as a model

    def forward(self, x: Tensor) -> Tensor:
        feature = self.head(x)
        if self.training:
            self.last_feature = feature
        handle = self._cut[0].register_forward_hook(lambda _m, _a, _o: feature)
        try:
            out: Tensor = self.teacher(x)
        finally:
            handle.remove()
        return out

    def train(self, mode: bool = True) -> SplitModel:
        """Only the head trains; the teacher stays in eval mode (its BatchNorm statistics)."""
        super().train(mode)
        freeze(self.teacher)
        return self


def count_calls(module: nn.Module, root: nn.Module, x: Tensor) -> int:
    """How many times `root(x)` calls `module`."""
    calls = [0]
    handle = module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        with torch.inference_mode():
            root(x)
    finally:
        handle.remove()
    return calls[0]


class SplitScheme(OfflineScheme):
    """A head with a bottleneck distilled into the teacher's split point; the tail frozen."""

    def __init__(
        self, split_at: str = "", bottleneck: int = 4, feature_weight: float = 1.0
    ) -> None:
        super().__init__(split_at=split_at, bottleneck=bottleneck, feature_weight=feature_weight)
        if int(bottleneck) < 1:
            raise ValueError(f"split: bottleneck must be at least 1 channel, got {bottleneck}")
        self.split_at, self.bottleneck = str(split_at), int(bottleneck)
        self.feature_weight = float(feature_weight)
        self.head: SplitHead | None = None
        self.model: SplitModel | None = None
        self.target: Tensor | None = None

    def setup(self, teacher: nn.Module, student: nn.Module, losses: nn.ModuleList) -> None:
        """Cut the teacher at `split_at` (checked against its layer table) and build the head
        for the teacher's input shape (the configured student's `input_shape`)."""
        super().setup(teacher, student, losses)
        from worker.engine.taps import inspect_model

        shape = getattr(student, "input_shape", None)
        if shape is None:
            raise ValueError("split: the run's student does not say its input shape")
        row = split_layer(inspect_model(teacher, shape), self.split_at)
        path = str(row["path"])
        calls = count_calls(dict(teacher.named_modules())[path], teacher, torch.zeros(2, *shape))
        if calls != 1:
            raise ValueError(
                f"split: the teacher calls layer '{path}' {calls} times in one forward, so "
                "replacing its output would cut it more than once; pick a layer called once "
                "(a stage end)"
            )
        self.split_at = path
        self.head = SplitHead(tuple(shape), tuple(row["output_shape"]), self.bottleneck)
        self.model = SplitModel(self.head, teacher, path)
        self.student = self.model

    def _head(self) -> SplitHead:
        if self.head is None:
            raise RuntimeError("split: setup() was not called")
        return self.head

    def trained_modules(self) -> list[nn.Module]:
        return [self._head(), self.losses]

    def extra_modules(self) -> list[nn.Module]:
        return [self._head()]

    def teacher_outputs(
        self, x: Tensor, taps: Any, needed: bool, autocast: Autocast
    ) -> tuple[Tensor, list[Tensor]]:
        """The teacher's logits and, always, its feature at the split point (the target)."""
        from worker.engine.taps import FeatureTaps

        with (
            torch.inference_mode(),
            autocast(),
            FeatureTaps(self.teacher, [(self.split_at, "output")]) as cut,
        ):
            logits = self.teacher(x)
            target = cut.features[0]
        self.target = target.clone()
        return logits.clone(), []

    def combine(self, values: dict[str, Tensor], view: StepView) -> dict[str, Tensor]:
        feature = self.model.last_feature if self.model is not None else None
        if feature is None or self.target is None:
            raise RuntimeError("split: the step ran no head forward")
        mse = F.mse_loss(feature.float(), self.target.float())
        return {**values, "feature": self.feature_weight * mse}

    def state_dict(self) -> dict[str, Any]:
        return {"head": self._head().state_dict(), "losses": self.losses.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._head().load_state_dict(state["head"])
        self.losses.load_state_dict(state["losses"])


def export_head(
    model: SplitModel, out_dir: Path, data: Any, task: Any
) -> tuple[dict[str, str], dict[str, Any]]:
    """head.safetensors and head.pt2, and evaluation.json's `split` block: the split point, the
    bottleneck's bytes per sample (float32, 8-bit), the end-to-end accuracy with the bottleneck
    sent as 8 bits, the head's size and CPU latency at batch 1 (encoder: the device's part)."""
    from worker.engine.evaluate import latency_ms
    from worker.engine.export import export_pt2, save_safetensors

    head = model.head.cpu().eval()
    out_dir = Path(out_dir)
    save_safetensors(head, out_dir / HEAD_ARTIFACTS["head_safetensors"])
    export_pt2(head, head.input_shape, out_dir / HEAD_ARTIFACTS["head_pt2"], task)
    times = latency_ms(
        {"encoder": head.encoder, "head": head}, head.input_shape, 1, threads=1, budget_s=2.0
    )
    block: dict[str, Any] = {
        "split_at": model.split_at,
        "bottleneck_channels": head.bottleneck,
        "feature_shape": list(head.feature_shape),
        "bottleneck_bytes": bottleneck_bytes(head.bottleneck, head.feature_shape),
        "input_bytes_float32": 4 * math.prod(head.input_shape),
        "head_params": sum(p.numel() for p in head.parameters()),
        "encoder_params": sum(p.numel() for p in head.encoder.parameters()),
        "head_latency_ms": times["head"],
        "encoder_latency_ms": times["encoder"],
    }
    if len(data):
        model.cpu().eval()
        cpu = torch.device("cpu")
        block["end_to_end"] = task.validate(model, data, 256, cpu, contextlib.nullcontext)
        head.quantize = True
        try:
            block["end_to_end_8bit"] = task.validate(model, data, 256, cpu, contextlib.nullcontext)
        finally:
            head.quantize = False
    return dict(HEAD_ARTIFACTS), block
