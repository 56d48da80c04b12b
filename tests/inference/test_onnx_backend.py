"""`backend=onnx`: the run's network exported at start and run by ONNX Runtime gives the answers of
the PyTorch backend (probabilities and values within 1e-5, equal masks) through `Predictor`, the
HTTP service and `medtrain predict`; what it cannot run is refused at start, naming the backend."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from medtrain.commands.predict import main as predict_main
from medtrain.commands.serve import main as serve_main
from medtrain.errors import ConfigError
from medtrain.inference import onnx_backend
from medtrain.inference.onnx_backend import (
    OnnxNetwork,
    has_cuda_provider,
    onnx_device,
    onnx_network,
)
from medtrain.inference.predictor import Predictor
from medtrain.inference.run import eval_preprocessing, load_run
from medtrain.inference.serve import create_app
from medtrain.models.cnn import SimpleCNN
from medtrain.models.fusion import Fusion
from medtrain.models.tabular import TabularMLP
from tests.inference.test_export import SizeDependent
from tests.inference.test_serve import encode, fetch, grey, post, start, stop

TASKS = ("classification", "regression", "segmentation")
PARITY = 1e-5
# Sizes that the runs resize (image-level tasks), tile in 48 x 48 windows or pad to one window
# (segmentation), in 8-bit grey, 16-bit grey and colour.
SHAPES = [
    ((40, 36), np.uint8),
    ((23, 61), np.uint16),
    ((64, 50, 3), np.uint8),
    ((48, 48), np.uint8),
]


@pytest.fixture(scope="module")
def backends(finished_runs) -> dict[str, dict[str, Predictor]]:
    """Per task, a predictor of each backend (one thread: tiny models gain nothing from more)."""
    return {
        task: {
            "torch": Predictor(run),
            "onnx": Predictor(run, backend="onnx", threads=1),
        }
        for task, run in finished_runs.items()
    }


def images(predictor: Predictor) -> list:
    """The SHAPES as decoded images, through the predictor's own reader."""
    return [
        predictor.decode(encode(grey(k, shape, dtype), "PNG"), f"{k}.png")
        for k, (shape, dtype) in enumerate(SHAPES)
    ]


def assert_same_answer(got: dict, want: dict) -> None:
    """Probabilities and values within PARITY, masks and everything else equal."""
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key in ("probabilities", "values"):
            assert list(got[key]) == list(value)
            np.testing.assert_allclose(list(got[key].values()), list(value.values()), atol=PARITY)
        elif key == "value":
            assert got[key] == pytest.approx(value, abs=PARITY)
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got[key], value)
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("task", TASKS)
def test_onnx_backend_equals_torch(backends, task):
    torch_predictor, onnx_predictor = backends[task]["torch"], backends[task]["onnx"]
    decoded = images(torch_predictor)
    names = [f"{k}.png" for k in range(len(decoded))]
    assert isinstance(onnx_predictor.model, OnnxNetwork)
    items = [torch_predictor.prepare(image, n) for image, n in zip(decoded, names, strict=True)]
    # What `result` is given: the same outputs (logits, network values), as CPU torch tensors.
    outputs = zip(torch_predictor.forward(items), onnx_predictor.forward(items), strict=True)
    for want, got in outputs:
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype
        assert got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=PARITY)
    expected = torch_predictor.predict(decoded, names)
    for got, want in zip(onnx_predictor.predict(decoded, names), expected, strict=True):
        assert_same_answer(got, want)


def test_tta_around_the_onnx_network(backends):
    """The task turns, mirrors and tiles around the network in both backends."""
    torch_predictor, onnx_predictor = backends["segmentation"].values()
    decoded = images(torch_predictor)[:2]
    torch_predictor.task.tta = onnx_predictor.task.tta = "dihedral"
    try:
        expected = torch_predictor.predict(decoded, ["a", "b"])
        got = onnx_predictor.predict(decoded, ["a", "b"])
    finally:
        torch_predictor.task.tta = onnx_predictor.task.tta = None
    for have, want in zip(got, expected, strict=True):
        assert_same_answer(have, want)


def test_info_names_the_backend(backends):
    info = backends["segmentation"]["onnx"].info()["backend"]
    assert info["name"] == "onnx" and info["providers"] == ["CPUExecutionProvider"]
    assert len(info["model_sha256"]) == 64 and info["threads"] == 1
    assert info["exported"].startswith("at start, from best.pt")
    # The segmentation run tiles 48 x 48 windows: any size, checked at an odd size and the window.
    assert info["input_size"] is None and info["checked"]["sizes"] == [[49, 49], [48, 48]]
    assert info["checked"]["max_abs_difference"] < 1e-4
    assert backends["classification"]["onnx"].info()["backend"]["input_size"] == [16, 16]
    assert backends["classification"]["torch"].info()["backend"]["name"] == "torch"


def test_a_new_thread_count_makes_a_new_session_with_the_same_answers(finished_runs):
    """What each forked server process does (`processes=N`): its own session and thread pool."""
    predictor = Predictor(finished_runs["classification"], backend="onnx", threads=1)
    decoded = images(predictor)
    names = [f"{k}.png" for k in range(len(decoded))]
    before, session = predictor.predict(decoded, names), predictor.model.session
    threads = torch.get_num_threads()
    try:
        predictor.use_threads(2)
        assert predictor.model.session is not session and torch.get_num_threads() == 2
        assert predictor.info()["backend"]["threads"] == 2 and predictor.on_cpu
        for got, want in zip(predictor.predict(decoded, names), before, strict=True):
            assert_same_answer(got, want)
    finally:
        torch.set_num_threads(threads)


