"""A multi-layer perceptron for tabular data or small flattened images.

x -> flatten -> [Linear -> ReLU (-> Dropout)] * depth -> Linear head. Hidden blocks are
`layers.0`, `layers.1`, ... (each with `linear`, `act`, optional `drop`) and the head is `fc`, so
the penultimate feature is the output of `layers.{depth-1}`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class MLP(nn.Module):
    """Fully connected network over the flattened input."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: int = 256,
        depth: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not input_shape or any(int(s) < 1 for s in input_shape):
            raise ValueError(
                f"mlp needs a non-empty input shape of positive sizes, got {list(input_shape)}"
            )
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.arch = "mlp"
        self.arch_kwargs = {"hidden": int(hidden), "depth": int(depth), "dropout": float(dropout)}
        features = math.prod(self.input_shape)
        blocks = []
        for i in range(int(depth)):
            parts: OrderedDict[str, nn.Module] = OrderedDict(
                linear=nn.Linear(features if i == 0 else hidden, hidden), act=nn.ReLU()
            )
            if dropout > 0:
                parts["drop"] = nn.Dropout(dropout)
            blocks.append(nn.Sequential(parts))
        self.layers = nn.ModuleList(blocks)
        self.fc = nn.Linear(hidden if depth > 0 else features, self.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, 1)
        for block in self.layers:
            x = block(x)
        return self.fc(x)


def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    hidden: int = 256,
    depth: int = 2,
    dropout: float = 0.0,
) -> MLP:
    """`mlp`: `depth` hidden layers of `hidden` units."""
    return MLP(input_shape, num_classes, hidden=hidden, depth=depth, dropout=dropout)
