"""Where the PneumoniaMNIST training loader's time goes: one epoch of medtrain's training loader,
as built by the recipe, against the bare loop's (benchmarks/bare_loop.py), with parts of
medtrain's per-sample work switched off one at a time, alternating, in one process.

Usage: python benchmarks/loader_ablation.py [--rounds 3] [--data PATH]

Variants:
- medtrain as is: augmentation seeded per (seed, epoch, sample) (`augmentation.seeding=pipeline`),
  each batch fetched whole (`ImageDataset.__getitems__`);
- samples one by one, then collated (the loader before `__getitems__`);
- no stream set (batches whole): the pipeline keeps drawing from where it was, which is not
  reproducible per sample;
- and Python-side draws from Python's own generator instead of the sample's numpy stream;
- the bare loop's loader (its augmentation unseeded).
Prints seconds per epoch for each, per round. Needs ../shared/data/medmnist/pneumoniamnist.npz.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import bare_loop
import numpy as np
import torch
from common import ROOT
from torch.utils.data import DataLoader

from medtrain.data import base, transforms
from medtrain.engine.build import build_datasets, build_loaders
from medtrain.engine.config import compose_config

DATA = ROOT.parent / "shared/data/medmnist/pneumoniamnist.npz"


def epoch_s(loader, epoch: int | None = None) -> float:
    if epoch is not None:
        loader.set_epoch(epoch)
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"{args.data} not found (../shared/data)")
    cfg = compose_config(["experiment=pneumoniamnist", f"dataset.path={args.data}"])
    datasets = build_datasets(cfg)
    loader = build_loaders(cfg, datasets, torch.device("cpu"))["train"]
    augment = datasets["train"].transform
    arrays = np.load(args.data)
    bare = DataLoader(
        bare_loop.Images(
            arrays["train_images"],
            arrays["train_labels"].reshape(-1),
            bare_loop.xray_pipeline(),
            zscore=True,
        ),
        batch_size=64,
        shuffle=True,
    )
    seeded_call, getitems = transforms.SeededAugment.__call__, base.ImageDataset.__getitems__

    def unseeded_call(self, index, **arrays):
        return self.pipeline(**arrays)

    def one_by_one(self, indices):
        return [self[i] for i in indices]

    def restore() -> None:
        transforms.SeededAugment.__call__, base.ImageDataset.__getitems__ = seeded_call, getitems
        augment.pipeline.set_random_state(*augment.stream)

    def samples() -> None:
        base.ImageDataset.__getitems__ = one_by_one

    def no_stream() -> None:
        transforms.SeededAugment.__call__ = unseeded_call

    def python_draws() -> None:
        no_stream()
        augment.pipeline.set_random_state(np.random.default_rng(0), random.Random(0))

    variants = {
        "medtrain as is": lambda: None,
        "samples one by one, collated": samples,
        "no stream set": no_stream,
        "no stream set, Python-side draws from Python's generator": python_draws,
    }
    times: dict[str, list[float]] = {name: [] for name in [*variants, "bare loop"]}
    for round_ in range(args.rounds):
        for name, switch in variants.items():
            restore()
            switch()
            times[name].append(epoch_s(loader, round_ + 1))
        restore()
        times["bare loop"].append(epoch_s(bare))
    samples = len(datasets["train"])
    print(f"PneumoniaMNIST training loader, {samples} samples, batch 64, {args.rounds} rounds")
    print("| variant | seconds an epoch, per round | median | µs a sample |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = float(np.median(values))
        rounds = ", ".join(f"{v:.3f}" for v in values)
        print(f"| {name} | {rounds} | {median:.3f} | {median / samples * 1e6:.0f} |")


if __name__ == "__main__":
    main()
