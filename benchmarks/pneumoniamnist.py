"""PneumoniaMNIST (official MedMNIST split): test AUC and accuracy over several seeds.

Usage: python benchmarks/pneumoniamnist.py [--seeds 0 1 2] [--data ../shared/data/medmnist/pneumoniamnist.npz]
Target: mean test AUC >= 0.985 and accuracy >= 0.92, each seed trained in under 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import statistics

from common import medmnist_args, recompute_from_predictions, run_medtrain


def main() -> None:
    args = medmnist_args("pneumoniamnist")
    keys = ("test/auc", "test/acc", "test/acc@0.5", "test/sensitivity", "test/specificity")
    results = []
    for seed in args.seeds:
        run_dir = args.out / f"seed{seed}"
        m = run_medtrain(
            run_dir,
            "experiment=pneumoniamnist",
            f"dataset.path={args.data.resolve()}",
            f"seed={seed}",
            *args.overrides,
        )
        auc, acc = recompute_from_predictions(run_dir, m["threshold"])
        assert abs(auc - m["test/auc"]) < 1e-6 and abs(acc - m["test/acc"]) < 1e-6
        results.append(m)
        print(
            f"seed {seed}: "
            + ", ".join(f"{k} {m[k]:.4f}" for k in keys)
            + f", threshold {m['threshold']:.3f}, best epoch {m['best_epoch']}, "
            f"train {m['train_seconds']:.0f} s"
        )
    print("| metric | mean | std | min | max |\n|---|---|---|---|---|")
    for k in (*keys, "train_seconds"):
        values = [r[k] for r in results]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"| {k} | {statistics.mean(values):.4f} | {spread:.4f} | {min(values):.4f} | {max(values):.4f} |"
        )


if __name__ == "__main__":
    main()