def test_served_with_onnx_equals_torch(backends):
    """Over HTTP, one image and a batch (one ONNX call of three), as the torch backend answers."""
    torch_predictor, onnx_predictor = backends["classification"].values()
    running = start(create_app(onnx_predictor))
    try:
        status, _, body = fetch(running.port, "GET", "/info")
        assert status == 200 and json.loads(body)["backend"]["name"] == "onnx"
        data = [encode(grey(20 + k, (30 + k, 20)), "PNG") for k in range(3)]
        status, one = post(running.port, "/predict", ("file", "a.png", data[0]))
        files = [("files", f"{k}.png", d) for k, d in enumerate(data)]
        status_batch, batch = post(running.port, "/predict/batch", *files)
    finally:
        stop(running)
    assert status == status_batch == 200
    decoded = [torch_predictor.decode(d, f"{k}.png") for k, d in enumerate(data)]
    expected = torch_predictor.predict(decoded, [f"{k}.png" for k in range(3)])
    for got, want in zip([one, *batch], [expected[0], *expected], strict=True):
        assert got["label"] == want["label"]
        np.testing.assert_allclose(
            list(got["probabilities"].values()), list(want["probabilities"].values()), atol=PARITY
        )


def test_predict_command_takes_the_backend(finished_runs, tmp_path):
    run = finished_runs["regression"]
    (tmp_path / "in").mkdir()
    for k in range(3):
        (tmp_path / "in" / f"{k}.png").write_bytes(encode(grey(30 + k, (32, 40)), "PNG"))
    rows = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.csv"
        args = [f"run_dir={run}", f"inputs={tmp_path / 'in'}", f"output={out}", "progress=false"]
        assert predict_main([*args, f"backend={backend}"]) == 0
        with open(out, newline="") as f:
            rows[backend] = list(csv.DictReader(f))
    assert [r["file"] for r in rows["onnx"]] == [r["file"] for r in rows["torch"]]
    for got, want in zip(rows["onnx"], rows["torch"], strict=True):
        assert float(got["value"]) == pytest.approx(float(want["value"]), abs=PARITY)


# -- refusals ------------------------------------------------------------------------------------
class Spectral(nn.Module):
    """Class logits through an FFT, an operator the ONNX exporter lacks."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(self.conv(image)).abs().mean(dim=(2, 3))


def refusal(run) -> str:
    preprocess = eval_preprocessing(run.cfg, run.checkpoint.get("preprocessing"))
    with pytest.raises(ConfigError) as refused:
        onnx_network(run, preprocess, "cpu", 1)
    return str(refused.value)


def test_refuses_networks_onnx_cannot_run(finished_runs):
    run = load_run(finished_runs["segmentation"])
    run.model, run.task.window = SizeDependent().eval(), None
    message = refusal(run)
    assert message.startswith("backend=onnx: the exported model differs from PyTorch")
    assert "use backend=torch" in message

    run = load_run(finished_runs["classification"])
    run.model = Spectral().eval()
    message = refusal(run)
    assert message.startswith("backend=onnx: the run's network (Spectral) cannot be exported")
    assert "fft_fft2" in message and "use backend=torch" in message


def test_serve_refuses_at_start_without_a_traceback(finished_runs, monkeypatch, capsys):
    run_dir = finished_runs["classification"]
    assert serve_main([f"run_dir={run_dir}", "backend=tensorrt"]) == 2
    assert "backend='tensorrt': choose one of torch, onnx" in capsys.readouterr().err
    assert serve_main([f"run_dir={run_dir}", "threads=0"]) == 2
    assert "threads" in capsys.readouterr().err

    def with_network(network):
        def load(*args, **kwargs):
            run = load_run(*args, **kwargs)
            run.model = network
            return run

        return load

    # A network ONNX cannot express: one line naming the backend, exit status 2.
    monkeypatch.setattr("medtrain.inference.predictor.load_run", with_network(Spectral().eval()))
    assert serve_main([f"run_dir={run_dir}", "backend=onnx", "port=0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: backend=onnx: the run's network (Spectral)")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

    # A fusion model without its clinical encoding in best.pt (this run has no clinical columns,
    # like a run saved before the encoding was kept): refused, saying why.
    branches = {"image": SimpleCNN(1, 2, widths=(4,), hidden=8), "lab": TabularMLP(3, 2, (4,))}
    fusion = Fusion(branches, num_classes=2).eval()
    monkeypatch.setattr("medtrain.inference.predictor.load_run", with_network(fusion))
    assert serve_main([f"run_dir={run_dir}", "backend=onnx", "port=0"]) == 2
    assert (
        "reading ['image', 'tabular']; its checkpoint does not record how the clinical columns "
        "were encoded" in capsys.readouterr().err
    )


@pytest.mark.skipif(has_cuda_provider(), reason="this ONNX Runtime has a CUDA provider")
def test_cuda_needs_the_cuda_provider(finished_runs, monkeypatch):
    """`cuda` is refused without ONNX Runtime's CUDA provider (whether or not torch sees a GPU);
    `auto` falls back to the CPU."""
    monkeypatch.setattr(onnx_backend, "resolve_device", lambda spec, key: torch.device("cuda"))
    with pytest.raises(ConfigError, match="backend=onnx with device=cuda: .*CUDAExecutionProvider"):
        Predictor(finished_runs["classification"], device="cuda", backend="onnx")
    assert onnx_device("auto") == torch.device("cpu")
