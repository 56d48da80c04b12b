"""`medtrain serve run_dir=<run>`: a finished run behind an HTTP API (FastAPI + uvicorn)."""

from __future__ import annotations

import math
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
    "backend": "torch",
    "threads": "auto",
    "api_key": None,
    "access_log": False,
    "trust": [],
    "max_upload_mb": 20,
    "max_batch": 32,
    "max_pixels": "auto",
    "max_request_mb": 256,
    "max_objects": 1000,
    "max_concurrent": 32,
    "max_connections": 256,
    "workers": 2,
    "processes": 1,
    "header_timeout_s": 10,
    "body_timeout_s": 60,
    "idle_timeout_s": 5,
    "shutdown_s": 10,
    "drain_s": 0,
}


TEXT_KEYS = ("run_dir", "host", "device", "backend", "threads", "api_key", "max_pixels")


USAGE = """\
usage: medtrain serve run_dir=<run> [key=value ...]

  run_dir=RUN            a finished run (a folder with checkpoints/best.pt)
  host=127.0.0.1         address to listen on (0.0.0.0: every interface; set an API key then)
  port=8000              TCP port
  device=cpu             auto | cpu | cuda | cuda:N
  backend=torch          what runs the network: torch, or onnx (exported from the checkpoint at
                         start, checked against PyTorch and run by ONNX Runtime; /info says which
                         serves and the ONNX model's sha256). Answers equal torch's to float
                         rounding; onnx needs an image-only network that ONNX can express
  threads=auto           intra-op threads of the network (torch or ONNX Runtime); auto: half the
                         CPU cores (shared out among the processes), leaving the rest to reading
                         requests
  processes=1            server processes answering on the port, forked once the model is loaded
                         (Linux, CPU only; limits apply to each). One process runs its Python
                         on one core at a time: for throughput on N cores, processes=N
  api_key=SECRET         require header X-API-Key on /predict, /predict/batch and /info. Better:
                         the MEDTRAIN_API_KEY environment variable (a command line is visible to
                         every user of the machine in its process list)
  access_log=false       true: one log line per request: status, time, bytes, an error's detail
                         (no file names or form values; uvicorn's line cost about 0.07 ms)
  trust=[NAME,...]       _target_ classes (or module prefixes ending in '.') of your own that
                         the run may build besides medtrain's (also MEDTRAIN_TRUSTED_TARGETS)

limits (413 / 503 beyond them; docs/deployment.md says what memory they bound):
  max_upload_mb=20       largest request body (all files of a batch together)
  max_batch=32           most files in one POST /predict/batch
  max_pixels=auto        most pixels of one image, from its header before decoding; auto: 64x
                         the model's input, at least 2048x2048 (2048x2048 for runs that predict
                         at the image's own size)
  max_request_mb=256     memory the decoded images of one request may hold
  max_objects=1000       objects measured one by one per image (segmentation; beyond: totals)
  max_concurrent=32      prediction requests in flight (bodies in); more: 503 with Retry-After
  max_connections=256    open connections; more: 503 and closed
  workers=2              requests decoding, preprocessing or measuring at once

timeouts (seconds):
  header_timeout_s=10    for a request's headers (and a new connection's first bytes): 408
  body_timeout_s=60      for a request's whole body: 408
  idle_timeout_s=5       between requests on a kept-alive connection
  shutdown_s=10          on SIGTERM, requests in flight may finish for this long
  drain_s=0              on SIGTERM, /ready answers 503 this long before the shutdown starts

endpoints: GET / (a web page), GET /health (liveness), GET /ready (readiness), GET /info,
POST /predict (field `file`), POST /predict/batch (fields `files`); interactive docs at /docs,
the schema at /openapi.json
"""


