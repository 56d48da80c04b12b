"""Time and score the default experiment (`python -m medtrain`, synthetic data, CPU).

Usage: python benchmarks/default_run.py [--repeats 3] [--out /tmp/medtrain-bench]
Target: under 60 s of training on 2 CPU cores with test AUC >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import machine, recompute_from_predictions, run_medtrain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/medtrain-bench/default"))
    args = parser.parse_args()
    print(f"machine: {machine()}")
    rows = []
    for i in range(args.repeats):
        run_dir = args.out / f"run{i}"
        m = run_medtrain(run_dir)
        auc, acc = recompute_from_predictions(run_dir, m["threshold"])
        assert abs(auc - m["test/auc"]) < 1e-6 and abs(acc - m["test/acc"]) < 1e-6
        rows.append(m)
        print(
            f"run {i}: train {m['train_seconds']:.1f} s (whole command {m['wall_seconds']:.1f} s), "
            f"test/auc {m['test/auc']:.4f}, test/acc {m['test/acc']:.4f}"
        )
    seconds = [r["train_seconds"] for r in rows]
    print(
        f"training time: median {statistics.median(seconds):.1f} s, max {max(seconds):.1f} s; "
        f"test/auc {rows[0]['test/auc']:.4f} (same seed, identical every run: "
        f"{len({r['test/auc'] for r in rows}) == 1})"
    )


if __name__ == "__main__":
    main()
