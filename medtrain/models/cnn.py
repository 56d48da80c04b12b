"""The simple CNN of the product brief: conv-BN-ReLU blocks with max pooling and a dense head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv_block(in_channels: int, out_channels: int, batch_norm: bool = True) -> nn.Sequential:
    """Two 3x3 convolutions with batch norm (or a bias) and ReLU, then 2x2 max pooling (halves the
    size)."""

    def conv(a: int, b: int) -> list[nn.Module]:
        norm = [nn.BatchNorm2d(b)] if batch_norm else []
        return [nn.Conv2d(a, b, 3, padding=1, bias=not batch_norm), *norm, nn.ReLU(inplace=True)]

    return nn.Sequential(
        *conv(in_channels, out_channels),
        *conv(out_channels, out_channels),
        nn.MaxPool2d(2, ceil_mode=True),
    )


class SimpleCNN(nn.Module):
    """Conv-pool blocks, global average pooling and a dense head; works for any input size.

    Args:
        in_channels: image channels.
        num_classes: number of outputs (logits).
        widths: channels of each conv block; each block halves the spatial size.
        hidden: width of the dense hidden layer (0 for a linear head).
        dropout: dropout before the output layer.
        batch_norm: batch norm after each convolution; false gives the convolutions a bias instead
            (a model whose result does not depend on how a batch is split across processes).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (32, 64, 128),
        hidden: int = 128,
        dropout: float = 0.2,
        batch_norm: bool = True,
    ):
        super().__init__()
        channels = [in_channels, *widths]
        self.features = nn.Sequential(
            *(conv_block(a, b, batch_norm) for a, b in zip(channels, channels[1:], strict=False))
        )
        head: list[nn.Module] = []
        if hidden:
            head += [nn.Linear(channels[-1], hidden), nn.ReLU(inplace=True)]
        head += [nn.Dropout(dropout), nn.Linear(hidden or channels[-1], num_classes)]
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A plain mean (not AdaptiveAvgPool2d) has a deterministic CUDA backward pass.
        return self.head(self.features(x).mean(dim=(2, 3)))
