"""Which way a metric improves, read from its name: `val/auc` and `val/dice_nucleus` upwards,
`val/mae` and `test/hd95_mm` downwards. It holds the checkpoint rule (`task.monitor_mode`) to its
metric and ranks a sweep by a metric other than the runs' monitor."""

from __future__ import annotations

# Name parts (between underscores) of metrics that improve downwards; checked first, so that
# `count_mae_nucleus` and `area_mean_abs_rel_error` are errors however else they are named.
LOWER = ("loss", "mae", "mse", "rmse", "error", "hd95", "hd", "ece", "brier", "nll")
# ... and upwards.
HIGHER = (
    "auc",
    "accuracy",
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
    "score",
    "pq",
    "sq",
    "rq",
)


def metric_direction(key: str) -> str | None:
    """`max` or `min` for a metric key (`val/auc`, `test/count_mae_nucleus`), None when its name
    does not say (a signed bias, a limit of agreement, a metric of one's own)."""
    parts = key.rsplit("/", 1)[-1].lower().split("_")
    if any(part in LOWER for part in parts):
        return "min"
    if any(part in HIGHER for part in parts):
        return "max"
    return None
