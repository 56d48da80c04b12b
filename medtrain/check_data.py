"""`python -m medtrain.check_data <overrides>`: read every sample of every split and report problems."""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from medtrain.build import build_datasets
from medtrain.cli import parse_key_values, true_or_false, whole_number
from medtrain.config import check_against_data, compose_config, task_kind, validate
from medtrain.data.validation import check_datasets, new_report
from medtrain.errors import ConfigError, DataError, MedtrainError
from medtrain.io import save_json

log = logging.getLogger("medtrain.check_data")
REPORT = "data_report.json"
PRINTED = 50  # problems printed per kind; the report lists them all
DEFAULTS: dict[str, Any] = {"output": None, "workers": None, "duplicates": "warn", "progress": True}
USAGE = """\
usage: python -m medtrain.check_data [check.KEY=VALUE ...] [override ...]

Reads every sample of the train, val and test splits exactly as `python -m medtrain <overrides>`
would build them, and writes data_report.json. Exit status: 0 no errors (warnings allowed),
1 data errors (one line each, naming the file or manifest row), 2 config errors.

  override              any `python -m medtrain` override (dataset=manifest dataset.path=x.csv,
                        experiment=pneumoniamnist ...)
  check.output=DIR      where data_report.json goes (default outputs/check_data/<date>/<time>)
  check.workers=N       reading threads (default min(8, CPU count))
  check.duplicates=warn images shared between splits: warn | error
  check.progress=true   progress bar
"""


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
        plain_labels = task_kind(data) != "segmentation" and task_kind(relaxed.task) != "regression"
        if plain_labels and data.get("num_classes") is not None:
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

    A config error stops there (`config_errors`); a data error found while building (a missing
    manifest column, an unreadable first image, a label outside the classes) is reported under
    `errors`, and the rest of the data is still checked where the datasets can be built without it.
    """
    cfg = copy.deepcopy(cfg)  # build_datasets writes what it infers into cfg.dataset
    report = new_report(cfg)
    try:
        validate(on_cpu(cfg))
        datasets = build_datasets(cfg)
        check_against_data(cfg)
    except ConfigError as err:
        report["config_errors"].append(str(err))
    except MedtrainError as err:
        datasets = relaxed_datasets(cfg)
        if datasets is not None:
            report = check_datasets(cfg, datasets, workers, duplicates, progress)
        if not any(str(err) in line for line in report["errors"]):
            report["errors"].insert(0, str(err))
    else:
        return check_datasets(cfg, datasets, workers, duplicates, progress)
    report["ok"] = False
    return report


def exit_status(report: dict[str, Any]) -> int:
    """2 for config errors, 1 for data errors, 0 otherwise (warnings included)."""
    return 2 if report["config_errors"] else 1 if report["errors"] else 0


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


def parse_options(argv: Sequence[str]) -> DictConfig:
    """The `check.KEY=VALUE` arguments (without the prefix) over `DEFAULTS`."""
    options = parse_key_values(argv, DEFAULTS, text_keys=("output", "duplicates"))
    if options.workers is not None:
        whole_number(options.workers, "check.workers", 1)
    if options.duplicates not in ("warn", "error"):
        raise ConfigError(f"check.duplicates={options.duplicates!r}: choose warn or error")
    true_or_false(options.progress, "check.progress")
    return options


def capped(lines: list[str], where: str = "") -> list[str]:
    """The first `PRINTED` lines, then `... and N more <where>` when there are more."""
    more = len(lines) - PRINTED
    return lines[:PRINTED] + ([f"... and {more} more {where}".rstrip()] if more > 0 else [])


def print_report(report: dict[str, Any], path: Path) -> None:
    """One line per problem (at most `PRINTED` of each kind), then a summary line."""
    for kind, key in (
        ("config error", "config_errors"),
        ("error", "errors"),
        ("warning", "warnings"),
    ):
        for line in capped(report[key], f"in {path}"):
            print(f"{kind}: {line}", file=sys.stderr)
    for line in report["notes"]:
        print(f"note: {line}")
    counts = (
        f"{len(report['config_errors']) + len(report['errors'])} error(s), "
        f"{len(report['warnings'])} warning(s); report: {path}"
    )
    if not report["splits"]:
        print(f"the datasets could not be built: {counts}")
        return
    samples = sum(s["samples"] for s in report["splits"].values())
    print(f"checked {samples} samples in {report['seconds']:.1f} s: {counts}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (see `USAGE`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE, end="")
        return 0
    own = [a.removeprefix("check.") for a in argv if a.startswith("check.")]
    overrides = [a for a in argv if not a.startswith("check.")]
    try:
        options = parse_options(own)
        cfg = compose_config(overrides)
    except ConfigError as err:
        print(
            f"error: {err}\n(python -m medtrain.check_data --help lists its keys)", file=sys.stderr
        )
        return 2
    output = options.output or datetime.now().strftime("outputs/check_data/%Y-%m-%d/%H-%M-%S")
    report = check_config(cfg, options.workers, options.duplicates, options.progress)
    try:
        path = save_json(Path(output) / REPORT, report)
    except OSError as err:
        print(f"error: cannot write {Path(output) / REPORT} ({err})", file=sys.stderr)
        return 2
    print_report(report, path)
    return exit_status(report)


if __name__ == "__main__":
    sys.exit(main())
