"""Objects from a semantic mask: touching nuclei or cells, which a class mask merges, separated into
an instance-label image (0 background, 1..N one number per object).

Three methods (`task.instances.method`):
- `components`: each connected component is one object (touching objects stay merged).
- `watershed`: a watershed of the mask's distance transform, smoothed by a Gaussian of `sigma`
  pixels, from markers at its h-maxima, the centres of the mask's round parts: two touching discs
  give two peaks of the distance to the background, joined by a saddle lower than either by at
  least `h` pixels, and are cut along it. A component without such a peak (a small object) stays
  one object. `h` (pixels) sets how deep the saddle between two objects must be: larger merges
  more, smaller splits elongated objects. The smoothing removes the ridges of the raw distance
  transform along irregular outlines, whose maxima split large nuclei: on DSB2018 stage 1's val
  images it raised the instance score from 0.476 (no smoothing, h = 1 or 2) to 0.566 (sigma 2,
  h = 0.5; docs/benchmarks.md).
- `contacts`: the watershed with a learned cut. The network has one more output channel, the
  probability that a pixel lies where two objects touch (trained on `contact_pixels` of the
  dataset's instance labels: `dataset.contacts`). The distance transform is taken to the
  background or to the nearest pixel whose contact probability reaches `threshold`, so touching
  objects become separate hills even where their outline shows no neck; then the markers, the
  watershed over the whole mask and the unmarked components are as for `watershed` (`sigma`, `h`),
  and each object keeps its whole outline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from medtrain.errors import ConfigError

INSTANCE_METHODS = ("components", "watershed", "contacts")


def check_instances(settings: Any) -> dict:
    """`task.instances` checked, with its defaults: `method` (one of `INSTANCE_METHODS`,
    `watershed`), the watershed's `h` (> 0, 0.5) and `sigma` (>= 0, 2.0), and the contact
    probability `threshold` of `contacts` (in (0, 1), 0.5)."""
    if not isinstance(settings, Mapping):
        raise ConfigError(
            f"task.instances={settings!r}: give {{method: watershed, sigma: 2.0, h: 0.5}}, "
            "{method: components}, or null"
        )
    settings = dict(settings)
    unknown = set(settings) - {"method", "h", "sigma", "threshold"}
    if unknown:
        raise ConfigError(
            f"task.instances has unknown keys {sorted(unknown)}; valid: method, h, sigma, threshold"
        )
    method = settings.get("method", "watershed")
    if method not in INSTANCE_METHODS:
        raise ConfigError(
            f"task.instances.method={method!r}: choose one of {', '.join(INSTANCE_METHODS)}"
        )
    h = settings.get("h", 0.5)
    if isinstance(h, bool) or not isinstance(h, int | float) or h <= 0:
        raise ConfigError(f"task.instances.h={h!r}: must be a number of pixels > 0")
    sigma = settings.get("sigma", 2.0)
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or sigma < 0:
        raise ConfigError(f"task.instances.sigma={sigma!r}: must be a number of pixels >= 0")
    threshold = settings.get("threshold", 0.5)
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0 < threshold < 1
    ):
        raise ConfigError(
            f"task.instances.threshold={threshold!r}: must be a contact probability in (0, 1)"
        )
    return {"method": method, "h": float(h), "sigma": float(sigma), "threshold": float(threshold)}


def contact_pixels(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """Where objects touch: the pixels of an object (label > 0) with a pixel of another object at
    most `width` pixels away (along rows, columns or diagonals). A bool array of `labels`' shape;
    an object alone, or apart from the others by more than `width` background pixels, has none."""
    labels = np.asarray(labels)
    top = int(labels.max(initial=0)) + 1
    labels = labels.astype(np.uint16 if top <= np.iinfo(np.uint16).max else np.int64)
    size = 2 * width + 1
    # Around an object pixel the highest and the lowest object label (background lifted above
    # every label for the lowest) differ exactly when another object is within reach.
    highest = ndimage.maximum_filter(labels, size=size, mode="constant", cval=0)
    lifted = np.where(labels > 0, labels, labels.dtype.type(top))
    lowest = ndimage.minimum_filter(lifted, size=size, mode="constant", cval=top)
    return (labels > 0) & (highest != lowest)


def separate_instances(
    mask: np.ndarray,
    method: str = "watershed",
    h: float = 0.5,
    connectivity: int = 2,
    sigma: float = 2.0,
    threshold: float = 0.5,
    contact: np.ndarray | None = None,
) -> np.ndarray:
    """The objects of a binary mask (H x W, nonzero = object) as an int32 label image, numbered
    1..N in raster order of their first pixel (components) or of their markers (watershed).

    Args:
        mask: the foreground of one class.
        method: `components`, `watershed` or `contacts` (see the module docstring).
        h: the watershed's minimum saddle depth in pixels.
        connectivity: 1 (4-connected) or 2 (8-connected) objects.
        sigma: the Gaussian smoothing of the distance transform, in pixels (0: none).
        threshold: `contacts`: pixels of this contact probability or more separate objects.
        contact: `contacts`: the predicted contact probability of each pixel (H x W).
    """
    mask = np.asarray(mask).astype(bool)
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    if method == "components" or not mask.any():
        return ndimage.label(mask, structure)[0].astype(np.int32)
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    if method == "contacts":
        if contact is None or np.shape(contact) != mask.shape:
            raise ValueError(
                f"method='contacts' needs a contact probability map of the mask's shape "
                f"{mask.shape}, got {None if contact is None else np.shape(contact)}"
            )
        # The distance to the background or to a predicted contact: touching objects become
        # separate hills even where their outline shows no neck.
        distance = ndimage.distance_transform_edt(mask & (np.asarray(contact) < threshold))
    else:
        distance = ndimage.distance_transform_edt(mask)
    if sigma:
        distance = ndimage.gaussian_filter(distance, sigma)
    markers = ndimage.label(h_maxima(distance, h) & mask, structure)[0]
    labels = watershed(-distance, markers, mask=mask, connectivity=connectivity).astype(np.int32)
    # Components without a marker (no distance peak of height h: small objects; all contact)
    # stay objects.
    unlabeled = mask & (labels == 0)
    if unlabeled.any():
        rest = ndimage.label(unlabeled, structure)[0]
        labels[rest > 0] = rest[rest > 0] + labels.max()
    return labels
