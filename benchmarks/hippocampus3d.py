"""MSD hippocampus with a 3D U-Net (`experiment=hippocampus3d`): mean 3D test Dice per label,
recomputed from the predicted NIfTI masks against the label files, volumes in mL against the ground
truth, training time and peak memory; the held-out volumes checked equal to hippocampus2d's.

Usage: python benchmarks/hippocampus3d.py [--out DIR] [--run DIR] [overrides ...]
    --run reads a finished run instead of training one.
Target: mean test Dice >= 0.88 over the two labels, training under 20 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from common import ROOT, machine, run_medtrain

DATA = ROOT.parent / "shared/data/msd_hippocampus"
LABELS = {1: "anterior", 2: "posterior"}


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    both = pred.sum() + true.sum()
    return 1.0 if both == 0 else 2.0 * float((pred & true).sum()) / float(both)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/medtrain-bench/hippocampus3d"))
    parser.add_argument("--run", type=Path)
    args, overrides = parser.parse_known_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found")
        sys.exit(0)
    print(f"machine: {machine()}")
    run_dir = args.run
    if run_dir is None:
        run_dir = args.out
        run_medtrain(run_dir, "experiment=hippocampus3d", f"dataset.path={DATA}", *overrides)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    info = json.loads((run_dir / "run_info.json").read_text())
    with open(run_dir / "predictions.csv", newline="") as handle:
        predictions = list(csv.DictReader(handle))
    scores = {name: [] for name in LABELS.values()}
    for row in predictions:
        pred = np.asarray(nib.load(run_dir / row["mask"]).dataobj)
        true = np.asarray(nib.load(DATA / "labels" / f"{row['id']}.nii.gz").dataobj)
        for value, name in LABELS.items():
            scores[name].append(dice(pred == value, true == value))
    means = {name: statistics.mean(values) for name, values in scores.items()}
    for name in LABELS.values():
        assert abs(means[name] - metrics[f"test/dice_{name}"]) < 1e-6, name
    splits = json.loads((run_dir / "splits.json").read_text())
    print(
        f"volumes: train {len(splits['train'])}, val {len(splits['val'])}, test {len(splits['test'])}"
    )
    print(
        f"test Dice: anterior {means['anterior']:.4f}, posterior {means['posterior']:.4f}, "
        f"mean {statistics.mean(means.values()):.4f} (metrics.json {metrics['test/dice']:.4f})"
    )
    print(
        f"test HD95: {metrics['test/hd95_mm']:.3f} mm; volume MAE: anterior "
        f"{metrics['test/volume_mae_ml_anterior']:.4f} mL, posterior "
        f"{metrics['test/volume_mae_ml_posterior']:.4f} mL; bias "
        f"{metrics['test/volume_bias_ml_anterior']:+.4f} / "
        f"{metrics['test/volume_bias_ml_posterior']:+.4f} mL"
    )
    print(
        f"best epoch {metrics['best_epoch']}, train {info['train_seconds']:.0f} s, "
        f"peak {info.get('peak_host_mb', float('nan')):.0f} MB"
    )


if __name__ == "__main__":
    main()
