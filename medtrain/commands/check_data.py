"""`medtrain check-data [check.KEY=VALUE ...] [overrides]`: read every sample of every split as
training would and report problems (exit 0 fine, 1 data errors, 2 config errors)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from medtrain.commands.args import parse_key_values
from medtrain.errors import ConfigError
from medtrain.io import save_json
from medtrain.values import true_or_false, whole_number

# What makes a folder a run's (its data_report.json is the run's own, read by predict and serve).
RUN_FILES = ("metrics.json", "checkpoints", ".hydra")

DEFAULTS: dict[str, Any] = {"output": None, "workers": None, "duplicates": "warn", "progress": True}


USAGE = """\
usage: medtrain check-data [check.KEY=VALUE ...] [override ...]

Reads every sample of the train, val and test splits exactly as `medtrain train <overrides>`
would build them, and writes data_report.json. Exit status: 0 no errors (warnings allowed),
1 data errors (one line each, naming the file or manifest row), 2 config errors.

  override              any `medtrain train` override (dataset=manifest dataset.path=x.csv,
                        experiment=pneumoniamnist ...)
  check.output=DIR      where data_report.json goes (default outputs/check_data/<date>/<time>)
  check.workers=N       reading threads (default min(8, CPU count))
  check.duplicates=warn images shared between splits: warn | error
  check.progress=true   progress bar
"""


def exit_status(report: dict[str, Any]) -> int:
    """2 for config errors, 1 for data errors, 0 otherwise (warnings included)."""
    return 2 if report["config_errors"] else 1 if report["errors"] else 0


def parse_options(argv: Sequence[str]) -> DictConfig:
    """The `check.KEY=VALUE` arguments (without the prefix) over `DEFAULTS`."""
    options = parse_key_values(argv, DEFAULTS, text_keys=("output", "duplicates"))
    if options.workers is not None:
        whole_number(options.workers, "check.workers", 1)
    if options.duplicates not in ("warn", "error"):
        raise ConfigError(f"check.duplicates={options.duplicates!r}: choose warn or error")
    true_or_false(options.progress, "check.progress")
    return options


def print_report(report: dict[str, Any], path: Path) -> None:
    """One line per problem (at most `PRINTED` of each kind), then a summary line."""
    from medtrain.engine.data_check import capped

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
    from medtrain.engine.config import compose_config
    from medtrain.engine.data_check import REPORT, check_config

    own = [a.removeprefix("check.") for a in argv if a.startswith("check.")]
    overrides = [a for a in argv if not a.startswith("check.")]
    try:
        flags = [a for a in overrides if a.startswith("-")]
        if flags:
            raise ConfigError(
                f"{flags[0]}: check-data takes key=value arguments (your config folder: "
                "'hydra.searchpath=[file://FOLDER]')"
            )
        options = parse_options(own)
        cfg = compose_config(overrides)
    except ConfigError as err:
        print(
            f"error: {err}\n(medtrain check-data --help lists its own keys; medtrain train "
            "--help the config's)",
            file=sys.stderr,
        )
        return 2
    output = options.output or datetime.now().strftime("outputs/check_data/%Y-%m-%d/%H-%M-%S")
    held = [n for n in RUN_FILES if (Path(output) / n).exists()]
    if held:  # predict, serve and export read a run's data_report.json for its pixel scale
        print(
            f"error: check.output={output} holds a run ({', '.join(held)}), whose "
            f"{REPORT} the check would replace: give check.output= another folder",
            file=sys.stderr,
        )
        return 2
    report = check_config(cfg, options.workers, options.duplicates, options.progress)
    try:
        path = save_json(Path(output) / REPORT, report)
    except OSError as err:
        print(f"error: cannot write {Path(output) / REPORT} ({err})", file=sys.stderr)
        return 2
    print_report(report, path)
    return exit_status(report)
