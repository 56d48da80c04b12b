"""Loop overhead: medtrain against a bare PyTorch script doing the same work (benchmarks/bare_loop.py),
run alternately in one invocation.

Usage: python benchmarks/overhead.py [--workload default|pneumoniamnist|all] [--pairs 3]
       [--epochs N] [--out /tmp/medtrain-bench/overhead]

For each pair it runs `medtrain <recipe>` and the bare script, each as its own process (start to
exit timed), and prints seconds per epoch (train + validation; medtrain's from history.csv, the
bare script's from its own clock; the epochs after the first) and whole-process seconds, with the
ratios of the medians. medtrain also writes its run folder (checkpoints, report, intervals,
provenance, the data check), which the whole-process time includes.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, chosen_workloads, machine

PNEUMONIA = ROOT.parent / "shared/data/medmnist/pneumoniamnist.npz"
RECIPES = {
    "default": [],
    "pneumoniamnist": ["experiment=pneumoniamnist", f"dataset.path={PNEUMONIA}"],
}
EPOCHS = {"default": 8, "pneumoniamnist": 6}


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout


def medtrain_run(workload: str, epochs: int, run_dir: Path) -> dict:
    overrides = [*RECIPES[workload], f"trainer.max_epochs={epochs}", "trainer.progress=false"]
    wall, _ = timed([sys.executable, "-m", "medtrain", *overrides, f"hydra.run.dir={run_dir}"])
    with open(run_dir / "history.csv", newline="") as f:
        epoch_s = [float(row["time_s"]) for row in csv.DictReader(f)]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"epoch_s": epoch_s, "wall_s": wall, "test_auc": metrics["test/auc"]}


def bare_run(workload: str, epochs: int) -> dict:
    script = Path(__file__).with_name("bare_loop.py")
    wall, out = timed([sys.executable, str(script), workload, f"--epochs={epochs}"])
    return json.loads(out.strip().splitlines()[-1]) | {"wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=[*RECIPES, "all"], default="all")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="default: 8 (default), 6 (others)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/medtrain-bench/overhead"))
    args = parser.parse_args()
    print(f"machine: {machine()}")
    workloads = chosen_workloads(args.workload, RECIPES, {"pneumoniamnist": PNEUMONIA})
    summary = {}
    for workload in workloads:
        epochs = args.epochs or EPOCHS[workload]
        rows = {"medtrain": [], "bare": []}
        for pair in range(args.pairs):
            rows["medtrain"].append(medtrain_run(workload, epochs, args.out / f"{workload}-{pair}"))
            rows["bare"].append(bare_run(workload, epochs))
            for name in rows:
                r = rows[name][-1]
                later = r["epoch_s"][1:] or r["epoch_s"]
                print(
                    f"{workload} pair {pair} {name:8s} epoch {statistics.mean(later):.3f} s  "
                    f"process {r['wall_s']:.1f} s  test AUC {r['test_auc']:.4f}",
                    flush=True,
                )
        epoch = {
            n: statistics.median(statistics.mean(r["epoch_s"][1:] or r["epoch_s"]) for r in rs)
            for n, rs in rows.items()
        }
        wall = {n: statistics.median(r["wall_s"] for r in rs) for n, rs in rows.items()}
        summary[workload] = {
            "epoch_s": epoch,
            "epoch_ratio": round(epoch["medtrain"] / epoch["bare"], 3),
            "process_s": wall,
            "process_ratio": round(wall["medtrain"] / wall["bare"], 3),
        }
        print(f"{workload}: {json.dumps(summary[workload])}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
