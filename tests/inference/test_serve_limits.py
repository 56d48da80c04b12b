"""`medtrain serve` under hostile and heavy traffic, spoken to over real sockets: bounded work per
request (pixels derived from the run, objects, memory of a batch, decoding outside the model lock),
requests in flight, timeouts and connection limits, malformed framing, readiness and draining, and
the model's hash on every answer. Each refusal is checked for its status, the time it took and the
server's peak resident memory while it was answered."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from medtrain.inference.guard import Timeouts
from medtrain.inference.predictor import Predictor
from medtrain.inference.serve import FLOOR_PIXELS, ServeLimits, create_app, pixel_limit
from tests import hostile_files as hostile
from tests.conftest import ROOT
from tests.hostile_files import big_png
from tests.inference.test_serve import (
    decode_mask,
    encode,
    fetch,
    form,
    grey,
    png_declaring,
    post,
    start,
    stop,
)

FAST = Timeouts(header=1.0, body=1.0, idle=1.0, max_connections=8)


# -- measuring ------------------------------------------------------------------------------------
def peak_rss_mib() -> float:
    with open("/proc/self/status") as handle:
        text = handle.read()
    return int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) / 1024


@contextmanager
def bounded(mib: float = 100, seconds: float = 5):
    """Assert that the block raises this process's peak resident memory (the server runs in a
    thread of it) by less than `mib` and takes less than `seconds`."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current resident size
    except OSError:
        pytest.skip("needs /proc/self/clear_refs (Linux) to measure peak memory")
    before, began = peak_rss_mib(), time.perf_counter()
    yield
    took, grew = time.perf_counter() - began, peak_rss_mib() - before
    assert grew < mib, f"peak resident memory grew by {grew:.0f} MiB"
    assert took < seconds, f"took {took:.1f} s"


# -- servers -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def predictors(finished_runs) -> dict[str, Predictor]:
    return {task: Predictor(finished_runs[task]) for task in ("classification", "segmentation")}


@pytest.fixture(scope="module")
def classifier(predictors):
    running = start(create_app(predictors["classification"], limits=ServeLimits(timeouts=FAST)))
    yield running
    stop(running)


@pytest.fixture(scope="module")
def segmenter(predictors):
    limits = ServeLimits(max_objects=50, max_request_mb=4)
    running = start(create_app(predictors["segmentation"], limits=limits))
    yield running
    stop(running)


@contextmanager
def slow_decoding(predictor, name: str, seconds: float):
    """Decoding the upload named `name` takes `seconds` longer (others as usual)."""
    original = predictor.decode

    def decode(data, upload, *args, **kwargs):
        if upload == name:
            time.sleep(seconds)
        return original(data, upload, *args, **kwargs)

    predictor.decode = decode
    try:
        yield
    finally:
        del predictor.decode


def in_background(fn, *args) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    thread.start()
    return thread, out


# -- 2-4, 7. hostile files, read and refused from their headers ---------------------------------
HOSTILE = [
    (
        "deflated DICOM bomb before Rows",
        "a.dcm",
        lambda: hostile.deflated_dicom_bomb("private"),
        413,
    ),
    (
        "deflated DICOM bomb in the pixels",
        "b.dcm",
        lambda: hostile.deflated_dicom_bomb("pixels"),
        413,
    ),
    ("NPZ bomb", "c.npz", hostile.npz_bomb, 413),
    ("NPY declaring 10^12 values", "d.npy", hostile.npy_huge_header, 413),
    ("GIF named .png", "e.png", hostile.gif_named_png, 415),
    ("BMP named .jpg", "f.jpg", hostile.bmp_named_jpg, 415),
    ("EPS named .png", "g.png", hostile.eps_named_png, 415),
    ("float TIFF of NaN", "h.tif", hostile.nan_tiff, 422),
    ("DICOM RescaleSlope NaN", "i.dcm", lambda: hostile.dicom_rescale_slope("NaN"), 422),
    ("DICOM RescaleSlope 1e308", "j.dcm", lambda: hostile.dicom_rescale_slope(1e308), 422),
    ("NPY of 3e38 (overflows in normalization)", "k.npy", lambda: hostile.npy_of(3e38), 422),
    ("DICOM PixelSpacing 1e308", "l.dcm", lambda: hostile.dicom_with_spacing(1e308), 422),
    ("PNG with DICM at byte 128", "m.png", hostile.png_with_dicm_at_128, 200),
    ("TIFF of 3 pages", "n.tif", lambda: multi_page_tiff(3), 422),
]


