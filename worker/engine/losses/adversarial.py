"""Holistic adversarial distillation: a critic, trained inside the run, scores the student's
dense output against the teacher's (Liu et al. 2019, WGAN-GP).

The critic (`Critic`) sees (input image, output map) pairs: the teacher's map is real, the
student's fake. Each training call of `Adversarial.forward` first takes one critic step (its own
Adam optimizer, `lr`) on detached maps, minimising the Wasserstein critic loss with gradient
penalty, then returns the generator term -E[D(I, student map)] for the student. Why the critic
is not a registered submodule: the trainer's optimizer takes every parameter of the loss modules
(connectors train with the student), and the critic must train against the student, never with
it. Kept outside `parameters()`, the student's optimizer cannot reach it; its weights have
`requires_grad` off except inside its own step, so the student's backward leaves them alone, and
its step differentiates only a loss of detached maps, so nothing of it reaches the student.
One critic step per training call: with `training.grad_accumulation` N that is N steps per
optimizer step (one per micro-batch), and a scheme that trains several students steps it for
each student's output it scores.

Generic over dense outputs [N, C, H, W] of the same shape from both models: segmentation logits
(`output` "softmax": the class-probability maps, as in the paper) or images (`output` "raw":
e.g. the image-to-image task, where the teacher's output image is the real sample). With
`condition` the critic also sees the input batch when it is an image batch [N, c, h, w]
(resized to the output's size), as the paper's conditional critic does.

The critic is built at the first call, when the map and image channels are known (on the
step's device, its initialisation under a forked RNG so a resumed run draws the same random
numbers as an uninterrupted one); its weights and optimizer state live in the loss's state dict
as extra state (`get_extra_state`), so checkpoints hold them and a resume continues them. It is
never part of the student, so export does not see it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine import distributed
from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


class Critic(nn.Module):
    """D(x) = the spatial mean of a fully convolutional map: three 3x3 stride-2 convolutions
    (width, 2*width, 4*width channels) with LeakyReLU(0.2), then a 3x3 convolution to one
    channel; one score per sample for any H, W >= 1. No normalisation layer: the gradient
    penalty is per sample and batch norm would mix the samples (Gulrajani et al. 2017)."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for mult in (1, 2, 4):
            layers += [nn.Conv2d(channels, width * mult, 3, 2, 1), nn.LeakyReLU(0.2)]
            channels = width * mult
        layers.append(nn.Conv2d(channels, 1, 3, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).mean(dim=(1, 2, 3))


@dataclass
class _CriticState:
    """The critic, its optimizer and the (map, image) channels it was built for."""

    net: Critic
    opt: torch.optim.Optimizer
    channels: tuple[int, int]


@contextlib.contextmanager
def _trainable(module: nn.Module) -> Iterator[None]:
    """Gradients for `module`'s parameters inside the block only."""
    module.requires_grad_(True)
    try:
        yield
    finally:
        module.requires_grad_(False)


def _join(maps: Tensor, image: Tensor | None) -> Tensor:
    return maps if image is None else torch.cat([image, maps], dim=1)


class Adversarial(DistillLoss):
    """L_G = -1/N * sum_n D(I_n, s_n) for the student, while the critic D minimises
    L_D = mean D(I, s) - mean D(I, t) + lambda_gp * mean (||grad_x D(I, x)||_2 - 1)^2,
    x = a t + (1 - a) s with a ~ U(0, 1) per sample (WGAN-GP), one Adam step per training call.

    s, t: the student's and teacher's maps (softmax over channels, or the raw outputs). Liu,
    Chen, Liu, Qu, Ma, Wang. "Structured Knowledge Distillation for Semantic Segmentation",
    CVPR 2019 (holistic distillation; the authors' code: lambda_gp 10, critic lr 4e-4, loss
    weight 0.1). Simplified: a plain convolutional critic instead of their self-attention one
    with spectral norm, and Adam(0.5, 0.9) as in WGAN-GP instead of their SGD.
    """

    def __init__(
        self,
        ctx: LossContext,
        lr: float = 4e-4,
        gp_weight: float = 10.0,
        width: int = 32,
        output: str = "softmax",
        condition: bool = True,
    ) -> None:
        super().__init__(ctx)
        if lr <= 0 or gp_weight < 0 or width < 1:
            raise ValueError(
                f"{self.name}: lr must be > 0, gp_weight >= 0 and width >= 1, got "
                f"{lr}, {gp_weight}, {width}"
            )
        if output not in ("softmax", "raw"):
            raise ValueError(f"{self.name}: output must be 'softmax' or 'raw', got {output!r}")
        self.lr, self.gp_weight, self.width = float(lr), float(gp_weight), int(width)
        self.output, self.condition = output, bool(condition)
        self._critic: _CriticState | None = None  # a plain attribute: not in parameters()
        self._pending: dict[str, Any] | None = None  # a checkpoint's critic, loaded when built
        self.critic_loss: Tensor | None = None  # L_D of the last critic step, detached

    @property
    def critic(self) -> Critic | None:
        """The critic once the first call built it."""
        return self._critic.net if self._critic is not None else None

    def forward(self, out: StepOutputs) -> Tensor:
        s, t = out.student_logits, out.teacher_logits
        if s.dim() != 4 or s.shape != t.shape:
            raise ValueError(
                f"loss '{self.name}' needs dense outputs [N, C, H, W] of the same shape from "
                f"both models, got student {list(s.shape)} and teacher {list(t.shape)}; use it "
                "with a dense task (segmentation, image_to_image) and a student built for the "
                "teacher's output"
            )
        with torch.autocast(s.device.type, enabled=False):  # the critic runs in float32
            fake, real = self._maps(s.float()), self._maps(t.detach().float())
            image = self._image(out.inputs, fake)
            critic = self._build(fake.shape[1], 0 if image is None else image.shape[1], s.device)
            if self.training and torch.is_grad_enabled():
                self._critic_step(critic, real, fake.detach(), image)
            return -critic.net(_join(fake, image)).mean()

    def _maps(self, y: Tensor) -> Tensor:
        return y.softmax(dim=1) if self.output == "softmax" else y

    def _image(self, inputs: Tensor | None, maps: Tensor) -> Tensor | None:
        """The input batch as the critic's condition, at the maps' size, or None."""
        if not self.condition or inputs is None or inputs.dim() != 4:
            return None
        if not inputs.is_floating_point():
            return None
        image = inputs.detach().float()
        if image.shape[-2:] != maps.shape[-2:]:
            image = F.interpolate(image, size=maps.shape[-2:], mode="bilinear", align_corners=False)
        return image

    def _build(self, map_channels: int, image_channels: int, device: torch.device) -> _CriticState:
        """The critic for these channels on `device`: built (and a checkpoint's state loaded)
        at the first call, rebuilt from its own state when the step moved to another device."""
        channels = (map_channels, image_channels)
        state = self._critic
        if state is not None and next(state.net.parameters()).device != device:
            self._pending, self._critic, state = self.get_extra_state(), None, None
        if state is not None:
            if state.channels != channels:
                raise ValueError(
                    f"loss '{self.name}': its critic was built for {state.channels[0]} map and "
                    f"{state.channels[1]} image channels, this step has {map_channels} and "
                    f"{image_channels}"
                )
            return state
        with torch.random.fork_rng(devices=[]):  # same random stream whether built or restored
            net = Critic(map_channels + image_channels, self.width)
        net.requires_grad_(False).to(device)
        distributed.broadcast_modules([net])  # `training.gpus` > 1: rank 0's critic everywhere
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, betas=(0.5, 0.9))
        state = _CriticState(net, opt, channels)
        pending, self._pending = self._pending, None
        if pending:
            if tuple(pending["channels"]) != channels:
                raise ValueError(
                    f"loss '{self.name}': the checkpoint's critic was built for "
                    f"{tuple(pending['channels'])} (map, image) channels, this run has {channels}"
                )
            net.load_state_dict(pending["critic"])
            opt.load_state_dict(pending["optimizer"])
        self._critic = state
        return state

    def _critic_step(
        self, critic: _CriticState, real: Tensor, fake: Tensor, image: Tensor | None
    ) -> None:
        """One optimizer step of the critic on detached maps; nothing reaches the student."""
        net = critic.net
        params: list[Tensor] = list(net.parameters())
        with _trainable(net):
            loss = net(_join(fake, image)).mean() - net(_join(real, image)).mean()
            if self.gp_weight:
                loss = loss + self.gp_weight * self._penalty(net, real, fake, image)
            grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        if distributed.world() > 1:  # the mean of the ranks' gradients: one critic everywhere
            distributed.sum_step(params, {})
            for p in params:
                assert p.grad is not None
                p.grad.div_(distributed.world())
        critic.opt.step()
        critic.opt.zero_grad(set_to_none=True)
        self.critic_loss = loss.detach()

    @staticmethod
    def _penalty(net: Critic, real: Tensor, fake: Tensor, image: Tensor | None) -> Tensor:
        """mean_n (||grad_x D(I, x_n)||_2 - 1)^2 at x = a t + (1 - a) s, a ~ U(0, 1) per sample."""
        a = torch.rand(len(real), 1, 1, 1, device=real.device)
        mixed = (a * real + (1 - a) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(net(_join(mixed, image)).sum(), mixed, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()

    def get_extra_state(self) -> dict[str, Any]:
        """The critic's weights, its optimizer state and channels (empty before it exists)."""
        if self._critic is None:
            return dict(self._pending or {})
        return {
            "critic": self._critic.net.state_dict(),
            "optimizer": self._critic.opt.state_dict(),
            "channels": list(self._critic.channels),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Keep a checkpoint's critic; the next call builds the critic from it."""
        self._critic, self._pending = None, (dict(state) if state else None)
