"""Data-parallel training on the CPU: one process with 2 threads against two processes (torchrun,
Gloo) with one thread each, on the same workload; and, where there are GPUs, 1 against every GPU.

Usage: python benchmarks/distributed.py [--workload default|dsb2018|both] [--epochs N] [--repeats R]
       [--gpus] [--out /tmp/medtrain-bench/distributed]

Throughput is training samples (images, or patches) per second over the epochs after the first
(the first pays for start-up), from each epoch's `time_s` in history.csv, which includes the epoch's
validation pass. Both launches train the same global batch, so their runs are comparable; the
script also reports whether the two-process run's parameters were identical on both ranks
(run_info.json) and the test metrics of each.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, chosen_workloads, machine

DSB = ROOT.parent / "shared/data/dsb2018_nuclei"
WORKLOADS = {
    # the default experiment: synthetic 32 px images, the small CNN, batch 64 (2000 images/epoch)
    "default": [],
    # the DSB2018 nuclei recipe: U-Net on 128 px patches, batch 8 (188 patches/epoch)
    "dsb2018": ["experiment=dsb2018_nuclei", f"dataset.path={DSB}"],
}


def launch(processes: int, overrides: list[str], run_dir: Path, device: str) -> float:
    """Train once; returns the wall seconds of the whole command."""
    if processes == 1:
        command = [sys.executable, "-m", "medtrain"]
        env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() if device == "cpu" else 1)}
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc_per_node={processes}", "-m", "medtrain"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(
        [*command, *overrides, f"trainer.device={device}", "trainer.progress=false"]
        + [f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def throughput(run_dir: Path) -> dict:
    """Training images/s over the epochs after the first, and the run's headline numbers."""
    with open(run_dir / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    # "data: {'train': N, ...}": the samples of one training epoch (patches for DSB2018)
    line = re.search(r"data: \{'train': (\d+)", (run_dir / "train.log").read_text())
    train_images = int(line.group(1))
    later = history[1:] or history
    seconds = sum(float(r["time_s"]) for r in later)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    info = json.loads((run_dir / "run_info.json").read_text())
    checksums = info.get("parameter_checksums") or []
    return {
        "images_per_s": round(train_images * len(later) / seconds, 1),
        "epoch_s": round(seconds / len(later), 3),
        "test": {k: round(v, 4) for k, v in metrics.items() if k in ("test/auc", "test/dice")},
        "replicas_identical": len(set(checksums)) == 1 if checksums else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=[*WORKLOADS, "both"], default="both")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gpus", action="store_true", help="1 GPU against every GPU")
    parser.add_argument("--out", type=Path, default=Path("/tmp/medtrain-bench/distributed"))
    args = parser.parse_args()
    print(f"machine: {machine()}")
    chosen = chosen_workloads(args.workload, WORKLOADS, {"dsb2018": DSB})
    import torch

    device = "cuda" if args.gpus else "cpu"
    layouts = [1, 2] if not args.gpus else sorted({1, torch.cuda.device_count()})
    results = {}
    for name in chosen:
        overrides = [*WORKLOADS[name], f"trainer.max_epochs={args.epochs}"]
        for repeat in range(args.repeats):  # alternating, so that drift hits both alike
            for processes in layouts:
                run_dir = args.out / f"{name}-{processes}p-{repeat}"
                wall = launch(processes, overrides, run_dir, device)
                result = throughput(run_dir) | {"wall_s": round(wall, 1)}
                results.setdefault(f"{name} {processes} process(es)", []).append(result)
                print(f"{name:8s} {processes} process(es) repeat {repeat}: {json.dumps(result)}")
    print("\nmedian images/s:")
    for key, rows in results.items():
        rates = sorted(r["images_per_s"] for r in rows)
        print(f"  {key:28s} {rates[len(rates) // 2]:8.1f}  ({', '.join(map(str, rates))})")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
