"""A finished run (or ensemble) scored on new labelled images: an external test set, as its own
test split was scored (the library behind `medtrain evaluate`). The images go through what
`medtrain predict` and the service use (the run's evaluation preprocessing, test-time views,
threshold), the scores through the task's own metrics and bootstrap intervals, so that the numbers
compare with the run's `metrics.json`."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from medtrain.analysis.statistics import GROUPS_FILE, grouping_note
from medtrain.data.manifest import check_columns, listed, read_csv, windows_paths
from medtrain.engine.loop import threshold_entries
from medtrain.errors import ConfigError, DataError, DataRowsError, MedtrainError
from medtrain.inference.predictor import Predictor, warn_unread_spacing
from medtrain.inference.truth import (
    SHOWN,
    LabelVolumeTruth,
    MaskTruth,
    TargetTruth,
    Truth,
    row_file,
)
from medtrain.io import refuse_file_in_the_way, save_json, staged_folder

log = logging.getLogger(__name__)

ROW = re.compile(r"line (\d+): ")  # a problem of one row


def evaluate_files(cfg: DictConfig) -> dict[str, Any]:
    """Score `cfg.run_dir` on the labelled CSV `cfg.inputs`; write `metrics.json`,
    `predictions.csv` (and `confusion_matrix.csv` for classes; for segmentation the predicted
    masks, `per_case_metrics.csv` and the measurements) into `cfg.output`; return the metrics
    (`test/*` with `_ci_low`/`_ci_high`, the run's threshold, `cases`).

    Raises:
        ConfigError: a missing option or column, an output folder that is the run's.
        DataError: naming every row whose image, target or mask cannot be read, at once.
    """
    if not cfg.run_dir or not cfg.inputs:
        raise ConfigError("run_dir=<run> and inputs=<labelled.csv> are required")
    predictor = Predictor(cfg.run_dir, cfg.device, trust=list(cfg.trust))
    task = predictor.task
    segments = task.targets == "masks"
    output = Path(cfg.output).resolve()  # `.`, a symbolic link: the folder itself
    if output == Path(cfg.run_dir).resolve():
        raise ConfigError(
            f"output={cfg.output}: the run folder itself, whose metrics.json and predictions.csv "
            "are the run's own; give another folder"
        )
    _check_output(output, cfg.output, Path(cfg.inputs).resolve())
    data = predictor.cfg.dataset  # its manifest's columns are the default ones
    image_column = cfg.image_column or data.get("image_column") or "image"
    path = Path(cfg.inputs)
    if not path.exists():
        raise ConfigError(f"inputs={cfg.inputs}: no such file")
    if path.suffix.lower() != ".csv" or not path.is_file():
        what = "masks" if segments else "targets"
        raise ConfigError(
            f"inputs={cfg.inputs}: a CSV manifest of images and their {what} is needed"
        )
    header, rows, lines = read_csv(path)
    if predictor.reads_volumes:
        warn_unread_spacing(path, header, cfg.spacing_column or "spacing")
    if segments and predictor.reads_volumes:
        truth: Truth = LabelVolumeTruth(predictor, cfg, path)
    elif segments:
        truth = MaskTruth(predictor, cfg, path, header)
    else:
        truth = TargetTruth(predictor, cfg)
    wanted = {"image_column": image_column, **truth.columns}
    # A model that also reads clinical columns: the CSV holds them, named as in training.
    wanted |= {
        f"the run's dataset.tabular_columns[{k}]": c
        for k, c in enumerate(predictor.clinical_columns)
    }
    if cfg.group_column:
        wanted["group_column"] = cfg.group_column
    check_columns(path, header, wanted, rows[0], prefix="")

    ids = [row[image_column] for row in rows]
    for column in filter(None, (image_column, truth.columns.get("mask_column"))):
        hint = windows_paths(path.parent, [row[column] for row in rows])
        if hint:  # every row would fail alike
            raise DataError(f"{path}: column {column!r}: {hint}")
    problems = truth.read_all(rows, lines, ids)
    if cfg.group_column:  # an empty cell would join every such image into one "patient"
        empty = [
            f"line {line}"
            for row, line in zip(rows, lines, strict=True)
            if not row[cfg.group_column]
        ]
        if empty:
            problems.append(
                f"column {cfg.group_column!r} (group_column) is empty: {listed(empty, SHOWN)}"
            )
    twice = sorted(i for i, n in Counter(ids).items() if n > 1)
    if twice:
        problems.append(f"images listed more than once: {', '.join(twice[:SHOWN])}")
    collector = task.collector(final=True)
    cases = Listed([row_file(path, i) for i in ids], ids, lines, rows)
    inside = [f for f in [*cases.files, *getattr(truth, "files", [])] if f and within(f, output)]
    if inside:  # replaced whole, the output would take them along
        raise ConfigError(
            f"output={cfg.output}: holds files the CSV names (e.g. {inside[0]}); an evaluation "
            "replaces its folder whole: give another folder"
        )
    if isinstance(truth, LabelVolumeTruth):
        _score_volumes(predictor, truth, collector, cases, problems)
    else:
        _score_images(predictor, truth, collector, cases, int(cfg.batch_size), problems)
    if problems:  # row by row, then what concerns several rows
        problems.sort(key=lambda p: (0, int(m[1])) if (m := ROW.match(p)) else (1, 0))
        more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise DataRowsError(f"{path}: " + "\n".join(problems[:SHOWN]) + more)

    with staged_folder(output) as staging:  # an earlier evaluation's files go as a whole
        saved = collector.save(staging) or {}
        metrics = {
            **collector.metrics("test"),
            **{f"test/{key}": value for key, value in saved.items()},
            **threshold_entries(task.threshold, predictor.class_names),
            "cases": len(rows),
            "run_dir": str(Path(cfg.run_dir).resolve()),
            "inputs": str(path.resolve()),
        }
        if getattr(task, "instances", None) is not None and isinstance(truth, MaskTruth):
            metrics["true_objects"] = (
                "instance labels" if truth.instance_labels else "connected components of the masks"
            )
        if cfg.group_column:
            groups = {i: row[cfg.group_column] for i, row in zip(ids, rows, strict=True)}
            save_json(staging / GROUPS_FILE, groups)
        metrics |= task.intervals(staging, metrics)
        metrics["intervals"] = f"bootstrap over the {len(rows)} cases" + (
            f", {grouping_note(staging, ids)}" if cfg.group_column else ""
        )
        # Every file written: what a later evaluation into this folder may replace, and no other.
        metrics["files"] = folder_files(staging)
        save_json(staging / "metrics.json", metrics)
    return metrics


@dataclasses.dataclass
class Listed:
    """The CSV's rows: each image's file, id (its cell), line, and cells (clinical values)."""

    files: list[Path]
    ids: list[str]
    lines: list[int]
    rows: list[dict[str, str]]


def _score_images(
    predictor: Predictor,
    truth: Truth,
    collector: Any,
    listed: Listed,
    batch: int,
    problems: list[str],
) -> None:
    """Every row's image (with its clinical values, for a model that reads them) through the
    model, `batch` at a time, into `collector`; every unreadable row added to `problems` (once
    there is one, nothing more is computed)."""
    ids, lines = listed.ids, listed.lines
    for start in range(0, len(ids), batch):
        items, kept = [], []
        for k in range(start, min(start + batch, len(ids))):
            try:
                image = truth.with_spacing(k, predictor.read(listed.files[k]))
                items.append(predictor.prepare(image, ids[k], clinical=listed.rows[k]))
                truth.check_image(k, image)
                kept.append(k)
            except MedtrainError as err:
                problems.append(f"line {lines[k]}: {err}")
        if problems or not items:  # read everything to say every problem, compute nothing more
            continue
        for k, item, outputs in zip(kept, items, predictor.forward(items), strict=True):
            if not torch.isfinite(outputs).all():
                problems.append(f"line {lines[k]}: {ids[k]}: the model's output is not finite")
                continue
            collector.update(outputs, {"id": [ids[k]], **truth.batch(k, item)})


def _score_volumes(
    predictor: Predictor,
    truth: LabelVolumeTruth,
    collector: Any,
    listed: Listed,
    problems: list[str],
) -> None:
    """`_score_images` for volumes: each read, checked against its label volume and segmented
    whole (one at a time: a volume is a batch)."""
    for k, file in enumerate(listed.files):
        name, line = listed.ids[k], listed.lines[k]
        try:
            volume = truth.checked_volume(k, file)
            if problems:  # nothing more is computed: keep no label volume
                truth.labels.pop(k, None)
                continue
            logits, intensity = predictor.volume_logits(volume, name)
        except MedtrainError as err:
            problems.append(f"line {line}: {err}")
            continue
        if not torch.isfinite(logits).all():
            problems.append(f"line {line}: {name}: the model's output is not finite")
            continue
        collector.update(logits, {"id": [name], **truth.volume_batch(k, volume, intensity)})


# The files an evaluation may write (the tasks' test files): what an earlier evaluation whose
# metrics.json lists no `files` (release 0.2's, of classes or values) may hold, replaced whole.
EVALUATION_FILES = {
    "metrics.json",
    "predictions.csv",
    "confusion_matrix.csv",
    GROUPS_FILE,
    "per_case_metrics.csv",
    "measurements.csv",
    "measurement_totals.csv",
    "measurement_agreement.json",
    "volumes.csv",
    "masks",
    "instances",
    "overlays",
}


def _check_output(output: Path, given: str, inputs: Path) -> None:
    """The output folder must be new (or empty), or an earlier evaluation's holding only what it
    wrote (listed in its metrics.json), which is replaced whole: never a file, a folder in a file's
    place (`afile/evaluation`), a folder of other files (a user's masks/, notes, run folders) or
    the folder of the inputs.

    Raises:
        ConfigError: naming what it holds or why.
    """
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output={given}: a file; an evaluation writes a folder")
    refuse_file_in_the_way("output", given)
    if within(inputs, output):
        raise ConfigError(
            f"output={given}: holds the inputs ({inputs}); an evaluation replaces its folder "
            "whole: give another folder"
        )
    if not output.is_dir() or not any(output.iterdir()):
        return
    metrics = evaluation_record(output)
    written = set(metrics.get("files") or []) if metrics else set()
    if metrics and "files" not in metrics:  # an evaluation of release 0.2: no subfolders
        written = {f.name for f in output.iterdir() if f.is_file() and f.name in EVALUATION_FILES}
    others = sorted(set(folder_files(output)) - written - {"metrics.json"})
    if others or not metrics:
        shown = f" ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''})" if others else ""
        raise ConfigError(
            f"output={given}: a folder of other files{shown}, not an earlier evaluation's alone; "
            "an evaluation replaces its folder whole: give a new folder"
        )


def folder_files(folder: Path) -> list[str]:
    """Every file under `folder` (and every empty folder), as sorted relative paths."""
    found = []
    for entry in folder.rglob("*"):
        if entry.is_file() or entry.is_symlink() or (entry.is_dir() and not any(entry.iterdir())):
            found.append(entry.relative_to(folder).as_posix())
    return sorted(found)


def within(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies under it (both resolved)."""
    path = Path(path).resolve()
    return path == folder or folder in path.parents


def evaluation_record(folder: Path) -> dict | None:
    """An earlier evaluation's metrics.json in `folder` (it names a run and inputs), or None."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    evaluation = isinstance(metrics, dict) and {"run_dir", "inputs"} <= metrics.keys()
    return metrics if evaluation else None
