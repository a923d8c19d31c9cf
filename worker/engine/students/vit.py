"""DeiT-Tiny (Touvron et al., ICML 2021), a ViT of width 192, 12 blocks, 3 heads: `deit_tiny`.

timm's module names: `patch_embed.proj` (a conv with kernel = stride = patch size), `cls_token`
and `pos_embed` (parameters), `blocks.N` (`norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`,
`mlp.act`, `mlp.fc2`), `norm`, `head`; a timm state dict of the same size maps onto it. The
classifier reads the class token after the final norm.

Its feature layers (`blocks.N`, `norm`, ...) give token maps [N, tokens, dim] (tokens = 1 + the
number of patches), which the layer table shows as [tokens, dim]; they pair with layers of
another transformer with as many tokens (a linear connector on dim), not with CNN stage maps.

Any input size: `patch_size` 0 (auto) is 16 from 112 pixels up and 4 below (2 under 16 pixels),
so 224x224 gives 196 patches, 32x32 gives 64 and 8x8 digits 16; a side that the patch size
does not divide loses its last pixels. `width` scales the embedding (192 at 1, a multiple of 12
so the 3 heads stay whole), `depth` the number of blocks (at least one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from worker.engine.students.common import describe, image_shape, repeats, scaled

HEADS = 3


def auto_patch(h: int, w: int) -> int:
    side = min(h, w)
    return 16 if side >= 112 else 4 if side >= 16 else 2 if side >= 2 else 1


class PatchEmbed(nn.Module):
    def __init__(self, channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch, patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [N, patches, dim]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(n, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: float = 1.0,
        depth: float = 1.0,
        patch_size: int = 0,
    ) -> None:
        super().__init__()
        c, h, w = image_shape("deit_tiny", input_shape)
        patch = int(patch_size) or auto_patch(h, w)
        if patch > min(h, w):
            raise ValueError(
                f"deit_tiny: patch_size {patch} is larger than the input's {h}x{w} pixels; "
                "give a smaller patch_size or 0 (auto)"
            )
        dim = scaled(192, width, 4 * HEADS)
        patches = (h // patch) * (w // patch)
        self.patch_embed = PatchEmbed(c, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + 1, dim))
        self.blocks = nn.Sequential(*(Block(dim, HEADS) for _ in range(repeats(12, depth))))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, int(num_classes))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        kwargs = {"width": float(width), "depth": float(depth), "patch_size": int(patch_size)}
        describe(self, "deit_tiny", kwargs, input_shape, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def deit_tiny(
    input_shape: Sequence[int],
    num_classes: int,
    width: float = 1.0,
    depth: float = 1.0,
    patch_size: int = 0,
) -> VisionTransformer:
    """`deit_tiny`: width (embedding) and depth (blocks) multipliers, patch size (0 = auto)."""
    return VisionTransformer(input_shape, num_classes, float(width), float(depth), patch_size)
