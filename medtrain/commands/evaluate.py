"""`medtrain evaluate run_dir=<run> inputs=<labelled.csv>`: a finished run (or ensemble) scored on
new labelled images, an external test set, with the metrics and intervals of its own test split."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtrain.commands.args import parse_key_values, tool_args
from medtrain.errors import MedtrainError

DEFAULTS: dict[str, Any] = {
    "run_dir": None,
    "inputs": None,
    "output": "evaluation",
    "image_column": None,
    "target_column": None,
    "mask_column": None,
    "spacing_column": None,
    "group_column": None,
    "label_separator": None,
    "no_label": None,
    "instance_labels": None,
    "device": "auto",
    "batch_size": 32,
    "trust": [],
}
TEXT_KEYS = (
    "run_dir",
    "inputs",
    "output",
    "image_column",
    "mask_column",
    "spacing_column",
    "group_column",
    "label_separator",
    "no_label",
    "device",
)

USAGE = """\
usage: medtrain evaluate run_dir=RUN inputs=LABELLED.csv [key=value ...]

  run_dir=RUN            a finished run (classification, regression, segmentation of images
                         or volumes), an ensemble, or a CV's fold ensemble (its ensemble/ folder)
  inputs=FILE.csv        new labelled images: a CSV with an image column (paths relative to the
                         CSV) and a target column (the run's class names or indices; numbers for
                         regression) or, for segmentation, a mask column (mask files read as the
                         run read its masks: class_values, instance labels; label volumes)
  output=DIR             where metrics.json, predictions.csv (and confusion_matrix.csv; for
                         segmentation masks/, per_case_metrics.csv, measurements) go (default
                         evaluation/; a new folder or an earlier evaluation's, never the run's)
  image_column=NAME      default: the run's dataset.image_column, else image
  target_column=NAME     default: the run's dataset.target_column, else target; regression with
                         several values: [a,b]; multi-label: one column of labels joined by
                         label_separator, or a 0/1 column per label ([effusion,nodule], matched
                         to the run's labels by name)
  label_separator=TEXT   multi-label: what joins an image's labels (default the run's, else |)
  no_label=TEXT          multi-label: the cell of an image with none (default the run's; '' for
                         an empty cell; null for none: every image has a label)
  mask_column=NAME       segmentation: default the run's dataset.mask_column, else mask
  spacing_column=NAME    segmentation: mm per pixel (0.5, or 0.5 0.6); default the column
                         spacing when there is one; else each image file's, else the run's
                         dataset.spacing, else pixels
  instance_labels=BOOL   how the masks are read for a run that scores instances (task.instances):
                         true, one label per object; false, class masks (e.g. binary), its
                         instance scores and counts then against their connected components
                         (touching objects count as one); default the run's
                         dataset.instance_labels
  group_column=NAME      the patient of each image: the intervals resample patients
  device=auto            auto | cpu | cuda | cuda:N
  batch_size=32          images per forward pass
  trust=[NAME,...]       _target_ classes of your own that the run may build (as for predict)

The images are read and preprocessed as medtrain predict and the service do (the run's
evaluation preprocessing, test-time views and decision threshold), and scored by the run's task
with the metrics and bootstrap 95% intervals of its metrics.json. Every unreadable image, target
or mask is named at once (exit status 1); nothing is written then. A CSV that cannot be read as
a table (its separator, header or columns, Windows paths) exits with status 2, as predict does.
"""


# What an undefined metric needed that the cases lack, by its name's first word (per-class and
# per-value keys are `<metric>_<name>`).
_NEEDS = (
    (("r2",), "R^2 needs targets that vary"),
    (("pearson", "spearman"), "a correlation needs targets and predictions that vary"),
    (("qwk", "kappa"), "kappa (qwk) needs more than one grade"),
    (
        ("auc", "ap", "precision", "recall", "sensitivity", "specificity", "f1"),
        "a class's AUC, AP, recall or precision needs cases of that class (or called it)",
    ),
    (("hd95", "dice", "iou", "pq", "sq", "rq", "aji"), "a mask metric needs a mask with the class"),
)


def _why_undefined(keys: list[str]) -> str:
    """Why these metrics are undefined, in the words of their kind (a regression's R^2 is not a
    classification's AUC); a generic reason for names `_NEEDS` does not know."""
    reasons = []
    for key in keys:
        metric = key.rsplit("/", 1)[-1].split("_", 1)[0]
        found = next(
            (why for names, why in _NEEDS if metric in names),
            "the cases lack a class, a label or a spread it needs",
        )
        if found not in reasons:
            reasons.append(found)
    return "; ".join(reasons)


def main(argv: Sequence[str] | None = None) -> int:
    argv, done = tool_args(argv, USAGE)
    if done is not None:
        return done
    from medtrain.errors import DataRowsError
    from medtrain.inference.evaluate import evaluate_files

    try:
        cfg = parse_key_values(argv, DEFAULTS, TEXT_KEYS, list_keys=("trust",))
        metrics = evaluate_files(cfg)
    except MedtrainError as err:  # bad rows of the CSV (1); the command line or the CSV (2)
        print(f"error: {err}", file=sys.stderr)
        return 1 if isinstance(err, DataRowsError) else 2
    keys = [k for k in metrics if k.startswith("test/") and "_ci_" not in k]
    width = max(24, *map(len, keys))
    for key in keys:
        value, low, high = (metrics.get(f"{key}{end}") for end in ("", "_ci_low", "_ci_high"))
        interval = f"  (95% CI {low:.4f} to {high:.4f})" if low is not None else ""
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key:<{width}} {shown}{interval}")
    print(f"intervals: {metrics['intervals']}")
    undefined = [k for k in keys if isinstance(metrics[k], float) and math.isnan(metrics[k])]
    if undefined:  # e.g. the AUC of cases of one class, beside a balanced accuracy that is not
        shown = ", ".join(undefined[:6]) + (
            f" and {len(undefined) - 6} more" if len(undefined) > 6 else ""
        )
        print(
            f"note: {shown} undefined (null in metrics.json): {_why_undefined(undefined)}; "
            "the other metrics are of the cases there are",
            file=sys.stderr,
        )
    print(f"{metrics['cases']} cases; wrote {Path(cfg.output) / 'metrics.json'}")
    return 0
