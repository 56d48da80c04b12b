"""`medtrain compare run_dirs=[<run>,<run>,...]`: finished runs side by side, printed and written as
comparison.csv and comparison.md."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtrain.commands.args import parse_key_values, tool_args
from medtrain.errors import ConfigError, MedtrainError

DEFAULTS: dict[str, Any] = {"run_dirs": None, "output": "."}


USAGE = """\
usage: medtrain compare run_dirs=[RUN,RUN,...] [output=FOLDER]

  run_dirs=[A,B,...]   finished runs (folders with metrics.json)
  output=FOLDER        where comparison.csv and comparison.md go (default: the current folder);
                       files of those names there must be an earlier comparison's
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 with one `error:` line on bad input)."""
    argv, status = tool_args(argv, USAGE)
    if status is not None:
        return status
    from medtrain.experiments.compare import compared, markdown

    try:
        cfg = parse_key_values(argv, DEFAULTS, text_keys=("output",), list_keys=("run_dirs",))
        if not cfg.run_dirs:
            raise ConfigError("run_dirs is required: run_dirs=[<run>,<run>,...]")
        rows, cautions = compared(list(cfg.run_dirs), cfg.output)
    except MedtrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    names = [k for k in rows[0] if k != "key"] if rows else []
    print(markdown(rows, names), end="")
    for line in cautions:
        print(f"warning: {line}", file=sys.stderr)
    print(f"wrote {Path(cfg.output) / 'comparison.csv'} and comparison.md")
    return 0
