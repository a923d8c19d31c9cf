"""Strict must not mean wrong: what `torch.export` writes from ordinary modules is accepted.

Each model is exported the way a user would (`torch.export.export` + `torch.export.save`, some
with a dynamic batch `Dim`), loaded through the full checks (layout, clean rebuild, operator
rule) and must give the same outputs; its layer table and forward hooks work, digit names too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from worker.engine.loading import load_model
from worker.engine.taps import FeatureTaps, inspect_model


class Residual(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class ResNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layers = nn.ModuleList([Residual(), Residual()])
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class WithBuffersAndConstants(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.linspace(-1, 1, 6))
        self.register_buffer("scale", torch.full((6,), 2.0), persistent=False)
        self.offset = torch.arange(6, dtype=torch.float32)  # a tensor constant
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((x - self.mean) * self.scale + self.offset)


class Nested(nn.Module):
    """ModuleDict and ModuleList inside Sequential: paths like `blocks.0.1` and `heads.main`."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Linear(10, 16), nn.GELU()),
            nn.Sequential(nn.Linear(16, 16), nn.SiLU()),
        )
        self.heads = nn.ModuleDict({"main": nn.Linear(16, 4), "aux": nn.Linear(16, 2)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(x)
        return self.heads["main"](h) + self.heads["aux"](h).sum(1, keepdim=True)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.qkv = nn.Linear(16, 48)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 6, 8)
        h = self.norm(self.embed(x))
        h = h + self.attn(h, h, h, need_weights=False)[0]
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        h = h + F.scaled_dot_product_attention(q, k, v)
        return self.out(h.mean(1))


class DepthwiseUpsample(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.pw = nn.Conv2d(4, 8, 1)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pw(F.hardswish(self.dw(x)))
        h = self.up(self.pool(h)) + F.interpolate(self.avg(h), scale_factor=2.0, mode="bilinear")
        return self.fc(h.amax((2, 3)))


class OddNames(nn.Module):
    """Module names a user may pick: digits first, dashes, capitals, underscores."""

    def __init__(self) -> None:
        super().__init__()
        self.add_module("1st", nn.Linear(5, 7))
        self.add_module("block-a", nn.Linear(7, 7))
        self.add_module("_Hidden_2", nn.Linear(7, 3))
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = getattr(self, "1st")(x).relu()
        x = self.drop(getattr(self, "block-a")(x).tanh())
        return self._Hidden_2(x)


def _seq_flatten() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def _seq_numbered() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def _module_list_mlp() -> nn.Module:
    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(12, 12) for _ in range(3)])
            self.norm = nn.LayerNorm(12)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = F.gelu(layer(x)) + x
            return self.norm(x)

    return MLP()


# name -> (build, input shape without batch, dynamic batch, a layer to hook)
SHAPES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], bool, str]] = {
    "top-level Sequential (Flatten, Linear)": (_seq_flatten, (1, 8, 8), False, "1"),
    "numbered children with nested Sequential": (_seq_numbered, (1, 8, 8), True, "3.0"),
    "ModuleList MLP with layer norm": (_module_list_mlp, (12,), True, "layers.1"),
    "nested Sequential and ModuleDict": (Nested, (10,), True, "blocks.0.1"),
    "buffers and tensor constants": (WithBuffersAndConstants, (6,), True, "fc"),
    "residual blocks with batch norm (eval)": (ResNetish, (3, 8, 8), True, "layers.1"),
    "attention (MultiheadAttention and SDPA)": (Attention, (6, 8), True, "norm"),
    "depthwise conv, pooling, upsampling": (DepthwiseUpsample, (4, 8, 8), True, "dw"),
    "odd module names and eval dropout": (OddNames, (5,), False, "block-a"),
    "GELU / SiLU sequential": (
        lambda: nn.Sequential(
            nn.Linear(4, 8), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Linear(8, 2)
        ),
        (4,),
        True,
        "0",
    ),
    "conv1d with padding='same'": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 4, 5, padding="same"), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
        ),
        (2, 16),
        True,
        "0",
    ),
    "transposed conv and instance norm": (
        lambda: nn.Sequential(
            nn.ConvTranspose2d(3, 4, 2, stride=2),
            nn.InstanceNorm2d(4),
            nn.LeakyReLU(0.1),
            nn.Flatten(),
            nn.Linear(4 * 8 * 8, 2),
        ),
        (3, 4, 4),
        True,
        "0",
    ),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_ordinary_export_loads_with_the_same_outputs(name: str, tmp_path: Path) -> None:
    build, shape, dynamic, hooked = SHAPES[name]
    torch.manual_seed(0)
    model = build().eval()
    example = (torch.randn(2, *shape),)
    dims = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, example, dynamic_shapes=dims), path)

    loaded = load_model(path, "pt2")
    assert loaded.input_shape == shape
    for batch in (2, 3) if dynamic else (2,):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            torch.testing.assert_close(loaded.module(x), model(x), atol=1e-5, rtol=1e-4)

    layers = {row["path"] for row in inspect_model(loaded.module, loaded.input_shape)["layers"]}
    assert hooked in layers, sorted(layers)
    with FeatureTaps(loaded.module, [(hooked, "output")], detach=True) as taps:
        loaded.module(torch.randn(2, *shape))
        assert len(taps.features) == 1 and taps.features[0].shape[0] == 2
