"""The image-to-image student: a small ResNet-style encoder-decoder generator, output
[N, out_channels, H, W] at the input's size.

`gen_resnet` follows the generator of Johnson et al. (Perceptual Losses for Real-Time Style
Transfer, ECCV 2016) that pix2pix/CycleGAN and GAN Compression (Li et al., CVPR 2020) compress:
a 3x3 stem conv-BN-ReLU, `downs` stride-2 conv-BN-ReLU steps doubling the channels, `blocks`
residual blocks at the lowest resolution (two 3x3 conv-BN with a ReLU between, added to their
input), `downs` stride-2 transposed conv-BN-ReLU steps halving them back, and a 3x3 conv to
the output channels (linear: the output lies in whatever range the teacher's does). Channels
are 16 * width at full resolution (at least 4). It takes any image whose sides divide by
2^downs and any channel counts in and out.

Module names: `stem`, `down1`..`downK`, `blocks.0`..`blocks.{B-1}`, `up1`..`upK`, `head`:
layer pairs between two of them read alike (e.g. `blocks.2` of the teacher and the student,
through a learned 1x1 connector when their widths differ: `fitnets`, `feature_l2`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from worker.engine.students.common import conv_bn_relu, describe, image_shape, init_weights

BASE = 16  # channels at full resolution for width 1


class ResidualBlock(nn.Module):
    """x + BN(conv(ReLU(BN(conv(x))))) at a fixed width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


def _up(cin: int, cout: int) -> nn.Sequential:
    """A stride-2 transposed conv (exactly doubles H and W) -> BN -> ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class GenResNet(nn.Module):
    """Encoder, residual blocks, decoder; see the module docstring."""

    def __init__(self, in_channels: int, out_channels: int, width: float, blocks: int, downs: int):
        super().__init__()
        c = max(4, int(round(BASE * width)))
        self.downs = downs
        self.stem = conv_bn_relu(in_channels, c, 3)
        for k in range(1, downs + 1):
            self.add_module(f"down{k}", conv_bn_relu(c * 2 ** (k - 1), c * 2**k, 3, stride=2))
        self.blocks = nn.Sequential(*(ResidualBlock(c * 2**downs) for _ in range(blocks)))
        for k in range(1, downs + 1):
            deep = c * 2 ** (downs - k + 1)
            self.add_module(f"up{k}", _up(deep, deep // 2))
        self.head = nn.Conv2d(c, out_channels, 3, 1, 1)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for k in range(1, self.downs + 1):
            h = getattr(self, f"down{k}")(h)
        h = self.blocks(h)
        for k in range(1, self.downs + 1):
            h = getattr(self, f"up{k}")(h)
        return self.head(h)


def gen_resnet(
    input_shape: Sequence[int],
    num_classes: int,
    width: float = 1.0,
    blocks: int = 3,
    downs: int = 2,
) -> nn.Module:
    """`gen_resnet`: images (C, H, W) to `num_classes`-channel images of the same size (the
    catalog's `num_classes` is the output's channel count for this task)."""
    c, h, w = image_shape("gen_resnet", input_shape)
    stride = 2 ** int(downs)
    if h % stride or w % stride:
        raise ValueError(
            f"gen_resnet with downs={downs} needs image sides divisible by {stride}, got "
            f"{h}x{w}; use fewer downs or pad the images"
        )
    model = GenResNet(c, int(num_classes), float(width), int(blocks), int(downs))
    kwargs = {"width": float(width), "blocks": int(blocks), "downs": int(downs)}
    describe(model, "gen_resnet", kwargs, (c, h, w), num_classes)
    return model
