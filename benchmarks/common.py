"""Helpers for the benchmark scripts: run `python -m medtrain` and read back its run folder."""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn import metrics as skm

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cores = len(__import__("os").sched_getaffinity(0))
    return f"{platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}, CPU"


def run_medtrain(run_dir: Path, *overrides: str) -> dict:
    """Train one run; returns its metrics plus `train_seconds` and `wall_seconds`."""
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "medtrain",
            *overrides,
            "trainer.progress=false",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    metrics = json.loads((run_dir / "metrics.json").read_text())
    info = json.loads((run_dir / "run_info.json").read_text())
    return {**metrics, "train_seconds": info["train_seconds"], "wall_seconds": round(wall, 1)}


def recompute_from_predictions(run_dir: Path, threshold: float) -> tuple[float, float]:
    """Test AUC and accuracy recomputed with scikit-learn from predictions.csv (binary runs)."""
    with open(run_dir / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    target = np.array([int(r["target"]) for r in rows])
    prob = np.array([float(r["prob_1"]) for r in rows])
    return float(skm.roc_auc_score(target, prob)), float(
        skm.accuracy_score(target, prob >= threshold)
    )


def medmnist_args(name: str, seeds: bool = True) -> argparse.Namespace:
    """The common command line of the MedMNIST benchmarks: --seeds, --data, --out and extra
    overrides; exits with a `skipped:` line when the data file is absent."""
    parser = argparse.ArgumentParser()
    if seeds:
        parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / f"shared/data/medmnist/{name}.npz"
    )
    parser.add_argument("--out", type=Path, default=Path(f"/tmp/medtrain-bench/{name}"))
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} not found")
        sys.exit(0)
    print(f"machine: {machine()}")
    return args


def run_ensemble(runs: list[Path], out: Path) -> dict:
    """`medtrain ensemble` over finished runs; returns the ensemble's metrics plus
    `seconds` (wall time of the evaluation)."""
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "medtrain",
            "ensemble",
            f"run_dirs=[{','.join(map(str, runs))}]",
            f"hydra.run.dir={out}",
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    return {**metrics, "seconds": round(time.perf_counter() - start, 1)}


def chosen_workloads(choice: str, workloads, needs: dict) -> list[str]:
    """The workloads a benchmark's `--workload` names (`all` or `both`: every one), without those
    whose data (`needs`: workload -> path) are missing, with a `skipped:` line for each."""
    chosen = list(workloads) if choice in ("all", "both") else [choice]
    for name, path in needs.items():
        if name in chosen and not Path(path).exists():
            print(f"skipped {name}: {path} not found")
            chosen.remove(name)
    return chosen
