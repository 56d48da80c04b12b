"""What test-time augmentation costs and gives: a finished run's validation split evaluated with
every `task.tta` choice, timed, and scored (a choice is made on validation data, never on test).

    python benchmarks/tta.py --run-dir RUN [--repeats 3] [--split val]

Prints one line per choice: views, seconds per pass over the split (best of the repeats), the
ratio to no TTA, and the task's headline metrics on the split.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from medtrain.data.loading import make_loader
from medtrain.engine.build import build_datasets
from medtrain.engine.loop import evaluate
from medtrain.inference.run import load_run
from medtrain.tasks.tta import TTA_CHOICES, tta_views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--split", default="val", choices=("val", "test"))
    args = parser.parse_args()
    run = load_run(args.run_dir)
    data = build_datasets(run.cfg)[args.split]
    loader = make_loader(
        data, batch_size=int(run.cfg.trainer.eval_batch_size), shuffle=False, seed=0, num_workers=0
    )
    device = torch.device("cpu")
    headline = list(run.task.headline)[:3]
    base = None
    print(
        f"{args.run_dir}: {len(data)} {args.split} images, torch threads {torch.get_num_threads()}"
    )
    for choice in (None, *TTA_CHOICES):
        run.task.tta = choice
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            collector, _ = evaluate(run.model, loader, run.task, device)
            best = min(best, time.perf_counter() - start)
        base = base or best
        metrics = collector.metrics(args.split)
        shown = "  ".join(
            f"{k} {metrics.get(f'{args.split}/{k}', float('nan')):.4f}" for k in headline
        )
        views = len(tta_views(choice, 2))
        print(f"tta={choice!s:9} views {views}  {best:.3f} s  x{best / base:.2f}  {shown}")


if __name__ == "__main__":
    main()
