"""Loop overhead: medtrain against a bare PyTorch script doing the same work (benchmarks/bare_loop.py),
run alternately in one invocation.

Usage: python benchmarks/overhead.py [--workload default|pneumoniamnist|dsb2018|all] [--pairs 3]
       [--epochs N] [--interleaved] [--out /tmp/medtrain-bench/overhead] [medtrain overrides ...]

For each pair it runs `medtrain <recipe>` and the bare script, each as its own process (start to
exit timed), and prints seconds per epoch (train + validation; medtrain's from history.csv, the
bare script's from its own clock; the epochs after the first) and whole-process seconds, with the
ratios of the medians. medtrain also writes its run folder (checkpoints, report, intervals,
provenance, the data check), which the whole-process time includes.

With --interleaved, each "pair" is one process that trains both, epoch by epoch in turn: medtrain's
training (`medtrain.engine.training.train`, as `python -m medtrain` runs it) with an epoch callback
that trains and validates one epoch of the bare loop between medtrain's epochs (after medtrain's
epoch time is taken). Both then see the same process and the same moments of the machine, which
separate processes do not: on a shared 2-core machine a process's speed differs from the next
one's by several percent, more than the overhead measured (docs/benchmarks.md). PyTorch
Lightning's parity benchmark runs its two loops in one process for the same reason. Only epoch
times are compared; the whole-process ratio needs separate processes.
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
DSB2018 = ROOT.parent / "shared/data/dsb2018_nuclei"
RECIPES = {
    "default": [],
    "pneumoniamnist": ["experiment=pneumoniamnist", f"dataset.path={PNEUMONIA}"],
    "dsb2018": ["experiment=dsb2018_nuclei", f"dataset.path={DSB2018}"],
}
EPOCHS = {"default": 8, "pneumoniamnist": 6, "dsb2018": 4}
TEST_METRIC = {"default": "test/auc", "pneumoniamnist": "test/auc", "dsb2018": "test/dice"}


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout


def medtrain_run(workload: str, epochs: int, run_dir: Path, extra: list[str]) -> dict:
    overrides = [
        *RECIPES[workload],
        f"trainer.max_epochs={epochs}",
        "trainer.progress=false",
        *extra,
    ]
    wall, _ = timed([sys.executable, "-m", "medtrain", *overrides, f"hydra.run.dir={run_dir}"])
    with open(run_dir / "history.csv", newline="") as f:
        epoch_s = [float(row["time_s"]) for row in csv.DictReader(f)]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"epoch_s": epoch_s, "wall_s": wall, "test_metric": metrics[TEST_METRIC[workload]]}


def interleaved_run(workload: str, epochs: int, run_dir: Path, extra: list[str]) -> dict:
    """One process training medtrain and the bare loop epoch by epoch in turn (--interleaved)."""
    command = [
        sys.executable,
        str(Path(__file__)),
        "--child",
        "--workload",
        workload,
        "--epochs",
        str(epochs),
        "--out",
        str(run_dir),
        *extra,
    ]
    _, out = timed(command)
    return json.loads(out.strip().splitlines()[-1])


def interleaved_child(workload: str, epochs: int, run_dir: Path, extra: list[str]) -> None:
    import torch
    from bare_loop import bare_run as make_bare_run

    from medtrain.engine.config import compose_config
    from medtrain.engine.training import train

    torch.manual_seed(42)
    bare = make_bare_run(workload, epochs)
    bare_s: list[float] = []
    cfg = compose_config(
        [*RECIPES[workload], f"trainer.max_epochs={epochs}", "trainer.progress=false", *extra]
    )
    # The bare epoch runs after medtrain's epoch time is taken (epoch callbacks come after it).
    metrics = train(cfg, run_dir, callbacks=[lambda epoch: bare_s.append(bare.epoch())])
    with open(run_dir / "history.csv", newline="") as f:
        medtrain_s = [float(row["time_s"]) for row in csv.DictReader(f)]
    bare_result = bare.result()
    print(
        json.dumps(
            {
                "medtrain": {"epoch_s": medtrain_s, "test_metric": metrics[TEST_METRIC[workload]]},
                "bare": {"epoch_s": bare_s, "test_metric": bare_result["test_metric"]},
            }
        )
    )


def bare_run(workload: str, epochs: int) -> dict:
    script = Path(__file__).with_name("bare_loop.py")
    wall, out = timed([sys.executable, str(script), workload, f"--epochs={epochs}"])
    return json.loads(out.strip().splitlines()[-1]) | {"wall_s": wall}


def later_mean(result: dict) -> float:
    """Mean seconds per epoch after the first (which also pays one-off costs)."""
    return statistics.mean(result["epoch_s"][1:] or result["epoch_s"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=[*RECIPES, "all"], default="all")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="default: 8 (default), 6 (pneumoniamnist), 4 (dsb2018)",
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/medtrain-bench/overhead"))
    parser.add_argument(
        "--interleaved",
        action="store_true",
        help="each pair: one process training both, epoch by epoch in turn",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "overrides", nargs="*", help="more medtrain overrides, e.g. trainer.augment_on_device=true"
    )
    args = parser.parse_args()
    if args.child:
        epochs = args.epochs or EPOCHS[args.workload]
        interleaved_child(args.workload, epochs, args.out, args.overrides)
        return
    if args.interleaved:
        interleaved(args)
        return
    print(f"machine: {machine()}")
    summary = {}
    for workload in workloads(args):
        epochs = args.epochs or EPOCHS[workload]
        rows = {"medtrain": [], "bare": []}
        for pair in range(args.pairs):
            # ABBA order: a drift in the machine's speed during the pairs hits both alike.
            for name in ("medtrain", "bare") if pair % 2 == 0 else ("bare", "medtrain"):
                if name == "medtrain":
                    run_dir = args.out / f"{workload}-{pair}"
                    result = medtrain_run(workload, epochs, run_dir, args.overrides)
                else:
                    result = bare_run(workload, epochs)
                rows[name].append(result)
            for name in rows:
                r = rows[name][-1]
                print(
                    f"{workload} pair {pair} {name:8s} epoch {later_mean(r):.3f} s  "
                    f"process {r['wall_s']:.1f} s  test {r['test_metric']:.4f}",
                    flush=True,
                )
        epoch = {n: statistics.median(later_mean(r) for r in rs) for n, rs in rows.items()}
        wall = {n: statistics.median(r["wall_s"] for r in rs) for n, rs in rows.items()}
        pairs = list(zip(rows["medtrain"], rows["bare"], strict=True))
        summary[workload] = {
            "epochs": epochs,
            "overrides": args.overrides,
            "pairs": args.pairs,
            "epoch_s": epoch,
            "epoch_ratio": round(epoch["medtrain"] / epoch["bare"], 3),
            "epoch_ratio_per_pair": [round(later_mean(m) / later_mean(b), 3) for m, b in pairs],
            "process_s": wall,
            "process_ratio": round(wall["medtrain"] / wall["bare"], 3),
            "process_ratio_per_pair": [round(m["wall_s"] / b["wall_s"], 3) for m, b in pairs],
            "test_metric": {n: [r["test_metric"] for r in rs] for n, rs in rows.items()},
        }
        print(f"{workload}: {json.dumps(summary[workload])}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))


def workloads(args: argparse.Namespace) -> list[str]:
    """The workloads `--workload` names whose data are present."""
    return chosen_workloads(
        args.workload, RECIPES, {"pneumoniamnist": PNEUMONIA, "dsb2018": DSB2018}
    )


def interleaved(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}; medtrain and the bare loop interleaved in one process")
    summary = {}
    for workload in workloads(args):
        epochs = args.epochs or EPOCHS[workload]
        runs = []
        for pair in range(args.pairs):
            result = interleaved_run(
                workload, epochs, args.out / f"{workload}-i{pair}", args.overrides
            )
            runs.append(result)
            m, b = result["medtrain"], result["bare"]
            print(
                f"{workload} process {pair}: medtrain epochs {m['epoch_s']} bare epochs "
                f"{b['epoch_s']}; ratio {later_mean(m) / later_mean(b):.3f}; test "
                f"{m['test_metric']:.4f} / {b['test_metric']:.4f}",
                flush=True,
            )
        medians = {
            name: statistics.median(later_mean(r[name]) for r in runs)
            for name in ("medtrain", "bare")
        }
        summary[workload] = {
            "epochs": epochs,
            "overrides": args.overrides,
            "processes": args.pairs,
            "epoch_s": medians,
            "epoch_ratio": round(medians["medtrain"] / medians["bare"], 3),
            "epoch_ratio_per_process": [
                round(later_mean(r["medtrain"]) / later_mean(r["bare"]), 3) for r in runs
            ],
            "test_metric": {n: [r[n]["test_metric"] for r in runs] for n in ("medtrain", "bare")},
        }
        print(f"{workload}: {json.dumps(summary[workload])}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "interleaved.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
