"""Nuclei as instances on DSB2018 stage 1 (`experiment=dsb2018_instances`): train, choose the
instance separation on val, report test once.

1. Trains `medtrain experiment=dsb2018_instances dataset.path=../shared/data/dsb2018_stage1` into
   RUN (skipped with --run-dir of a finished run), timing it.
2. Scores the best checkpoint's val predictions (logits computed once) for every separation in the
   grid: connected components, and the distance-transform watershed for several smoothings `sigma`
   and saddle depths `h`, and for a network trained with contacts (`task.instances.method=
   contacts`) its learned separation for several contact thresholds, each with several minimum
   object sizes; prints val Dice, instance score, PQ and median count error, and
   picks the highest val instance score.
   With --tta, each test-time augmentation choice (`task.tta`) is part of the grid.
3. Scores test once with the chosen setting and with connected components (the same U-Net without
   instance separation), prints the per-image table and the means, also without 220b37f4 (an image
   whose labels mark one of several bright objects: shared/data's README).

Usage: python benchmarks/instances.py [--run-dir RUN] [--tta none dihedral] [training overrides ...]
(overrides, key=value, may come before or after --tta)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medtrain.engine.build import build_datasets
from medtrain.inference.run import load_run
from medtrain.metrics.instances import instance_metrics, summarize_instances
from medtrain.metrics.segmentation import case_metrics

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/dsb2018_stage1"
FLAGGED = "220b37f4"  # its labels mark one of several bright objects (shared/data/README)
# (sigma, h) of the watershed: the distance transform smoothed by sigma pixels, saddles h deep.
WATERSHEDS = ((0.0, 1.0), (0.0, 2.0), (1.0, 0.5), (1.0, 1.0), (2.0, 0.5), (2.0, 1.0), (2.0, 2.0))
WATERSHEDS += ((3.0, 0.5),)
# (threshold, sigma, h) of the learned contacts: pixels of this contact probability cut the mask.
CONTACTS = ((0.3, 1.0, 1.0), (0.5, 1.0, 1.0), (0.7, 1.0, 1.0), (0.5, 2.0, 0.5), (0.5, 1.0, 0.5))
# The eighth run's best val setting lay at the edge of the grid above (h = 1): deeper saddles.
CONTACTS += ((0.5, 1.0, 2.0), (0.7, 1.0, 1.5), (0.7, 1.0, 2.0), (0.7, 1.0, 3.0), (0.9, 1.0, 2.0))
MIN_SIZES = (20, 30)


def train(run_dir: Path, overrides: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "medtrain",
            "experiment=dsb2018_instances",
            f"dataset.path={DATA}",
            "trainer.progress=false",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ],
        cwd=ROOT,
        check=True,
    )
    return time.perf_counter() - start


def predictions(run, dataset) -> list[dict]:
    """Per image: id, predicted class mask before the minimum size, probability logits, truth."""
    cases = []
    with torch.no_grad():
        for index in range(len(dataset)):
            sample = dataset[index]
            batch = {"image": sample["image"][None], "mask": sample["mask"][None]}
            logits = run.task.forward(run.model, batch)  # eval mode: native-size logits
            cases.append(
                {
                    "id": sample["id"],
                    "logits": logits,
                    "mask": sample["mask"].numpy().astype(np.uint8),
                    "instances": sample["instances"].numpy(),
                }
            )
    return cases


def score(run, cases, separation: dict, min_size: int) -> tuple[list[dict], dict]:
    task = run.task
    task.min_object_size = min_size
    rows = []
    for case in cases:
        pred = task.predict_masks(case["logits"])[0]
        labels = task.instance_labels(pred, case["logits"], **separation)
        dice = case_metrics(pred, case["mask"], task.class_names)["dice_nucleus"]
        rows.append({"id": case["id"], "dice": dice, **instance_metrics(case["instances"], labels)})
    summary = summarize_instances(rows) | {"dice": float(np.mean([r["dice"] for r in rows]))}
    return rows, summary


def describe(separation: dict) -> str:
    if separation["method"] == "components":
        return "components"
    if separation["method"] == "contacts":
        return (
            f"contacts threshold={separation['threshold']} sigma={separation['sigma']} "
            f"h={separation['h']}"
        )
    return f"watershed sigma={separation['sigma']} h={separation['h']}"


def line(name: str, s: dict) -> str:
    return (
        f"| {name} | {s['dice']:.4f} | {s['instance_score']:.4f} | {s['pq']:.4f} | "
        f"{s['count_median_abs_rel_error']:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", type=Path, default=None, help="a finished run: skip training")
    parser.add_argument("--out", type=Path, default=Path("/tmp/medtrain-bench/instances"))
    parser.add_argument("--tta", nargs="+", default=["none"], help="task.tta choices to grid")
    parser.add_argument("train_overrides", nargs="*")
    args = parser.parse_args()
    # --tta takes every word after it: the overrides among them (key=value, ~key) go to training.
    overrides = [t for t in args.tta if "=" in t or t.startswith("~")]
    args.train_overrides += overrides
    args.tta = [t for t in args.tta if t not in overrides] or ["none"]
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found")
        return
    run_dir = args.run_dir
    if run_dir is None:
        run_dir = args.out / "run"
        seconds = train(run_dir, args.train_overrides)
        print(f"trained in {seconds / 60:.1f} min (whole process)")
    info = json.loads((run_dir / "run_info.json").read_text())
    print(f"training: {info['train_seconds'] / 60:.1f} min; run {run_dir}")
    torch.set_num_threads(2)
    run = load_run(run_dir)
    datasets = build_datasets(run.cfg)
    val_by_tta = {}
    for tta in args.tta:
        run.task.tta = None if tta == "none" else tta
        val_by_tta[tta] = predictions(run, datasets["val"])
    header = "| separation | Dice | instance score | PQ | median abs. rel. count error |\n|---|---|---|---|---|"
    print(f"\nval ({len(datasets['val'])} images):\n" + header)
    grid = [{"method": "components"}] + [
        {"method": "watershed", "sigma": sigma, "h": h} for sigma, h in WATERSHEDS
    ]
    if run.task.contacts:
        grid += [
            {"method": "contacts", "threshold": threshold, "sigma": sigma, "h": h}
            for threshold, sigma, h in CONTACTS
        ]
    best = None
    for tta, val in val_by_tta.items():
        for separation in grid:
            for min_size in MIN_SIZES:
                _, s = score(run, val, separation, min_size)
                print(line(f"tta {tta}, {describe(separation)}, min size {min_size}", s))
                if best is None or s["instance_score"] > best[0]["instance_score"]:
                    best = (s, separation, min_size, tta)
    _, chosen, min_size, tta = best
    print(f"\nchosen on val: tta {tta}, {describe(chosen)}, min size {min_size}")
    run.task.tta = None if tta == "none" else tta
    test = predictions(run, datasets["test"])
    print(f"\ntest ({len(datasets['test'])} images), once:\n" + header)
    results = {}
    for name, separation in {"chosen": chosen, "components": {"method": "components"}}.items():
        rows, s = score(run, test, separation, min_size)
        kept = [r for r in rows if not r["id"].startswith(FLAGGED)]
        without = summarize_instances(kept) | {"dice": float(np.mean([r["dice"] for r in kept]))}
        print(line(f"{name}: {describe(separation)}", s))
        if len(kept) < len(rows):  # the flagged image is in this run's test split
            print(line(f"{name}: {describe(separation)}, without {FLAGGED}", without))
        results[name] = {"rows": rows, "summary": s, "without_flagged": without}
    print(
        "\nper image (chosen separation):\n| image | Dice | instance score | PQ | true | predicted |"
    )
    print("|---|---|---|---|---|---|")
    for r in results["chosen"]["rows"]:
        print(
            f"| {r['id'][:8]} | {r['dice']:.3f} | {r['instance_score']:.3f} | {r['pq']:.3f} | "
            f"{int(r['count_true'])} | {int(r['count_pred'])} |"
        )
    chosen = chosen | {"min_size": min_size, "tta": tta}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps({"chosen": chosen, **results}, indent=2, default=float)
    )


if __name__ == "__main__":
    main()
