"""experiment=synthetic_fusion: image + tabular fusion against image-only and tabular-only models
(test AUC), over several seeds.

Usage: python benchmarks/fusion.py [--seeds 0 1 2]
Target: the fused model beats both single-source models on test AUC.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import machine, run_medtrain

MODELS = {
    "fusion (concat)": [],
    "fusion (mean)": ["model.mode=mean"],
    "fusion (weighted)": ["model.mode=weighted"],
    "image only (cnn)": ["model=cnn"],
    "tabular only (tabular_mlp)": ["model=tabular_mlp"],
}


def tag(name: str) -> str:
    """A folder name for a model label: `fusion (mean)` -> `fusion_mean`."""
    return "_".join(name.replace("(", "").replace(")", "").split()[:2])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("/tmp/medtrain-bench/fusion"))
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print("| model | test AUC (mean over seeds) | per seed | train s per run |\n|---|---|---|---|")
    for name, overrides in MODELS.items():
        runs = [
            run_medtrain(
                args.out / f"{tag(name)}_{seed}",
                "experiment=synthetic_fusion",
                f"seed={seed}",
                *overrides,
            )
            for seed in args.seeds
        ]
        aucs = [r["test/auc"] for r in runs]
        seconds = statistics.mean(r["train_seconds"] for r in runs)
        print(
            f"| {name} | {statistics.mean(aucs):.4f} | {', '.join(f'{a:.4f}' for a in aucs)} | "
            f"{seconds:.1f} |"
        )


if __name__ == "__main__":
    main()
