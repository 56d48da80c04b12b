"""`medtrain serve` under load with hostile requests and a large legal upload mixed in.

Usage: python benchmarks/serve_under_load.py [--run-dir RUN] [--requests 2000] [--concurrency 16]
       [--output serve_under_load.json]
Without --run-dir it trains the default experiment once into --out (as serve_latency.py does). The
server runs as its own process (`medtrain serve`, default limits); valid clients are threads of this
process sending 16 different 32x32 PNGs over keep-alive connections. Three phases of the same valid
load: alone; with one more client sending hostile requests back to back (bombs, forbidden formats,
NaN pixels, slow headers and bodies, malformed framing, duplicate fields); with one more client
sending a legal large upload (a 2048x2048 noise PNG, the largest image the default run accepts)
back to back.
Targets: zero errors on valid requests, their answers identical to those without load, every
hostile request refused with its expected status, and valid p99 with the large upload in flight at
most twice the p99 without it.
"""

from __future__ import annotations

import functools
import http.client
import io
import json
import os
import re
import select
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
from common import ROOT, machine
from PIL import Image
from serve_latency import (
    BOUNDARY,
    default_run,
    free_port,
    load_arguments,
    multipart,
    percentiles,
    run_clients,
    shares,
    start_server,
    write_results,
)

sys.path.insert(0, str(ROOT))
from tests import hostile_files  # noqa: E402  (the payloads the tests send)

HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def images(count: int, side: int = 32) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [png(rng.integers(0, 256, (side, side), dtype=np.uint8)) for _ in range(count)]


def ask(connection: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    connection.request("POST", "/predict", body, HEADERS)
    response = connection.getresponse()
    return response.status, response.read()


def answers_alone(port: int, bodies: list[bytes]) -> list[bytes]:
    """Each image's answer with nothing else going on (the reference)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    return [json.loads(ask(connection, body)[1]) for body in bodies]


def valid_client(port, body, expected, count, latencies, errors) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(count):
        start = time.perf_counter()
        try:
            status, payload = ask(connection, body)
        except (OSError, http.client.HTTPException) as err:
            errors.append(repr(err))
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            continue
        latencies.append(time.perf_counter() - start)
        if status != 200 or not same_answer(json.loads(payload), expected):
            errors.append(f"{status}: {payload[:200]!r}")


def same_answer(got: dict, expected: dict) -> bool:
    """The same label, and probabilities within 1e-6: requests predicted in one batch differ from
    single ones in float rounding (about 1e-7), so bytes can differ."""
    if got.keys() != expected.keys() or got["label"] != expected["label"]:
        return False
    return all(
        abs(got["probabilities"][k] - p) <= 1e-6 for k, p in expected["probabilities"].items()
    )


def hostile_requests() -> list[tuple[str, bytes, int]]:
    """(name, raw HTTP request, expected status) for the hostile client."""

    def upload(name: str, data: bytes) -> bytes:
        body = multipart(data, name)
        head = (
            f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {HEADERS['Content-Type']}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    uploads = [
        ("deflated DICOM bomb", "bomb.dcm", hostile_files.deflated_dicom_bomb(), 413),
        ("NPZ bomb", "bomb.npz", hostile_files.npz_bomb(), 413),
        ("NPY header of 10^12 elements", "huge.npy", hostile_files.npy_huge_header(), 413),
        ("GIF named .png", "x.png", hostile_files.gif_named_png(), 415),
        ("EPS named .png", "x.png", hostile_files.eps_named_png(), 415),
        ("NaN TIFF", "nan.tif", hostile_files.nan_tiff(), 422),
        ("NPY of 3e38", "big.npy", hostile_files.npy_of(3e38), 422),
        ("8000x8000 PNG", "big.png", hostile_files.big_png(8000), 413),
    ]
    out = [(name, upload(file, data), status) for name, file, data, status in uploads]
    body = multipart(b"x", "a.png")
    both = (
        "POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: {HEADERS['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    out.append(("Content-Length and chunked", both, 400))
    filler = "".join(f"X-Filler-{k}: {'y' * 1000}\r\n" for k in range(20))
    out.append(
        ("20 KB of headers", f"GET /health HTTP/1.1\r\nHost: x\r\n{filler}\r\n".encode(), 431)
    )
    return out


def status_of(answer: bytes) -> int:
    match = re.match(rb"HTTP/1.1 (\d{3})", answer)
    return int(match.group(1)) if match else 0


def exchange(port: int, request: bytes, trickle: float = 0.0) -> bytes:
    """Send `request` (one byte every `trickle` s when given) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        try:
            if trickle:
                for k in range(len(request)):
                    sock.sendall(request[k : k + 1])
                    if select.select([sock], [], [], trickle)[0]:
                        break  # the server answered (or closed): stop sending, read it
            else:
                sock.sendall(request)
        except OSError:
            pass
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
                if b"\r\n\r\n" in answer and status_of(answer):
                    head, _, rest = answer.partition(b"\r\n\r\n")
                    length = re.search(rb"content-length: (\d+)", head.lower())
                    if length and len(rest) >= int(length.group(1)):
                        break
        except OSError:
            pass
        return answer


def hostile_client(port: int, stop: threading.Event, outcomes: list) -> None:
    """Hostile requests back to back until `stop`, each checked against its expected status,
    beside one request sending its headers a byte every 0.5 s and one whose body stalls."""
    requests = hostile_requests()
    slow = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
    stalled = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {HEADERS['Content-Type']}\r\n"
        "Content-Length: 5000000\r\n\r\n"
    ).encode() + multipart(b"x" * 2048, "a.png")[:-40]
    slow_ones = [
        threading.Thread(
            target=lambda: outcomes.append(
                ("slow headers", 408, status_of(exchange(port, slow, trickle=0.5)))
            )
        ),
        threading.Thread(
            target=lambda: outcomes.append(
                ("stalled body", 408, status_of(exchange(port, stalled, trickle=0.0)))
            )
        ),
    ]
    for thread in slow_ones:  # they take the server's header and body timeouts (10 s, 60 s)
        thread.start()
    while not stop.is_set():
        for name, request, expected in requests:
            got = status_of(exchange(port, request))
            outcomes.append((name, expected, got))
    for thread in slow_ones:
        thread.join()


