"""`medtrain serve`: the real server (uvicorn on a loopback port) spoken to over HTTP with the standard
library: results equal to `Predictor.predict`, limits, API key, and 100+ hostile uploads."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import logging
import os
import re
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
import uvicorn
from PIL import Image

from medtrain.commands.serve import main
from medtrain.data.readers import decode
from medtrain.inference.predictor import Predictor
from medtrain.inference.serve import ServeLimits, create_app, make_server
from tests.conftest import SHARED_DATA
from tests.data.test_readers import make_dicom

BOUNDARY = "test-boundary-7d1f"
CT_SMALL = SHARED_DATA / "dicom" / "single" / "CT_small.dcm"
# Truncated TIFFs make Pillow warn (in the server's thread) before it refuses them.
pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")


# -- the server and an HTTP client --------------------------------------------------------------
@dataclass
class Running:
    port: int
    server: uvicorn.Server
    thread: threading.Thread


def start(app, **config) -> Running:
    """Serve `app` with uvicorn on a free loopback port, in a background thread; `config`:
    `make_server`'s (quiet unless `log_level` says otherwise)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = make_server(app, **({"log_level": "critical"} | config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    return Running(sock.getsockname()[1], server, thread)


def stop(running: Running) -> None:
    running.server.should_exit = True
    running.thread.join(timeout=10)


