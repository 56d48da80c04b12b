"""A finished CV's results: the out-of-fold predictions pooled and scored, and the per-fold,
mean, sd, pooled and ensemble metrics as `cv_metrics.csv`, `cv_summary.md` and `cv_metrics.png`
(`medtrain.experiments.cv` runs the folds and calls these)."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import open_dict

from medtrain.data.folds import fold_units
from medtrain.data.loading import make_loader
from medtrain.engine.acceleration import autocast
from medtrain.engine.build import build_datasets, build_task
from medtrain.engine.loop import threshold_entries, to_device
from medtrain.inference.run import LoadedRun, load_run
from medtrain.io import atomic_write, read_json, save_csv

if TYPE_CHECKING:
    from medtrain.experiments.cv import CrossValidation

log = logging.getLogger(__name__)


# -- out-of-fold predictions -------------------------------------------------------------------
def load_folds(cv: CrossValidation) -> list[LoadedRun]:
    return [load_run(cv.fold_dir(k), key="cv.dir", trust=cv.trust) for k in range(cv.folds)]


@torch.no_grad()
def out_of_fold(cv: CrossValidation, runs: list[LoadedRun], device: torch.device):
    """Each fold's model over its own validation fold, pooled into one collector of fold 0's task
    (outputs in its units through `Task.combine`); the threshold chosen on the pooled outputs.
    Writes `oof/` and `oof_predictions.csv`; returns (task, metrics, threshold)."""
    task = build_task(runs[0].cfg)
    task.loss_fn.to(device)
    collector = task.collector(final=True)
    fold_of: dict[str, int] = {}
    for fold, run in enumerate(runs):
        with open_dict(run.cfg):  # the folder may have moved since the fold trained
            run.cfg.cv.folds_file = str(cv.dir / "folds.json")
        val = build_datasets(run.cfg)["val"]
        run.model.to(device)
        loader = make_loader(
            val,
            batch_size=int(run.cfg.trainer.eval_batch_size),
            shuffle=False,
            seed=0,
            num_workers=0,
        )
        for batch in loader:
            batch = to_device(batch, device)
            with autocast(device, str(run.cfg.trainer.precision)):
                output = run.task.forward(run.model, batch)
            collector.update(task.combine([output], [run.task]), batch)
        fold_of |= {str(i): fold for i in [*val.ids, *fold_units(val)]}  # slices, volumes
        run.model.to("cpu")
    threshold = task.fit_threshold(collector)
    folder = cv.dir / "oof"
    folder.mkdir(parents=True, exist_ok=True)
    saved = collector.save(folder) or {}
    metrics = collector.metrics("oof") | {f"oof/{k}": v for k, v in saved.items()}
    metrics |= threshold_entries(threshold, task.class_names)
    predictions = folder / "predictions.csv"
    if predictions.is_file():  # the rows with the fold that predicted them
        with predictions.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        fields = ["id", "fold", *(k for k in rows[0] if k != "id")] if rows else ["id", "fold"]
        for row in rows:
            row["fold"] = fold_of[row["id"]]
            for key, value in row.items():  # files the task wrote (masks/...): from cv.dir
                if isinstance(value, str) and value and (folder / value).is_file():
                    row[key] = f"{folder.name}/{value}"
        save_csv(cv.dir / "oof_predictions.csv", rows, fields)
        predictions.unlink()
    return task, metrics, threshold


# -- summaries -----------------------------------------------------------------------------------
def summary_rows(
    cv: CrossValidation, task: Any, oof: dict[str, Any], ensemble: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of `cv_metrics.csv`: one per fold (its val and test metrics), `mean`, `sd` (ddof 1),
    `oof_pooled` (in the val columns) and `fold_ensemble` (in the test columns)."""
    per_fold = [read_json(cv.fold_dir(k) / "metrics.json") for k in range(cv.folds)]
    # Volumes: the structures' volume error in mL too, what a volume run is judged by besides Dice.
    volumes = sorted(
        {k.split("/", 1)[1] for m in per_fold for k in m if k.startswith("test/volume_mae_ml")}
    )
    names = [*task.headline, *volumes, "loss"]
    # A metric no fold defines may still be pooled (the AUC of folds of one class each, as in a
    # leave-one-patient-out CV) or the ensemble's: its column stays.
    pooled = {"val": {k.removeprefix("oof/"): v for k, v in oof.items()}, "test": ensemble or {}}

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and math.isfinite(value)

    columns = [
        f"{split}/{name}"
        for split in ("val", "test")
        for name in names
        if any(number(m.get(f"{split}/{name}")) for m in per_fold)
        or number(pooled[split].get(name if split == "val" else f"test/{name}"))
    ]
    rows: list[dict[str, Any]] = [
        {"row": f"fold_{k}", **{c: m.get(c) for c in columns}} for k, m in enumerate(per_fold)
    ]
    for label, ddof in (("mean", None), ("sd", 1)):
        row: dict[str, Any] = {"row": label}
        for column in columns:
            values = np.array([r[column] for r in rows[: cv.folds]], dtype=np.float64)
            values = values[np.isfinite(values)]
            if len(values) > (ddof or 0):
                row[column] = float(values.std(ddof=ddof) if ddof else values.mean())
        rows.append(row)
    rows.append(
        {
            "row": "oof_pooled",
            **{c: oof.get("oof/" + c[4:]) for c in columns if c.startswith("val/")},
        }
    )
    if ensemble is not None:
        rows.append(
            {
                "row": "fold_ensemble",
                **{c: ensemble.get(c) for c in columns if c.startswith("test/")},
            }
        )
    return rows, ["row", *columns]


