"""Statistics of a run's test results, read from its folder: bootstrap 95% confidence intervals of
the test metrics, and calibration (reliability bins, expected calibration error)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from medtrain.io import read_json, save_json
from medtrain.metrics.regression import varies

CALIBRATION_BINS = 10
log = logging.getLogger(__name__)


# Reading a run folder


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def as_number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):  # an empty cell is an undefined value
        return float("nan")


def column(rows: list[dict[str, str]], key: str) -> np.ndarray:
    return np.array([as_number(row[key]) for row in rows], dtype=float)


@dataclass
class Classified:
    """A classification run's test outputs, from `predictions.csv`."""

    target: np.ndarray  # (N,) class indices, or (N, K) 0/1 for multi-label
    probs: np.ndarray  # (N, K)
    multilabel: bool
    names: list[str]
    ids: list[str] = field(default_factory=list)  # each row's case id


def _class_names(
    run_dir: Path, k: int, multilabel: bool, metrics: dict[str, Any] | None = None
) -> list[str]:
    """Class names from the run's files: the confusion matrix's rows, or (multi-label) the labels of
    the thresholds in `metrics` (default: metrics.json), else of its per-label AUCs (a threshold
    fixed for all labels names none); indices when neither fits."""
    if multilabel:
        metrics = metrics if metrics is not None else read_json(run_dir / "metrics.json") or {}
        names = [key.removeprefix("threshold_") for key in metrics if key.startswith("threshold_")]
        if len(names) != k:
            names = [
                key.removeprefix("test/auc_")
                for key in metrics
                if key.startswith("test/auc_") and not key.endswith(("_ci_low", "_ci_high"))
            ]
    elif (run_dir / "confusion_matrix.csv").is_file():
        names = [row["true"] for row in read_csv_rows(run_dir / "confusion_matrix.csv")[1]]
    else:
        names = []
    return names if len(names) == k else [str(j) for j in range(k)]


def read_classification(
    run_dir: Path, names: list[str] | None = None, metrics: dict[str, Any] | None = None
) -> Classified:
    """Targets and probabilities of `predictions.csv` (`prob_k` columns; multi-label `target_k`);
    `metrics` (default: metrics.json) names multi-label classes."""
    fields, rows = read_csv_rows(run_dir / "predictions.csv")
    k = sum(field.startswith("prob_") for field in fields)
    probs = np.stack([column(rows, f"prob_{j}") for j in range(k)], axis=1)
    multilabel = "target" not in fields
    if multilabel:
        target = np.stack([column(rows, f"target_{j}") for j in range(k)], axis=1).astype(int)
    else:
        target = column(rows, "target").astype(int)
    if not names or len(names) != k:
        names = _class_names(run_dir, k, multilabel, metrics)
    return Classified(target, probs, multilabel, list(names), [row["id"] for row in rows])


def regression_pairs(fields: list[str]) -> dict[str, tuple[str, str]]:
    """Value name -> (target column, prediction column): one `target`/`pred` pair, or one per value."""
    if "target" in fields:
        return {"": ("target", "pred")}
    names = [f.removeprefix("target_") for f in fields if f.startswith("target_")]
    return {name: (f"target_{name}", f"pred_{name}") for name in names}


# ---------------------------------------------------------------------------------------------
# Statistics: calibration and bootstrap confidence intervals


def calibration_inputs(classified: Classified) -> tuple[np.ndarray, np.ndarray, str]:
    """What a reliability diagram compares: (confidence, outcome, what they are).

    Binary: the positive-class probability against the positive label; multi-class: the top
    probability against whether that class is right; multi-label: every label's probability
    against that label, pooled.
    """
    target, probs = classified.target, classified.probs
    if classified.multilabel:
        return probs.ravel(), target.ravel().astype(float), "label probability (all labels)"
    if probs.shape[1] == 2:
        return probs[:, 1], target.astype(float), f"probability of {classified.names[1]}"
    correct = (probs.argmax(axis=1) == target).astype(float)
    return probs.max(axis=1), correct, "confidence (top-class probability)"


