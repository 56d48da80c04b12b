"""PneumoniaMNIST: a 3-seed ensemble of finished runs against its members (test AUC and accuracy).

Usage: python benchmarks/ensemble.py [--seeds 0 1 2] [--data ../shared/data/medmnist/pneumoniamnist.npz]
Runs already finished under --out (metrics.json present) are reused, e.g. those of
benchmarks/pneumoniamnist.py with the same --out.
"""

from __future__ import annotations

import csv
from pathlib import Path

from common import medmnist_args, recompute_from_predictions, run_ensemble, run_medtrain


def main() -> None:
    args = medmnist_args("pneumoniamnist")
    runs = []
    for seed in args.seeds:
        run_dir = args.out / f"seed{seed}"
        if not (run_dir / "metrics.json").is_file():
            run_medtrain(
                run_dir,
                "experiment=pneumoniamnist",
                f"dataset.path={args.data.resolve()}",
                f"seed={seed}",
                *args.overrides,
            )
        runs.append(run_dir)
    out = args.out / "ensemble"
    metrics = run_ensemble(runs, out)
    auc, acc = recompute_from_predictions(out, metrics["threshold"])
    assert abs(auc - metrics["test/auc"]) < 1e-6 and abs(acc - metrics["test/acc"]) < 1e-6
    with (out / "members.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    print(f"ensemble evaluation: {metrics['seconds']:.1f} s (val + test, {len(runs)} members)")
    print("| run | test AUC | test acc (val threshold) | test acc@0.5 |\n|---|---|---|---|")
    for row in rows:
        name = "ensemble" if row["run_dir"] == "ensemble" else Path(row["run_dir"]).name
        print(
            f"| {name} | {float(row['test/auc']):.4f} | {float(row['test/acc']):.4f} | "
            f"{float(row['test/acc@0.5']):.4f} |"
        )


if __name__ == "__main__":
    main()
