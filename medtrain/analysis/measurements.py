"""Per-object measurements of class masks (area, perimeter, axes, intensity) in pixels and mm."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from skimage.measure import label, regionprops

from medtrain.data.readers import spacing_problem
from medtrain.errors import ConfigError, DataError

MEASUREMENT_FIELDS = [
    "id",
    "source",
    "class",
    "object",
    "area_px",
    "area_mm2",
    "perimeter_px",
    "perimeter_mm",
    "equivalent_diameter_px",
    "equivalent_diameter_mm",
    "major_axis_px",
    "major_axis_mm",
    "minor_axis_px",
    "minor_axis_mm",
    "centroid_row",
    "centroid_col",
    "bbox_min_row",
    "bbox_min_col",
    "bbox_max_row",
    "bbox_max_col",
    "mean_intensity",
    "spacing_row",
    "spacing_col",
    "unit",
]
TOTAL_FIELDS = [
    "id",
    "source",
    "class",
    "count",
    "total_area_px",
    "total_area_mm2",
    "mean_area_mm2",
    "unit",
]


def check_spacing(spacing: Sequence[float] | None) -> tuple[float, float] | None:
    """Return `spacing` as (row_mm, col_mm) floats, or None when not given.

    Raises:
        ConfigError: unless it is two finite numbers from 1e-6 to 1e4 mm (`SPACING_RANGE_MM` of
            `medtrain.data.readers`, the bounds a file's own spacing must meet too).
    """
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"spacing={spacing!r} must be two numbers (row_mm, col_mm)") from err
    problem = (
        spacing_problem(values)
        if len(values) == 2
        else f"{len(values)} value{'s' * (len(values) != 1)} given"
    )
    if problem:
        raise ConfigError(
            f"spacing={list(spacing)!r} must be two positive numbers (row_mm, col_mm): {problem}"
        )
    return values


def crofton_perimeter(binary: np.ndarray, spacing: Sequence[float] = (1.0, 1.0)) -> float:
    """Perimeter of the foreground of a 2D binary array by the Crofton formula over 4 directions.

    The Crofton formula measures a curve's length from how often straight lines cross it, averaged over
    line directions. Lines run along rows, columns and both diagonals; each direction is weighted by the
    angle it covers (half the physical angle to each neighbouring direction), so anisotropic pixels are
    handled in physical units. With equal spacing this is exactly scikit-image's
    `perimeter_crofton(directions=4)` times the spacing. Hole boundaries count. Measured accuracy:
    digital discs of radius 20 and 40 px +1.6% and +0.6% (radius 10: +4%, 5: +8%); straight edges
    along the image axes are underestimated (40 x 20 px rectangle -6%, 10 x 10 px square -8%, the
    40 x 20 px rectangle with 0.5 x 1 mm pixels -9%), edges at other angles by up to +3% / -5%.

    Args:
        binary: H x W array, non-zero = object.
        spacing: pixel size (row, column), in the unit the perimeter is wanted in.
    """
    sy, sx = (float(s) for s in spacing)
    image = np.pad(np.asarray(binary) != 0, 1)
    # Transitions between neighbouring pixels = crossings of the lines through the pixel centres.
    along_rows = np.count_nonzero(image[:, 1:] != image[:, :-1])
    along_cols = np.count_nonzero(image[1:, :] != image[:-1, :])
    diagonals = np.count_nonzero(image[1:, 1:] != image[:-1, :-1]) + np.count_nonzero(
        image[1:, :-1] != image[:-1, 1:]
    )
    angle = math.atan2(sy, sx)  # physical direction of the diagonal (row + 1, col + 1)
    return 0.5 * (
        angle * sy * along_rows  # row lines lie sy apart and cover the angles around 0
        + (math.pi / 2 - angle) * sx * along_cols
        + (math.pi / 4) * (sy * sx / math.hypot(sy, sx)) * diagonals
    )


def _axes(coords: np.ndarray, spacing: tuple[float, float]) -> tuple[float, float]:
    """Major and minor axis lengths of the ellipse with the same second moments as the pixels."""
    points = coords * np.asarray(spacing)
    # bias=True: central moments over N, as scikit-image's inertia tensor uses them.
    covariance = np.atleast_2d(np.cov(points, rowvar=False, bias=True))
    low, high = np.clip(np.linalg.eigvalsh(covariance), 0.0, None)
    return 4.0 * math.sqrt(high), 4.0 * math.sqrt(low)


def measure_mask(
    mask: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    image: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    image_id: str = "",
    source: str = "pred",
    connectivity: int = 2,
    min_size: int = 0,
    instances: bool = False,
    unit: str = "mm",
) -> list[dict[str, Any]]:
    """Measure every connected object of every foreground class in a class mask (or every object
    of an instance-label mask).

    Pixel-space values equal scikit-image `regionprops` (`area`, `perimeter_crofton`,
    `equivalent_diameter_area`, `axis_major_length`, `axis_minor_length`, `centroid`, `bbox`); the
    perimeter is the Crofton estimate (see `crofton_perimeter`) because regionprops' `perimeter`
    overestimates round objects by about 5%. Physical lengths use the spacing of each axis: the
    perimeter by the Crofton formula in physical units, the axes from the covariance of the physical
    pixel coordinates. Centroids and bounding boxes stay in pixels (bbox max is exclusive).

    Args:
        mask: H x W class indices, 0 = background.
        spacing: pixel size (row_mm, col_mm). None: the `_mm` columns hold pixel values (spacing 1)
            and the CSV says px (`unit` column).
        image: H x W or H x W x C intensities; `mean_intensity` is their mean inside the object
            (channels averaged). None: `mean_intensity` is "".
        class_names: name of each class index (default: `class_<index>`, as a run names them).
        image_id: the `id` written on every row.
        source: the `source` written on every row (e.g. "true" or "pred").
        connectivity: 1 = objects joined through edges (4-connected), 2 = also corners (8-connected).
        min_size: objects of fewer pixels are dropped.
        instances: `mask` is an instance-label image (0 background, each other value one object,
            as Cellpose, StarDist or CellProfiler write them): touching objects stay apart, every
            object is of one class (`class_names[1]`, default `object`) and keeps its label as its
            `object` number. `connectivity` does not apply.
        unit: the unit `spacing` is in, written in the `unit` column (`um` for microscopy: the
            `_mm` columns then hold micrometres, as `medtrain measure units=um` names them).

    Returns:
        One dict per object with the keys of `MEASUREMENT_FIELDS`, objects numbered 1..n per class
        (instance masks: by label).

    Raises:
        DataError: a mask that is not 2D whole non-negative numbers, an image of another shape, a class
            index without a name.
        ConfigError: bad spacing, connectivity or min_size.
    """
    mask = _check_mask(mask)
    # The bounds are in mm; another unit's spacing was checked by its caller.
    physical = check_spacing(spacing) if unit == "mm" or spacing is None else tuple(spacing)
    if connectivity not in (1, 2):
        raise ConfigError(
            f"connectivity={connectivity!r} must be 1 (4-connected) or 2 (8-connected)"
        )
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ConfigError(f"min_size={min_size!r} must be a whole number >= 0")
    intensity = _check_image(image, mask.shape)
    scale = physical or (1.0, 1.0)
    unit = unit if physical else "px"

    if instances:
        name = str(class_names[1]) if class_names and len(class_names) > 1 else "object"
        groups = [(name, regionprops(mask))]
    else:
        groups = [
            (
                _class_name(int(klass), class_names),
                regionprops(label(mask == klass, connectivity=connectivity)),
            )
            for klass in np.unique(mask)
            if klass != 0
        ]
    rows = []
    for name, regions in groups:
        number = 0
        for region in regions:
            if region.area < min_size:
                continue
            number += 1
            rows.append(
                _measure_region(region, scale, intensity)
                | {
                    "id": image_id,
                    "source": source,
                    "class": name,
                    "object": int(region.label) if instances else number,
                    "unit": unit,
                }
            )
    return [{key: row[key] for key in MEASUREMENT_FIELDS} for row in rows]


def _measure_region(region, scale: tuple[float, float], intensity) -> dict[str, Any]:
    """The numeric columns of one object."""
    area = int(region.area)
    area_mm2 = area * scale[0] * scale[1]
    major_px, minor_px = _axes(region.coords, (1.0, 1.0))
    major_mm, minor_mm = _axes(region.coords, scale)
    min_row, min_col, max_row, max_col = (int(v) for v in region.bbox)
    if intensity is None:
        mean_intensity: float | str = ""
    else:
        mean_intensity = float(intensity[region.coords[:, 0], region.coords[:, 1]].mean())
    return {
        "area_px": area,
        "area_mm2": float(area_mm2),
        "perimeter_px": float(crofton_perimeter(region.image)),
        "perimeter_mm": float(crofton_perimeter(region.image, scale)),
        "equivalent_diameter_px": math.sqrt(4.0 * area / math.pi),
        "equivalent_diameter_mm": math.sqrt(4.0 * area_mm2 / math.pi),
        "major_axis_px": major_px,
        "major_axis_mm": major_mm,
        "minor_axis_px": minor_px,
        "minor_axis_mm": minor_mm,
        "centroid_row": float(region.centroid[0]),
        "centroid_col": float(region.centroid[1]),
        "bbox_min_row": min_row,
        "bbox_min_col": min_col,
        "bbox_max_row": max_row,
        "bbox_max_col": max_col,
        "mean_intensity": mean_intensity,
        "spacing_row": scale[0],
        "spacing_col": scale[1],
    }


def _check_mask(mask: Any) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"a mask must be 2D (H x W class indices), got shape {mask.shape}")
    if mask.dtype == bool:
        return mask.astype(np.int64)
    if not np.issubdtype(mask.dtype, np.number) or np.issubdtype(mask.dtype, np.complexfloating):
        raise DataError(f"a mask must hold class indices, got dtype {mask.dtype}")
    if np.issubdtype(mask.dtype, np.floating) and not (
        np.isfinite(mask).all() and np.array_equal(mask, np.round(mask))
    ):
        raise DataError("mask values must be whole numbers (class indices)")
    if mask.size and mask.min() < 0:
        raise DataError(f"mask values must be class indices >= 0, found {mask.min()}")
    return mask.astype(np.int64)


def _check_image(image: Any, shape: tuple[int, int]) -> np.ndarray | None:
    """The image as H x W float64 (channels averaged), or None."""
    if image is None:
        return None
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[:2] != shape:
        raise DataError(
            f"image shape {image.shape} does not match mask shape {shape} "
            "(expected H x W or H x W x C with the mask's H x W)"
        )
    image = image.astype(np.float64)
    return image.mean(axis=2) if image.ndim == 3 else image


def _class_name(klass: int, class_names: Sequence[str] | None) -> str:
    if class_names is None:  # the default names of a run's classes
        return f"class_{klass}"
    if klass >= len(class_names):
        raise DataError(
            f"mask holds class index {klass} but only {len(class_names)} class names are given "
            f"{list(class_names)}"
        )
    return str(class_names[klass])


def totals(
    rows: Iterable[Mapping[str, Any]],
    ids: Sequence[str],
    classes: Sequence[str],
    *,
    source: str,
    units: str | Mapping[str, str] = "px",
) -> list[dict[str, Any]]:
    """Object count and area per image and class, with a row (count 0) where nothing was found.

    Args:
        rows: measurement rows (`measure_mask` output, or read back from its CSV).
        ids: every image measured, in output order, including those without objects.
        classes: every foreground class name to report.
        source: the source to total (rows of other sources are ignored).
        units: "mm" or "px" for all images, or per image id; rows of an image must agree with it.

    Returns:
        One dict per (id, class) with the keys of `TOTAL_FIELDS`; `mean_area_mm2` is "" when the
        count is 0.

    Raises:
        DataError: a row whose id or class is not listed, or whose unit differs from the image's.
    """
    found: dict[tuple[str, str], list[tuple[int, float]]] = {
        (i, c): [] for i in ids for c in classes
    }
    for row in rows:
        if row["source"] != source:
            continue
        key = (row["id"], row["class"])
        if key not in found:
            raise DataError(
                f"measurement of image {key[0]!r} class {key[1]!r} is not among the listed "
                f"images and classes {list(classes)}"
            )
        unit = _unit(units, row["id"])
        if row["unit"] != unit:
            raise DataError(f"image {row['id']!r}: rows in {row['unit']!r}, expected {unit!r}")
        found[key].append((int(row["area_px"]), float(row["area_mm2"])))
    out = []
    for (image_id, klass), objects in found.items():
        area_px, area_mm2 = sum(a for a, _ in objects), math.fsum(a for _, a in objects)
        unit = _unit(units, image_id)
        out.append(total_row(image_id, klass, len(objects), area_px, area_mm2, source, unit))
    return out


def total_row(
    image_id: str, klass: str, count: int, area_px: int, area_mm2: float, source: str, unit: str
) -> dict[str, Any]:
    """One row of `totals` (the keys of `TOTAL_FIELDS`); `mean_area_mm2` is "" without objects."""
    return {
        "id": image_id,
        "source": source,
        "class": klass,
        "count": count,
        "total_area_px": area_px,
        "total_area_mm2": area_mm2,
        "mean_area_mm2": area_mm2 / count if count else "",
        "unit": unit,
    }


def _unit(units: str | Mapping[str, str], image_id: str) -> str:
    if isinstance(units, str):
        return units
    if image_id not in units:
        raise DataError(f"no unit given for image {image_id!r}")
    return units[image_id]
