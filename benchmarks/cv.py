"""A k-fold cross-validation of a MedMNIST recipe with `medtrain cv`: per-fold, pooled out-of-fold
and fold-ensemble metrics, recomputed with scikit-learn from the CV's files, and the wall time.

Usage:
    python benchmarks/cv.py pneumoniamnist [--folds 5] [--out DIR] [overrides ...]
    python benchmarks/cv.py retinamnist_regression [--folds 5] [overrides ...]

The CV folder (default /tmp/medtrain-bench/cv_<experiment>) keeps finished folds: running the same
command again only pools and ensembles them. The wall time is the command's, so it is the whole
CV only on a first run. For PneumoniaMNIST it also says how finely the 624 test images measure
the ensemble's AUC against the target (`--auc-bar`, default 0.991).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import ROOT, machine
from sklearn import metrics as skm

DATA = {"pneumoniamnist": "pneumoniamnist", "retinamnist_regression": "retinamnist"}


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def auc_resolution(target: np.ndarray, prob: np.ndarray, bar: float, draws: int = 4000) -> str:
    """How finely this test split measures an AUC: DeLong's standard error (from the placement
    values) and the share of class-stratified bootstrap resamples whose AUC reaches `bar`."""
    pos, neg = prob[target == 1], prob[target == 0]
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    se = np.sqrt(wins.mean(1).var(ddof=1) / len(pos) + wins.mean(0).var(ddof=1) / len(neg))
    rng = np.random.default_rng(0)
    idx_pos, idx_neg = np.flatnonzero(target == 1), np.flatnonzero(target == 0)
    reached = 0
    for _ in range(draws):
        idx = np.concatenate([rng.choice(idx_pos, len(idx_pos)), rng.choice(idx_neg, len(idx_neg))])
        reached += skm.roc_auc_score(target[idx], prob[idx]) >= bar
    auc = skm.roc_auc_score(target, prob)
    return (
        f"test AUC {auc:.4f}, standard error {se:.4f} (DeLong; {len(pos)} positive, {len(neg)} "
        f"negative): {bar} is {(bar - auc) / se:+.2f} SE away; {reached / draws:.1%} of {draws} "
        f"class-stratified bootstrap resamples reach it"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("experiment", choices=sorted(DATA))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--auc-bar", type=float, default=0.991, help="the test AUC target")
    args, overrides = parser.parse_known_args()  # the rest: training overrides, anywhere
    args.overrides = overrides
    data = ROOT.parent / f"shared/data/medmnist/{DATA[args.experiment]}.npz"
    if not data.is_file():
        print(f"skipped: {data} not found")
        return
    out = (args.out or Path(f"/tmp/medtrain-bench/cv_{args.experiment}")).resolve()
    print(f"machine: {machine()}")
    command = [
        sys.executable,
        "-m",
        "medtrain",
        "cv",
        f"cv.folds={args.folds}",
        f"cv.dir={out}",
        f"experiment={args.experiment}",
        *args.overrides,  # the recipe's data path, from ROOT
    ]
    print(" ".join(command[1:]))
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    print(f"wall time of this command: {time.perf_counter() - start:.0f} s")
    summary = json.loads((out / "cv.json").read_text())
    print(f"fold training seconds: {summary['fold_train_seconds']}")
    oof = rows(out / "oof_predictions.csv")
    test = rows(out / "ensemble" / "predictions.csv")
    metrics = json.loads((out / "ensemble" / "metrics.json").read_text())
    if args.experiment == "pneumoniamnist":
        threshold = summary["threshold"]
        for name, table, prefix in (
            ("pooled OOF", oof, "oof"),
            ("fold ensemble, test", test, "test"),
        ):
            target = np.array([int(r["target"]) for r in table])
            prob = np.array([float(r["prob_1"]) for r in table])
            auc = skm.roc_auc_score(target, prob)
            acc = skm.accuracy_score(target, prob >= threshold)
            source = summary["oof"] if prefix == "oof" else metrics
            assert (
                abs(auc - source[f"{prefix}/auc"]) < 1e-9
                and abs(acc - source[f"{prefix}/acc"]) < 1e-9
            )
            print(
                f"{name}: AUC {auc:.4f}  acc {acc:.4f} (threshold {threshold:.3f} from OOF)  acc@0.5 {skm.accuracy_score(target, prob >= 0.5):.4f}"
            )
        target = np.array([int(r["target"]) for r in test])
        prob = np.array([float(r["prob_1"]) for r in test])
        print(f"fold ensemble, {auc_resolution(target, prob, args.auc_bar)}")
    else:
        from medtrain.metrics.regression import fit_cut_points, ordinal_metrics

        target = np.array([float(r["target"]) for r in oof])
        pred = np.array([float(r["pred"]) for r in oof])
        cuts = fit_cut_points(target, pred, (0, 4))
        rounded, fitted = (
            ordinal_metrics(target, pred, (0, 4)),
            ordinal_metrics(target, pred, (0, 4), cuts),
        )
        print(
            f"pooled OOF ({len(oof)}): rounded acc {rounded['acc']:.4f} qwk {rounded['qwk']:.4f}; "
            f"fitted cuts {np.round(cuts, 3).tolist()} acc {fitted['acc']:.4f} qwk {fitted['qwk']:.4f}"
        )
        t_target = np.array([float(r["target"]) for r in test])
        t_pred = np.array([float(r["pred"]) for r in test])
        for label, use in (("rounded", None), ("OOF-fitted cuts", cuts)):
            values = ordinal_metrics(t_target, t_pred, (0, 4), use)
            print(
                f"fold ensemble, test ({len(test)}), {label}: acc {values['acc']:.4f} qwk {values['qwk']:.4f} "
                f"mae {skm.mean_absolute_error(t_target, t_pred):.4f}"
            )
    print((out / "cv_summary.md").read_text())


if __name__ == "__main__":
    main()
