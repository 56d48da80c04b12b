"""RetinaMNIST (official split) as ordinal regression: MAE, QWK and rounded accuracy over seeds,
and the ensemble of those seeds.

Usage: python benchmarks/retinamnist.py [--seeds 0 1 2] [--data ../shared/data/medmnist/retinamnist.npz]
Aim: rounded test accuracy >= 0.55 (published 28 px classifiers: 0.531 MedMNIST v2, 0.543 MedMNIST+).
"""

from __future__ import annotations

from common import medmnist_args, run_ensemble, run_medtrain

KEYS = ("test/mae", "test/qwk", "test/acc", "val/mae", "val/qwk", "val/acc")


def main() -> None:
    args = medmnist_args("retinamnist")
    print("| run | " + " | ".join(KEYS) + " | train s |\n|---" + "|---" * (len(KEYS) + 1) + "|")
    runs = []
    for seed in args.seeds:
        run_dir = args.out / f"seed{seed}"
        m = run_medtrain(
            run_dir,
            "experiment=retinamnist_regression",
            f"dataset.path={args.data.resolve()}",
            f"seed={seed}",
            *args.overrides,
        )
        runs.append(run_dir)
        row = " | ".join(f"{m[k]:.4f}" for k in KEYS)
        print(f"| seed {seed} | {row} | {m['train_seconds']:.0f} |")
    if len(runs) > 1:
        m = run_ensemble(runs, args.out / "ensemble")
        row = " | ".join(f"{m[k]:.4f}" for k in KEYS)
        print(f"| ensemble of {len(runs)} | {row} | - |")


if __name__ == "__main__":
    main()
