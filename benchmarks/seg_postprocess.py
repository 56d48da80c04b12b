"""Choose segmentation post-processing on the validation split of a finished run.

Scores a run's best checkpoint on its val and test splits once per inference variant (with and
without `task.tta=hflip`), then re-thresholds the same logits for several `task.min_object_size`
values: mean foreground Dice and median absolute relative object-count error per image (per
foreground class, computed as in the run's metrics.json), the two DSB2018 targets. Pick on val;
test is printed beside it only to report the chosen setting.

Usage: python benchmarks/seg_postprocess.py RUN_DIR [--min-sizes 0 10 20 30 40]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from medtrain.analysis.agreement import measurement_agreement
from medtrain.analysis.measurements import measure_mask, totals
from medtrain.engine.build import build_datasets
from medtrain.inference.run import load_run
from medtrain.metrics.segmentation import case_metrics, summarize


def split_logits(run, dataset, flip: bool) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    """(id, logits at native size, true mask) of every image of `dataset`."""
    run.task.tta = "hflip" if flip else None
    out = []
    with torch.no_grad():
        for index in range(len(dataset)):
            sample = dataset[index]
            batch = {"image": sample["image"][None], "mask": sample["mask"][None]}
            logits = run.task.forward(run.model, batch)  # eval mode: native-size logits
            out.append((sample["id"], logits, sample["mask"].numpy().astype(np.uint8)))
    return out


def score(run, cases, min_size: int) -> tuple[float, str]:
    """Mean foreground Dice and, per foreground class, the median |relative count error| (as the run
    reports it in metrics.json) with `min_size` applied."""
    task = run.task
    task.min_object_size = min_size
    names = task.class_names
    rows, summaries = [], {"pred": [], "true": []}
    for image_id, logits, true in cases:
        masks = {"pred": task.predict_masks(logits)[0], "true": true}
        rows.append(case_metrics(masks["pred"], true, names))
        for source, mask in masks.items():
            objects = measure_mask(
                mask,
                class_names=names,
                image_id=image_id,
                source=source,
                connectivity=task.connectivity,
            )
            summaries[source] += totals(objects, [image_id], names[1:], source=source)
    agreement = measurement_agreement(summaries["true"], summaries["pred"])
    count_errors = " / ".join(
        f"{entry['summary']['count_median_absolute_relative_error']:.3f}"
        for entry in agreement["classes"].values()
    )
    return summarize(rows, names)["dice"], count_errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--min-sizes", type=int, nargs="+", default=[0, 10, 20, 30, 40])
    args = parser.parse_args()
    torch.set_num_threads(2)
    run = load_run(args.run_dir)
    datasets = build_datasets(run.cfg)  # once: the splits are scored with and without flip TTA
    print(
        "| flip TTA | min object size | val Dice | val median abs. rel. count error "
        "| test Dice | test median abs. rel. count error |"
    )
    print("|---|---|---|---|---|---|")
    for flip in (False, True):
        cases = {split: split_logits(run, datasets[split], flip) for split in ("val", "test")}
        for min_size in args.min_sizes:
            (val_dice, val_count), (test_dice, test_count) = (
                score(run, cases[split], min_size) for split in ("val", "test")
            )
            print(
                f"| {flip} | {min_size} | {val_dice:.4f} | {val_count} | "
                f"{test_dice:.4f} | {test_count} |"
            )


if __name__ == "__main__":
    main()
