"""A finished run (or ensemble) scored on new labelled images: an external test set, as its own
test split was scored (the library behind `medtrain evaluate`). The images go through what
`medtrain predict` and the service use (the run's evaluation preprocessing, test-time views,
threshold), the scores through the task's own metrics and bootstrap intervals, so that the numbers
compare with the run's `metrics.json`."""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from medtrain.analysis.statistics import GROUPS_FILE, grouping_note
from medtrain.data.manifest import check_columns, read_csv
from medtrain.data.tabular import parse_number
from medtrain.engine.loop import threshold_entries
from medtrain.errors import ConfigError, DataError, MedtrainError
from medtrain.inference.predictor import Predictor
from medtrain.io import save_json

log = logging.getLogger(__name__)

# Problems listed per kind before "and N more".
SHOWN = 20


def evaluate_files(cfg: DictConfig) -> dict[str, Any]:
    """Score `cfg.run_dir` on the labelled CSV `cfg.inputs`; write `metrics.json`,
    `predictions.csv` (and `confusion_matrix.csv` for classes) into `cfg.output`; return the
    metrics (`test/*` with `_ci_low`/`_ci_high`, the run's threshold, `cases`).

    Raises:
        ConfigError: a run this does not score (segmentation, multi-label, several inputs), a
            missing option or column, an output folder that is the run's.
        DataError: naming every row whose image or target cannot be read, at once.
    """
    if not cfg.run_dir or not cfg.inputs:
        raise ConfigError("run_dir=<run> and inputs=<labelled.csv> are required")
    predictor = Predictor(cfg.run_dir, cfg.device, trust=list(cfg.trust))
    task = predictor.task
    if task.targets == "masks":
        raise ConfigError(
            f"run_dir: {cfg.run_dir} segments images; medtrain evaluate scores classification and "
            "regression runs (segmentation: medtrain predict, then medtrain measure or Dice "
            "against your masks)"
        )
    if getattr(task, "multilabel", False):
        raise ConfigError(
            f"run_dir: {cfg.run_dir} is multi-label; medtrain evaluate scores one class per "
            "image, or regression values"
        )
    output = Path(cfg.output)
    if output.resolve() == Path(cfg.run_dir).resolve():
        raise ConfigError(
            f"output={cfg.output}: the run folder itself, whose metrics.json and predictions.csv "
            "are the run's own; give another folder"
        )
    data = predictor.cfg.dataset  # its manifest's columns are the default ones
    image_column = cfg.image_column or data.get("image_column") or "image"
    targets = _target_columns(cfg.target_column or data.get("target_column") or "target", task)
    path = Path(cfg.inputs)
    if path.suffix.lower() != ".csv" or not path.is_file():
        raise ConfigError(f"inputs={cfg.inputs}: a CSV manifest of labelled images is needed")
    header, rows, lines = read_csv(path)
    wanted = {"image_column": image_column}
    wanted |= (
        {"target_column": targets[0]}
        if len(targets) == 1
        else {f"target_column[{k}]": name for k, name in enumerate(targets)}
    )
    if cfg.group_column:
        wanted["group_column"] = cfg.group_column
    check_columns(path, header, wanted, rows[0], prefix="")

    labels, problems = _labels(rows, lines, targets, task, predictor.class_names)
    if cfg.group_column:  # an empty cell would join every such image into one "patient"
        empty = [
            f"line {line}"
            for row, line in zip(rows, lines, strict=True)
            if not row[cfg.group_column]
        ]
        if empty:
            more = f"; and {len(empty) - SHOWN} more" if len(empty) > SHOWN else ""
            problems.append(
                f"column {cfg.group_column!r} (group_column) is empty: "
                + "; ".join(empty[:SHOWN])
                + more
            )
    ids = [row[image_column] for row in rows]
    twice = sorted(i for i, n in Counter(ids).items() if n > 1)
    if twice:
        problems.append(f"images listed more than once: {', '.join(twice[:SHOWN])}")
    collector = task.collector(final=True)
    batch = int(cfg.batch_size)
    for start in range(0, len(rows), batch):
        chunk = range(start, min(start + batch, len(rows)))
        items, kept = [], []
        for k in chunk:
            file = Path(ids[k]) if Path(ids[k]).is_absolute() else path.parent / ids[k]
            try:
                items.append(predictor.prepare(predictor.read(file), ids[k]))
                kept.append(k)
            except MedtrainError as err:
                problems.append(f"line {lines[k]}: {err}")
        if problems or not items:  # read everything to say every problem, compute nothing more
            continue
        for k, outputs in zip(kept, predictor.forward(items), strict=True):
            if not torch.isfinite(outputs).all():
                problems.append(f"line {lines[k]}: {ids[k]}: the model's output is not finite")
                continue
            collector.update(outputs, {"id": [ids[k]], "label": labels[k][None]})
    if problems:
        more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise DataError(f"{path}: " + "\n".join(problems[:SHOWN]) + more)

    output.mkdir(parents=True, exist_ok=True)
    saved = collector.save(output) or {}
    metrics = {
        **collector.metrics("test"),
        **{f"test/{key}": value for key, value in saved.items()},
        **threshold_entries(task.threshold, predictor.class_names),
        "cases": len(rows),
        "run_dir": str(Path(cfg.run_dir).resolve()),
        "inputs": str(path.resolve()),
    }
    groups_file = output / GROUPS_FILE  # this call's groups only, never an earlier call's
    if cfg.group_column:
        save_json(groups_file, {i: row[cfg.group_column] for i, row in zip(ids, rows, strict=True)})
    else:
        groups_file.unlink(missing_ok=True)
    metrics |= task.intervals(output, metrics)
    metrics["intervals"] = f"bootstrap over the {len(rows)} cases" + (
        f", {grouping_note(output, ids)}" if cfg.group_column else ""
    )
    save_json(output / "metrics.json", metrics)
    return metrics


