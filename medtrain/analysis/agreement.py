"""Agreement of predicted object counts and areas with ground truth, per image and per class."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from medtrain.errors import DataError

LIMITS_Z = (
    1.96  # Bland-Altman limits of agreement: mean difference +- 1.96 SD (95% under normality)
)


def measurement_agreement(
    true_totals: Iterable[Mapping[str, Any]], pred_totals: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """Compare per-image object counts and total areas of a prediction with the ground truth.

    Errors are prediction minus truth; relative errors are fractions of the truth (0.1 = 10%) and are
    null where the truth is 0, and summaries of relative errors use only images where the truth is
    non-zero. Bland-Altman statistics use the sample SD (ddof=1); with fewer than two images it is null.
    Undefined values are None, so the result can be written with `save_json` as strict JSON.

    Args:
        true_totals: `totals` rows of the ground truth (numbers may be text, as read from the CSV).
        pred_totals: `totals` rows of the prediction, for the same images and classes.

    Returns:
        {"unit": "mm" or "px", "classes": {class: {"summary": {...}, "images": [{...}, ...]}}} with
        per-image keys id, count_true, count_pred, count_error, count_error_relative, area_true_mm2,
        area_pred_mm2, area_error_mm2, area_error_relative.

    Raises:
        DataError: images or classes present on one side only, or areas in different units.
    """
    truth = _index(true_totals, "ground truth")
    pred = _index(pred_totals, "prediction")
    only_true, only_pred = sorted(truth.keys() - pred.keys()), sorted(pred.keys() - truth.keys())
    if only_true or only_pred:
        raise DataError(
            "ground truth and prediction totals cover different images/classes: "
            f"only in ground truth {only_true[:5]}, only in prediction {only_pred[:5]}"
        )
    units = {row["unit"] for row in truth.values()} | {row["unit"] for row in pred.values()}
    if len(units) > 1:
        raise DataError(
            f"areas in different units {sorted(units)} cannot be compared; give every image a spacing"
        )
    classes: dict[str, list[dict[str, Any]]] = {}
    for image_id, klass in truth:  # insertion order: the order of the ground-truth rows
        classes.setdefault(klass, []).append(
            _image_entry(image_id, truth[image_id, klass], pred[image_id, klass])
        )
    return {
        "unit": units.pop() if units else "px",
        "classes": {
            klass: {"summary": _summary(images), "images": images}
            for klass, images in classes.items()
        },
    }


def _index(rows: Iterable[Mapping[str, Any]], side: str) -> dict[tuple[str, str], Mapping]:
    indexed: dict[tuple[str, str], Mapping] = {}
    for row in rows:
        key = (str(row["id"]), str(row["class"]))
        if key in indexed:
            raise DataError(f"{side} totals hold image {key[0]!r} class {key[1]!r} twice")
        indexed[key] = row
    return indexed


def _image_entry(image_id: str, truth: Mapping, pred: Mapping) -> dict[str, Any]:
    count_true, count_pred = int(truth["count"]), int(pred["count"])
    area_true, area_pred = float(truth["total_area_mm2"]), float(pred["total_area_mm2"])
    return {
        "id": image_id,
        "count_true": count_true,
        "count_pred": count_pred,
        "count_error": count_pred - count_true,
        "count_error_relative": _relative(count_pred - count_true, count_true),
        "area_true_mm2": area_true,
        "area_pred_mm2": area_pred,
        "area_error_mm2": area_pred - area_true,
        "area_error_relative": _relative(area_pred - area_true, area_true),
    }


def _relative(error: float, truth: float) -> float | None:
    return error / truth if truth != 0 else None


def _summary(images: list[dict[str, Any]]) -> dict[str, Any]:
    count_errors = np.array([e["count_error"] for e in images], dtype=np.float64)
    area_errors = np.array([e["area_error_mm2"] for e in images], dtype=np.float64)
    count_relative = _defined(e["count_error_relative"] for e in images)
    area_relative = _defined(e["area_error_relative"] for e in images)
    return {
        "n_images": len(images),
        "n_images_with_true_objects": int(count_relative.size),
        "count_mean_absolute_error": _number(np.abs(count_errors).mean()),
        "count_median_absolute_relative_error": _number(np.median(np.abs(count_relative)))
        if count_relative.size
        else None,
        "count_mean_error": _number(count_errors.mean()),
        "area_mean_absolute_error_mm2": _number(np.abs(area_errors).mean()),
        "area_mean_absolute_relative_error": _number(np.abs(area_relative).mean())
        if area_relative.size
        else None,
        "count_bland_altman": bland_altman(count_errors),
        "area_bland_altman_mm2": bland_altman(area_errors),
    }


def bland_altman(differences: Iterable[float]) -> dict[str, float | None]:
    """Mean difference, its sample SD and the 95% limits of agreement (mean +- 1.96 SD).

    Args:
        differences: prediction minus truth, one per image.
    """
    values = np.asarray(list(differences), dtype=np.float64)
    mean = _number(values.mean()) if values.size else None
    sd = _number(values.std(ddof=1)) if values.size > 1 else None
    return {
        "mean_difference": mean,
        "sd_difference": sd,
        "lower_limit": mean - LIMITS_Z * sd if sd is not None else None,
        "upper_limit": mean + LIMITS_Z * sd if sd is not None else None,
    }


def _defined(values: Iterable[float | None]) -> np.ndarray:
    return np.array([v for v in values if v is not None], dtype=np.float64)


def _number(value: float) -> float | None:
    """A plain float for JSON; None where undefined."""
    value = float(value)
    return value if math.isfinite(value) else None
