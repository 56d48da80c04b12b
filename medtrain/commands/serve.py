"""`medtrain serve run_dir=<run>`: a finished run behind an HTTP API (FastAPI + uvicorn)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from medtrain.commands.args import parse_key_values, tool_args
from medtrain.errors import ConfigError, MedtrainError
from medtrain.values import true_or_false, whole_number

DEFAULTS: dict[str, Any] = {
    "run_dir": None,
    "host": "127.0.0.1",
    "port": 8000,
    "device": "cpu",
    "max_upload_mb": 20,
    "max_batch": 32,
    "api_key": None,
    "access_log": False,
}


TEXT_KEYS = ("run_dir", "host", "device", "api_key")


USAGE = """\
usage: medtrain serve run_dir=<run> [key=value ...]

  run_dir=RUN          a finished run (a folder with checkpoints/best.pt)
  host=127.0.0.1       address to listen on (0.0.0.0: every interface; set an api_key then)
  port=8000            TCP port
  device=cpu           auto | cpu | cuda | cuda:N
  max_upload_mb=20     largest request body (all files of a batch together); larger: 413
  max_batch=32         most files in one POST /predict/batch
  api_key=SECRET       require header X-API-Key on /predict and /predict/batch (default: the
                       MEDTRAIN_API_KEY environment variable; unset: no key)
  access_log=false     true: one log line per request (off: it cost about 0.07 ms a request)

endpoints: GET /health, GET /info, POST /predict (field `file`), POST /predict/batch (fields
`files`); interactive docs at /docs, the schema at /openapi.json
"""


def _settings(cfg) -> dict[str, Any]:
    if not cfg.run_dir:
        raise ConfigError("run_dir=<run> is required (a finished run with checkpoints/best.pt)")
    whole_number(cfg.port, "port", 0, 65535)
    batch, upload = whole_number(cfg.max_batch, "max_batch", 1), cfg.max_upload_mb
    if isinstance(upload, bool) or not isinstance(upload, (int, float)) or not upload > 0:
        raise ConfigError(f"max_upload_mb={upload!r} must be a positive number")
    true_or_false(cfg.access_log, "access_log")
    return {
        "max_upload_bytes": int(upload * 2**20),
        "max_batch": batch,
        "api_key": cfg.api_key or os.environ.get("MEDTRAIN_API_KEY") or None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 with one `error:` line on bad input)."""
    argv, status = tool_args(argv, USAGE)
    if status is not None:
        return status
    import torch
    import uvicorn

    from medtrain.inference.predictor import Predictor
    from medtrain.inference.serve import create_app

    try:
        cfg = parse_key_values(argv, DEFAULTS, text_keys=TEXT_KEYS)
        settings = _settings(cfg)
        predictor = Predictor(cfg.run_dir, device=cfg.device)
    except MedtrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # The event loop parses uploads while the model runs: half the cores for torch leaves it the
    # rest. On a shared 2-core machine 2 torch threads were also slower for the small CNN than 1.
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    if settings["api_key"] is None and cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {cfg.host} without an api_key", file=sys.stderr)
    print(
        f"serving {cfg.run_dir} ({predictor.task.name}, weights sha256 "
        f"{predictor.weights_sha256[:12]}) on http://{cfg.host}:{cfg.port} (docs: /docs)"
    )
    app = create_app(predictor, **settings)
    uvicorn.run(app, host=cfg.host, port=cfg.port, access_log=cfg.access_log)
    return 0
