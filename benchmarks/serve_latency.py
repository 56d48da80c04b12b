"""Latency and throughput of `medtrain serve` against direct `Predictor.predict` calls.

Usage: python benchmarks/serve_latency.py [--run-dir RUN] [--requests 2000] [--concurrency 16]
       [--backends torch,onnx] [--processes 1,2] [--rounds 1] [--output serve_latency.json]
Without --run-dir it trains the default experiment (`python -m medtrain`: synthetic data, the small
CNN) once into --out and reuses it afterwards. The server runs as its own process on loopback, started
by the same command a user types (`medtrain serve ... backend=B`); clients are threads of this
process with keep-alive connections, so on a small machine they share its cores with the server.
--backends and --processes measure each backend with each number of server processes in turn
(direct calls, then a fresh server), --rounds times, so that settings compared on a shared machine
see the same background load. The CPU time the server's processes and the clients spent per
request is printed beside each load.
Target: p50 under 10 ms for the small CNN on 2 cores, the HTTP layer adding under 1 ms.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, machine, run_medtrain
from PIL import Image

from medtrain.inference.predictor import Predictor

BOUNDARY = "medtrain-benchmark-boundary"


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 95, 99)}


def multipart(data: bytes, name: str) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def test_image(predictor: Predictor) -> bytes:
    """A PNG of the run's input size (random pixels: latency does not depend on content)."""
    size = predictor.info()["input"]["size"] or [64, 64]
    pixels = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def time_direct(predictor: Predictor, data: bytes, calls: int) -> dict[str, float]:
    """Decode + predict in-process, as the server does for one upload, and predict alone."""
    for _ in range(50):
        predictor.predict([predictor.decode(data, "x.png")], ["x.png"])
    full, model = [], []
    decoded = predictor.decode(data, "x.png")
    for _ in range(calls):
        start = time.perf_counter()
        predictor.predict([predictor.decode(data, "x.png")], ["x.png"])
        full.append(time.perf_counter() - start)
        start = time.perf_counter()
        predictor.predict([decoded], ["x.png"])
        model.append(time.perf_counter() - start)
    return {
        **percentiles(full),
        "predict_only_p50_ms": percentiles(model)["p50_ms"],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run_dir: Path, port: int, log: Path, *keys: str) -> subprocess.Popen:
    """`medtrain serve` on `run_dir` with further `keys` (e.g. `backend=onnx`), once it answers."""
    command = [sys.executable, "-m", "medtrain", "serve", f"run_dir={run_dir}", f"port={port}"]
    command += list(keys)
    with open(log, "w") as handle:
        server = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited ({server.returncode}); see {log}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    sys.exit(f"the server did not answer /health within 120 s; see {log}")


