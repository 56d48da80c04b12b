"""Decoded-volume cache: seconds per epoch of reading every training slice of MSD hippocampus (image
and label) with dataset.cache=none, memory and disk (a fresh cache folder, then reused by a new run).

    python benchmarks/volume_cache.py [--data ../shared/data/msd_hippocampus] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import ROOT, machine

from medtrain.data.volume_slices import VolumeSlices


def epoch_seconds(dataset: VolumeSlices) -> float:
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset.read_image(index)
        dataset.read_mask(index)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "msd_hippocampus"))
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        raise SystemExit(f"{args.data}: not found (MSD hippocampus)")
    kwargs = {"num_classes": 3, "val_size": 26, "test_size": 52, "seed": 42}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        plans = [
            ("none", {"cache": "none"}),
            ("memory", {"cache": "memory"}),
            ("disk (first run: decode and write)", {"cache": "disk", "cache_dir": folder}),
            ("disk (next run: read .npy)", {"cache": "disk", "cache_dir": folder}),
        ]
        for name, options in plans:
            start = time.perf_counter()
            dataset = VolumeSlices(args.data, "train", **kwargs, **options)
            build = time.perf_counter() - start
            epochs = [epoch_seconds(dataset) for _ in range(args.epochs)]
            rows.append((name, len(dataset), build, epochs))
    print(f"machine: {machine()}")
    print(
        "| cache | slices | build s | "
        + " | ".join(f"epoch {e + 1} s" for e in range(args.epochs))
        + " |"
    )
    print("|---|---|---|" + "---|" * args.epochs)
    for name, count, build, epochs in rows:
        cells = " | ".join(f"{s:.2f}" for s in epochs)
        print(f"| {name} | {count} | {build:.2f} | {cells} |")


if __name__ == "__main__":
    main()