def fetch(port, method, path, body=None, headers=None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def form(*fields: tuple[str, str | None, bytes]) -> tuple[bytes, dict[str, str]]:
    """multipart/form-data of (field, filename or None for a text field, content) parts."""
    body = b""
    for field, filename, content in fields:
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += content + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def post(port, path, *fields, headers=None) -> tuple[int, dict]:
    body, head = form(*fields)
    status, response_headers, payload = fetch(port, "POST", path, body, head | (headers or {}))
    assert response_headers["content-type"] == "application/json", payload[:200]
    return status, json.loads(payload)


# -- test images ---------------------------------------------------------------------------------
def encode(array: np.ndarray, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def grey(seed: int, shape=(20, 24), dtype=np.uint8) -> np.ndarray:
    high = np.iinfo(dtype).max + 1
    return np.random.default_rng(seed).integers(0, high, shape, dtype=dtype)


def ct_small() -> bytes:
    return CT_SMALL.read_bytes() if CT_SMALL.is_file() else make_dicom(grey(9, (64, 64), np.uint16))


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def predictors(finished_runs) -> dict[str, Predictor]:
    return {task: Predictor(run) for task, run in finished_runs.items()}


@pytest.fixture(scope="module")
def servers(predictors):
    """One server per task; the classification one with small limits for the limit tests."""
    running = {
        "classification": start(
            create_app(
                predictors["classification"], limits=ServeLimits(max_upload_mb=1 / 16, max_batch=4)
            )
        ),
        "regression": start(create_app(predictors["regression"])),
        "segmentation": start(create_app(predictors["segmentation"])),
        "keyed": start(create_app(predictors["regression"], api_key="s3cret")),
    }
    yield running
    for server in running.values():
        stop(server)


def direct(predictor: Predictor, data: bytes, name: str, spacing=None) -> dict:
    return predictor.predict([predictor.decode(data, name)], [name], spacing)[0]


# -- happy paths ---------------------------------------------------------------------------------
def test_health_info_and_openapi(servers, finished_runs):
    port = servers["classification"].port
    status, _, body = fetch(port, "GET", "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, _, body = fetch(port, "GET", "/info")
    info = json.loads(body)
    best = finished_runs["classification"] / "checkpoints" / "best.pt"
    assert status == 200 and info["task"] == "classification"
    assert info["class_names"] == ["normal", "lesion"]
    assert info["input"]["normalize"] == {
        "mode": "fixed",
        "mean": [0.4],
        "std": [0.15],
        "invert": False,
    }
    assert info["weights_sha256"] == hashlib.sha256(best.read_bytes()).hexdigest()
    assert info["input"]["spacing"] is None  # no dataset.spacing
    assert info["members"] == 1 and info["tta"] is None  # one run, no test-time views
    segmentation = json.loads(fetch(servers["segmentation"].port, "GET", "/info")[2])
    assert segmentation["input"]["spacing"] == [0.5, 0.5]  # the run's dataset.spacing
    metrics = json.loads((finished_runs["classification"] / "metrics.json").read_text())
    assert info["test_metrics"]["test/auc"] == pytest.approx(metrics["test/auc"], abs=1e-12)
    assert set(info["test_metrics"]) == {k for k in metrics if k.startswith("test/")}
    status, _, body = fetch(port, "GET", "/openapi.json")
    paths = json.loads(body)["paths"]
    assert status == 200 and {"/predict", "/predict/batch", "/info"} <= set(paths)
    for path, field in (("/predict", "file"), ("/predict/batch", "files")):  # the upload fields
        form = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert form["required"] == [field]
        assert set(form["properties"]) == {field, "overlay", "spacing", "mask_nifti"}
        query = {p["name"] for p in paths[path]["post"]["parameters"]}
        assert query == {"overlay", "spacing", "mask_nifti"}  # what PARAMETERS takes
    assert fetch(port, "GET", "/docs")[0] == 200


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("a.png", lambda: encode(grey(1), "PNG")),
        ("b.jpg", lambda: encode(grey(2), "JPEG", quality=90)),
        ("c.tif", lambda: encode(grey(3, dtype=np.uint16), "TIFF")),
        ("d.npy", lambda: npy(grey(4).astype(np.float32) / 255)),
        ("e.dcm", ct_small),
        ("f.png", lambda: encode(grey(5, (40, 30, 3)), "PNG")),  # colour for a grey model
    ],
)
def test_classification_equals_predictor(servers, predictors, name, make):
    data = make()
    status, result = post(servers["classification"].port, "/predict", ("file", name, data))
    expected = direct(predictors["classification"], data, name)
    assert status == 200 and result["file"] == name
    assert result["label"] == expected["label"] and result["label_index"] == expected["label_index"]
    assert result["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)


def test_regression_equals_predictor(servers, predictors):
    data = encode(grey(6, (32, 32)), "PNG")
    status, result = post(servers["regression"].port, "/predict", ("file", "r.png", data))
    expected = direct(predictors["regression"], data, "r.png")
    assert status == 200
    assert result["value"] == pytest.approx(expected["value"], abs=1e-6)
    assert result["values"] == pytest.approx(expected["values"], abs=1e-6)


def assert_same_rows(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for row, want in zip(got, expected, strict=True):
        assert row.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, float):
                assert row[key] == pytest.approx(value, abs=1e-6), key
            elif value == "":  # a CSV's empty cell is null in the JSON answer
                assert row[key] is None, key
            else:
                assert row[key] == value, key


def decode_mask(result: dict) -> np.ndarray:
    png = np.array(Image.open(io.BytesIO(base64.b64decode(result["mask"]))))
    values = sorted(result["mask_values"].values())
    return np.searchsorted(values, png).astype(np.uint8)  # pixel value -> class index


@pytest.mark.parametrize("spacing", [None, "0.25,0.5"])
def test_segmentation_mask_measurements_overlay(servers, predictors, spacing):
    data = encode(grey(7, (40, 36)), "PNG")
    fields = [("file", "s.png", data)]
    if spacing:  # both parameters as form fields; else overlay in the query
        fields += [("spacing", None, spacing.encode()), ("overlay", None, b"true")]
    path = "/predict" if spacing else "/predict?overlay=true"
    status, result = post(servers["segmentation"].port, path, *fields)
    spacing_mm = None if spacing is None else (0.25, 0.5)
    expected = direct(predictors["segmentation"], data, "s.png", spacing_mm)
    assert status == 200 and result["mask_shape"] == [40, 36]
    np.testing.assert_array_equal(decode_mask(result), expected["mask"])
    assert result["spacing"] == expected["spacing"] and result["units"] == expected["units"]
    if spacing:
        assert result["spacing"] == [0.25, 0.5] and result["units"] == "mm"
    stated = decode(base64.b64decode(result["mask"]), "mask.png").spacing  # the PNG's pHYs
    assert stated == (None if result["spacing"] is None else tuple(result["spacing"]))
    assert_same_rows(result["measurements"], expected["measurements"])
    assert_same_rows(result["totals"], expected["totals"])
    overlay = np.array(Image.open(io.BytesIO(base64.b64decode(result["overlay"]))))
    assert overlay.shape == (40, 36, 3) and overlay.dtype == np.uint8


def test_batch_keeps_order_and_fails_whole_naming_the_file(servers, predictors):
    port = servers["classification"].port
    images = {f"{k}.png": encode(grey(10 + k, (16 + k, 16)), "PNG") for k in range(3)}
    status, results = post(port, "/predict/batch", *[("files", n, d) for n, d in images.items()])
    assert status == 200 and [r["file"] for r in results] == list(images)
    for result, (name, data) in zip(results, images.items(), strict=True):
        expected = direct(predictors["classification"], data, name)
        assert result["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
    bad = [("files", "0.png", images["0.png"]), ("files", "broken.png", b"\x89PNG\r\n\x1a\nxx")]
    status, error = post(port, "/predict/batch", *bad)
    assert status == 422 and "broken.png" in error["detail"]
    status, error = post(port, "/predict/batch", *[("files", "x.png", images["0.png"])] * 5)
    assert status == 413 and "at most 4" in error["detail"]


def test_unknown_parameters_are_refused_not_ignored(servers):
    """Clinical values sent beside the image (a model of images alone never reads them), a
    misspelt option, or a label volume asked of a 2D run: 422, naming them."""
    port = servers["classification"].port
    image = ("file", "a.png", encode(grey(40, (16, 16)), "PNG"))
    status, error = post(port, "/predict", image, ("age", None, b"55"), ("sex", None, b"F"))
    assert status == 422 and error["detail"] == (
        "unknown parameter(s) ['age', 'sex']: /predict takes the file field 'file' and, for this "
        "run, ['overlay', 'spacing']; this run reads the image alone"
    )
    status, error = post(port, "/predict?overlays=true", image)
    assert status == 422 and error["detail"].startswith("unknown parameter(s) ['overlays']")
    status, error = post(port, "/predict?mask_nifti=true", image)
    assert status == 422 and error["detail"].startswith("mask_nifti: label volumes are of runs")
    status, _ = post(port, "/predict?overlay=true&spacing=0.5", image)  # the web page's fields
    assert status == 200


def test_concurrent_requests_get_their_own_results(servers, predictors):
    """Requests arriving together are predicted in one batch; each must get its own answer."""
    port, predictor = servers["classification"].port, predictors["classification"]
    images = [encode(grey(100 + k, (16, 16)), "PNG") for k in range(24)]
    answers: dict[int, tuple[int, dict]] = {}

    def client(k: int) -> None:
        answers[k] = post(port, "/predict", ("file", f"{k}.png", images[k]))

    # Each model call is slowed so that requests arriving meanwhile queue up: they must then go
    # into the next call together rather than one call each.
    calls: list[int] = []
    original = predictor.forward

    def slow_forward(items):
        calls.append(len(items))
        time.sleep(0.05)
        return original(items)

    predictor.forward = slow_forward
    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(len(images))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        del predictor.forward  # the class's method again
    assert sum(calls) == len(images) and len(calls) < len(images) and max(calls) > 1
    for k, data in enumerate(images):
        status, result = answers[k]
        expected = direct(predictor, data, f"{k}.png")
        assert status == 200 and result["file"] == f"{k}.png"
        assert result["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)


# -- limits, key, errors -------------------------------------------------------------------------
def test_api_key(servers):
    port, data = servers["keyed"].port, encode(grey(8), "PNG")
    assert post(port, "/predict", ("file", "a.png", data))[0] == 401
    status, error = post(port, "/predict", ("file", "a.png", data), headers={"X-API-Key": "nope"})
    assert status == 401 and "X-API-Key" in error["detail"]
    assert post(port, "/predict/batch", ("files", "a.png", data))[0] == 401
    status, result = post(
        port, "/predict", ("file", "a.png", data), headers={"X-API-Key": "s3cret"}
    )
    assert status == 200 and "value" in result
    assert fetch(port, "GET", "/health")[0] == 200 and fetch(port, "GET", "/info")[0] == 401
    assert fetch(port, "GET", "/info", headers={"X-API-Key": "s3cret"})[0] == 200


def test_upload_over_the_limit_is_413_declared_or_streamed(servers):
    port = servers["classification"].port
    big = os.urandom(100 * 1024)
    status, error = post(port, "/predict", ("file", "big.png", big))
    assert status == 413 and "limit" in error["detail"]
    # Chunked: no Content-Length, so the server has to count the bytes as they arrive.
    body, headers = form(("file", "big.png", big))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    chunks = (body[i : i + 8192] for i in range(0, len(body), 8192))
    connection.request("POST", "/predict", chunks, headers, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["detail"]
    connection.close()
    assert fetch(port, "GET", "/health")[0] == 200


def test_unexpected_error_is_json_500_without_traceback(predictors):
    class Failing:
        """A predictor whose model call fails unexpectedly."""

        def __init__(self, predictor):
            self.task, self.class_names = predictor.task, predictor.class_names
            self.info, self.decode, self.prepare = (
                predictor.info,
                predictor.decode,
                predictor.prepare,
            )
            self.preprocess, self.weights_sha256 = predictor.preprocess, predictor.weights_sha256

        def forward(self, *args):
            raise RuntimeError("secret internal detail")

    running = start(create_app(Failing(predictors["classification"])))
    try:
        status, error = post(running.port, "/predict", ("file", "a.png", encode(grey(1), "PNG")))
        assert status == 500 and "secret" not in error["detail"]
        assert "Traceback" not in error["detail"]
        assert fetch(running.port, "GET", "/health")[0] == 200 and running.thread.is_alive()
    finally:
        stop(running)


def test_access_log_is_one_line_a_request_without_file_names_or_values(predictors, caplog):
    """With `access_log=true` each request is one line of medtrain's (uvicorn's said neither the
    time taken nor why a request was refused); the names and values a request carries, which
    may be a patient's, are not in it."""
    data = encode(grey(1), "PNG")
    running = start(create_app(predictors["classification"]), access_log=True)
    # After the servers started: their logging configuration replaces the loggers' handlers.
    names = ("medtrain.access", "uvicorn.access")  # neither propagates: listened to directly
    for name in names:
        logging.getLogger(name).addHandler(caplog.handler)
    try:
        body, head = form(("file", "jane-doe-1961.png", data))
        assert fetch(running.port, "POST", "/predict", body, head)[0] == 200
        bad = ("file", "jane-doe-1961.png", data)
        assert post(running.port, "/predict?overlay=jane%20doe", bad)[0] == 422
        unread = ("file", "jane-doe-1961.png", b"not an image")
        assert post(running.port, "/predict", unread, ("spacing", None, b"1961"))[0] == 415
        assert fetch(running.port, "GET", "/nowhere")[0] == 404
        time.sleep(0.2)  # a line is written once its answer is sent
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(caplog.handler)
        stop(running)
    assert {r.name for r in caplog.records} == {"medtrain.access"}  # uvicorn's line is gone
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    took = r"\d+\.\d ms"
    assert re.fullmatch(rf"127\.0\.0\.1:\d+ - POST /predict 200 {took} {len(body)} B in", lines[0])
    assert re.fullmatch(
        rf"127\.0\.0\.1:\d+ - POST /predict 422 {took} \d+ B in: overlay='<redacted>' must be "
        r"true or false \(or yes/no, on/off, 1/0\)",
        lines[1],
    )
    assert " 415 " in lines[2] and "<redacted>" in lines[2]
    assert re.fullmatch(rf"127\.0\.0\.1:\d+ - GET /nowhere 404 {took} 0 B in: Not Found", lines[3])
    assert "jane" not in " ".join(lines) and "1961" not in " ".join(lines)
    # access_log=false: its logger writes only warnings.
    from medtrain.inference.access_log import log_config

    for on in (True, False):
        loggers = log_config(on)["loggers"]
        assert loggers["medtrain.access"]["level"] == ("INFO" if on else "WARNING")


def test_cli_errors(capsys, tmp_path):
    assert main(["run_dir=" + str(tmp_path)]) == 2
    assert "checkpoints/best.pt" in capsys.readouterr().err
    assert main(["run_dir=x", "port=http"]) == 2
    assert "port" in capsys.readouterr().err
    assert main(["run_dir=x", "colour=red"]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["run_dir=x", "access_log=maybe"]) == 2
    assert "access_log" in capsys.readouterr().err
    assert main(["--help"]) == 0 and "X-API-Key" in capsys.readouterr().out


def test_an_address_family_the_machine_lacks_is_skipped_among_several(monkeypatch):
    """`localhost` names ::1 too, which a machine without IPv6 cannot bind: skipped, as asyncio
    skips it, while the others serve; a machine that can bind none of them is refused."""
    import errno

    from medtrain.errors import ConfigError
    from medtrain.inference import processes

    real = socket.socket

    def no_ipv6(family=socket.AF_INET, *args, **kwargs):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kwargs)

    both = [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0)),
    ]
    monkeypatch.setattr(processes.socket, "socket", no_ipv6)
    monkeypatch.setattr(processes.socket, "getaddrinfo", lambda *a, **k: both)
    sockets = processes.listening_sockets("localhost", 0)
    try:
        assert [s.family for s in sockets] == [socket.AF_INET]
    finally:
        for sock in sockets:
            sock.close()
    monkeypatch.setattr(processes.socket, "getaddrinfo", lambda *a, **k: both[:1])
    with pytest.raises(ConfigError, match="host=localhost port=0: cannot listen there"):
        processes.listening_sockets("localhost", 0)


def test_a_port_in_use_or_an_address_not_here_is_an_error_line_before_serving(
    finished_runs, capsys, monkeypatch
):
    """The address is bound before "serving ... on http://..." is said: a port in use (or an
    address of another machine) is one error line and status 2; it was uvicorn's "[Errno 98]"
    after the serving line, and status 3."""
    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **k: pytest.fail("uvicorn started"))
    run = f"run_dir={finished_runs['classification']}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for processes in ("1", "2"):  # uvicorn's own sockets, or the one forked workers share
            assert main([run, f"port={port}", f"processes={processes}", "device=cpu"]) == 2
            out, err = capsys.readouterr()
            assert out == "" and err == (
                f"error: host=127.0.0.1 port={port}: cannot listen there (Address already in "
                "use): another program listens on that port: give port= another, or stop it\n"
            )
    # TEST-NET-1 (RFC 5737): an address no machine of ours has; no name to look up
    assert main([run, "host=192.0.2.1", "port=8123"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (
        "error: host=192.0.2.1 port=8123: cannot listen there (Cannot assign requested "
        "address): not an address of this machine: give one of its own (127.0.0.1, or 0.0.0.0 "
        "for every interface)\n"
    )


# -- hostile uploads -----------------------------------------------------------------------------
def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares `width` x `height` (with a valid CRC)."""
    real = encode(grey(0, (4, 4)), "PNG")
    ihdr = struct.pack(">II", width, height) + real[24:29]
    chunk = b"IHDR" + ihdr
    return real[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + real[33:]


def npy_header(shape: tuple[int, ...], dtype: str = "<u1") -> bytes:
    """An NPY header declaring `shape`, with no data behind it."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def dicom_with(**changes) -> bytes:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(ct_small()))
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def hostile_uploads() -> list[tuple[str, str, object, int]]:
    """(id, file name, bytes or a callable making them, expected status) for the /predict field."""
    rng = np.random.default_rng(2024)
    cases: list[tuple[str, str, object, int]] = []
    named = {".png": 422, ".jpg": 422, ".tif": 422, ".npy": 422, ".npz": 422, ".dcm": 422}
    for size in (1, 7, 100, 131, 1000, 20000):
        noise = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        # Named PNG, JPEG, TIFF, NPY or NPZ without their magic bytes: another format, whatever
        # the name says (415); named DICOM, perhaps a file without its preamble (422).
        for suffix in (*named, "", ".bmp"):
            status = 422 if suffix == ".dcm" else 415
            cases.append((f"random{size}{suffix or '-noname'}", f"r{suffix}", noise, status))
    cases.append(("text-named-png", "notes.png", b"a note, not an image\n", 415))
    for suffix in (*named, ""):
        cases.append((f"empty{suffix or '-noname'}", f"e{suffix}", b"", 422))
    valid = {
        "png": encode(grey(1, (64, 64)), "PNG"),
        "jpg": encode(grey(2, (64, 64)), "JPEG"),
        "tif": encode(grey(3, (64, 64), np.uint16), "TIFF"),
        "dcm": ct_small(),
    }
    for kind, data in valid.items():
        cuts = (3, 8, 20, 40, len(data) // 4, len(data) // 2, len(data) - 200)
        for cut in cuts:
            cases.append((f"truncated-{kind}-{cut}", f"t.{kind}", data[:cut], 422))
    big = 413
    cases += [
        ("png-ihdr-100000x100000", "bomb.png", png_declaring(100_000, 100_000), big),
        ("png-ihdr-9000x9000", "bomb.png", png_declaring(9000, 9000), big),
        ("png-ihdr-100000x1-no-data", "wide.png", png_declaring(100_000, 1), 422),
        ("png-ihdr-0x0", "zero.png", png_declaring(0, 0), 422),
        ("npy-header-100000x100000", "h.npy", npy_header((100_000, 100_000)), big),
        ("npy-header-1e9x1x3", "h.npy", npy_header((10**9, 1, 3)), big),
        ("npy-header-1000x1000-no-data", "h.npy", npy_header((1000, 1000), "<f4"), 422),
        ("npy-2-channels", "c.npy", npy(grey(1, (16, 16, 2))), 422),
        ("npy-5-channels", "c.npy", npy(grey(1, (16, 16, 5))), 422),
        ("npy-4d", "c.npy", npy(grey(1, (2, 16, 16, 1))), 422),
        ("npy-1d", "c.npy", npy(grey(1, (256,))), 422),
        ("npy-scalar", "c.npy", npy(np.float32(1.0)), 422),
        ("npy-zero-rows", "c.npy", npy(np.zeros((0, 16), np.uint8)), 422),
        ("npy-nan", "n.npy", npy(np.full((16, 16), np.nan, np.float32)), 422),
        ("npy-inf", "n.npy", npy(np.full((16, 16), np.inf)), 422),
        ("npy-object", "o.npy", npy(np.array([[{"a": 1}]], dtype=object)), 422),
        ("npy-strings", "s.npy", npy(np.full((4, 4), "abc")), 422),
        ("npy-complex", "z.npy", npy(np.ones((4, 4), np.complex64)), 422),
        ("dicom-without-pixels", "np.dcm", lambda: dicom_with(PixelData=None), 422),
        ("dicom-60000x60000", "big.dcm", lambda: dicom_with(Rows=60000, Columns=60000), big),
        ("dicom-rows-0", "r0.dcm", lambda: dicom_with(Rows=0), 422),
        ("long-name", "x" * 1000, b"not an image", 415),
        ("over-long-name", "x" * 5000, b"not an image", 400),  # the multipart parser's limit
        ("path-name", "../../etc/passwd", b"root:x:0:0", 415),
        ("gif-named-gif", "a.gif", encode(grey(1), "GIF"), 415),
    ]
    zipped = io.BytesIO()
    np.savez(zipped, a=np.zeros((4, 4)), b=np.ones((4, 4)))
    cases.append(("npz-two-arrays", "two.npz", zipped.getvalue(), 422))
    return cases


HOSTILE = hostile_uploads()


def test_there_are_over_100_hostile_cases():
    assert len(HOSTILE) + len(PROTOCOL) >= 100


@pytest.mark.parametrize(
    ("name", "data", "expected"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE]
)
def test_hostile_upload_is_refused_cleanly(servers, name, data, expected):
    running = servers["segmentation"]  # no upload limit below the images' own, any image size
    data = data() if callable(data) else data
    status, error = post(running.port, "/predict", ("file", name, data))
    assert status == expected, error
    assert isinstance(error["detail"], str) and error["detail"]
    assert "Traceback" not in error["detail"] and running.thread.is_alive()


PNG = encode(grey(1), "PNG")
# (id, method, path, body, headers, expected status): requests broken above the image level.
PROTOCOL = [
    ("wrong-field", "POST", "/predict", *form(("image", "a.png", PNG)), 422),
    ("text-not-file", "POST", "/predict", *form(("file", None, PNG)), 422),
    ("no-fields", "POST", "/predict", *form(), 422),
    ("no-body", "POST", "/predict", b"", {}, 422),
    ("json-body", "POST", "/predict", b'{"file": 1}', {"Content-Type": "application/json"}, 422),
    ("batch-wrong-field", "POST", "/predict/batch", *form(("file", "a.png", PNG)), 422),
    (
        "no-boundary",
        "POST",
        "/predict",
        b"--x\r\n",
        {"Content-Type": "multipart/form-data"},
        400,
    ),
    (
        "no-cr-after-boundary",
        "POST",
        "/predict",
        f"--{BOUNDARY}Z".encode(),
        form()[1],
        400,
    ),
    (
        "unterminated-multipart",
        "POST",
        "/predict",
        form(("file", "a.png", PNG))[0][:-20],
        form()[1],
        422,  # the lenient parser drops the unfinished part
    ),
    ("bad-overlay", "POST", "/predict?overlay=maybe", *form(("file", "a.png", PNG)), 422),
    # the last of two values won, and an empty one read false
    (
        "twice-overlay",
        "POST",
        "/predict?overlay=true&overlay=false",
        *form(("file", "a.png", PNG)),
        422,
    ),
    ("empty-overlay", "POST", "/predict?overlay=", *form(("file", "a.png", PNG)), 422),
    (
        "overlay-in-form-and-query",
        "POST",
        "/predict?overlay=false",
        *form(("file", "a.png", PNG), ("overlay", None, b"true")),
        422,
    ),
    (
        "bad-overlay-field",
        "POST",
        "/predict",
        *form(("file", "a.png", PNG), ("overlay", None, b"maybe")),
        422,
    ),
    (
        "bad-spacing",
        "POST",
        "/predict",
        *form(("file", "a.png", PNG), ("spacing", None, b"abc")),
        422,
    ),
    ("negative-spacing", "POST", "/predict?spacing=-1,1", *form(("file", "a.png", PNG)), 422),
    ("three-spacings", "POST", "/predict?spacing=1,2,3", *form(("file", "a.png", PNG)), 422),
    ("get-predict", "GET", "/predict", None, {}, 405),
    ("unknown-path", "POST", "/nowhere", *form(("file", "a.png", PNG)), 404),
    ("put-health", "PUT", "/health", b"x", {}, 405),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "expected"),
    [c[1:] for c in PROTOCOL],
    ids=[c[0] for c in PROTOCOL],
)
def test_broken_request_is_refused_cleanly(servers, method, path, body, headers, expected, caplog):
    running = servers["segmentation"]
    status, response_headers, payload = fetch(running.port, method, path, body, headers)
    assert status == expected, payload
    assert response_headers["content-type"] == "application/json"
    detail = json.loads(payload)["detail"]
    assert isinstance(detail, str) and detail and "Traceback" not in detail
    # The parser's own log of a body it refused is no line on the console: the answer says it.
    assert not [r for r in caplog.records if r.name.startswith("python_multipart")]


def test_server_survives_everything(servers):
    for running in servers.values():
        assert running.thread.is_alive()
        assert fetch(running.port, "GET", "/health")[0] == 200


def test_a_flag_takes_the_spellings_its_refusal_names():
    from medtrain.errors import ConfigError
    from medtrain.inference.serve import parse_flag

    assert [parse_flag("overlay", t) for t in ("true", "Yes", "on", "1")] == [True] * 4
    assert [parse_flag("overlay", t) for t in ("false", "no", "OFF", "0")] == [False] * 4
    with pytest.raises(ConfigError) as err:
        parse_flag("overlay", "banana")
    assert str(err.value) == "overlay='banana' must be true or false (or yes/no, on/off, 1/0)"
