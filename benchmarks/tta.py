"""What test-time augmentation costs and gives: a finished run's validation split evaluated with
every `task.tta` choice, timed, and scored (a choice is made on validation data, never on test).

    python benchmarks/tta.py --run-dir RUN [--repeats 3] [--split val]

Prints one line per choice: views, seconds per pass over the split (best of the repeats), the
ratio to no TTA, and the task's headline metrics on the split. A choice the run's images do not
take (`dihedral` for a volume run: volumes are not turned) is skipped, and its line says why.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from medtrain.data.loading import make_loader
from medtrain.engine.build import build_datasets
from medtrain.engine.loop import evaluate
from medtrain.errors import ConfigError
from medtrain.inference.run import load_run
from medtrain.tasks.tta import TTA_CHOICES, tta_views


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--split", default="val", choices=("val", "test"))
    args = parser.parse_args(argv)
    run = load_run(args.run_dir)
    data = build_datasets(run.cfg)[args.split]
    loader = make_loader(
        data, batch_size=int(run.cfg.trainer.eval_batch_size), shuffle=False, seed=0, num_workers=0
    )
    device = torch.device("cpu")
    headline = list(run.task.headline)[:3]
    dims = int(run.cfg.dataset.get("spatial_dims") or 2)  # 3: a 3D network's volumes
    base = None
    items = "volumes" if dims == 3 else "images"
    print(
        f"{args.run_dir}: {len(data)} {args.split} {items}, torch threads {torch.get_num_threads()}"
    )
    for choice in (None, *TTA_CHOICES):
        try:
            views = len(tta_views(choice, dims))
        except ConfigError as err:  # dihedral turns volumes, which the task refuses
            print(f"tta={choice!s:9} skipped: {err}")
            continue
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
        print(f"tta={choice!s:9} views {views}  {best:.3f} s  x{best / base:.2f}  {shown}")


if __name__ == "__main__":
    main()
