"""`medtrain cv cv.folds=5 [cv.KEY=VALUE ...] [override ...]`: k-fold cross-validation of any
experiment, its out-of-fold metrics and its fold ensemble; the same command resumes it."""

from __future__ import annotations

import logging
import sys

USAGE = """\
usage: medtrain cv [cv.KEY=VALUE ...] [override ...]

  cv.folds=5          number of folds, drawn from the data's train and val splits together
                      (stratified by class for classification; grouped by dataset.group_column
                      when set); the test split stays held out
  cv.dir=DIR          the CV folder: folds.json, fold_<k>/ run folders, oof_predictions.csv,
                      cv_metrics.csv/.png, cv_summary.md, ensemble/ (default outputs/cv/<date>/<time>);
                      the same command with the same cv.dir continues a killed CV
  cv.seed=N           seed of the fold assignment (default: the config's seed)
  cv.jobs=1           folds trained at once, each its own process (the CPU cores shared)
  cv.ensemble=true    average the fold models on the test split as ensemble/, a run folder that
                      predicts, serves and exports like one run
  cv.trust=[NAME,...] _target_ classes (or module prefixes ending in '.') of your own that the
                      fold runs may build besides medtrain's (also MEDTRAIN_TRUSTED_TARGETS)
  override            any `medtrain train` override, applied to every fold

Example: medtrain cv cv.folds=5 cv.dir=outputs/cv/pneumonia experiment=pneumoniamnist
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    from medtrain.commands.interrupts import sigterm_as_interrupt
    from medtrain.errors import ConfigError, MedtrainError
    from medtrain.experiments.cv import FoldsFailed, parse_args, run_cv

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] - %(message)s")
    cv = None
    try:
        with sigterm_as_interrupt():  # stops the folds in flight, as Ctrl-C
            cv = parse_args(argv)
            summary = run_cv(cv)
    except ConfigError as err:
        print(f"error: {err}\n(medtrain cv --help lists the CV keys)", file=sys.stderr)
        return 2
    except FoldsFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except MedtrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f" with cv.dir={cv.dir}" if cv is not None else ""
        print(f"interrupted; the same command{where} continues the CV", file=sys.stderr)
        return 130
    print((cv.dir / "cv_summary.md").read_text())
    if summary.get("ensemble"):
        print(f"fold ensemble (a run folder): {cv.dir / 'ensemble'}")
    print(f"results in {cv.dir}")
    return 0
