"""`python -m medtrain.report run_dir=<run>`: (re)write a finished run's `report.html`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtrain.analysis.report import write_report
from medtrain.cli import parse_key_values, tool_args
from medtrain.errors import ConfigError, MedtrainError

DEFAULTS: dict[str, Any] = {"run_dir": None}
USAGE = """\
usage: python -m medtrain.report run_dir=<run folder>

  run_dir=PATH    a finished run (a folder with metrics.json); writes PATH/report.html
                  (Grad-CAM reads the run's data: run it from the folder the run was trained in)
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 with one `error:` line on bad input)."""
    argv, status = tool_args(argv, USAGE)
    if status is not None:
        return status
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        args = parse_key_values(argv, DEFAULTS, text_keys=("run_dir",))
        if not args.run_dir:
            raise ConfigError("run_dir=<run folder> is required")
        run_dir = Path(args.run_dir)
        if not run_dir.is_dir():
            raise ConfigError(f"run_dir: {run_dir} is not a folder")
        if not (run_dir / "metrics.json").is_file():
            raise ConfigError(f"run_dir: {run_dir} has no metrics.json (is it a finished run?)")
        path = write_report(run_dir)
    except (MedtrainError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
