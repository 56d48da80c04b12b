"""Instance metrics: objects (nuclei, cells) scored one by one, as label images (0 background,
1..N one number per object; the numbers need not be consecutive).

Conventions, for one image with `T` true and `P` predicted objects:
- Objects are matched by their intersection over union (IoU). At a threshold `t >= 0.5` a true
  object matches a predicted one when their IoU exceeds `t`; no object can then match two others
  (two objects overlapping a third by more than half of their union would overlap each other), so
  the matching is unique without an assignment step.
- **Instance score** (the 2018 Data Science Bowl's metric): at each threshold `t` in 0.50, 0.55,
  ..., 0.95, `TP / (TP + FP + FN)` with `TP` the matched pairs, `FP = P - TP`, `FN = T - TP`;
  averaged over the thresholds.
- **Panoptic quality** (Kirillov et al. 2019) at IoU > 0.5, per image (as HoVer-Net and MONAI's
  `compute_panoptic_quality` compute it for nuclei; Kirillov et al. pool the counts over a
  dataset): `PQ = SQ x RQ`, the segmentation quality `SQ` the mean IoU of the matched pairs and
  the recognition quality `RQ = TP / (TP + FP/2 + FN/2)`. No match: SQ NaN, RQ and PQ 0.
- An image with no true and no predicted object has nothing to score: its instance score, PQ, SQ
  and RQ are NaN and left out of the means.
- **Counts**: `count_true`, `count_pred`, and the absolute relative count error
  `|P - T| / T` (NaN when T = 0).
`summarize_instances` averages the per-image values over images (the competition's mean), ignoring
NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))
INSTANCE_METRICS = ("instance_score", "pq", "sq", "rq", "count_abs_rel_error")


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The IoU of every (true object, predicted object) pair of two label images of one shape:
    a `T x P` array, objects in the order of their label numbers."""
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"label images of different shapes: {true.shape} and {pred.shape}")
    # Consecutive numbers 0..T and 0..P (0 stays background, as the smallest label).
    true_ids, true_index = np.unique(true, return_inverse=True)
    pred_ids, pred_index = np.unique(pred, return_inverse=True)
    if true_ids[0] != 0:
        true_index = true_index + 1
    if pred_ids[0] != 0:
        pred_index = pred_index + 1
    n_true = int(true_index.max(initial=0))
    n_pred = int(pred_index.max(initial=0))
    joint = np.bincount(
        true_index.ravel() * (n_pred + 1) + pred_index.ravel(),
        minlength=(n_true + 1) * (n_pred + 1),
    ).reshape(n_true + 1, n_pred + 1)
    true_area, pred_area = joint.sum(axis=1)[1:], joint.sum(axis=0)[1:]
    inter = joint[1:, 1:]
    union = true_area[:, None] + pred_area[None, :] - inter
    return inter / np.maximum(union, 1)


def instance_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Instance score, panoptic quality (with SQ and RQ) and counts of one image (see the module
    docstring), from its true and predicted label images."""
    iou = iou_matrix(true, pred)
    n_true, n_pred = iou.shape
    out: dict[str, float] = {
        "count_true": float(n_true),
        "count_pred": float(n_pred),
        "count_abs_rel_error": abs(n_pred - n_true) / n_true if n_true else float("nan"),
    }
    if n_true == 0 and n_pred == 0:  # nothing to score: left out of the means
        return out | dict.fromkeys(("instance_score", "pq", "sq", "rq"), float("nan"))
    scores = []
    for threshold in IOU_THRESHOLDS:
        tp = int(np.count_nonzero(iou > threshold))
        scores.append(tp / (n_true + n_pred - tp))  # TP + FP + FN
    matched = iou[iou > 0.5]
    tp = matched.size
    rq = tp / (tp + 0.5 * (n_pred - tp) + 0.5 * (n_true - tp))
    sq = float(matched.mean()) if tp else float("nan")
    return out | {
        "instance_score": float(np.mean(scores)),
        "pq": sq * rq if tp else 0.0,
        "sq": sq,
        "rq": rq,
    }


def summarize_instances(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-image instance metrics averaged over images (NaN ignored), and the median absolute
    relative count error (`count_median_abs_rel_error`)."""
    out = {}
    for key in INSTANCE_METRICS:
        values = np.asarray([row[key] for row in rows if key in row], dtype=float)
        kept = values[~np.isnan(values)]
        out[key] = float(kept.mean()) if kept.size else float("nan")
    errors = np.asarray([row.get("count_abs_rel_error", np.nan) for row in rows], dtype=float)
    errors = errors[~np.isnan(errors)]
    out["count_median_abs_rel_error"] = float(np.median(errors)) if errors.size else float("nan")
    return out
