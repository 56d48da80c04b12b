"""Test-time augmentation (`task.tta`): the views of an image a task evaluates besides the image
itself, and how each view's output is brought back to the image's frame.

A view mirrors the image along some of its spatial axes, then turns it by quarter turns in the
(height, width) plane. Image-level outputs (classes, values) do not move; pixel maps are brought
back by the inverse: the turns undone, then the same mirrors. The task averages the views in its
ensemble space (`Task.combine`: probabilities, or values in target units), so a view never moves
a decision more than an ensemble member would.

| `task.tta` | views (2D) | views (3D) |
|---|---|---|
| null | 1: the image | 1 |
| `hflip` | 2: the image and its left-right mirror | 2 |
| `flips` | 4: every combination of mirrors along height and width | 8 (depth, height, width) |
| `dihedral` | 8: the 4 quarter turns of the image and of its mirror | refused (use `flips`) |

Evaluation (and prediction, serving, export) costs as many network passes as there are views.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from medtrain.errors import ConfigError

TTA_CHOICES = ("hflip", "flips", "dihedral")


@dataclass(frozen=True)
class View:
    """One test-time view: mirrors along `flips` (spatial axes counted from the end: -1 width, -2
    height, -3 depth), then `turns` quarter turns from height towards width."""

    flips: tuple[int, ...] = ()
    turns: int = 0

    @property
    def identity(self) -> bool:
        return not self.flips and self.turns % 4 == 0

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The view of a batch of images (B x C x [D x] H x W)."""
        if self.flips:
            images = images.flip(self.flips)
        return turn(images, self.turns)

    def invert(self, maps: torch.Tensor) -> torch.Tensor:
        """Per-pixel outputs of the view (B x K x [D x] H x W) in the image's frame: exactly the
        inverse of `apply`."""
        maps = turn(maps, -self.turns)
        if self.flips:
            maps = maps.flip(self.flips)
        return maps


def turn(x: torch.Tensor, turns: int) -> torch.Tensor:
    """`torch.rot90(x, turns, (-2, -1))` written with flips and a transpose, which ONNX exports
    (its exporter has no rot90)."""
    turns %= 4
    if turns == 1:
        return x.flip(-1).transpose(-2, -1)
    if turns == 2:
        return x.flip((-2, -1))
    if turns == 3:
        return x.transpose(-2, -1).flip(-1)
    return x


def tta_views(tta: str | None, spatial_dims: int = 2) -> tuple[View, ...]:
    """The views of a `task.tta` choice, the image itself first.

    Raises:
        ConfigError: an unknown choice, or turns asked of volumes (whose depth axis usually has
            another spacing).
    """
    if tta is None:
        return (View(),)
    if tta not in TTA_CHOICES:
        raise ConfigError(f"task.tta={tta!r}: choose null or one of {list(TTA_CHOICES)}")
    axes = tuple(range(-spatial_dims, 0))
    if tta == "hflip":
        return (View(), View((-1,)))
    if tta == "flips":
        subsets = itertools.chain.from_iterable(
            itertools.combinations(axes[::-1], k) for k in range(spatial_dims + 1)
        )
        return tuple(View(tuple(s)) for s in subsets)
    if spatial_dims != 2:
        raise ConfigError(
            "task.tta=dihedral turns images in their plane; volumes take task.tta=flips"
        )
    return tuple(View(f, t) for f in ((), (-1,)) for t in range(4))


def check_tta(tta: str | None, flip_tta: bool = False) -> str | None:
    """`task.tta`, with `flip_tta` (the key of runs saved before `task.tta`) read as `hflip`.

    Raises:
        ConfigError: an unknown choice, or both keys set.
    """
    if flip_tta and tta is not None:
        raise ConfigError(
            f"task.flip_tta and task.tta={tta!r}: set task.tta only (flip_tta=true is tta=hflip)"
        )
    tta = "hflip" if flip_tta else tta
    tta_views(tta)  # refuses unknown names
    return tta


def spatial_dims_of(images: torch.Tensor | Sequence[torch.Tensor]) -> int:
    """2 for a batch of images (B x C x H x W), 3 for volumes (B x C x D x H x W)."""
    first = images[0] if isinstance(images, (list, tuple)) else images
    return first.ndim - 1 if isinstance(images, (list, tuple)) else first.ndim - 2
