"""A ResNet (He et al. 2016, basic blocks) for images or volumes (`spatial_dims`), sized for small
inputs such as MedMNIST's 28 and 64 px images and 28^3 / 64^3 volumes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medtrain.errors import ConfigError
from medtrain.models.layers import NORMS, check_spatial_dims, conv, norm_layer


class BasicBlock(nn.Module):
    """Two 3x3 (3x3x3) convolutions with a shortcut; a 1x1 projection when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str, dims: int):
        super().__init__()
        Conv = conv(dims)
        self.conv1 = Conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm_layer(norm, out_channels, dims)
        self.conv2 = Conv(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = norm_layer(norm, out_channels, dims)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            nn.Sequential(
                Conv(in_channels, out_channels, 1, stride=stride, bias=False),
                norm_layer(norm, out_channels, dims),
            )
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        return self.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, stages of basic blocks (each stage after the first halves every side), global average
    pooling and a linear head.

    Args:
        in_channels: image channels.
        num_classes: number of outputs (logits).
        widths: channels of each stage.
        blocks: basic blocks per stage ([2, 2, 2, 2] with 4 stages is ResNet-18's layout).
        stem_stride: stride of the stem convolution (1 keeps the resolution of small inputs; 2
            halves large ones first).
        norm: `batch`, `instance` or `group` normalization.
        dropout: dropout before the head.
        spatial_dims: 2 (images) or 3 (volumes, B x C x D x H x W).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks: Sequence[int] = (2, 2, 2, 2),
        stem_stride: int = 1,
        norm: str = "batch",
        dropout: float = 0.0,
        spatial_dims: int = 2,
    ):
        super().__init__()
        dims = check_spatial_dims(spatial_dims)
        if norm not in NORMS:
            raise ConfigError(f"model.norm={norm!r}: choose one of {NORMS}")
        if len(widths) != len(blocks) or not widths or min(blocks) < 1 or min(widths) < 1:
            raise ConfigError(
                f"model.widths={list(widths)} and model.blocks={list(blocks)}: give one width and "
                "one block count (>= 1) per stage"
            )
        if stem_stride not in (1, 2):
            raise ConfigError(f"model.stem_stride={stem_stride}: use 1 or 2")
        self.spatial_dims = dims
        self.stem = nn.Sequential(
            conv(dims)(in_channels, widths[0], 3, stride=stem_stride, padding=1, bias=False),
            norm_layer(norm, widths[0], dims),
            nn.ReLU(inplace=True),
        )
        stages, channels = [], widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            layers = []
            for block in range(count):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(channels, width, stride, norm, dims))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(x))
        # A plain mean (not adaptive pooling) has a deterministic CUDA backward pass.
        return self.head(features.mean(dim=tuple(range(2, 2 + self.spatial_dims))))
