"""A CV's fold ensemble (`<cv.dir>/ensemble/`): the k fold models averaged into one network with
the out-of-fold threshold, tested once on the test split when the data has one, and saved as a run
folder that predicts, serves and exports like any run."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf, open_dict

from medtrain.analysis.statistics import copy_groups
from medtrain.data.loading import make_loader
from medtrain.engine.build import build_datasets, build_task, plain
from medtrain.engine.loop import evaluate, loss_mean, threshold_entries
from medtrain.errors import ConfigError
from medtrain.inference.average import average_network, save_average
from medtrain.inference.ensemble import evaluate_members, member_of
from medtrain.inference.run import LoadedRun
from medtrain.io import read_json, save_csv, save_json

if TYPE_CHECKING:
    from medtrain.experiments.cv import CrossValidation

log = logging.getLogger(__name__)


def fold_ensemble(
    cv: CrossValidation,
    runs: list[LoadedRun],
    task: Any,
    threshold: Any,
    oof: dict[str, Any],
    device: torch.device,
    tested: bool = True,
) -> dict[str, Any] | None:
    """`<cv.dir>/ensemble/`: the fold models as one `ModelAverage` network in `checkpoints/best.pt`
    (with fold 0's config, the data's own splits, and the out-of-fold threshold), evaluated once on
    the test split; returns its metrics. Without a test split (`tested` false) the network is
    made and saved untested (None for folds with no one network)."""
    out = cv.dir / "ensemble"
    base = runs[0]
    cfg = OmegaConf.create(plain(base.cfg))
    with open_dict(cfg):
        cfg.cv = {"fold": None, "folds_file": None}
    # The test split every fold saw; the data's val split may be empty (the folds pooled it).
    datasets = build_datasets(cfg, empty_test=not tested, empty_val=True)
    if not tested:
        return untested_ensemble(cv, runs, cfg, task, threshold, oof, datasets)
    preprocessing = datasets["test"].preprocessing()
    ensemble_task = build_task(cfg)
    ensemble_task.threshold = threshold
    ensemble_task.loss_fn.to(device)
    batch_size = int(cfg.trainer.eval_batch_size)
    start = time.perf_counter()
    encodings = [run.checkpoint.get("tabular") for run in runs]
    # Clinical columns encoded with each fold's training statistics: each fold model reads the
    # test split as its fold encodes it. The network saved to deploy maps one encoding (every
    # fold's categories) to each fold's (`member_inputs`); without such columns it is tested.
    own_encodings = any(e != encodings[0] for e in encodings[1:])
    model, no_network = None, None
    try:
        model = average_network(runs, cfg, task, preprocessing["normalize"])
    except ConfigError as err:
        if not own_encodings:
            raise
        no_network = str(err)
        log.warning("cv: the ensemble has no network to predict with (%s)", no_network)
    if own_encodings:
        members = [member_of(run) for run in runs]
        for member in members:
            member.model.to(device).eval()
            member.task.loss_fn.to(device)
        collector, loss, _ = evaluate_members(
            members, ensemble_task, "test", device, batch_size, final=True
        )
    else:
        model.to(device).eval()
        loader = make_loader(
            datasets["test"], batch_size=batch_size, shuffle=False, seed=0, num_workers=0
        )
        collector, loss = evaluate(
            model,
            loader,
            ensemble_task,
            device,
            str(cfg.trainer.precision),
            final=True,
            loss_mean=loss_mean(cfg.trainer),
        )
    out.mkdir(parents=True, exist_ok=True)
    saved = collector.save(out) or {}
    metrics = {
        **collector.metrics("test"),
        **{f"test/{k}": v for k, v in saved.items()},
        "test/loss": loss,
        **oof,
        "members": len(runs),
    }
    metrics |= threshold_entries(threshold, ensemble_task.class_names)
    copy_groups(base.run_dir, out)  # the folds' test split is the ensemble's: its patients too
    metrics |= ensemble_task.intervals(out, metrics)
    if model is not None:
        model.to("cpu")
        input_size = {"input_size": base.checkpoint["preprocessing"].get("input_size")}
        save_average(out, cfg, model, ensemble_task, preprocessing | input_size, base)
    save_ensemble(
        out,
        metrics,
        runs,
        ensemble_task,
        seconds=round(time.perf_counter() - start, 2),
        device=str(device),
        network="checkpoints/best.pt" if model is not None else None,
        **({"no_network": no_network} if no_network else {}),
    )
    members = [
        {"run_dir": str(run.run_dir), **read_json(run.run_dir / "metrics.json")} for run in runs
    ]
    keys = [k for k in metrics if k.startswith("test/") and "_ci_" not in k]
    rows = [{"run_dir": m["run_dir"], **{k: m.get(k) for k in keys}} for m in members]
    rows.append({"run_dir": "ensemble", **{k: metrics[k] for k in keys}})
    save_csv(out / "members.csv", rows, ["run_dir", *keys])
    try:
        from medtrain.analysis.report import write_report

        write_report(out, trust=cv.trust)
    except Exception as err:  # the results stand without their page; `medtrain report` retries
        log.warning("cv: no report.html for the ensemble (%s)", err)
    return metrics


def save_ensemble(
    out: Path, metrics: dict[str, Any], runs: list[LoadedRun], task: Any, **extra: Any
) -> None:
    """A fold ensemble's `metrics.json` and `ensemble.json` (its folds, task, rule and threshold,
    then `extra`)."""
    save_json(out / "metrics.json", metrics)
    record = {
        "kind": "fold_ensemble",
        "run_dirs": [str(run.run_dir) for run in runs],
        "task": task.name,
        "task_target": type(task).__module__ + "." + type(task).__qualname__,
        "combine": task.combine_rule,
        "threshold": "chosen on the out-of-fold predictions (../oof_predictions.csv)",
    }
    save_json(out / "ensemble.json", record | extra)


def untested_ensemble(cv, runs, cfg, task, threshold, oof, datasets) -> dict[str, Any] | None:
    """A fold ensemble of data without a test split: the folds' average network, saved to
    predict, serve and export with, and never tested (`metrics.json` holds the out-of-fold
    metrics and the threshold only). None when the folds encode clinical columns each their own
    way that no one encoding maps to (`member_inputs`)."""
    out = cv.dir / "ensemble"
    base = runs[0]
    preprocessing = datasets["train"].preprocessing()
    ensemble_task = build_task(cfg)
    ensemble_task.threshold = threshold
    try:
        model = average_network(runs, cfg, task, preprocessing["normalize"])
    except ConfigError as err:
        log.warning("cv: no fold ensemble: %s", err)
        return None
    out.mkdir(parents=True, exist_ok=True)
    input_size = {"input_size": base.checkpoint["preprocessing"].get("input_size")}
    save_average(out, cfg, model, ensemble_task, preprocessing | input_size, base)
    metrics = {**oof, "members": len(runs)}
    metrics |= threshold_entries(threshold, ensemble_task.class_names)
    save_ensemble(
        out,
        metrics,
        runs,
        ensemble_task,
        network="checkpoints/best.pt",
        tested=False,
        note="the data has no test split: judge the folds by ../oof_predictions.csv",
    )
    return metrics
