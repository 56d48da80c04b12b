"""Choose segmentation post-processing on the validation split of a finished run.

Scores a run's best checkpoint on its val and test splits once per inference variant (with and
without `task.flip_tta`), then re-thresholds the same logits for several `task.min_object_size`
values: mean foreground Dice and median absolute relative object-count error per image, the two
DSB2018 targets. Pick on val; test is printed beside it only to report the chosen setting.

Usage: python benchmarks/seg_postprocess.py RUN_DIR [--min-sizes 0 10 20 30 40]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from skimage.measure import label

from medtrain.build import build_datasets
from medtrain.inference import load_run
from medtrain.segmentation_metrics import case_metrics, summarize


def split_logits(run, dataset, flip: bool) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    """(id, logits at native size, true mask) of every image of `dataset`."""
    run.task.flip_tta = flip
    out = []
    with torch.no_grad():
        for index in range(len(dataset)):
            sample = dataset[index]
            batch = {"image": sample["image"][None], "mask": sample["mask"][None]}
            logits = run.task.forward(run.model, batch)  # eval mode: native-size logits
            out.append((sample["id"], logits, sample["mask"].numpy().astype(np.uint8)))
    return out


def score(run, cases, min_size: int) -> tuple[float, float]:
    """Mean foreground Dice and median |relative count error| with `min_size` applied."""
    task = run.task
    task.min_object_size = min_size
    rows, count_errors = [], []
    for _, logits, true in cases:
        pred = task.predict_masks(logits)[0]
        rows.append(case_metrics(pred, true, task.class_names))
        for klass in range(1, len(task.class_names)):
            n_true = label(true == klass, connectivity=task.connectivity).max()
            n_pred = label(pred == klass, connectivity=task.connectivity).max()
            if n_true:
                count_errors.append(abs(n_pred - n_true) / n_true)
    return summarize(rows, task.class_names)["dice"], float(np.median(count_errors))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--min-sizes", type=int, nargs="+", default=[0, 10, 20, 30, 40])
    args = parser.parse_args()
    torch.set_num_threads(2)
    run = load_run(args.run_dir)
    datasets = build_datasets(run.cfg)  # once: the splits are scored with and without flip TTA
    print(
        "| flip TTA | min object size | val Dice | val count error | test Dice | test count error |"
    )
    print("|---|---|---|---|---|---|")
    for flip in (False, True):
        cases = {split: split_logits(run, datasets[split], flip) for split in ("val", "test")}
        for min_size in args.min_sizes:
            (val_dice, val_count), (test_dice, test_count) = (
                score(run, cases[split], min_size) for split in ("val", "test")
            )
            print(
                f"| {flip} | {min_size} | {val_dice:.4f} | {val_count:.3f} | "
                f"{test_dice:.4f} | {test_count:.3f} |"
            )


if __name__ == "__main__":
    main()
