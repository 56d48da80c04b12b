"""The data check: read every sample of every split as training builds them and report problems
(`medtrain check-data`, and before every training run)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from medtrain.data.validation import check_datasets, new_report
from medtrain.engine.build import build_datasets, build_model, target_class
from medtrain.engine.config import check_against_data, check_inputs_read, validate
from medtrain.errors import ConfigError, DataError, LossMismatch, MedtrainError
from medtrain.io import save_json

log = logging.getLogger(__name__)
REPORT = "data_report.json"
PRINTED = 50  # problems printed per kind; the report lists them all


def on_cpu(cfg: DictConfig) -> DictConfig:
    """A copy whose device settings pass anywhere: the data check needs no accelerator."""
    probe = copy.deepcopy(cfg)
    with open_dict(probe):
        probe.trainer.device, probe.trainer.precision = "cpu", "32"
    return probe


def relaxed_datasets(cfg: DictConfig) -> dict | None:
    """The datasets built again without the two things a constructor checks on data: channels read
    from the first training image, and labels against `num_classes`. Then every other file and
    row is still checked (and the labels against the configured classes) after a construction
    error; None when they cannot be built either."""
    relaxed = copy.deepcopy(cfg)
    data, classes = relaxed.dataset, None
    with open_dict(relaxed):
        if data.get("in_channels") is None:
            data.in_channels = 1
        # Class labels per image are checked against num_classes when the dataset is built.
        class_labels = getattr(target_class(relaxed.task), "targets", None) == "classes"
        if class_labels and data.get("num_classes") is not None:
            classes = (int(data.num_classes), data.get("class_names"))
            data.num_classes, data.class_names = None, None
    try:
        datasets = build_datasets(relaxed)
    except MedtrainError:
        return None
    if classes is not None:
        k, class_names = classes
        for ds in datasets.values():
            ds.num_classes = k
            ds.class_names = list(class_names) if class_names else [str(c) for c in range(k)]
    return datasets


def check_config(
    cfg: DictConfig, workers: int | None = None, duplicates: str = "warn", progress: bool = True
) -> dict[str, Any]:
    """Build the datasets of `cfg` as training does and check them (see `check_datasets`).

    A config error stops there (`config_errors`), except a loss that does not fit the task: the
    data, which the loss does not read, is still checked. A data error found while building (a
    missing manifest column, an unreadable first image, a label outside the classes) is reported
    under `errors`, and the rest of the data is still checked where the datasets can be built
    without it.
    """
    cfg = copy.deepcopy(cfg)  # build_datasets writes what it infers into cfg.dataset
    report = new_report(cfg)
    wrong_loss = []
    try:
        try:
            validate(on_cpu(cfg))
        except LossMismatch as err:  # validate raises it after every other check passed
            wrong_loss.append(str(err))
        datasets = build_datasets(cfg)
        try:
            check_against_data(cfg)
        except LossMismatch as err:  # raised after every other check against the data passed
            wrong_loss.append(str(err))
        columns = cfg.dataset.get("tabular_columns")
        if columns:  # as training: the model must read them (built on the CPU, not trained)
            check_inputs_read(build_model(cfg), columns, cfg.model.get("_target_"))
    except ConfigError as err:
        report["config_errors"].append(str(err))
    except MedtrainError as err:
        datasets = relaxed_datasets(cfg)
        if datasets is not None:
            report = check_datasets(cfg, datasets, workers, duplicates, progress)
        # One line per problem (a manifest reports each failed column on its own line).
        found = [e for e in str(err).splitlines() if not any(e in x for x in report["errors"])]
        report["errors"][:0] = found
    else:
        report = check_datasets(cfg, datasets, workers, duplicates, progress)
        if not wrong_loss:
            return report
    report["config_errors"][:0] = wrong_loss
    report["ok"] = False
    return report


def check_before_training(cfg: DictConfig, datasets: dict, run_dir: Path) -> dict[str, Any]:
    """Training's data check, right after `build_datasets`: writes `data_report.json` into the run
    folder and logs warnings and notes.

    Raises:
        DataError: listing the errors (and where the full report is).
    """
    report = check_datasets(
        cfg,
        datasets,
        duplicates=cfg.trainer.get("check_data_duplicates", "warn"),
        progress=bool(cfg.trainer.get("progress", True)),
    )
    path = save_json(Path(run_dir) / REPORT, report)
    warnings = report["warnings"]
    for line in capped(warnings, f"warnings in {path}"):
        log.warning("data: %s", line)
    for line in report["notes"]:
        log.info("data: %s", line)
    errors = report["errors"]
    if errors:
        raise DataError(
            f"the data check found {len(errors)} problem(s), listed in {path} "
            "(trainer.check_data=false skips the check):\n" + "\n".join(capped(errors))
        )
    return report


def capped(lines: list[str], where: str = "") -> list[str]:
    """The first `PRINTED` lines, then `... and N more <where>` when there are more."""
    more = len(lines) - PRINTED
    return lines[:PRINTED] + ([f"... and {more} more {where}".rstrip()] if more > 0 else [])
