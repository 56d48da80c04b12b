"""Classification metrics and decision thresholds, computed with scikit-learn."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

log = logging.getLogger(__name__)

THRESHOLD_METHODS = ("youden", "sensitivity")


def _safe_auc(target: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of one binary problem; NaN when the target holds a single class."""
    return float(skm.roc_auc_score(target, score)) if len(np.unique(target)) == 2 else float("nan")


def _mean_defined(values: Sequence[float]) -> float:
    """Mean of the defined (non-NaN) values; NaN, without numpy's "Mean of empty slice" warning,
    when none is defined (every class's AUC of targets that hold one class)."""
    array = np.asarray(values, dtype=float)
    kept = array[~np.isnan(array)]
    return float(kept.mean()) if kept.size else float("nan")


def _balanced_accuracy(target: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes in the targets. A prediction of a class no case is counts (as
    a miss), and targets of one class give that class's recall: neither is warned of."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", "A single label was found in 'y_true' and 'y_pred'")
        return float(skm.balanced_accuracy_score(target, pred))


def _specificity(target: np.ndarray, pred: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Per-class specificity TN / (TN + FP) from scikit-learn's one-vs-rest confusion matrices."""
    mcm = skm.multilabel_confusion_matrix(target, pred, labels=list(labels))
    tn, fp = mcm[:, 0, 0], mcm[:, 0, 1]
    return np.divide(tn, tn + fp, out=np.full(len(tn), np.nan), where=(tn + fp) > 0)


def binary_metrics(target: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, float]:
    """Metrics of one positive-class probability against 0/1 targets at `threshold`."""
    pred = (prob >= threshold).astype(int)
    balanced = _balanced_accuracy(target, pred)
    return {
        "acc": float(skm.accuracy_score(target, pred)),
        "balanced_acc": balanced,
        "auc": _safe_auc(target, prob),
        # Undefined (NaN) without positive, or negative, cases, as AUC is: not a rate of 0.
        "sensitivity": float(skm.recall_score(target, pred, pos_label=1, zero_division=np.nan)),
        "specificity": float(skm.recall_score(target, pred, pos_label=0, zero_division=np.nan)),
        "precision": float(skm.precision_score(target, pred, zero_division=0)),
        "f1": float(skm.f1_score(target, pred, zero_division=0)),
        "acc@0.5": float(skm.accuracy_score(target, (prob >= 0.5).astype(int))),
    }


def multiclass_metrics(
    target: np.ndarray, probs: np.ndarray, names: Sequence[str]
) -> dict[str, float]:
    """Metrics of softmax probabilities (N x K) against class indices; predictions are the argmax."""
    labels = list(range(probs.shape[1]))
    pred = probs.argmax(axis=1)
    per_class_auc = [_safe_auc(target == k, probs[:, k]) for k in labels]
    present = np.isin(labels, target)
    auc = (
        float(skm.roc_auc_score(target, probs, multi_class="ovr", average="macro", labels=labels))
        if present.all()
        else _mean_defined(per_class_auc)  # NaN when no class is both present and absent
    )
    recall = skm.recall_score(target, pred, labels=labels, average=None, zero_division=0)
    specificity = _specificity(target, pred, labels)
    f1 = skm.f1_score(target, pred, labels=labels, average=None, zero_division=0)
    balanced = _balanced_accuracy(target, pred)
    out = {
        "acc": float(skm.accuracy_score(target, pred)),
        "balanced_acc": balanced,
        "auc": auc,
        "sensitivity": float(recall[present].mean()),
        "specificity": _mean_defined(specificity),
        # Over the classes in the targets or the predictions (scikit-learn's default): a class
        # in neither has no F1, and counted as 0 it would pull the mean down.
        "f1": float(skm.f1_score(target, pred, average="macro", zero_division=0)),
    }
    predicted = np.isin(labels, pred)
    for k, name in enumerate(names):
        # A class without cases has no sensitivity, and one neither in the targets nor the
        # predictions no F1: null, as its AUC is (they read 0).
        out |= {
            f"auc_{name}": per_class_auc[k],
            f"sensitivity_{name}": float(recall[k]) if present[k] else float("nan"),
            f"specificity_{name}": float(specificity[k]),
            f"f1_{name}": float(f1[k]) if present[k] or predicted[k] else float("nan"),
        }
    return out


def multilabel_metrics(
    target: np.ndarray, probs: np.ndarray, thresholds: Sequence[float], names: Sequence[str]
) -> dict[str, float]:
    """Metrics of independent sigmoid outputs (N x K) against 0/1 targets, averaged over labels."""
    per_label = [
        binary_metrics(target[:, k], probs[:, k], thresholds[k]) for k in range(probs.shape[1])
    ]
    out = {key: _mean_defined([m[key] for m in per_label]) for key in per_label[0]}
    out["subset_acc"] = float(skm.accuracy_score(target, probs >= np.asarray(thresholds)))
    for name, m in zip(names, per_label, strict=True):
        out |= {f"{key}_{name}": m[key] for key in ("auc", "sensitivity", "specificity", "f1")}
    return out


def choose_threshold(
    target: np.ndarray, prob: np.ndarray, method: str, target_sensitivity: float = 0.9
) -> float:
    """Pick a decision threshold on validation data.

    Args:
        target: 0/1 targets.
        prob: positive-class probabilities.
        method: `youden` (maximise sensitivity + specificity - 1) or `sensitivity` (the highest
            threshold whose sensitivity reaches `target_sensitivity`).
        target_sensitivity: the sensitivity to reach for `sensitivity`.
    """
    if len(np.unique(target)) < 2:
        log.warning(
            "threshold %s: the validation targets hold one class, so there is nothing to choose "
            "between; the threshold is 0.5",
            method,
        )
        return 0.5
    fpr, tpr, thresholds = skm.roc_curve(target, prob, drop_intermediate=False)
    thresholds = np.clip(thresholds, 0.0, 1.0)  # the first one is +inf by convention
    if method == "youden":
        best = int(np.argmax(tpr - fpr))
        if tpr[best] - fpr[best] <= 0:  # its "best" would call no case positive (threshold 1)
            log.warning(
                "threshold youden: no threshold separates the classes better than chance on "
                "these cases (Youden's J <= 0, AUC %.3f); the threshold is 0.5",
                skm.roc_auc_score(target, prob),
            )
            return 0.5
    elif method == "sensitivity":
        best = int(np.argmax(tpr >= target_sensitivity))
    else:
        raise ValueError(f"unknown threshold method {method!r}; choose one of {THRESHOLD_METHODS}")
    return float(thresholds[best])


def decide(probs: np.ndarray, multilabel: bool, threshold) -> np.ndarray:
    """Predictions from probabilities: 0/1 per label (multi-label), the positive class at or above
    `threshold` (binary), or the most probable class (multi-class)."""
    if multilabel:
        return (probs >= np.asarray(threshold)).astype(int)
    if probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(int)
    return probs.argmax(axis=1)


def confusion(target: np.ndarray, probs: np.ndarray, multilabel: bool, threshold) -> np.ndarray:
    """Confusion matrix (K x K), or per-label 2 x 2 matrices (K x 2 x 2) for multi-label."""
    pred = decide(probs, multilabel, threshold)
    if multilabel:
        return skm.multilabel_confusion_matrix(target, pred)
    return skm.confusion_matrix(target, pred, labels=list(range(probs.shape[1])))
