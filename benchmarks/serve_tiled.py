"""How long small requests wait behind a large segmentation image in `medtrain serve`.

Usage: python benchmarks/serve_tiled.py [--run-dir RUN] [--side 2048] [--output serve_tiled.json]
Without --run-dir it trains `experiment=synthetic_segmentation` for one epoch into --out (the
network's quality does not matter here, only its windows: 48-px patches, so a 2048 x 2048 image is
predicted as about three thousand overlapping windows). The server runs as its own process (`medtrain serve`,
default limits). One client sends a `--side` x `--side` noise PNG; while it is predicted, another
sends a `--small-side` image (default 64 x 64: 4 windows, one call; 80: 9 windows, two calls)
every 0.5 s, one after another. Reported: the large request's time, and the
small ones' latencies while it was in flight (a service that holds the model for the whole large
image makes the first of them wait for nearly all of it).
"""

from __future__ import annotations

import http.client
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
from common import ROOT, machine, run_medtrain
from serve_latency import (
    free_port,
    load_arguments,
    multipart,
    percentiles,
    start_server,
    write_results,
)
from serve_under_load import HEADERS, png


def segmentation_run(out: Path) -> Path:
    run_dir = out / "segmentation_run"
    if not (run_dir / "checkpoints" / "best.pt").is_file():
        print(f"training a segmentation run into {run_dir} ...")
        run_medtrain(
            run_dir,
            "experiment=synthetic_segmentation",
            "trainer.max_epochs=1",
            "dataset.num_train=32",
            "dataset.num_val=8",
            "dataset.num_test=8",
            "trainer.report=false",
        )
    return run_dir


def post(port: int, body: bytes) -> tuple[int, float]:
    began = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", "/predict", body, HEADERS)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status, time.perf_counter() - began


def main() -> None:
    parser = load_arguments()
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--small-side", type=int, default=64)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.run_dir or segmentation_run(args.out)
    rng = np.random.default_rng(0)
    large = multipart(png(rng.integers(0, 256, (args.side, args.side), np.uint8)), "large.png")
    small_pixels = rng.integers(0, 256, (args.small_side, args.small_side), np.uint8)
    small = multipart(png(small_pixels), "small.png")
    port = free_port()
    server = start_server(run_dir, port, args.out / "serve_tiled.log")
    try:
        post(port, small)  # warm
        done: list[tuple[int, float]] = []
        worker = threading.Thread(target=lambda: done.append(post(port, large)))
        worker.start()
        time.sleep(1.0)  # the large image is decoded and its windows go through the model
        waits, statuses = [], []
        while worker.is_alive():
            status, seconds = post(port, small)
            if worker.is_alive() or not waits:  # answered while the large one was in flight
                waits.append(seconds)
                statuses.append(status)
            time.sleep(0.5)
        worker.join()
    finally:
        server.terminate()
        server.wait(30)
    results = {
        "machine": machine(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "side": args.side,
        "small_side": args.small_side,
        "large_status": done[0][0],
        "large_s": round(done[0][1], 2),
        "small_statuses": sorted(set(statuses)),
        "small_during_large": len(waits),
        "first_small_s": round(waits[0], 3),
        "small_s": percentiles(waits),
    }
    print(results)
    write_results(args.output, results)


if __name__ == "__main__":
    main()
