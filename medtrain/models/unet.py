"""A 2D U-Net (Ronneberger et al. 2015) with configurable depth, width, normalization and up-sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medtrain.errors import ConfigError

NORMS = ("batch", "instance", "group")
UPSAMPLING = ("bilinear", "transposed")


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.GroupNorm(min(8, channels), channels)


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by normalization and ReLU (dropout between them)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, dropout: float):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout) if dropout else nn.Identity(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Double the resolution, concatenate the encoder's skip features, and convolve."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, upsample: str):
        super().__init__()
        if upsample == "transposed":
            self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        else:  # bilinear interpolation then a 1x1 convolution to halve the channels
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, out_channels, 1),
            )
        self.conv = DoubleConv(2 * out_channels, out_channels, norm, dropout=0.0)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """U-Net for 2D segmentation: logits of shape (B, num_classes, H, W) for any H and W.

    Inputs whose sides are not multiples of 2**depth are padded inside the model (reflection) and the
    logits cropped back, so whole images of any size can be segmented.

    Args:
        in_channels: image channels.
        num_classes: output channels, background included (2 for a binary mask).
        depth: number of down-sampling steps.
        base_width: channels of the first level; each level doubles them.
        norm: `batch`, `instance` or `group` normalization.
        dropout: channel dropout inside the bottleneck block and the deepest encoder block.
        upsample: `bilinear` (interpolation + 1x1 conv) or `transposed` convolution.
        deep_supervision: in training mode also return logits of the `depth - 1` coarser decoder levels
            (up-sampled to the input size), as a tuple (finest first); evaluation returns one tensor.
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
    ):
        super().__init__()
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
        self.deep_supervision = deep_supervision
        self.stem = DoubleConv(in_channels, widths[0], norm, 0.0)
        self.down = nn.ModuleList(
            DoubleConv(widths[i], widths[i + 1], norm, dropout if i >= depth - 2 else 0.0)
            for i in range(depth)
        )
        self.up = nn.ModuleList(
            Up(widths[i + 1], widths[i], norm, upsample) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        # One 1x1 head per coarser decoder level (widths[depth-1] ... widths[1]).
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(widths[i], num_classes, 1) for i in range(depth - 1, 0, -1))
            if deep_supervision
            else nn.ModuleList()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        height, width = x.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:  # reflection needs the pad to be smaller than the side
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        decoded = []
        for block in self.up:
            y = block(y, skips.pop())
            decoded.append(y)
        logits = self.head(y)[..., :height, :width]
        if not (self.deep_supervision and self.training):
            return logits
        size = x.shape[-2:]
        aux = [
            F.interpolate(head(features), size=size, mode="bilinear", align_corners=False)[
                ..., :height, :width
            ]
            for head, features in zip(self.aux_heads, decoded[:-1], strict=True)
        ]
        return (logits, *reversed(aux))