# Pooled out-of-fold AUC this far below every fold's own: the folds' scores are not comparable.
POOLED_AUC_DROP = 0.02


def scales_apart(fold_rows: list[dict[str, Any]], oof: dict[str, Any]) -> list[str]:
    """A note (also logged) when the pooled out-of-fold AUC lies below every fold's own AUC by
    `POOLED_AUC_DROP`: each fold model ranks its cases well, but their probabilities are on other
    scales, so a threshold chosen on the pooled predictions may suit neither a fold model nor
    their ensemble."""
    pooled = oof.get("oof/auc")
    folds = [r.get("val/auc") for r in fold_rows]
    if not isinstance(pooled, (int, float)) or not all(isinstance(f, (int, float)) for f in folds):
        return []
    if pooled >= min(folds) - POOLED_AUC_DROP:
        return []
    note = (
        f"The pooled out-of-fold AUC ({pooled:.4f}) is below every fold's own "
        f"({min(folds):.4f}-{max(folds):.4f}): each fold model ranks its cases, but their "
        "probabilities lie on other scales (short or unstable training?), so the threshold "
        "chosen on the pooled predictions may suit neither a fold model nor the ensemble: check "
        "the ensemble's sensitivity and specificity, or train the folds longer."
    )
    log.warning("cv: %s", note)
    return [note]


def write_summary(
    cv: CrossValidation, rows: list[dict[str, Any]], columns: list[str], notes: list[str]
) -> None:
    """`cv_metrics.csv`, `cv_summary.md` and `cv_metrics.png`."""
    save_csv(cv.dir / "cv_metrics.csv", rows, columns)

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, (int, float)) and np.isfinite(value) else ""

    # One line per metric (the CSV has one per fold): folds side by side read best.
    labels = [str(r["row"]) for r in rows]
    lines = [
        f"# Cross-validation: {cv.folds} folds ({cv.dir})",
        "",
        "| metric | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
        *(
            f"| {column} | " + " | ".join(cell(r.get(column)) for r in rows) + " |"
            for column in columns[1:]
        ),
        "",
        "Columns: each fold's val (its held-out fold) and test metrics; mean and sd (ddof 1) of "
        "the folds; `oof_pooled`: every train/val case predicted by the fold model that did not "
        "train on it, scored together (val rows); `fold_ensemble`: the fold models averaged on "
        "the test split (test rows).",
        "",
        *notes,
    ]
    atomic_write(cv.dir / "cv_summary.md", lambda handle: handle.write("\n".join(lines) + "\n"))
    plot_folds(cv.dir / "cv_metrics.png", rows, columns)


def plot_folds(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Each headline metric: the folds' values (val and test), their mean +- sd, the pooled
    out-of-fold value and the fold ensemble's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(c.split("/", 1)[1] for c in columns[1:] if not c.endswith("/loss")))[
        :4
    ]
    if not names:
        return
    by_row = {r["row"]: r for r in rows}
    folds = [r for r in rows if str(r["row"]).startswith("fold_") and r["row"] != "fold_ensemble"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        for x, split in enumerate(("val", "test")):
            column = f"{split}/{name}"
            values = [r.get(column) for r in folds if isinstance(r.get(column), (int, float))]
            if not values:
                continue
            axis.scatter(
                [x] * len(values),
                values,
                color="tab:blue",
                alpha=0.6,
                label="folds" if x == 0 else None,
            )
            mean, sd = by_row["mean"].get(column), by_row["sd"].get(column)
            if mean is not None:
                axis.errorbar(
                    x + 0.15,
                    mean,
                    yerr=sd or 0,
                    fmt="o",
                    color="black",
                    capsize=4,
                    label="mean +- sd" if x == 0 else None,
                )
        pooled = by_row.get("oof_pooled", {}).get(f"val/{name}")
        if isinstance(pooled, (int, float)):
            axis.scatter([0.3], [pooled], marker="*", s=120, color="tab:orange", label="pooled OOF")
        ensembled = by_row.get("fold_ensemble", {}).get(f"test/{name}")
        if isinstance(ensembled, (int, float)):
            axis.scatter(
                [1.3], [ensembled], marker="*", s=120, color="tab:red", label="fold ensemble"
            )
        axis.set_xticks([0, 1], ["val (held-out fold)", "test"])
        axis.set_xlim(-0.5, 1.6)
        axis.set_title(name)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110), mode="wb")
    plt.close(fig)
