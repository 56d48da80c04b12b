"""Per-image segmentation metrics (Dice, IoU, HD95, precision, recall) with numpy and scipy.

Conventions, for each foreground class of one image (`P` = predicted pixels, `T` = true pixels):

- Dice = 2|P & T| / (|P| + |T|), IoU = |P & T| / |P | T|, precision = |P & T| / |P|,
  recall = |P & T| / |T|.
- Both masks empty: Dice = IoU = 1.0 (nothing to find and nothing found), HD95 = NaN,
  precision = recall = NaN.
- Exactly one mask empty: Dice = IoU = 0.0 and HD95 = NaN (a distance to nothing is undefined).
- Precision is NaN whenever the prediction is empty, recall whenever the ground truth is empty.
- HD95 is MONAI's `compute_hausdorff_distance(..., percentile=95, distance_metric="euclidean")`:
  the surface of a mask is the set of its pixels that a 3 x 3 cross-shaped binary erosion removes
  (so pixels on the image border are surface pixels); the distance from every surface pixel of one
  mask to the nearest surface pixel of the other is taken in both directions, the 95th percentile
  (linear interpolation) of each direction is computed and HD95 is the larger of the two.
  `hd95_<n>` is in pixels, `hd95_mm_<n>` uses the pixel spacing (row_mm, col_mm) and equals
  `hd95_<n>` when no spacing is given.

`summarize` averages these per-image values over images, ignoring NaN, so that an image without
a class does not count towards that class's HD95, precision or recall.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

METRIC_NAMES = ("dice", "iou", "hd95", "hd95_mm", "precision", "recall")


# Measured crossover on CPU: a KD-tree query costs about as much per surface pixel as the distance
# transform costs for six image pixels.
_KDTREE_PIXELS_PER_POINT = 6


def _surface(mask: np.ndarray) -> np.ndarray:
    """Pixels (voxels) of `mask` that erosion removes; outside the array counts as background."""
    # MONAI finds mask edges with scipy's default erosion, whose structuring element is a cross.
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross)


def _directed_distances(
    from_surface: np.ndarray, to_surface: np.ndarray, sampling: tuple[float, ...] | None
) -> np.ndarray:
    """Distance from every pixel of `from_surface` to the nearest pixel of `to_surface`."""
    # Both ways give the exact Euclidean distance. A KD-tree over the surface pixels is the cheaper
    # one for the smooth outlines of real structures; the distance transform, whose cost depends
    # only on the image size, is cheaper for speckled masks with very many surface pixels.
    n_points = np.count_nonzero(from_surface) + np.count_nonzero(to_surface)
    if n_points * _KDTREE_PIXELS_PER_POINT < from_surface.size:
        scale = np.ones(from_surface.ndim) if sampling is None else np.asarray(sampling)
        targets = np.argwhere(to_surface) * scale
        return cKDTree(targets).query(np.argwhere(from_surface) * scale)[0]
    return ndimage.distance_transform_edt(~to_surface, sampling=sampling)[from_surface]


def _hd95(
    pred_surface: np.ndarray, true_surface: np.ndarray, sampling: tuple[float, ...] | None
) -> float:
    """Symmetric 95th-percentile surface distance between two non-empty surfaces."""
    pred_to_true = _directed_distances(pred_surface, true_surface, sampling)
    true_to_pred = _directed_distances(true_surface, pred_surface, sampling)
    return float(max(np.percentile(pred_to_true, 95), np.percentile(true_to_pred, 95)))


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box holding every True pixel of a non-empty 2D (or 3D) mask."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        found = np.flatnonzero(mask.any(axis=other))
        box.append(slice(found[0], found[-1] + 1))
    return tuple(box)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def _class_metrics(
    pred: np.ndarray, true: np.ndarray, spacing: tuple[float, ...] | None
) -> dict[str, float]:
    """All metrics of one binary class mask pair, following the module's empty-mask conventions."""
    n_pred, n_true = int(np.count_nonzero(pred)), int(np.count_nonzero(true))
    n_both = int(np.count_nonzero(pred & true))
    n_union = n_pred + n_true - n_both
    out = {
        "dice": 2 * n_both / (n_pred + n_true) if n_union else 1.0,
        "iou": n_both / n_union if n_union else 1.0,
        "hd95": float("nan"),
        "hd95_mm": float("nan"),
        "precision": _ratio(n_both, n_pred),
        "recall": _ratio(n_both, n_true),
    }
    if n_pred and n_true:
        # Every surface pixel lies inside the union's bounding box, so distances measured within
        # the crop are exact, and the crop makes small structures in large images cheap.
        box = _bounding_box(pred | true)
        pred_surface, true_surface = _surface(pred[box]), _surface(true[box])
        out["hd95"] = _hd95(pred_surface, true_surface, None)
        out["hd95_mm"] = (
            out["hd95"] if spacing is None else _hd95(pred_surface, true_surface, spacing)
        )
    return out


