"""Regression metrics (MAE, RMSE, R^2, Pearson's r; accuracy and kappa for ordinal grades),
computed with scikit-learn and scipy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def _value_metrics(target: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R^2 and Pearson's r of one predicted value against its targets."""
    constant = np.ptp(target) == 0 or np.ptp(pred) == 0  # r is undefined
    return {
        "mae": float(skm.mean_absolute_error(target, pred)),
        "rmse": float(np.sqrt(skm.mean_squared_error(target, pred))),
        "r2": float(skm.r2_score(target, pred)) if len(target) > 1 else float("nan"),
        "pearson": float("nan") if constant else float(stats.pearsonr(target, pred).statistic),
    }


def ordinal_metrics(
    target: np.ndarray, pred: np.ndarray, grade_range: Sequence[float]
) -> dict[str, float]:
    """Accuracy and quadratic-weighted kappa of predictions rounded to the nearest grade and
    clipped to `grade_range` ([lowest, highest])."""
    low, high = grade_range
    rounded = np.clip(np.rint(pred), low, high).astype(int)
    truth = np.rint(target).astype(int)
    # Grades outside the range seen in training still count (scikit-learn drops unlisted labels).
    labels = list(range(min(int(low), truth.min()), max(int(high), truth.max()) + 1))
    return {
        "acc": float(skm.accuracy_score(truth, rounded)),
        "qwk": float(skm.cohen_kappa_score(truth, rounded, labels=labels, weights="quadratic")),
    }


def regression_metrics(
    target: np.ndarray,
    pred: np.ndarray,
    names: Sequence[str],
    grade_range: Sequence[float] | None = None,
) -> dict[str, float]:
    """Metrics of predictions against targets (N x K, target units), averaged over the K values;
    with several values each also gets `<metric>_<name>`.

    Args:
        grade_range: for ordinal grades, [lowest, highest]: adds `acc` and `qwk`.
    """
    per_value = []
    for k in range(target.shape[1]):
        values = _value_metrics(target[:, k], pred[:, k])
        if grade_range is not None:
            values |= ordinal_metrics(target[:, k], pred[:, k], grade_range)
        per_value.append(values)
    out = {key: float(np.mean([v[key] for v in per_value])) for key in per_value[0]}
    if len(per_value) > 1:
        for name, values in zip(names, per_value, strict=True):
            out |= {f"{key}_{name}": value for key, value in values.items()}
    return out