def reliability_bins(
    confidence: np.ndarray, outcome: np.ndarray, n_bins: int = CALIBRATION_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin (bin k holds k/n <= p < (k+1)/n; p = 1 the last): the number of cases,
    their summed confidence and summed outcome."""
    confidence, outcome = np.asarray(confidence, float).ravel(), np.asarray(outcome, float).ravel()
    bins = np.clip(np.floor(confidence * n_bins).astype(int), 0, n_bins - 1)
    return (
        np.bincount(bins, minlength=n_bins),
        np.bincount(bins, weights=confidence, minlength=n_bins),
        np.bincount(bins, weights=outcome, minlength=n_bins),
    )


def expected_calibration_error(
    confidence: np.ndarray, outcome: np.ndarray, n_bins: int = CALIBRATION_BINS
) -> float:
    """ECE: the case-weighted mean over equal-width bins of |observed frequency - mean confidence|."""
    count, confidence_sum, outcome_sum = reliability_bins(confidence, outcome, n_bins)
    total = count.sum()
    return float(np.abs(outcome_sum - confidence_sum).sum() / total) if total else float("nan")


def rank_auc(positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC along the last axis (Mann-Whitney U from average ranks, so ties count half); NaN
    where one class is missing. Vectorised over leading axes, for bootstrap resamples."""
    positive = positive.astype(bool)
    ranks = stats.rankdata(score, axis=-1)
    n_pos = positive.sum(axis=-1)
    n_neg = positive.shape[-1] - n_pos
    defined = (n_pos > 0) & (n_neg > 0)
    u = (ranks * positive).sum(axis=-1) - n_pos * (n_pos + 1) / 2
    return np.where(defined, u / np.where(defined, n_pos * n_neg, 1), np.nan)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is not positive (counts of none, or a
    resample of equal targets); any positive denominator divides, fractions of 1 included."""
    positive = denominator > 0
    return np.where(positive, numerator / np.where(positive, denominator, 1), np.nan)


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean ignoring NaN; NaN where nothing is defined (without numpy's empty-slice warning)."""
    finite = np.isfinite(values)
    return _ratio(np.where(finite, values, 0.0).sum(axis=axis), finite.sum(axis=axis))


Statistics = Callable[[np.ndarray], dict[str, np.ndarray]]


def _classification_statistics(classified: Classified, threshold: float) -> Statistics:
    """Metrics of one resample of test cases (index array B x N), one value per resample."""
    target, probs = classified.target, classified.probs

    def binary(idx: np.ndarray) -> dict[str, np.ndarray]:
        y, p = target[idx].astype(bool), probs[:, 1][idx]
        pred = p >= threshold
        return {
            "auc": rank_auc(y, p),
            "acc": (pred == y).mean(axis=1),
            "sensitivity": _ratio((pred & y).sum(axis=1), y.sum(axis=1)),
            "specificity": _ratio((~pred & ~y).sum(axis=1), (~y).sum(axis=1)),
        }

    def multiclass(idx: np.ndarray) -> dict[str, np.ndarray]:
        y, p = target[idx], probs[idx]
        aucs = np.stack([rank_auc(y == k, p[..., k]) for k in range(p.shape[-1])], axis=-1)
        return {"acc": (p.argmax(axis=-1) == y).mean(axis=1), "auc": _nanmean(aucs, axis=1)}

    def multilabel(idx: np.ndarray) -> dict[str, np.ndarray]:
        aucs = [rank_auc(target[:, k][idx], probs[:, k][idx]) for k in range(probs.shape[1])]
        out = {f"auc_{name}": auc for name, auc in zip(classified.names, aucs, strict=True)}
        return out | {"auc": _nanmean(np.stack(aucs, axis=-1), axis=1)}

    if classified.multilabel:
        return multilabel
    return binary if probs.shape[1] == 2 else multiclass


def _regression_statistics(values: dict[str, tuple[np.ndarray, np.ndarray]]) -> Statistics:
    def statistics(idx: np.ndarray) -> dict[str, np.ndarray]:
        per_value = {}
        for name, (target, pred) in values.items():
            t, error = target[idx], pred[idx] - target[idx]
            total = ((t - t.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
            total[~varies(t, axis=1)] = 0.0  # equal targets (to rounding): R^2 is undefined
            per_value[name] = {
                "mae": np.abs(error).mean(axis=1),
                "rmse": np.sqrt((error**2).mean(axis=1)),
                "r2": 1 - _ratio((error**2).sum(axis=1), total),
            }
        out = {
            m: np.mean([v[m] for v in per_value.values()], axis=0) for m in ("mae", "rmse", "r2")
        }
        if len(per_value) > 1:  # metrics.json has the mean over values and each value's own
            out |= {f"{m}_{n}": v[m] for n, v in per_value.items() for m in v}
        return out

    return statistics


def _segmentation_statistics(per_metric: dict[str, np.ndarray], classes: list[str]) -> Statistics:
    """Mean over images of each class's score (NaN ignored), and the mean over foreground classes,
    as `summarize` in segmentation_metrics computes the point values."""

    def statistics(idx: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for metric, values in per_metric.items():  # values: images x classes
            per_class = _nanmean(values[idx], axis=1)
            out |= {f"{metric}_{name}": per_class[:, c] for c, name in enumerate(classes)}
            out[metric] = _nanmean(per_class, axis=1)
        return out

    return statistics


GROUPS_FILE = "groups.json"  # {case id: group} of a run whose data name groups (patients)


MIN_GROUPS = 10  # fewer groups resample too few distinct sets to give an interval


def case_groups(run_dir: Path, ids: list[str]) -> np.ndarray | None:
    """The group of each of `ids` (an index per case) from the run folder's `groups.json`, when
    the data named groups (`dataset.group_column`: a patient's images), some group holds several
    of these cases, and there are at least `MIN_GROUPS` of them; None otherwise (every case its
    own group; `grouping_note` says why)."""
    named = read_json(Path(run_dir) / GROUPS_FILE)
    if not named:
        return None
    missing = [i for i in ids if i not in named]
    if missing:
        log.warning(
            "%s names no group for %d of the %d test cases (e.g. %s): the intervals resample cases",
            Path(run_dir) / GROUPS_FILE,
            len(missing),
            len(ids),
            missing[0],
        )
        return None
    _, index = np.unique([str(named[i]) for i in ids], return_inverse=True)
    groups = int(index.max()) + 1 if len(index) else 0
    return index if MIN_GROUPS <= groups < len(ids) else None


def grouping_note(run_dir: Path, ids: list[str]) -> str:
    """How the intervals resampled the test cases, for the report: by group, or why not."""
    named = read_json(Path(run_dir) / GROUPS_FILE) or {}
    present = {str(named[i]) for i in ids if i in named}
    if case_groups(run_dir, ids) is not None:
        return (
            f"resampling their {len(present)} groups (dataset.group_column: a group's cases are "
            "not independent)"
        )
    if named and len(present) < MIN_GROUPS and len(present) < len(ids):
        return (
            f"each case alone: their {len(present)} groups are too few to resample (at least "
            f"{MIN_GROUPS}), so the interval is narrower than the groups support"
        )
    return ""


def copy_groups(run_dir: Path, out_dir: Path) -> None:
    """An ensemble's `groups.json`: its members' (they share the test cases), when they have it."""
    named = read_json(Path(run_dir) / GROUPS_FILE)
    if named:
        save_json(Path(out_dir) / GROUPS_FILE, named)


def _bootstrap(
    n: int,
    statistics: Statistics,
    n_boot: int,
    seed: int,
    width: int = 1,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Percentile 95% intervals of `statistics` over `n_boot` resamples of the n test cases, or,
    with `groups` (the group index of each case: its patient), of the groups, each drawn group
    bringing all its cases (a cluster bootstrap: cases of one patient are not independent, and
    resampling them one by one gives too narrow intervals).

    Resamples where a statistic is undefined (NaN: e.g. AUC of a single class) are left out of its
    interval. Resamples are drawn in chunks that bound memory; the chunking depends only on the data,
    so a rerun draws exactly the same resamples.
    """
    if n == 0:
        return {}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {}
    if groups is not None:
        members = [np.flatnonzero(groups == g) for g in range(int(groups.max()) + 1)]
        for _ in range(n_boot):  # resamples of other sizes: one at a time
            drawn = rng.integers(0, len(members), size=len(members))
            idx = np.concatenate([members[g] for g in drawn])[None, :]
            for key, values in statistics(idx).items():
                draws.setdefault(key, []).append(values)
        return _percentiles(draws)
    chunk = max(1, 2_000_000 // (n * width))
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        for key, values in statistics(idx).items():
            draws.setdefault(key, []).append(values)
    return _percentiles(draws)


def _percentiles(draws: dict[str, list[np.ndarray]]) -> dict[str, float]:
    """`test/<key>_ci_low` and `_ci_high`: the 2.5th and 97.5th percentiles of each statistic's
    finite resampled values (NaN when none is)."""
    out = {}
    for key, parts in draws.items():
        values = np.concatenate(parts)
        values = values[np.isfinite(values)]
        low, high = np.percentile(values, [2.5, 97.5]) if values.size else (np.nan, np.nan)
        out[f"test/{key}_ci_low"], out[f"test/{key}_ci_high"] = float(low), float(high)
    return out


def classification_intervals(
    run_dir: Path, metrics: dict[str, Any] | None = None, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Bootstrap 95% intervals of a classification run's test metrics, from `predictions.csv`
    (binary at metrics.json's `threshold`): `auc`, `acc`, `sensitivity`, `specificity` (binary),
    `acc`, macro one-vs-rest `auc` (multi-class), each label's `auc_<label>` and their mean `auc`
    (multi-label); plus `test/ece`, the expected calibration error (a point value, 10 equal-width
    bins).

    Args:
        metrics: the run's final metrics (threshold, label names); default: its metrics.json.
        n_boot: resamples of the test cases (with replacement).
        seed: seeds numpy's `default_rng`: the same run folder always gives the same intervals.

    Returns:
        `test/<metric>_ci_low` and `test/<metric>_ci_high` (NaN when no resample defines the
        metric); empty when the files are missing.
    """
    predictions = Path(run_dir) / "predictions.csv"
    if not predictions.is_file():
        return {}
    if metrics is None:
        metrics = read_json(Path(run_dir) / "metrics.json") or {}
    classified = read_classification(run_dir, metrics=metrics)
    threshold = metrics.get("threshold")
    statistics = _classification_statistics(classified, 0.5 if threshold is None else threshold)
    width = classified.probs.shape[1]
    groups = case_groups(run_dir, classified.ids)
    out = _bootstrap(len(classified.target), statistics, n_boot, seed, width, groups)
    return out | {"test/ece": expected_calibration_error(*calibration_inputs(classified)[:2])}


def regression_intervals(run_dir: Path, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Bootstrap 95% intervals of a regression run's `mae`, `rmse` and `r2`, from
    `predictions.csv`; `n_boot`, `seed` and the keys returned as in `classification_intervals`."""
    predictions = Path(run_dir) / "predictions.csv"
    if not predictions.is_file():
        return {}
    fields, rows = read_csv_rows(predictions)
    pairs = regression_pairs(fields)
    values = {name: (column(rows, t), column(rows, p)) for name, (t, p) in pairs.items()}
    groups = case_groups(run_dir, [r["id"] for r in rows])
    statistics = _regression_statistics(values)
    return _bootstrap(len(rows), statistics, n_boot, seed, len(values), groups)


def segmentation_intervals(run_dir: Path, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Bootstrap 95% intervals of a segmentation run's `dice` and `iou`, per class and over the
    foreground classes, from `per_case_metrics.csv` (the resampled unit is the test case);
    `n_boot`, `seed` and the keys returned as in `classification_intervals`."""
    per_case = Path(run_dir) / "per_case_metrics.csv"
    if not per_case.is_file():
        return {}
    fields, rows = read_csv_rows(per_case)
    classes = [f.removeprefix("dice_") for f in fields if f.startswith("dice_")]
    per_metric = {
        metric: np.stack([column(rows, f"{metric}_{c}") for c in classes], axis=1)
        for metric in ("dice", "iou")
        if classes and all(f"{metric}_{c}" in fields for c in classes)
    }
    statistics = _segmentation_statistics(per_metric, classes)
    groups = case_groups(run_dir, [r["id"] for r in rows]) if "id" in fields else None
    return _bootstrap(len(rows), statistics, n_boot, seed, 2 * len(classes), groups)