def _target_columns(value: Any, task: Any) -> list[str]:
    """The target column(s): one for classes; for regression one per value the run predicts."""
    columns = [str(c) for c in value] if not isinstance(value, str) else [value]
    if task.targets == "values" and len(columns) != len(task.class_names):
        raise ConfigError(
            f"target_column={columns}: the run predicts {len(task.class_names)} value(s) "
            f"({task.class_names}); name one column for each"
        )
    if task.targets != "values" and len(columns) != 1:
        raise ConfigError(f"target_column={columns}: a classification run takes one column")
    return columns


def _labels(
    rows: list[dict[str, str]], lines: list[int], columns: list[str], task: Any, names: list[str]
) -> tuple[list[torch.Tensor], list[str]]:
    """Each row's target as the run's collector takes it, and every row it cannot read: a class
    name of the run (or an index 0..K-1), or the numbers of a regression run."""
    labels: list[torch.Tensor] = []
    problems: list[str] = []
    regression = task.targets == "values"
    index = {str(n): k for k, n in enumerate(names)}
    for row, line in zip(rows, lines, strict=True):
        cells = [row[c] for c in columns]
        if regression:
            values = [parse_number(c) for c in cells]
            if any(v is None or not math.isfinite(v) for v in values):
                problems.append(f"line {line}: target {cells} is not a number")
                values = [0.0] * len(cells)
            labels.append(torch.tensor(values, dtype=torch.float64))
            continue
        cell = cells[0]
        number = parse_number(cell)
        if cell in index:
            labels.append(torch.tensor(index[cell]))
        elif number is not None and number.is_integer() and 0 <= number < len(names):
            labels.append(torch.tensor(int(number)))
        else:
            problems.append(f"line {line}: class {cell!r} is not one of the run's {names}")
            labels.append(torch.tensor(0))
    return labels, problems
