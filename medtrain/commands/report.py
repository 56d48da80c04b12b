"""`medtrain report run_dir=<run>`: (re)write a finished run's `report.html`; `medtrain report
sweep_dir=<sweep>`: (re)write a sweep's summary table and plots."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtrain.commands.args import parse_key_values, tool_args
from medtrain.errors import ConfigError, MedtrainError

DEFAULTS: dict[str, Any] = {
    "run_dir": None,
    "sweep_dir": None,
    "monitor": None,
    "storage": None,
    "trust": [],
}
USAGE = """\
usage: medtrain report run_dir=<run folder>
       medtrain report sweep_dir=<sweep folder> [monitor=val/auc]

  run_dir=PATH    a finished run (a folder with metrics.json); writes PATH/report.html
                  (Grad-CAM reads the run's data: run it from the folder the run was trained in)
  sweep_dir=PATH  a grid (medtrain -m ...) or search (medtrain sweep) folder; writes
                  sweep_summary.csv/.md and one plot per swept value into it
  monitor=KEY     the metric the sweep summary ranks by (default: the runs' task.monitor)
  storage=URL     a shared sweep's study when study.json cannot name it in full (an SQL URL
                  with a password, which the sweep folder does not keep)
  trust=[NAME,..] _target_ classes (or module prefixes ending in '.') of your own that the run
                  may build besides medtrain's (also MEDTRAIN_TRUSTED_TARGETS)
"""


def report_run(run_dir: Path, trust: Sequence[str] = ()) -> Path:
    from medtrain.analysis.report import write_report  # loaded only when used: `--help` is quick
    from medtrain.inference.evaluate import evaluation_record

    if not (run_dir / "metrics.json").is_file():
        from medtrain.experiments.compare import not_a_run

        raise ConfigError(f"run_dir: {not_a_run(run_dir)}")
    evaluation = evaluation_record(run_dir)
    if evaluation is not None:  # a report there was a run's without its run, in evaluate's way
        raise ConfigError(
            f"run_dir: {run_dir} is an evaluation's output folder (medtrain evaluate of "
            f"{evaluation['run_dir']} on {evaluation['inputs']}), not a run: its metrics.json "
            "and the files beside it are the evaluation's results; the run's report is medtrain "
            f"report run_dir={evaluation['run_dir']}"
        )
    return write_report(run_dir, trust=trust)


# What a sweep folder holds: a grid's (Hydra's record of it), a search's study, or a summary.
SWEEP_FILES = ("multirun.yaml", "study.db", "study.json", "sweep_summary.csv")


def report_sweep(sweep_dir: Path, monitor: str | None, storage: str | None = None) -> Path:
    from medtrain.experiments.studies import read_study
    from medtrain.experiments.sweep_summary import write_sweep_summary

    if not sweep_dir.is_dir():
        raise ConfigError(f"sweep_dir: {sweep_dir} is not a folder")
    if (sweep_dir / "folds.json").is_file():  # its folds are no trials to rank
        raise ConfigError(
            f"sweep_dir: {sweep_dir} is a cross-validation (folds.json): its summary is "
            "cv_summary.md; a fold's or the ensemble's report is medtrain report "
            f"run_dir={sweep_dir}/fold_<k> (or {sweep_dir}/ensemble)"
        )
    marked = [name for name in SWEEP_FILES if (sweep_dir / name).exists()]
    if not marked and not (sweep_dir / "metrics.json").is_file():  # a run's: said below
        raise ConfigError(
            f"sweep_dir: {sweep_dir} is no grid's or search's folder (it has no "
            f"{', '.join(SWEEP_FILES)}): its runs were not trained as one sweep; put runs side "
            "by side with medtrain compare 'run_dirs=[...]'"
        )
    try:
        return write_sweep_summary(sweep_dir, monitor, study=read_study(sweep_dir, storage))
    except FileNotFoundError as err:
        raise ConfigError(f"sweep_dir: {err}") from err


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 with one `error:` line on bad input)."""
    argv, status = tool_args(argv, USAGE)
    if status is not None:
        return status
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        args = parse_key_values(
            argv,
            DEFAULTS,
            text_keys=("run_dir", "sweep_dir", "monitor", "storage"),
            list_keys=("trust",),
        )
        if bool(args.run_dir) == bool(args.sweep_dir):
            raise ConfigError("give run_dir=<run folder> or sweep_dir=<sweep folder> (one of them)")
        if (args.monitor or args.storage) and not args.sweep_dir:
            raise ConfigError("monitor= and storage= are for a sweep: use them with sweep_dir=")
        if args.run_dir:
            print(report_run(Path(args.run_dir), list(args.trust)))
        else:
            path = report_sweep(Path(args.sweep_dir), args.monitor, args.storage)
            print(f"summary: {path}, {path.with_suffix('.md')}")
    except (MedtrainError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
