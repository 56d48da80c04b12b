"""PneumoniaMNIST: a 3-seed ensemble of finished runs against its members (test AUC and accuracy).

Usage: python benchmarks/ensemble.py [--seeds 0 1 2] [--data ../shared/data/medmnist/pneumoniamnist.npz]
Runs already finished under --out (metrics.json present) are reused, e.g. those of
benchmarks/pneumoniamnist.py with the same --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, machine, recompute_from_predictions, run_medtrain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared/data/medmnist/pneumoniamnist.npz"
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/medtrain-bench/pneumoniamnist"))
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} not found")
        sys.exit(0)
    print(f"machine: {machine()}")
    runs = []
    for seed in args.seeds:
        run_dir = args.out / f"seed{seed}"
        if not (run_dir / "metrics.json").is_file():
            run_medtrain(
                run_dir,
                "experiment=pneumoniamnist",
                f"dataset.path={args.data.resolve()}",
                f"seed={seed}",
            )
        runs.append(run_dir)
    out = args.out / "ensemble"
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "medtrain.ensemble",
            f"run_dirs=[{','.join(map(str, runs))}]",
            f"hydra.run.dir={out}",
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    auc, acc = recompute_from_predictions(out, metrics["threshold"])
    assert abs(auc - metrics["test/auc"]) < 1e-6 and abs(acc - metrics["test/acc"]) < 1e-6
    with (out / "members.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    print(f"ensemble evaluation: {seconds:.1f} s (val + test, {len(runs)} members)")
    print("| run | test AUC | test acc (val threshold) | test acc@0.5 |\n|---|---|---|---|")
    for row in rows:
        name = "ensemble" if row["run_dir"] == "ensemble" else Path(row["run_dir"]).name
        print(
            f"| {name} | {float(row['test/auc']):.4f} | {float(row['test/acc']):.4f} | "
            f"{float(row['test/acc@0.5']):.4f} |"
        )


if __name__ == "__main__":
    main()
