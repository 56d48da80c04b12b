"""A U-Net (Ronneberger et al. 2015) for images or volumes (`spatial_dims`), with configurable depth,
width, per-axis down-sampling, normalization and up-sampling."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medtrain.errors import ConfigError
from medtrain.models.layers import (
    NORMS,
    channel_dropout,
    check_spatial_dims,
    conv,
    conv_transpose,
    interpolation,
    level_factors,
    norm_layer,
)

UPSAMPLING = ("bilinear", "transposed")


class DoubleConv(nn.Sequential):
    """Two 3x3 (3x3x3) convolutions, each followed by normalization and ReLU (dropout between them)."""

    def __init__(
        self, in_channels: int, out_channels: int, norm: str, dropout: float, spatial_dims: int = 2
    ):
        Conv = conv(spatial_dims)
        super().__init__(
            Conv(in_channels, out_channels, 3, padding=1, bias=False),
            norm_layer(norm, out_channels, spatial_dims),
            nn.ReLU(inplace=True),
            channel_dropout(spatial_dims)(dropout) if dropout else nn.Identity(),
            Conv(out_channels, out_channels, 3, padding=1, bias=False),
            norm_layer(norm, out_channels, spatial_dims),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Undo one level's down-sampling (`factor` per axis), concatenate the encoder's skip features,
    and convolve."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str,
        upsample: str,
        spatial_dims: int = 2,
        factor: Sequence[int] = (2, 2),
    ):
        super().__init__()
        factor = tuple(factor)
        if upsample == "transposed":
            self.up = conv_transpose(spatial_dims)(in_channels, out_channels, factor, stride=factor)
        else:  # (bi/tri)linear interpolation then a 1x1 convolution to halve the channels
            self.up = nn.Sequential(
                nn.Upsample(
                    scale_factor=tuple(float(f) for f in factor),
                    mode=interpolation(spatial_dims),
                    align_corners=False,
                ),
                conv(spatial_dims)(in_channels, out_channels, 1),
            )
        self.conv = DoubleConv(2 * out_channels, out_channels, norm, 0.0, spatial_dims)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """U-Net for segmentation: logits of shape (B, num_classes, H, W) for images, or
    (B, num_classes, D, H, W) for volumes (`spatial_dims=3`), for any size.

    Inputs whose sides are not multiples of the total down-sampling (2**depth per axis by default)
    are padded inside the model (reflection) and the logits cropped back, so whole images and
    volumes of any size can be segmented.

    Args:
        in_channels: image channels.
        num_classes: output channels, background included (2 for a binary mask).
        depth: number of down-sampling steps.
        base_width: channels of the first level; each level doubles them.
        norm: `batch`, `instance` or `group` normalization.
        dropout: channel dropout inside the bottleneck block and the deepest encoder block.
        upsample: `bilinear` (linear interpolation along each axis + 1x1 conv) or `transposed`
            convolution.
        deep_supervision: in training mode also return logits of the `depth - 1` coarser decoder levels
            (up-sampled to the input size), as a tuple (finest first); evaluation returns one tensor.
        spatial_dims: 2 (images, B x C x H x W) or 3 (volumes, B x C x D x H x W).
        strides: down-sampling factor of each level, per axis (`layers.level_factors`): None
            halves every axis at every level; [[1, 2, 2], 2, 2] keeps the depth of an anisotropic
            volume at the first level.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int = 4,
        base_width: int = 32,
        norm: str = "batch",
        dropout: float = 0.0,
        upsample: str = "bilinear",
        deep_supervision: bool = False,
        spatial_dims: int = 2,
        strides: Sequence[int | Sequence[int]] | None = None,
    ):
        super().__init__()
        spatial_dims = check_spatial_dims(spatial_dims)
        if norm not in NORMS:
            raise ConfigError(f"model.norm={norm!r}: choose one of {NORMS}")
        if upsample not in UPSAMPLING:
            raise ConfigError(f"model.upsample={upsample!r}: choose one of {UPSAMPLING}")
        if depth < 1 or base_width < 1:
            raise ConfigError(f"model.depth={depth} and model.base_width={base_width} must be >= 1")
        if not 0 <= dropout < 1:
            raise ConfigError(f"model.dropout={dropout} must be in [0, 1)")
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.depth = depth
        self.spatial_dims = spatial_dims
        self.factors = level_factors(strides, depth, spatial_dims)
        # The side multiple each axis is padded to: the product of its factors over the levels.
        self.multiples = tuple(math.prod(axis) for axis in zip(*self.factors, strict=True))
        self.deep_supervision = deep_supervision
        Conv = conv(spatial_dims)
        self.stem = DoubleConv(in_channels, widths[0], norm, 0.0, spatial_dims)
        self.down = nn.ModuleList(
            DoubleConv(
                widths[i], widths[i + 1], norm, dropout if i >= depth - 2 else 0.0, spatial_dims
            )
            for i in range(depth)
        )
        self.up = nn.ModuleList(
            Up(widths[i + 1], widths[i], norm, upsample, spatial_dims, self.factors[i])
            for i in reversed(range(depth))
        )
        self.head = Conv(widths[0], num_classes, 1)
        # One 1x1 head per coarser decoder level (widths[depth-1] ... widths[1]).
        self.aux_heads = (
            nn.ModuleList(Conv(widths[i], num_classes, 1) for i in range(depth - 1, 0, -1))
            if deep_supervision
            else nn.ModuleList()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        sides = tuple(x.shape[2:])
        if len(sides) != self.spatial_dims:
            raise ValueError(
                f"UNet(spatial_dims={self.spatial_dims}) needs B x C x {self.spatial_dims} spatial "
                f"axes, got input of shape {tuple(x.shape)}"
            )
        pads = [-side % multiple for side, multiple in zip(sides, self.multiples, strict=True)]
        if any(pads):  # reflection needs the pad to be smaller than the side
            mode = (
                "reflect" if all(p < s for p, s in zip(pads, sides, strict=True)) else "replicate"
            )
            x = F.pad(x, [v for p in reversed(pads) for v in (0, p)], mode=mode)
        crop = (..., *(slice(0, side) for side in sides))
        pool = F.max_pool3d if self.spatial_dims == 3 else F.max_pool2d
        skips = [self.stem(x)]
        for block, factor in zip(self.down, self.factors, strict=True):
            skips.append(block(pool(skips[-1], factor)))
        y = skips.pop()
        decoded = []
        for block in self.up:
            y = block(y, skips.pop())
            decoded.append(y)
        logits = self.head(y)[crop]
        if not (self.deep_supervision and self.training):
            return logits
        size = x.shape[2:]
        mode = interpolation(self.spatial_dims)
        aux = [
            F.interpolate(head(features), size=size, mode=mode, align_corners=False)[crop]
            for head, features in zip(self.aux_heads, decoded[:-1], strict=True)
        ]
        return (logits, *reversed(aux))
