"""`medtrain ensemble run_dirs=[<run>,<run>,...] output=<folder>`: finished runs evaluated together,
their outputs averaged, written as a run folder."""

from __future__ import annotations

import csv
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtrain.commands.args import parse_key_values, tool_args
from medtrain.errors import ConfigError, MedtrainError
from medtrain.io import read_json

DEFAULTS: dict[str, Any] = {
    "run_dirs": None,
    "output": None,
    "device": "auto",
    "batch_size": None,
    "trust": [],
}


USAGE = """\
usage: medtrain ensemble run_dirs=[RUN,RUN,...] [key=value ...]

  run_dirs=[A,B,C]     finished runs (folders with checkpoints/best.pt), two or more
  hydra.run.dir=OUT    where to write metrics.json, predictions.csv, members.csv (alias: output=OUT;
                       default outputs/ensemble/<date>/<time>)
  device=auto          auto | cpu | cuda | cuda:N
  batch_size=N         evaluation batch size (default: the first run's trainer.eval_batch_size)
  trust=[NAME,...]     _target_ classes (or module prefixes ending in '.') of your own that the
                       runs may build besides medtrain's (also MEDTRAIN_TRUSTED_TARGETS; a run
                       folder is code: docs/deployment.md)
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 with one `error:` line on bad input)."""
    argv, status = tool_args(argv, USAGE)
    if status is not None:
        return status
    from medtrain.inference.ensemble import run_ensemble

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = parse_key_values(
            argv,
            DEFAULTS,
            text_keys=("output", "device"),
            list_keys=("run_dirs", "trust"),
            aliases={"hydra.run.dir": "output"},
        )
        if not cfg.run_dirs:
            raise ConfigError("run_dirs is required: run_dirs=[<run>,<run>,...]")
        out = Path(cfg.output or time.strftime("outputs/ensemble/%Y-%m-%d/%H-%M-%S"))
        metrics = run_ensemble(
            list(cfg.run_dirs), out, cfg.device, cfg.batch_size, trust=list(cfg.trust)
        )
    except MedtrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary_table(out))
    print(f"results in {out}")
    return 0 if metrics else 1


def summary_table(out: Path) -> str:
    """The task's headline test metrics of each member and of the ensemble, one line each."""
    from omegaconf import OmegaConf

    from medtrain.engine.build import target_class

    task = target_class(
        OmegaConf.create({"_target_": read_json(out / "ensemble.json")["task_target"]})
    )
    with (out / "members.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    headline = [f"test/{k}" for k in getattr(task, "headline", ())]
    keys = [k for k in headline if rows and rows[0].get(k) not in (None, "")]
    widths = [max(len(k), 10) for k in keys]
    lines = [" ".join(f"{k:>{w}}" for k, w in zip(keys, widths, strict=True)) + "  run"]
    for row in rows:
        values = (f"{float(row[k]):{w}.4f}" for k, w in zip(keys, widths, strict=True))
        lines.append(" ".join(values) + f"  {row['run_dir']}")
    return "\n".join(lines)
