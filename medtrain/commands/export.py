"""`medtrain export run_dir=<run> format=onnx|torchscript`: a finished run as one model file with a
manifest.json that describes its inputs, outputs and preprocessing."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtrain.commands.args import parse_key_values, tool_args
from medtrain.errors import ConfigError, MedtrainError

DEFAULTS: dict[str, Any] = {"run_dir": None, "format": "onnx", "output": None, "trust": []}


USAGE = """\
usage: medtrain export run_dir=<finished run> [format=onnx|torchscript] [output=<folder>]
                       [trust=[NAME,...]]

  run_dir=PATH      a finished run (with checkpoints/best.pt)
  format=onnx       onnx (model.onnx, for onnxruntime) or torchscript (model.pt, for torch.jit.load)
  output=FOLDER     where model and manifest.json go (default <run_dir>/export; the other format of
                    the same run stays beside it)
  trust=[NAME,...]  _target_ classes (or module prefixes ending in '.') of your own that the run
                    may build besides medtrain's (also MEDTRAIN_TRUSTED_TARGETS; a run folder is
                    code: docs/deployment.md)

examples/run_exported.py runs the export on image files without medtrain.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 with one `error:` line on bad input)."""
    argv, status = tool_args(argv, USAGE)
    if status is not None:
        return status
    from medtrain.inference.export import export

    try:
        cfg = parse_key_values(
            argv, DEFAULTS, text_keys=("run_dir", "format", "output"), list_keys=("trust",)
        )
        if not cfg.run_dir:
            raise ConfigError("run_dir=<finished run> is required")
        output = Path(cfg.output) if cfg.output else Path(cfg.run_dir) / "export"
        manifest = export(cfg.run_dir, cfg.format, output, trust=list(cfg.trust))
    except (MedtrainError, OSError) as err:  # OSError: e.g. an output folder without permission
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {output / manifest['model_file']} and {output / 'manifest.json'}")
    return 0
