"""The ONNX Runtime backend of `Predictor` (`backend=onnx`): the run's network exported at start, in
memory, by the export's own code and checked against PyTorch as `medtrain export` checks it, then
run by an ONNX Runtime session in place of the PyTorch module. Everything around the network stays
the task's (tiling, test-time views, resizing logits back, results), so both backends give `result` the
same outputs, to float rounding.

Why not the `model.onnx` of `medtrain export`: that file holds the task's postprocessing
(probabilities, values in target units) and the test-time views, while `Predictor.forward` hands the task the
network's outputs; turning probabilities back into logits would lose what float32 rounds to 1.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn

from medtrain.engine.config import resolve_device
from medtrain.errors import ConfigError
from medtrain.inference.export import OPSET, build_model_file, onnx_session, wrap
from medtrain.inference.run import LoadedRun

BACKENDS = ("torch", "onnx")
CUDA_PROVIDER = "CUDAExecutionProvider"


class OnnxNetwork(nn.Module):
    """An ONNX Runtime session standing in for a network: a float32 image batch (torch) in, the
    network's float32 outputs (torch, on the CPU) out."""

    def __init__(self, data: bytes, threads: int, providers: list[Any]):
        super().__init__()
        self.data, self.providers = data, providers
        self.session = onnx_session(data, threads, providers)
        self.eval()  # tasks average test-time views only of models out of training mode

    def use_threads(self, threads: int) -> None:
        """Run on `threads` intra-op threads from now on (a new session of the same model: its
        thread pool is made at creation, and a forked process has none of its parent's threads)."""
        self.session = onnx_session(self.data, threads, self.providers)

    @property
    def on_cpu(self) -> bool:
        return self.session.get_providers()[0] == "CPUExecutionProvider"

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(image.detach().cpu().numpy(), dtype=np.float32)
        (out,) = self.session.run(None, {"image": array})
        return torch.from_numpy(out)


def check_backend(backend: str) -> str:
    """`backend` checked against `BACKENDS`.

    Raises:
        ConfigError: any other value.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    return backend


def has_cuda_provider() -> bool:
    """Whether this ONNX Runtime can run on CUDA devices."""
    import onnxruntime  # imported here: the torch backend never needs it

    return CUDA_PROVIDER in onnxruntime.get_available_providers()


def onnx_providers(device: torch.device) -> list[Any]:
    """ONNX Runtime's execution providers for `device`.

    Raises:
        ConfigError: a CUDA device while this ONNX Runtime has no CUDA provider (the `onnxruntime`
            package runs on the CPU only; `onnxruntime-gpu` has it).
    """
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if not has_cuda_provider():
        raise ConfigError(
            f"backend=onnx with device={device}: this ONNX Runtime has no {CUDA_PROVIDER} "
            "(install onnxruntime-gpu); use device=cpu, or backend=torch on the GPU"
        )
    return [(CUDA_PROVIDER, {"device_id": device.index or 0}), "CPUExecutionProvider"]


def onnx_device(spec: str) -> torch.device:
    """The device the ONNX backend runs on: `auto` is the GPU only where both torch and ONNX
    Runtime can use it."""
    device = resolve_device(spec, "device")
    if str(spec) == "auto" and device.type == "cuda" and not has_cuda_provider():
        return torch.device("cpu")
    return device


def onnx_network(
    run: LoadedRun, preprocess: Any, device: str, threads: int
) -> tuple[OnnxNetwork, dict[str, Any]]:
    """The run's network as an ONNX Runtime session, exported now from its checkpoint, with a
    dynamic batch (and height and width where the run predicts at any size: `size_plans`).

    Args:
        device: auto, cpu, cuda or cuda:N (`onnx_device`).
        threads: the session's intra-op threads.

    Returns:
        The network and what /info says about it.

    Raises:
        ConfigError: naming `backend=onnx`: a device ONNX Runtime cannot use, a network that ONNX
            cannot express or whose export does not compute what PyTorch does.
    """
    providers = onnx_providers(onnx_device(device))  # refused before the export's seconds
    try:
        built = build_model_file(run, wrap(run, network_only=True), "onnx", preprocess)
    except ConfigError as err:
        raise ConfigError(f"backend=onnx: {err}; or use backend=torch") from err
    except Exception as err:  # the exporter's own errors: an operator ONNX lacks, a Python value
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"backend=onnx: the run's network ({type(run.model).__name__}) cannot be exported to "
            f"ONNX ({first}); use backend=torch"
        ) from err
    network = OnnxNetwork(built.data, threads, providers)
    session = network.session
    import onnxruntime

    return network, {
        "name": "onnx",
        "runtime": f"onnxruntime {onnxruntime.__version__}",
        "providers": session.get_providers(),
        "threads": threads,
        "model_sha256": hashlib.sha256(built.data).hexdigest(),
        "exported": f"at start, from {run.checkpoint_path.name} (weights_sha256), opset {OPSET}",
        "input_size": None if built.any_size else list(built.sizes[0]),
        "checked": {
            "against": "PyTorch, on random inputs of these sizes",
            "sizes": [list(s) for s in built.sizes],
            "max_abs_difference": built.difference,
        },
    }
