"""Small pieces the feature losses share: feature layouts, spatial matching, projectors, and the
pre-training of auto-encoders on teacher features (`ft`, `ka`).

Layouts: a loss that works on channels sees every feature as a map [B, C, H, W]. `as_map` turns a
vector [B, D] into a 1x1 map [B, D, 1, 1] and a sequence [B, L, D] into [B, D, L, 1] (channels
are the hidden units, positions the tokens), so 1x1 convolutions act per position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.losses.base import Shape


def as_map(f: Tensor) -> Tensor:
    """[B, D] -> [B, D, 1, 1]; [B, L, D] -> [B, D, L, 1]; [B, C, H, W] unchanged."""
    if f.dim() == 2:
        return f[:, :, None, None]
    if f.dim() == 3:
        return f.transpose(1, 2).unsqueeze(-1)
    if f.dim() == 4:
        return f
    raise ValueError(f"cannot read a feature of shape {list(f.shape)} as [B, C, H, W]")


def map_shape(shape: Shape) -> tuple[int, int, int]:
    """The (C, H, W) that `as_map` gives for a feature of `shape` (batch excluded)."""
    if len(shape) == 1:
        return (shape[0], 1, 1)
    if len(shape) == 2:
        return (shape[1], shape[0], 1)
    if len(shape) == 3:
        return (shape[0], shape[1], shape[2])
    raise ValueError(f"cannot read a feature of shape {list(shape)} as [C, H, W]")


def match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool two maps [B, *, H, W] to their common smaller (H, W)."""
    if a.shape[2:] == b.shape[2:]:
        return a, b
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    return F.adaptive_avg_pool2d(a, size), F.adaptive_avg_pool2d(b, size)


def require_maps(name: str, pairs: Sequence[tuple[Shape, Shape]]) -> None:
    """Fail clearly unless every pair is two spatial maps [C, H, W]."""
    for s, t in pairs:
        if len(s) != 3 or len(t) != 3:
            raise ValueError(
                f"{name}: needs convolutional feature maps [C, H, W] on both sides, got student "
                f"{list(s)} and teacher {list(t)}; pair conv layers/blocks"
            )


def conv1x1(c_in: int, c_out: int, identity_init: bool = True) -> nn.Conv2d:
    """A bias-free 1x1 convolution; the identity when `c_in == c_out` and `identity_init`."""
    conv = nn.Conv2d(c_in, c_out, 1, bias=False)
    if identity_init and c_in == c_out:
        with torch.no_grad():
            conv.weight.copy_(torch.eye(c_in)[:, :, None, None])
    return conv


class ConvAutoEncoder(nn.Module):
    """Three 3x3 convs down to `round(rate * C)` channels, three transposed convs back.

    The paraphraser of Kim et al. 2018 (RepDistiller `Paraphraser`: LeakyReLU(0.1), same
    resolution, no BN), also used as the teacher auto-encoder of He et al. 2019.
    """

    def __init__(self, channels: int, rate: float) -> None:
        super().__init__()
        c, k = channels, max(1, round(channels * rate))

        def block(conv: type[nn.Module], a: int, b: int) -> list[nn.Module]:
            return [conv(a, b, 3, 1, 1), nn.LeakyReLU(0.1)]

        self.encoder = nn.Sequential(
            *block(nn.Conv2d, c, c), *block(nn.Conv2d, c, k), *block(nn.Conv2d, k, k)
        )
        self.decoder = nn.Sequential(
            *block(nn.ConvTranspose2d, k, k),
            *block(nn.ConvTranspose2d, k, c),
            *block(nn.ConvTranspose2d, c, c),
        )
        self.factor_channels = k

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def pretrain_autoencoders(
    autoencoders: Sequence[nn.Module],
    teacher_features: Callable[[], Iterable[list[Tensor]]],
    epochs: int,
    lr: float = 1e-3,
) -> list[float]:
    """Train each auto-encoder to reconstruct its pair's teacher feature (MSE, Adam), then freeze.

    Returns the mean reconstruction loss of each epoch. Afterwards the auto-encoders' parameters
    no longer require grad: distillation uses them as fixed functions.
    """
    params = [p for ae in autoencoders for p in ae.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    history = []
    with torch.enable_grad():
        for _ in range(epochs):
            total, count = 0.0, 0
            for feats in teacher_features():
                maps = [as_map(f.detach().float()) for f in feats]
                loss = sum(
                    (F.mse_loss(ae(m), m) for ae, m in zip(autoencoders, maps, strict=True)),
                    torch.zeros((), device=maps[0].device),
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, count = total + float(loss.detach()), count + 1
            history.append(total / max(count, 1))
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    return history