def case_metrics(
    pred: np.ndarray,
    true: np.ndarray,
    class_names: Sequence[str],
    spacing: Sequence[float] | None = None,
) -> dict[str, float]:
    """Dice, IoU, HD95 (pixels and mm), precision and recall of every foreground class of one image
    (or one volume: the same definitions over voxels).

    Args:
        pred: Predicted H x W (or D x H x W) mask of class indices (0 = background).
        true: Ground-truth mask of class indices, same shape as `pred`.
        class_names: Name of every class, background first; only indices 1.. are scored.
        spacing: Pixel size (row_mm, col_mm), one per axis, for `hd95_mm_<name>`; None means
            1 pixel = 1 unit.

    Returns:
        `dice_<name>`, `iou_<name>`, `hd95_<name>`, `hd95_mm_<name>`, `precision_<name>` and
        `recall_<name>` for each foreground class, with NaN where a value is undefined (see the
        module docstring).

    Raises:
        ValueError: If the masks are not 2D (or 3D) arrays of the same shape or `spacing` is not
            one positive number per axis.
    """
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.ndim not in (2, 3) or pred.shape != true.shape:
        raise ValueError(
            f"pred and true must be 2D or 3D masks of the same shape, got {pred.shape} and "
            f"{true.shape}"
        )
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != pred.ndim or min(spacing) <= 0:
            raise ValueError(
                f"spacing must be one positive number per axis ({pred.ndim}), got {spacing}"
            )
    out: dict[str, float] = {}
    for index, name in enumerate(class_names):
        if index == 0:
            continue
        values = _class_metrics(pred == index, true == index, spacing)
        out |= {f"{metric}_{name}": value for metric, value in values.items()}
    return out


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the non-NaN values; NaN (and no RuntimeWarning) when there are none."""
    array = np.asarray(values, dtype=float)
    kept = array[~np.isnan(array)]
    return float(kept.mean()) if kept.size else float("nan")


def summarize(rows: Sequence[dict[str, float]], class_names: Sequence[str]) -> dict[str, float]:
    """Average per-image `case_metrics` over images, and over foreground classes, ignoring NaN.

    Args:
        rows: One `case_metrics` dict per image.
        class_names: The class names given to `case_metrics`, background first.

    Returns:
        `<metric>_<name>` (mean over images) for each foreground class and metric, plus `<metric>`
        (mean of the per-class means over foreground classes), for `dice`, `iou`, `hd95`,
        `hd95_mm`, `precision` and `recall`. A value is NaN when no image defines it.
    """
    foreground = list(class_names[1:])
    out: dict[str, float] = {}
    for metric in METRIC_NAMES:
        for name in foreground:
            key = f"{metric}_{name}"
            out[key] = _nanmean([row[key] for row in rows])
        out[metric] = _nanmean([out[f"{metric}_{name}"] for name in foreground])
    return out