def multi_page_tiff(pages: int) -> bytes:
    """A TIFF holding `pages` small grey pages (a stack): reading one would be a guess."""
    buffer = io.BytesIO()
    frames = [Image.fromarray(grey(k, (16, 16))) for k in range(pages)]
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


@pytest.mark.parametrize(("what", "name", "make", "expected"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_file_is_answered_from_its_header(classifier, what, name, make, expected):
    data = make()
    with bounded(mib=100, seconds=3):
        status, answer = post(classifier.port, "/predict", ("file", name, data))
    assert status == expected, answer
    if expected != 200:
        assert name in answer["detail"]


def test_an_absurd_spacing_in_the_query_is_refused(segmenter):
    for spacing in ("1e308", "nan", "0"):
        query = f"/predict?spacing={spacing}"
        status, answer = post(segmenter.port, query, ("file", "a.png", encode(grey(1), "PNG")))
        assert status == 422 and "spacing" in answer["detail"]


# -- 5. bounded work per request ------------------------------------------------------------------
def test_the_pixel_limit_comes_from_the_run(predictors):
    classifier, segmenter = predictors["classification"], predictors["segmentation"]
    size = classifier.preprocess.image_size
    side = size if isinstance(size, int) else size[0]
    assert pixel_limit(classifier) == max(FLOOR_PIXELS, 64 * side * side)
    assert pixel_limit(segmenter) == FLOOR_PIXELS  # predicts at the image's own size


def test_a_large_image_is_refused_from_its_header(classifier):
    with bounded(mib=100, seconds=3):
        status, error = post(classifier.port, "/predict", ("file", "big.png", big_png(8000)))
    assert status == 413 and "big.png" in error["detail"]
    status, error = post(classifier.port, "/predict", ("file", "d.png", png_declaring(2049, 2048)))
    assert status == 413
    status, info = 200, json.loads(fetch(classifier.port, "GET", "/info")[2])
    assert info["limits"]["max_pixels"] == FLOOR_PIXELS
    with bounded(mib=200, seconds=10):  # the largest legal image is answered
        status, result = post(classifier.port, "/predict", ("file", "ok.png", big_png(2048)))
    assert status == 200 and result["label"] in ("normal", "lesion")


def test_many_objects_give_totals_only_in_a_bounded_answer(segmenter, predictors):
    noise = encode(grey(3, (300, 300)), "PNG")
    expected = predictors["segmentation"].predict(
        [predictors["segmentation"].decode(noise, "n.png")], ["n.png"]
    )[0]
    found = sum(t["count"] for t in expected["totals"])
    assert found > 50, "the test needs an image with more objects than max_objects=50"
    with bounded(mib=100, seconds=5):
        status, headers, body = fetch(
            segmenter.port, "POST", "/predict", *form(("file", "n.png", noise))
        )
    result = json.loads(body)
    assert status == 200 and len(body) < 200_000
    assert result["measurements"] == [] and result["measurements_left_out"] == found
    # The totals from counting equal those from measuring every object.
    for got, want in zip(result["totals"], expected["totals"], strict=True):
        assert got["count"] == want["count"] and got["total_area_px"] == want["total_area_px"]
        assert got["total_area_mm2"] == pytest.approx(want["total_area_mm2"], rel=1e-12)


def test_a_batch_over_its_memory_budget_is_refused(segmenter):
    files = [("files", f"{k}.png", encode(grey(k, (600, 600)), "PNG")) for k in range(2)]
    status, error = post(segmenter.port, "/predict/batch", *files)
    assert status == 413 and "max_request_mb" in error["detail"]
    assert post(segmenter.port, "/predict/batch", files[0])[0] == 200


def test_decoding_happens_outside_the_model_lock(classifier, predictors):
    small = encode(grey(1), "PNG")
    with slow_decoding(predictors["classification"], "slow.png", 2.0):
        thread, out = in_background(post, classifier.port, "/predict", ("file", "slow.png", small))
        time.sleep(0.2)
        began = time.perf_counter()
        for k in range(5):
            assert post(classifier.port, "/predict", ("file", f"{k}.png", small))[0] == 200
        assert time.perf_counter() - began < 1.5  # not queued behind the slow upload
        thread.join(10)
    assert out[0][0] == 200


def test_a_large_tiled_image_lets_other_requests_through_between_its_windows(segmenter, predictors):
    """A 2048 x 2048 PNG held the model lock for its whole sliding-window inference (20 s), and
    a 32-pixel request queued behind it waited as long; now it waits for one batch of windows.
    The large image's answer is still `Predictor.predict`'s."""
    predictor = predictors["segmentation"]
    assert predictor.task.window == 48  # the run's patch size: 400 windows of the large image
    big = encode(grey(3, (480, 480)), "PNG")
    # 64 x 64: 4 windows, one model call, batched as any image (not queued behind the tiling)
    small = encode(grey(4, (64, 64)), "PNG")
    slowed = predictor.model.register_forward_pre_hook(lambda module, inputs: time.sleep(0.05))
    try:
        started = time.perf_counter()
        thread, out = in_background(post, segmenter.port, "/predict", ("file", "big.png", big))
        time.sleep(0.5)  # its windows are going through the model
        began = time.perf_counter()
        status, _ = post(segmenter.port, "/predict", ("file", "small.png", small))
        waited = time.perf_counter() - began
        assert status == 200 and thread.is_alive()  # answered while the large one still runs
        thread.join(60)
        took = time.perf_counter() - started
        # Behind the whole image it would have waited about all of the large one's time.
        assert waited < took / 3, f"the small request waited {waited:.1f} s of {took:.1f} s"
    finally:
        slowed.remove()
    status, result = out[0]
    expected = predictor.predict([predictor.decode(big, "big.png")], ["big.png"])[0]
    assert status == 200 and result["mask_shape"] == [480, 480]
    np.testing.assert_array_equal(decode_mask(result), expected["mask"])


def test_over_max_concurrent_is_503_and_not_ready(predictors):
    limits = ServeLimits(max_concurrent=1, timeouts=FAST)
    running = start(create_app(predictors["classification"], limits=limits))
    small = encode(grey(1), "PNG")
    try:
        assert fetch(running.port, "GET", "/ready")[0] == 200
        with slow_decoding(predictors["classification"], "slow.png", 1.5):
            thread, out = in_background(post, running.port, "/predict", ("file", "slow.png", small))
            time.sleep(0.3)
            status, headers, body = fetch(
                running.port, "POST", "/predict", *form(("file", "b.png", small))
            )
            assert status == 503 and headers["retry-after"] == "1"
            assert "max_concurrent" in json.loads(body)["detail"]
            status, _, body = fetch(running.port, "GET", "/ready")
            assert status == 503 and json.loads(body)["status"].startswith("saturated")
            assert fetch(running.port, "GET", "/health")[0] == 200  # alive all the same
            thread.join(10)
        assert out[0][0] == 200 and fetch(running.port, "GET", "/ready")[0] == 200
    finally:
        stop(running)


def test_uploads_still_arriving_do_not_make_the_service_busy(predictors):
    """Requests count as in flight once their whole body is in: 32 slow uploaders (450 bytes
    each, then a pause) made the service refuse every prediction and /ready say 503 for the
    body timeout."""
    limits = ServeLimits(max_concurrent=1, timeouts=Timeouts(body=5.0, max_connections=8))
    running = start(create_app(predictors["classification"], limits=limits))
    small = encode(grey(1), "PNG")
    body, headers = form(("file", "a.png", small))
    head = (
        "POST /predict HTTP/1.1\r\nhost: x\r\n"
        f"content-type: {headers['Content-Type']}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    stalled = []
    try:
        for _ in range(3):  # more than max_concurrent, each with part of its body sent
            sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
            sock.sendall(head + body[:100])
            stalled.append(sock)
        time.sleep(0.3)
        assert fetch(running.port, "GET", "/ready")[0] == 200
        assert post(running.port, "/predict", ("file", "b.png", small))[0] == 200
        stalled[0].sendall(body[100:])  # its body whole: answered as any other
        answer = stalled[0].recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    finally:
        for sock in stalled:
            sock.close()
        stop(running)


# -- 6. timeouts, connections, framing ------------------------------------------------------------
def raw_exchange(port: int, chunks: list[bytes], pause: float = 0.0, wait: float = 5.0) -> bytes:
    """Send `chunks` with `pause` seconds between them, then read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                if select.select([sock], [], [], pause)[0]:
                    break  # the server answered (or closed): read it
        except OSError:  # closed by the server while we were still sending
            pass
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except (TimeoutError, ConnectionResetError):
            pass
        return answer


def test_slow_headers_and_bodies_time_out(classifier):
    began = time.perf_counter()
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
    answer = raw_exchange(classifier.port, [head[k : k + 1] for k in range(len(head))], 0.2)
    assert answer.startswith(b"HTTP/1.1 408") and time.perf_counter() - began < 4
    began = time.perf_counter()
    declared = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\nContent-Type: multipart/form-data; boundary=b\r\n\r\n"
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    answer = raw_exchange(classifier.port, [declared, part + b"x" * 2048])
    assert answer.startswith(b"HTTP/1.1 408") and time.perf_counter() - began < 4


def test_idle_connections_are_closed_and_their_number_is_limited(classifier):
    sockets = [
        socket.create_connection(("127.0.0.1", classifier.port))
        for _ in range(FAST.max_connections)
    ]
    try:
        extra = raw_exchange(classifier.port, [])
        assert extra.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in extra.lower()
        assert b"x-model-sha256: " in extra  # answers below the application name the model too
        began = time.perf_counter()
        for sock in sockets:
            sock.settimeout(5)
            assert sock.recv(10) == b""  # closed by the server, silently: it sent nothing
        assert time.perf_counter() - began < 3
    finally:
        for sock in sockets:
            sock.close()
    assert fetch(classifier.port, "GET", "/health")[0] == 200


def test_malformed_framing_and_repeated_fields_are_refused(classifier, predictors):
    port, small = classifier.port, encode(grey(1), "PNG")
    body, headers = form(("file", "a.png", small))
    both = {**headers, "Content-Length": str(len(body)), "Transfer-Encoding": "chunked"}
    status, _, payload = fetch(port, "POST", "/predict", body, both)
    assert status == 400
    huge = {f"X-Filler-{k}": "y" * 1000 for k in range(20)}
    assert fetch(port, "GET", "/health", headers=huge)[0] == 431
    status, error = post(port, "/predict", ("file", "a.png", small), ("file", "b.png", small))
    assert status == 422 and "/predict/batch" in error["detail"]


def test_a_long_request_line_and_headers_in_pieces_are_refused_as_json(classifier):
    status, _, body = fetch(classifier.port, "GET", "/health?" + "a" * 20_000)
    assert status == 431 and "KiB" in json.loads(body)["detail"]
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-Filler-%d: %s\r\n" % (k, b"y" * 1000) for k in range(20)
    )
    answer = raw_exchange(
        classifier.port, [head[k : k + 4096] for k in range(0, len(head), 4096)], 0.05
    )
    assert answer.startswith(b"HTTP/1.1 400") and b"application/json" in answer


def test_a_pipelined_request_keeps_its_body_deadline(predictors):
    """A request queued behind another on one connection has arrived whole: its body may take
    `body` seconds, not `header`."""
    limits = ServeLimits(timeouts=Timeouts(header=0.5, body=5.0, idle=5.0))
    running = start(create_app(predictors["classification"], limits=limits))
    try:
        body, headers = form(("file", "a.png", encode(grey(1), "PNG")))
        post_head = (
            f"POST /predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Type: {headers['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        pipelined = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + post_head + body[:10]
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            sock.sendall(pipelined)
            time.sleep(1.0)  # longer than the header timeout, well within the body's
            sock.sendall(body[10:])
            answer = b""
            while data := sock.recv(65536):
                answer += data
        assert answer.count(b"HTTP/1.1 200") == 2, answer[:300]
    finally:
        stop(running)


def test_repeated_api_key_headers_are_refused(predictors):
    running = start(create_app(predictors["classification"], api_key="k1"))
    try:
        head = b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: wrong\r\nX-API-Key: k1\r\n\r\n"
        assert raw_exchange(running.port, [head], wait=2).startswith(b"HTTP/1.1 400")
        assert fetch(running.port, "GET", "/info", headers={"X-API-Key": "k1"})[0] == 200
    finally:
        stop(running)


# -- 7. identity -----------------------------------------------------------------------------------
def test_every_answer_names_the_model(classifier, predictors):
    sha = predictors["classification"].weights_sha256
    for method, path, body, headers in (
        ("GET", "/health", None, {}),
        ("GET", "/nowhere", None, {}),
        ("POST", "/predict", *form(("file", "a.png", encode(grey(1), "PNG")))),
        ("POST", "/predict", *form(("file", "a.png", b"not an image"))),
    ):
        status, got, payload = fetch(classifier.port, method, path, body, headers)
        assert got["x-model-sha256"] == sha, (path, status)
    status, result = post(classifier.port, "/predict", ("file", "a.png", encode(grey(1), "PNG")))
    assert result["weights_sha256"] == sha


# -- shutting down ---------------------------------------------------------------------------------
def wait_until_up(port: int, process: subprocess.Popen) -> None:
    deadline = time.time() + 60
    while True:
        assert process.poll() is None and time.time() < deadline, "the server did not start"
        try:
            if fetch(port, "GET", "/health")[0] == 200:
                return
        except OSError:
            time.sleep(0.1)


def test_cli_key_from_the_environment_and_sigterm_drains_then_stops(finished_runs):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "medtrain",
        "serve",
        f"run_dir={finished_runs['classification']}",
    ]
    settings = [f"port={port}", "drain_s=1", "shutdown_s=1", "body_timeout_s=30"]
    process = subprocess.Popen(
        [*command, *settings],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MEDTRAIN_API_KEY": "from-env"},
    )
    try:
        wait_until_up(port, process)
        data = encode(grey(8), "PNG")  # the key comes from the environment
        assert post(port, "/predict", ("file", "a.png", data))[0] == 401
        key = {"X-API-Key": "from-env"}
        assert post(port, "/predict", ("file", "a.png", data), headers=key)[0] == 200
        half = socket.create_connection(("127.0.0.1", port))  # a body that never ends
        half.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc")
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        status, _, body = fetch(port, "GET", "/ready")  # still serving, but not ready
        assert status == 503 and json.loads(body)["status"].startswith("draining")
        assert fetch(port, "GET", "/health")[0] == 200
        began = time.perf_counter()
        process.wait(timeout=10)
        assert time.perf_counter() - began < 4  # drain 1 s + shutdown deadline 1 s
        half.close()
    finally:
        if process.poll() is None:
            process.kill()


def test_a_request_cancelled_at_the_shutdown_deadline_is_answered_503_as_json(predictors, caplog):
    """uvicorn cancels the requests still running `shutdown_s` after SIGTERM: one whose upload
    had stalled was answered a plain-text 500 and logged with a traceback."""
    limits = ServeLimits(shutdown_s=1, timeouts=Timeouts(body=30))
    running = start(create_app(predictors["classification"], limits=limits), log_level="warning")
    body, headers = form(("file", "a.png", encode(grey(1), "PNG")))
    head = (
        "POST /predict HTTP/1.1\r\nhost: x\r\n"
        f"content-type: {headers['Content-Type']}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    server_log = logging.getLogger("uvicorn.error")  # uvicorn's own: it does not propagate
    server_log.addHandler(caplog.handler)
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            sock.sendall(head + body[:100])  # a body that stalls
            time.sleep(0.3)
            began = time.perf_counter()
            running.server.handle_exit(signal.SIGTERM, None)
            answer = b""
            while data := sock.recv(65536):
                answer += data
        took = time.perf_counter() - began
        running.thread.join(10)
    finally:
        server_log.removeHandler(caplog.handler)
        stop(running)
    lines, _, payload = answer.partition(b"\r\n\r\n")
    lines = lines.decode().lower().split("\r\n")
    assert lines[0] == "http/1.1 503 service unavailable" and took < 4
    sha = predictors["classification"].weights_sha256
    for header in ("content-type: application/json", "retry-after: 1", f"x-model-sha256: {sha}"):
        assert header in lines
    assert json.loads(payload) == {"detail": "the server is shutting down: retry"}
    messages = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records]
    assert [m for m in messages if "cancelled at the shutdown deadline" in m[1]] == [
        (
            "WARNING",
            "POST /predict: cancelled at the shutdown deadline (shutdown_s); answered 503",
            None,
        )
    ]
    assert not [m for m in messages if m[2] or "Exception in ASGI" in m[1]]  # no traceback
