"""Segmentation acceptance runs: experiment=synthetic_segmentation and experiment=dsb2018_nuclei.

Usage: python benchmarks/segmentation.py [--only synthetic|dsb2018] [--data ../shared/data/dsb2018_nuclei]
           [--split-seeds 42 0 1]   (DSB2018 on several seeded 47/10/10 splits; 42 is the recorded one)
Targets: synthetic test Dice >= 0.90 in CI time; DSB2018 test Dice >= 0.90, median absolute nucleus-count
error per image <= 10%, trained in under 20 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import ROOT, machine, run_medtrain


def report(name: str, run_dir: Path, m: dict) -> None:
    keys = [
        k
        for k in m
        if k.startswith("test/")
        and k.split("/")[1].startswith(("dice", "iou", "hd95_mm", "count", "area"))
    ]
    print(f"{name}: train {m['train_seconds']:.0f} s, best epoch {m['best_epoch']}")
    for key in keys:
        print(f"  {key} {m[key]:.4f}" if isinstance(m[key], float) else f"  {key} {m[key]}")
    agreement = json.loads((run_dir / "measurement_agreement.json").read_text())
    for klass, entry in agreement["classes"].items():
        print(f"  per-image agreement, {klass} ({agreement['unit']}):")
        print("  | image | true count | predicted | count error | true area | area error |")
        for image in entry["images"]:
            rel = image["area_error_relative"]
            print(
                f"  | {str(image['id'])[:12]} | {image['count_true']} | {image['count_pred']} | "
                f"{image['count_error']:+d} | {image['area_true_mm2']:.0f} | "
                + (f"{rel:+.1%}" if rel is not None else "n/a")
                + " |"
            )
        summary = entry["summary"]
        print(
            "  median |relative count error| "
            f"{summary['count_median_absolute_relative_error']:.3f}, count Bland-Altman "
            f"{summary['count_bland_altman']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["synthetic", "dsb2018"])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/dsb2018_nuclei")
    parser.add_argument("--out", type=Path, default=Path("/tmp/medtrain-bench/segmentation"))
    parser.add_argument("--split-seeds", type=int, nargs="+", default=[42])
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if args.only in (None, "synthetic"):
        run_dir = args.out / "synthetic"
        report(
            "synthetic_segmentation",
            run_dir,
            run_medtrain(run_dir, "experiment=synthetic_segmentation"),
        )
    if args.only in (None, "dsb2018"):
        if not args.data.is_dir():
            print(f"dsb2018 skipped: {args.data} not found")
            return
        summary = []
        for seed in args.split_seeds:
            run_dir = args.out / ("dsb2018" if seed == 42 else f"dsb2018_split{seed}")
            m = run_medtrain(
                run_dir,
                "experiment=dsb2018_nuclei",
                f"dataset.path={args.data.resolve()}",
                f"dataset.seed={seed}",
            )
            report(f"dsb2018_nuclei, split seed {seed}", run_dir, m)
            splits = json.loads((run_dir / "splits.json").read_text())
            print(
                "  split sizes:",
                {k: len(v) for k, v in splits.items()},
                "test ids:",
                [i[:8] for i in splits["test"]],
            )
            summary.append((seed, m))
        print("| split seed | test Dice | median count error | training s |")
        print("|---|---|---|---|")
        for seed, m in summary:
            print(
                f"| {seed} | {m['test/dice']:.4f} | "
                f"{m['test/count_median_abs_rel_error_nucleus']:.3f} | "
                f"{m['train_seconds']:.0f} |"
            )


if __name__ == "__main__":
    main()