def large_client(port: int, body: bytes, stop: threading.Event, latencies: list, errors: list):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    while not stop.is_set():
        start = time.perf_counter()
        status, payload = ask(connection, body)
        latencies.append(time.perf_counter() - start)
        if status != 200:
            errors.append(f"{status}: {payload[:200]!r}")


def peak_rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) / 1024


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def phase(port, pid, bodies, expected, requests, concurrency, extra=None) -> dict:
    """The valid load, with `extra(stop)` running beside it when given."""
    reset_peak(pid)
    latencies: list[float] = []
    errors: list[str] = []
    threads = [
        threading.Thread(
            target=valid_client,
            args=(port, bodies[k % len(bodies)], expected[k % len(bodies)], n, latencies, errors),
        )
        for k, n in enumerate(shares(requests, concurrency))
    ]
    stop = threading.Event()
    side = threading.Thread(target=extra, args=(stop,)) if extra else None
    if side:
        side.start()
        time.sleep(0.5)
    result = run_clients(threads, latencies, errors, requests)
    stop.set()
    if side:
        side.join()
    return result | {"server_peak_rss_mib": round(peak_rss_mib(pid), 1)}


def main() -> None:
    args = load_arguments().parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.run_dir or default_run(args.out)
    bodies = [multipart(data, f"v{k}.png") for k, data in enumerate(images(args.concurrency))]
    large = multipart(
        png(np.random.default_rng(1).integers(0, 256, (2048, 2048), np.uint8)), "L.png"
    )

    port = free_port()
    server = start_server(run_dir, port, args.out / "server_under_load.log")
    try:
        expected = answers_alone(port, bodies)
        idle_rss = peak_rss_mib(server.pid)
        answers_alone(port, bodies * 10)  # warm-up
        load = functools.partial(
            phase, port, server.pid, bodies, expected, args.requests, args.concurrency
        )
        alone = load()
        outcomes: list = []
        hostile = load(lambda stop: hostile_client(port, stop, outcomes))
        large_latencies: list[float] = []
        large_errors: list[str] = []
        with_large = load(
            lambda stop: large_client(port, large, stop, large_latencies, large_errors)
        )
    finally:
        server.terminate()
        server.wait(timeout=30)

    wrong = [o for o in outcomes if o[1] != o[2]]
    results = {
        "machine": machine(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "run_dir": str(run_dir),
        "server_rss_before_load_mib": round(idle_rss, 1),
        "alone": alone,
        "with_hostile": hostile
        | {
            "hostile_requests": len(outcomes),
            "hostile_wrong_status": wrong[:10],
            "hostile_kinds": sorted({o[0] for o in outcomes}),
        },
        "with_large_upload": with_large
        | {
            "large_uploads": len(large_latencies),
            "large_errors": large_errors[:3],
            "large_p50_ms": percentiles(large_latencies)["p50_ms"] if large_latencies else None,
        },
        "p99_ratio_large": round(with_large["p99_ms"] / alone["p99_ms"], 2),
    }
    print(
        f"machine: {results['machine']} (load {results['load_average_1min']}); server resident "
        f"{results['server_rss_before_load_mib']} MiB before the load"
    )
    print(
        "| phase | valid requests | errors | p50 ms | p95 ms | p99 ms | requests/s | server peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, row in (
        ("alone", alone),
        ("with hostile requests", hostile),
        ("with a 2048x2048 upload in flight", with_large),
    ):
        print(
            f"| {name} | {row['requests']} | {row['errors']} | {row['p50_ms']} | {row['p95_ms']} "
            f"| {row['p99_ms']} | {row['requests_per_s']} | {row['server_peak_rss_mib']} |"
        )
    print(f"hostile requests: {len(outcomes)}, wrong status: {len(wrong)} {wrong[:5]}")
    print(
        f"large uploads answered: {len(large_latencies)} (p50 {results['with_large_upload']['large_p50_ms']} ms), "
        f"errors {len(large_errors)}; valid p99 ratio with/without: {results['p99_ratio_large']}"
    )
    write_results(args.output, results)
    failed = alone["errors"] or hostile["errors"] or with_large["errors"] or wrong or large_errors
    if failed:
        sys.exit("FAILED: errors on valid requests or a hostile request with the wrong status")


if __name__ == "__main__":
    main()
