"""`medtrain rerun run_dir=<run>`: train a finished run again from its saved config and say whether
it reproduces (exit 0 REPRODUCED, 1 MISMATCH, 2 bad input)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtrain.commands.args import parse_key_values, tool_args
from medtrain.errors import ConfigError, MedtrainError

DEFAULTS: dict[str, Any] = {
    "run_dir": None,
    "output": None,
    "atol": 0.0,
    "cuda_atol": 1e-4,
    "device": None,
    "trust": [],
}


USAGE = """\
usage: medtrain rerun run_dir=RUN [key=value ...]

  run_dir=RUN          a finished run (its .hydra/config.yaml and metrics.json)
  output=OUT           where the rerun writes its run folder (alias: hydra.run.dir=OUT;
                       default RUN_rerun_<YYYYmmdd-HHMMSS> next to RUN)
  atol=0               largest metric difference that still counts as equal (0: bit-identical)
  cuda_atol=1e-4       the same when either run trained on CUDA (kernels may differ in the last bits)
  device=DEVICE        train the rerun on cpu | cuda | cuda:N (default: the run's trainer.device)
  trust=[NAME,...]     _target_ classes (or module prefixes ending in '.') of your own that the
                       run may build besides medtrain's (also MEDTRAIN_TRUSTED_TARGETS; a run
                       folder is code: docs/deployment.md); checked before the rerun starts

Exit status: 0 reproduced, 1 mismatch (metrics differ or the saved config changed, other than
progress bars, TensorBoard, the report and overlay counts), 2 error.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 reproduced, 1 mismatch, 2 error)."""
    argv, status = tool_args(argv, USAGE)
    if status is not None:
        return status
    from medtrain.commands.interrupts import sigterm_as_interrupt
    from medtrain.experiments.rerun import RerunInterrupted, is_number, rerun

    try:
        cfg = parse_key_values(
            argv,
            DEFAULTS,
            text_keys=("run_dir", "output", "device"),
            list_keys=("trust",),
            aliases={"hydra.run.dir": "output"},
        )
        if not cfg.run_dir:
            raise ConfigError("run_dir is required: run_dir=<run folder>")
        for key in ("atol", "cuda_atol"):
            value = cfg[key]
            if not is_number(value) or not value >= 0:
                raise ConfigError(f"{key}={value}: must be a number >= 0")
        with sigterm_as_interrupt():  # its training is stopped too, not left running alone
            result = rerun(
                cfg.run_dir, cfg.output, cfg.atol, cfg.cuda_atol, cfg.device, trust=list(cfg.trust)
            )
    except MedtrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RerunInterrupted as stopped:
        if stopped.finished:  # the signal came as the training ended
            said = (
                f"interrupted as the rerun's training finished: {stopped.folder} holds its run, "
                f"not compared; medtrain compare 'run_dirs=[{cfg.run_dir},{stopped.folder}]'"
            )
        else:
            said = (
                f"interrupted: the rerun's training stopped, and gave no verdict; {stopped.folder} "
                "holds what it trained: remove it (or give another output=) and run the rerun again"
            )
        print(said, file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before its training, or while the runs were compared
        print("interrupted: no verdict", file=sys.stderr)
        return 130
    for line in result["lines"]:
        print(line)
    print(f"details in {Path(result['rerun']) / 'rerun.json'}")
    print(result["line"])
    return 0 if result["verdict"] == "REPRODUCED" else 1