def _positive(value: Any, key: str) -> float:
    """A positive finite number (int or float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{key}={value!r} must be a positive number")
    if not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number")
    return float(value)


def _threads(value: str, processes: int = 1) -> int:
    """The network's intra-op threads in each server process: `auto` is half the CPU cores shared
    out among the processes. The event loop parses uploads while the model runs, and on a shared
    2-core machine 2 torch threads were also slower for the small CNN than 1."""
    if value.strip().lower() == "auto":
        return max(1, (os.cpu_count() or 2) // (2 * processes))
    try:
        threads = int(value)
    except ValueError:
        raise ConfigError(f"threads={value!r} must be auto or a whole number") from None
    return whole_number(threads, "threads", 1)


def _limits(cfg):
    """The `ServeLimits` the keys ask for."""
    from medtrain.inference.guard import Timeouts
    from medtrain.inference.serve import ServeLimits

    pixels = cfg.max_pixels
    if str(pixels).strip().lower() != "auto":
        try:
            pixels = int(str(pixels).replace("_", ""))
        except ValueError:
            raise ConfigError(f"max_pixels={pixels!r} must be auto or a whole number") from None
        whole_number(pixels, "max_pixels", 1)
    timeouts = Timeouts(
        header=_positive(cfg.header_timeout_s, "header_timeout_s"),
        body=_positive(cfg.body_timeout_s, "body_timeout_s"),
        idle=_positive(cfg.idle_timeout_s, "idle_timeout_s"),
        max_connections=whole_number(cfg.max_connections, "max_connections", 1),
    )
    drain = cfg.drain_s
    if drain != 0:
        drain = _positive(drain, "drain_s")
    return ServeLimits(
        max_upload_mb=_positive(cfg.max_upload_mb, "max_upload_mb"),
        max_batch=whole_number(cfg.max_batch, "max_batch", 1),
        max_pixels=None if isinstance(pixels, str) else pixels,
        max_request_mb=_positive(cfg.max_request_mb, "max_request_mb"),
        max_objects=whole_number(cfg.max_objects, "max_objects", 0),
        max_concurrent=whole_number(cfg.max_concurrent, "max_concurrent", 1),
        workers=whole_number(cfg.workers, "workers", 1),
        timeouts=timeouts,
        shutdown_s=_positive(cfg.shutdown_s, "shutdown_s"),
        drain_s=float(drain),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 with one `error:` line on bad input)."""
    argv, status = tool_args(argv, USAGE)
    if status is not None:
        return status
    import torch

    from medtrain.inference.predictor import Predictor
    from medtrain.inference.processes import (
        Supervisor,
        check_processes,
        listening_sockets,
        parent_watch,
    )
    from medtrain.inference.serve import create_app, make_server, pixel_limit

    threads_before = torch.get_num_threads()  # restored when refused (main called in-process)
    try:
        cfg = parse_key_values(argv, DEFAULTS, text_keys=TEXT_KEYS, list_keys=("trust",))
        if not cfg.run_dir:
            raise ConfigError("run_dir=<run> is required (a finished run with checkpoints/best.pt)")
        whole_number(cfg.port, "port", 0, 65535)
        true_or_false(cfg.access_log, "access_log")
        limits = _limits(cfg)
        # Refused before loading what cannot be used (device=auto is checked once it resolved).
        processes = check_processes(cfg.processes, on_cpu=not str(cfg.device).startswith("cuda"))
        forked = processes > 1
        threads = _threads(cfg.threads, processes)
        api_key = cfg.api_key or os.environ.get("MEDTRAIN_API_KEY") or None
        # Forked processes have none of their parent's threads: the parent runs the network on
        # one (no thread pool to lose), each server process then on `threads` of its own.
        torch.set_num_threads(1 if forked else threads)
        predictor = Predictor(
            cfg.run_dir,
            device=cfg.device,
            trust=list(cfg.trust),
            backend=cfg.backend,
            threads=1 if forked else threads,
        )
        check_processes(processes, predictor.on_cpu)
        # Bound here, before "serving ... on": a port in use is an error line, not uvicorn's.
        # Forked workers share one socket (the host's first address).
        sockets = listening_sockets(cfg.host, cfg.port, every=not forked)
    except MedtrainError as err:
        torch.set_num_threads(threads_before)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while the model loads
        torch.set_num_threads(threads_before)
        print("interrupted: the server was not started", file=sys.stderr)
        return 130
    if api_key is None and cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {cfg.host} without an API key", file=sys.stderr)
    if cfg.api_key:
        print(
            "warning: api_key= on the command line is visible in the process list; "
            "prefer the MEDTRAIN_API_KEY environment variable",
            file=sys.stderr,
        )
    port = sockets[0].getsockname()[1]  # port=0: the one the system chose
    max_pixels = limits.max_pixels or pixel_limit(predictor)
    print(
        f"serving {cfg.run_dir} ({predictor.task.name}, backend {predictor.backend}, weights "
        f"sha256 {predictor.weights_sha256[:12]}, max_pixels {max_pixels}) on "
        f"http://{cfg.host}:{port} (page: /, docs: /docs)"
        + (f", {processes} processes" if forked else ""),
        flush=True,
    )
    if not forked:
        app = create_app(predictor, api_key=api_key, limits=limits)
        try:
            make_server(app, cfg.host, port, access_log=cfg.access_log).run(sockets=sockets)
        except KeyboardInterrupt:  # uvicorn shut down on Ctrl-C, then raised SIGINT again
            print("interrupted: the server stopped", file=sys.stderr)
            return 130
        return 0
    alive = parent_watch(os.getpid())

    def serve() -> None:  # in each forked process: its own threads, app and event loop
        if threads != 1:
            predictor.use_threads(threads)
        app = create_app(predictor, api_key=api_key, limits=limits)
        server = make_server(app, cfg.host, port, access_log=cfg.access_log, alive=alive)
        server.run(sockets=sockets)

    # A worker that has not stopped by its drain, shutdown deadline and a margin is killed.
    return Supervisor(serve, processes, limits.drain_s + limits.shutdown_s + 5, sockets[0]).run()