def client(port: int, body: bytes, count: int, latencies: list, errors: list) -> None:
    """Send `count` POST /predict requests over one keep-alive connection."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(count):
        start = time.perf_counter()
        try:
            connection.request("POST", "/predict", body, headers)
            response = connection.getresponse()
            payload = response.read()
            ok = response.status == 200 and b'"label"' in payload
        except (OSError, http.client.HTTPException) as err:
            errors.append(repr(err))
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            continue
        latencies.append(time.perf_counter() - start)
        if not ok:
            errors.append(f"{response.status}: {payload[:200]!r}")


def load(
    port: int, body: bytes, requests: int, concurrency: int, server: int | None = None
) -> dict[str, float]:
    """`requests` requests from `concurrency` threads: latency percentiles, errors, requests/s,
    and (given the server's pid) the CPU milliseconds per request of the server's processes and
    of the clients."""
    latencies: list[float] = []
    errors: list[str] = []
    threads = [
        threading.Thread(target=client, args=(port, body, n, latencies, errors))
        for n in shares(requests, concurrency)
    ]
    server_cpu, client_cpu = process_tree_cpu_s(server), time.process_time()
    measured = run_clients(threads, latencies, errors, requests)
    if server is not None:
        measured["server_cpu_ms_per_request"] = round(
            (process_tree_cpu_s(server) - server_cpu) / requests * 1000, 3
        )
        measured["client_cpu_ms_per_request"] = round(
            (time.process_time() - client_cpu) / requests * 1000, 3
        )
    return {"concurrency": concurrency, **measured}


def process_tree_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by `pid` and its child processes (Linux /proc;
    0 elsewhere)."""
    if pid is None or not os.path.isdir("/proc"):
        return 0.0
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def shares(requests: int, concurrency: int) -> list[int]:
    """`requests` split as evenly as possible over `concurrency` clients."""
    return [requests // concurrency + (k < requests % concurrency) for k in range(concurrency)]


def run_clients(threads: list, latencies: list[float], errors: list[str], requests: int) -> dict:
    """Start the client `threads`, wait for them: errors, latency percentiles, requests/s."""
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {
        "requests": requests,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        **percentiles(latencies),
        "requests_per_s": round(requests / wall, 1),
    }


def default_run(out: Path) -> Path:
    run_dir = out / "default_run"
    if not (run_dir / "checkpoints" / "best.pt").is_file():
        print(f"training the default experiment into {run_dir} ...")
        run_medtrain(run_dir)
    return run_dir


def load_arguments() -> argparse.ArgumentParser:
    """The options of the serving benchmarks: the run, a scratch folder, the load, the output."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", type=Path, help="a finished classification run")
    parser.add_argument("--out", type=Path, default=Path("/tmp/medtrain-bench/serve"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--output", type=Path, default=None, help="JSON results file")
    return parser


def write_results(path: Path | None, results: dict) -> None:
    """`results` as JSON into `path` (when given)."""
    if path:
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {path}")


def measure(
    predictor: Predictor, backend: str, processes: int, run_dir: Path, data: bytes, args
) -> dict:
    """One backend and number of processes: direct calls in this process, then HTTP at
    concurrency 1 and `--concurrency` against a fresh `medtrain serve ... backend=<backend>
    processes=<processes>` (threads=1 with several processes: one core each)."""
    direct = time_direct(predictor, data, args.direct_calls)
    load_average = os.getloadavg()[0]
    port = free_port()
    log = args.out / f"server_{backend}_{processes}.log"
    keys = [f"backend={backend}", f"processes={processes}"] + (["threads=1"] * (processes > 1))
    server = start_server(run_dir, port, log, *keys)
    try:
        body = multipart(data, "bench.png")
        load(port, body, args.warmup, args.concurrency)  # every process warmed up
        sequential = load(port, body, args.direct_calls, 1, server.pid)
        concurrent = load(port, body, args.requests, args.concurrency, server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "backend": backend,
        "processes": processes,
        "load_average_1min": round(load_average, 2),  # other processes on a shared machine
        "direct": direct,
        "http_sequential": sequential,
        "http_concurrent": concurrent,
        "http_overhead_p50_ms": round(sequential["p50_ms"] - direct["p50_ms"], 3),
    }


def main() -> None:
    parser = load_arguments()
    parser.add_argument("--direct-calls", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=100, help="HTTP requests before measuring")
    parser.add_argument("--backends", default="torch", help="comma-separated: torch, onnx")
    parser.add_argument("--processes", default="1", help="comma-separated numbers of processes")
    parser.add_argument("--rounds", type=int, default=1, help="times each setting is measured")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.run_dir or default_run(args.out)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    # The server's own thread setting (medtrain serve), so both paths use the same cores.
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    predictors = {b: Predictor(run_dir, backend=b) for b in backends}
    first = predictors[backends[0]]
    data = test_image(first)
    counts = [int(n) for n in args.processes.split(",") if n.strip()]
    runs = []
    for round_ in range(args.rounds):
        for backend in backends:
            for processes in counts:
                measured = measure(predictors[backend], backend, processes, run_dir, data, args)
                runs.append({"round": round_ + 1, **measured})

    results = {
        "machine": machine(),
        "run_dir": str(run_dir),
        "model": first.cfg.model.get("_target_"),
        "image": "{}x{} PNG, {} bytes".format(*Image.open(io.BytesIO(data)).size, len(data)),
        "torch_threads": torch.get_num_threads(),
        "runs": runs,
    }
    loads = ", ".join(str(r["load_average_1min"]) for r in runs)
    print(
        f"machine: {results['machine']} (load {loads}); model {results['model']}; "
        f"image {results['image']}"
    )
    print(
        "| path | requests | concurrency | errors | p50 ms | p95 ms | p99 ms | requests/s "
        "| server CPU ms/request | client CPU ms/request |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        label = f"{run['backend']}, {run['processes']} process" + "es" * (run["processes"] > 1)
        label += f", round {run['round']}" if args.rounds > 1 else ""
        direct = run["direct"]
        print(
            f"| Predictor.predict (decode + predict; {label}) | {args.direct_calls} | 1 | 0 "
            f"| {direct['p50_ms']} | {direct['p95_ms']} | {direct['p99_ms']} | | | |"
        )
        for row in (run["http_sequential"], run["http_concurrent"]):
            print(
                f"| HTTP POST /predict ({label}) | {row['requests']} | {row['concurrency']} "
                f"| {row['errors']} | {row['p50_ms']} | {row['p95_ms']} | {row['p99_ms']} "
                f"| {row['requests_per_s']} | {row['server_cpu_ms_per_request']} "
                f"| {row['client_cpu_ms_per_request']} |"
            )
    for run in runs:
        print(
            f"{run['backend']}: HTTP overhead at concurrency 1 (p50 HTTP - p50 direct): "
            f"{run['http_overhead_p50_ms']} ms; predict alone p50 "
            f"{run['direct']['predict_only_p50_ms']} ms"
        )
    write_results(args.output, results)
    errors = [
        row["first_error"]
        for run in runs
        for row in (run["http_sequential"], run["http_concurrent"])
        if row["errors"]
    ]
    if errors:
        sys.exit(f"errors: {errors[0]}")


if __name__ == "__main__":
    main()
