"""Layers chosen by `spatial_dims` (2: images, 3: volumes), so that one network class serves both,
and the per-axis scale factors of anisotropic down-sampling."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from medtrain.errors import ConfigError

SPATIAL_DIMS = (2, 3)
NORMS = ("batch", "instance", "group")


def check_spatial_dims(spatial_dims: int) -> int:
    """`model.spatial_dims` as an int, refused unless 2 (images) or 3 (volumes)."""
    if isinstance(spatial_dims, bool) or spatial_dims not in SPATIAL_DIMS:
        raise ConfigError(
            f"model.spatial_dims={spatial_dims!r}: use 2 (images) or 3 (volumes); by default it "
            "follows the data (dataset.spatial_dims)"
        )
    return int(spatial_dims)


def conv(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv3d if spatial_dims == 3 else nn.Conv2d


def conv_transpose(spatial_dims: int) -> type[nn.Module]:
    return nn.ConvTranspose3d if spatial_dims == 3 else nn.ConvTranspose2d


def channel_dropout(spatial_dims: int) -> type[nn.Module]:
    return nn.Dropout3d if spatial_dims == 3 else nn.Dropout2d


def max_pool(spatial_dims: int) -> type[nn.Module]:
    return nn.MaxPool3d if spatial_dims == 3 else nn.MaxPool2d


def norm_layer(kind: str, channels: int, spatial_dims: int = 2) -> nn.Module:
    """Batch, instance (affine) or group normalization (groups of up to 8) over `channels`."""
    if kind == "batch":
        return (nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d)(
            channels, affine=True
        )
    return nn.GroupNorm(min(8, channels), channels)


def interpolation(spatial_dims: int) -> str:
    """The linear interpolation mode of `F.interpolate` for maps of `spatial_dims` axes."""
    return "trilinear" if spatial_dims == 3 else "bilinear"


def level_factors(
    strides: Sequence[int | Sequence[int]] | None, depth: int, spatial_dims: int
) -> list[tuple[int, ...]]:
    """Per-axis down-sampling factors of each level (`model.strides`): None halves every axis at
    every level; an entry is one int (every axis) or one int per axis, e.g. [1, 2, 2] keeps the
    coarse depth of an anisotropic volume while height and width are halved.

    Raises:
        ConfigError: naming `model.strides`, unless it has `depth` entries of factors 1 or 2.
    """
    if strides is None:
        return [(2,) * spatial_dims] * depth
    levels = list(strides)
    if len(levels) != depth:
        raise ConfigError(
            f"model.strides has {len(levels)} entries for model.depth={depth}: give one per level"
        )
    factors = []
    for entry in levels:
        factor = (entry,) * spatial_dims if isinstance(entry, int) else tuple(entry)
        if len(factor) != spatial_dims or any(
            isinstance(f, bool) or f not in (1, 2) for f in factor
        ):
            raise ConfigError(
                f"model.strides entry {entry!r}: give 1 or 2, or one of them per axis "
                f"({spatial_dims} axes)"
            )
        factors.append(factor)
    return factors
