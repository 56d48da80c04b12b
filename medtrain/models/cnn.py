"""The simple CNN of the product brief: conv-BN-ReLU blocks with max pooling and a dense head, for
images or volumes (`spatial_dims`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medtrain.models.layers import check_spatial_dims, conv, max_pool


def conv_block(
    in_channels: int, out_channels: int, batch_norm: bool = True, spatial_dims: int = 2
) -> nn.Sequential:
    """Two 3x3 (3x3x3) convolutions with batch norm (or a bias) and ReLU, then 2x max pooling
    (halves every side)."""
    Conv = conv(spatial_dims)
    Norm = nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d

    def layer(a: int, b: int) -> list[nn.Module]:
        norm = [Norm(b)] if batch_norm else []
        return [Conv(a, b, 3, padding=1, bias=not batch_norm), *norm, nn.ReLU(inplace=True)]

    return nn.Sequential(
        *layer(in_channels, out_channels),
        *layer(out_channels, out_channels),
        max_pool(spatial_dims)(2, ceil_mode=True),
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
        spatial_dims: 2 (images) or 3 (volumes, B x C x D x H x W).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (32, 64, 128),
        hidden: int = 128,
        dropout: float = 0.2,
        batch_norm: bool = True,
        spatial_dims: int = 2,
    ):
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        channels = [in_channels, *widths]
        self.features = nn.Sequential(
            *(
                conv_block(a, b, batch_norm, self.spatial_dims)
                for a, b in zip(channels, channels[1:], strict=False)
            )
        )
        head: list[nn.Module] = []
        if hidden:
            head += [nn.Linear(channels[-1], hidden), nn.ReLU(inplace=True)]
        head += [nn.Dropout(dropout), nn.Linear(hidden or channels[-1], num_classes)]
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A plain mean (not AdaptiveAvgPool2d) has a deterministic CUDA backward pass.
        spatial = tuple(range(2, 2 + self.spatial_dims))
        return self.head(self.features(x).mean(dim=spatial))
