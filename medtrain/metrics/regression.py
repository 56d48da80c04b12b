"""Regression metrics (MAE, RMSE, R^2, Pearson's r; accuracy and kappa for ordinal grades),
computed with scikit-learn and scipy."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning


def varies(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Whether values differ by more than float rounding (relative 1e-9 of their magnitude):
    the variance R^2 and Pearson's r divide by is then more than rounding noise."""
    values = np.asarray(values, dtype=np.float64)
    scale = np.maximum(np.abs(values).max(axis=axis), 1e-300)
    return np.ptp(values, axis=axis) > 1e-9 * scale


def _value_metrics(target: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R^2 and Pearson's r of one predicted value against its targets; R^2 is NaN for
    equal targets (no variance to explain), r also for equal predictions."""
    defined = len(target) > 1 and bool(varies(target))
    return {
        "mae": float(skm.mean_absolute_error(target, pred)),
        "rmse": float(np.sqrt(skm.mean_squared_error(target, pred))),
        "r2": float(skm.r2_score(target, pred)) if defined else float("nan"),
        "pearson": (
            float(stats.pearsonr(target, pred).statistic)
            if defined and bool(varies(pred))
            else float("nan")
        ),
    }


def whole_grades(values: np.ndarray) -> np.ndarray:
    """Per row of `values` (N x K), whether every value is a whole-number grade (to 1e-6)."""
    return (np.abs(values - np.rint(values)) <= 1e-6).all(axis=1)


def to_grades(
    pred: np.ndarray, grade_range: Sequence[float], cut_points: Sequence[float] | None = None
) -> np.ndarray:
    """Predicted values as integer grades: rounded to the nearest grade, or, with `cut_points`
    (one fewer than the grades, ascending), the lowest grade plus the number of cut points at or
    below the value; clipped to `grade_range` ([lowest, highest])."""
    low, high = grade_range
    if cut_points is None:
        return np.clip(np.rint(pred), low, high).astype(int)
    above = np.searchsorted(np.asarray(cut_points, dtype=np.float64), pred, side="right")
    return np.clip(int(low) + above, low, high).astype(int)


def ordinal_metrics(
    target: np.ndarray,
    pred: np.ndarray,
    grade_range: Sequence[float],
    cut_points: Sequence[float] | None = None,
) -> dict[str, float]:
    """Accuracy and quadratic-weighted kappa of the predicted grades (`to_grades`)."""
    low, high = grade_range
    rounded = to_grades(pred, grade_range, cut_points)
    truth = np.rint(target).astype(int)
    # Grades outside the range seen in training still count (scikit-learn drops unlisted labels).
    labels = list(range(min(int(low), truth.min()), max(int(high), truth.max()) + 1))
    with warnings.catch_warnings():  # one grade in truth and prediction: kappa is undefined (NaN)
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        qwk = float(skm.cohen_kappa_score(truth, rounded, labels=labels, weights="quadratic"))
    return {"acc": float(skm.accuracy_score(truth, rounded)), "qwk": qwk}


def fit_cut_points(
    target: np.ndarray, pred: np.ndarray, grade_range: Sequence[float], passes: int = 10
) -> list[float]:
    """Cut points between successive grades that maximise the accuracy of `to_grades` on these
    predictions: coordinate ascent from the rounding cuts (grade + 0.5), each cut moved in turn to
    the best midpoint between neighbouring predictions (ties: the one nearest its rounding cut),
    until no cut moves.

    Fit them on many predictions the model did not train on (a CV's out-of-fold predictions):
    on a small validation split they follow its noise.
    """
    low, high = int(grade_range[0]), int(grade_range[1])
    truth = np.rint(np.asarray(target, dtype=np.float64)).astype(int)
    pred = np.asarray(pred, dtype=np.float64)
    cuts = [g + 0.5 for g in range(low, high)]
    values = np.unique(pred)
    midpoints = (values[1:] + values[:-1]) / 2
    for _ in range(passes):
        moved = False
        for j in range(len(cuts)):
            lower = cuts[j - 1] if j else -np.inf
            upper = cuts[j + 1] if j + 1 < len(cuts) else np.inf
            inside = midpoints[(midpoints > lower) & (midpoints < upper)]
            if len(inside) > 512:  # many predictions: their quantiles are candidates enough
                inside = np.quantile(inside, np.linspace(0, 1, 512))
            candidates = np.unique(np.append(inside, cuts[j]))
            scores = np.array(
                [
                    np.mean(to_grades(pred, (low, high), [*cuts[:j], c, *cuts[j + 1 :]]) == truth)
                    for c in candidates
                ]
            )
            best = candidates[scores == scores.max()]
            choice = float(best[np.argmin(np.abs(best - (low + j + 0.5)))])
            if scores.max() > scores[candidates == cuts[j]][0]:  # the cut now is a candidate
                moved = moved or choice != cuts[j]
                cuts[j] = choice
        if not moved:
            break
    return cuts


def regression_metrics(
    target: np.ndarray,
    pred: np.ndarray,
    names: Sequence[str],
    grade_range: Sequence[float] | None = None,
    cut_points: Sequence[float] | None = None,
) -> dict[str, float]:
    """Metrics of predictions against targets (N x K, target units), averaged over the K values;
    with several values each also gets `<metric>_<name>`.

    Args:
        grade_range: for ordinal grades, [lowest, highest]: adds `acc` and `qwk`.
        cut_points: the grades' cut points (one value per image); None: rounding.
    """
    per_value = []
    for k in range(target.shape[1]):
        values = _value_metrics(target[:, k], pred[:, k])
        if grade_range is not None:
            values |= ordinal_metrics(target[:, k], pred[:, k], grade_range, cut_points)
        per_value.append(values)
    out = {key: float(np.mean([v[key] for v in per_value])) for key in per_value[0]}
    if len(per_value) > 1:
        for name, values in zip(names, per_value, strict=True):
            out |= {f"{key}_{name}": value for key, value in values.items()}
    return out
