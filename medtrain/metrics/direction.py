"""Which way a metric improves, read from its name: `val/auc` and `val/dice_nucleus` upwards,
`val/mae` and `test/hd95_mm` downwards. It holds the checkpoint rule (`task.monitor_mode`) to its
metric and ranks a sweep by a metric other than the runs' monitor.

Only the metric's own name counts, at the start of the key's last part: what follows is a class,
label or target name of the user's (`val/auc_hearing_loss` is an AUC, not a loss)."""

from __future__ import annotations

LOWER = (
    "loss",
    "mae",
    "mse",
    "rmse",
    "nll",
    "ece",
    "brier",
    "hd95",
    "count_mae",
    "count_median_abs_rel_error",
    "area_mae_mm2",
    "area_mean_abs_rel_error",
    "volume_mae_ml",
)
HIGHER = (
    "auc",
    "acc",
    "accuracy",
    "balanced_acc",
    "balanced_accuracy",
    "f1",
    "sensitivity",
    "specificity",
    "precision",
    "recall",
    "ppv",
    "npv",
    "dice",
    "iou",
    "jaccard",
    "r2",
    "pearson",
    "spearman",
    "qwk",
    "kappa",
    "mcc",
    "ap",
    "average_precision",
    "instance_score",
    "pq",
    "sq",
    "rq",
)
DIRECTIONS = {**{name: "min" for name in LOWER}, **{name: "max" for name in HIGHER}}


def metric_direction(key: str) -> str | None:
    """`max` or `min` for a metric key (`val/auc`, `test/count_mae_nucleus`), by the longest known
    metric name its last part starts with (followed by `_` or nothing); None when it starts with
    none (a signed bias, a limit of agreement, a metric of one's own)."""
    name = key.rsplit("/", 1)[-1].lower()
    known = [m for m in DIRECTIONS if name == m or name.startswith(m + "_")]
    return DIRECTIONS[max(known, key=len)] if known else None
