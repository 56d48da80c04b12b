"""Speed options by config: precision auto, torch.compile, channels-last, loader workers."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from medtrain.data.loading import auto_workers
from medtrain.engine.acceleration import compile_options, resolve_precision, uncompiled
from medtrain.errors import ConfigError
from medtrain.io import load_checkpoint
from tests.conftest import ON_CPU, TINY, train_in_process


def test_auto_precision_is_float32_on_the_cpu():
    assert resolve_precision("auto", torch.device("cpu")) == "32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_precision_is_bf16_on_gpus_that_have_it():
    want = "bf16" if torch.cuda.is_bf16_supported() else "32"
    assert resolve_precision("auto", torch.device("cuda")) == want


def test_compile_options():
    assert compile_options(False) is None and compile_options(None) is None
    assert compile_options(True) == {}
    assert compile_options("max-autotune") == {"mode": "max-autotune"}
    with pytest.raises(ConfigError, match="trainer.compile='fastest'"):
        compile_options("fastest")


def test_auto_workers_leave_a_core_per_gpu_process(monkeypatch):
    monkeypatch.setattr("medtrain.data.loading.usable_cpus", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert auto_workers("cpu") == 0
    assert auto_workers("cuda") == 8  # 15 left, at most 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert auto_workers("cuda") == 3  # 16 cores shared by 4 processes, one drives each GPU
    monkeypatch.setattr("medtrain.data.loading.usable_cpus", lambda: 1)
    assert auto_workers("cuda") == 0


def test_workers_and_channels_last_train_what_the_plain_loop_trains(tmp_path):
    """Loader workers kept across epochs, and channels-last tensors: the same run, the same
    numbers (the CPU's NHWC convolutions round differently, hence the tolerance). The epochs'
    losses are compared, not the test metrics: in a 2-epoch run whose validation AUC ties, a
    rounding difference can choose the other epoch's checkpoint."""
    plain = train_in_process(tmp_path / "plain", [*TINY, ON_CPU, "trainer.num_workers=0"])
    workers = train_in_process(tmp_path / "workers", [*TINY, ON_CPU, "trainer.num_workers=2"])
    assert workers == plain
    train_in_process(tmp_path / "nhwc", [*TINY, ON_CPU, "trainer.channels_last=true"])
    for key in ("train/loss", "val/loss"):
        assert epoch_values(tmp_path / "nhwc", key) == pytest.approx(
            epoch_values(tmp_path / "plain", key), rel=0.01
        )


def epoch_values(run_dir: Path, key: str) -> list[float]:
    with open(run_dir / "history.csv", newline="") as f:
        return [float(row[key]) for row in csv.DictReader(f)]


def test_compiled_training_saves_the_plain_network(tmp_path, monkeypatch):
    """`trainer.compile=true` calls torch.compile on the training module (here with its eager
    backend, which checks the wiring without a C++ compiler); checkpoints hold the network's own
    parameter names, so prediction, serving and resuming use them as usual."""
    calls = []
    real = torch.compile

    def eager_compile(model, **options):
        calls.append(options)
        return real(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    plain = train_in_process(tmp_path / "plain", [*TINY, ON_CPU])
    compiled = train_in_process(
        tmp_path / "compiled", [*TINY, ON_CPU, "trainer.compile=reduce-overhead"]
    )
    assert calls == [{"mode": "reduce-overhead"}]
    assert compiled["test/auc"] == pytest.approx(plain["test/auc"], abs=1e-6)
    weights = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "best.pt")["model"]
    assert not any(key.startswith("_orig_mod.") for key in weights)
    assert (
        weights.keys()
        == load_checkpoint(tmp_path / "plain" / "checkpoints" / "best.pt")["model"].keys()
    )
    # A compiled run resumes uncompiled (a speed option may change between the two).
    longer = [*TINY, ON_CPU, "trainer.max_epochs=3", "trainer.resume=true"]
    assert train_in_process(tmp_path / "compiled", longer)["epochs_trained"] == 3


def test_uncompiled_sees_through_the_wrapper():
    net = torch.nn.Linear(2, 2)
    assert uncompiled(torch.compile(net, backend="eager")) is net
    assert uncompiled(net) is net


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fast_path_trains(tmp_path):
    """The GPU configuration of docs/benchmarks.md: bf16 (auto), compiled, channels-last, loader
    workers from the core count, pinned memory."""
    metrics = train_in_process(
        tmp_path,
        [
            *TINY,
            "trainer.device=cuda",
            "trainer.compile=true",
            "trainer.channels_last=true",
            "trainer.num_workers=auto",
        ],
    )
    assert metrics["test/auc"] > 0.5
