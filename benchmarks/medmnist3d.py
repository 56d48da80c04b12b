"""MedMNIST3D (official splits): test AUC of the 3D recipes over several seeds, recomputed with
scikit-learn from each run's predictions.csv, with training time and peak memory.

Usage:
    python benchmarks/medmnist3d.py adrenalmnist3d [--seeds 0 1 2] [overrides ...]
    python benchmarks/medmnist3d.py vesselmnist3d [--seeds 0 1 2] [overrides ...]
Targets: adrenalmnist3d mean test AUC >= 0.86, vesselmnist3d >= 0.93, each seed trained in under
10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from common import ROOT, machine, recompute_from_predictions, run_medtrain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("experiment", choices=["adrenalmnist3d", "vesselmnist3d"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path)
    args, overrides = parser.parse_known_args()
    data = ROOT.parent / f"shared/data/medmnist/{args.experiment}.npz"
    if not data.is_file():
        print(f"skipped: {data} not found")
        sys.exit(0)
    out = args.out or Path(f"/tmp/medtrain-bench/{args.experiment}")
    print(f"machine: {machine()}")
    keys = ("test/auc", "test/acc", "test/balanced_acc")
    results = []
    for seed in args.seeds:
        run_dir = out / f"seed{seed}"
        m = run_medtrain(
            run_dir,
            f"experiment={args.experiment}",
            f"dataset.path={data.resolve()}",
            f"seed={seed}",
            *overrides,
        )
        auc, acc = recompute_from_predictions(run_dir, m["threshold"])
        assert abs(auc - m["test/auc"]) < 1e-6 and abs(acc - m["test/acc"]) < 1e-6
        m["peak_host_mb"] = json.loads((run_dir / "run_info.json").read_text())["peak_host_mb"]
        results.append(m)
        print(
            f"seed {seed}: "
            + ", ".join(f"{k} {m[k]:.4f}" for k in keys)
            + f", best epoch {m['best_epoch']}, train {m['train_seconds']:.0f} s, "
            f"wall {m['wall_seconds']:.0f} s, peak {m['peak_host_mb']:.0f} MB"
        )
    print("| metric | mean | std | min | max |\n|---|---|---|---|---|")
    for k in (*keys, "train_seconds", "wall_seconds", "peak_host_mb"):
        values = [r[k] for r in results]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"| {k} | {statistics.mean(values):.4f} | {spread:.4f} | {min(values):.4f} | "
            f"{max(values):.4f} |"
        )


if __name__ == "__main__":
    main()
