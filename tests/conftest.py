"""Shared fixtures: compose the real config (shrunk for speed), run medtrain in-process or as the CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"

# A synthetic run small enough for a unit test (a few seconds on 2 CPU cores).
TINY = [
    "dataset.num_train=96",
    "dataset.num_val=48",
    "dataset.num_test=48",
    "dataset.image_size=16",
    "dataset.contrast=0.5",
    "trainer.max_epochs=2",
    "trainer.batch_size=16",
    "trainer.progress=false",
    "trainer.report=false",  # the plots take most of a tiny run; tests/analysis/ check the report
]


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs one worker per core) each worker, and every process a
    test starts, computes with one thread: N workers of N threads each on N cores would fight over
    them. An OMP_NUM_THREADS set by the caller is kept."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _root_log_handlers_restored():
    """A command's main() run in-process sets up logging on the stream pytest captures for that test;
    removed afterwards, so that later tests do not log into a closed stream."""
    before = list(logging.getLogger().handlers)
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)
        handler.close()


def compose_cfg(overrides: list[str] | None = None):
    """Compose conf/train.yaml with overrides, as `python -m medtrain` would."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides or [], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def train_in_process(run_dir: Path, overrides: list[str] | None = None) -> dict:
    from medtrain.engine.training import train

    return train(compose_cfg(overrides), Path(run_dir))


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m medtrain <args>` as a user would; returns the finished process."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "medtrain", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def run_main(*args: str) -> int:
    """`medtrain <args>` in this process; returns its exit status. For tests of what a command
    does rather than of its process: it saves the interpreter's start-up (about 4 s of imports)."""
    from medtrain.commands import main

    return main(list(args))


def read_metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


# Tests that compare two trainings, or a prediction with a run's evaluation, bit for bit train on the
# CPU also where CUDA is available: CUDA kernels repeat only with trainer.deterministic=true, and
# then within rounding (the CUDA tests in test_train, test_segmentation_task and test_rerun train on
# the GPU).
ON_CPU = "trainer.device=cpu"

# Finished runs of each task, small enough to train in seconds: what prediction, serving and export
# are tested on.
FINISHED_RUNS = {
    "classification": [*TINY, ON_CPU],
    "regression": [
        "dataset=synthetic_clinical",
        "task=regression",
        "loss=mse",
        "dataset.num_train=96",
        "dataset.num_val=32",
        "dataset.num_test=32",
        "trainer.max_epochs=2",
        "trainer.batch_size=16",
        "trainer.progress=false",
        ON_CPU,
    ],
    "segmentation": [
        "experiment=synthetic_segmentation",
        "dataset.num_train=32",
        "dataset.num_val=8",
        "dataset.num_test=8",
        "trainer.max_epochs=2",
        "trainer.progress=false",
        "task.num_overlays=0",
        ON_CPU,
    ],
}


@pytest.fixture(scope="session")
def finished_runs(tmp_path_factory) -> dict[str, Path]:
    """One finished run folder per task (classification, regression, segmentation)."""
    root = tmp_path_factory.mktemp("finished_runs")
    for task, overrides in FINISHED_RUNS.items():
        train_in_process(root / task, list(overrides))
    return {task: root / task for task in FINISHED_RUNS}


def fail_if_called(monkeypatch, owner: Any, name: str, what: str) -> None:
    """Make `owner.name` fail the test when called: a refusal must come before it (`what` it
    does, e.g. "predicted")."""

    def called(*args, **kwargs):
        raise AssertionError(f"{what} before the refusal")

    monkeypatch.setattr(owner, name, called)
