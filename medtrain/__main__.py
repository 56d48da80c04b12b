"""`python -m medtrain`: compose the config, build everything, fit, test, write the run folder."""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from medtrain import __version__
from medtrain.analysis.report import write_report
from medtrain.analysis.statistics import confidence_intervals
from medtrain.build import (
    build_datasets,
    build_loaders,
    build_model,
    build_optimizer,
    build_scheduler,
    build_task,
    plain,
)
from medtrain.check_data import check_before_training
from medtrain.config import check_against_data, check_model_output, unknown_key_hint, validate
from medtrain.data.loading import collate
from medtrain.errors import MedtrainError
from medtrain.io import save_json
from medtrain.provenance import write_provenance
from medtrain.trainer import fit, seed_everything, test

log = logging.getLogger("medtrain")
FAILED_JOBS: list[int] = []  # multirun jobs stopped by a config or data error
JOBS_STARTED: list[int] = []  # jobs Hydra ran; once one ran, its exit 1 is no command-line error
VERSIONED = ("torch", "torchvision", "numpy", "hydra-core", "albumentations", "scikit-learn")


def configure_determinism(deterministic: bool) -> None:
    """Deterministic mode trades speed for bitwise-repeatable CUDA kernels (CPU runs already repeat)."""
    if deterministic:  # cuBLAS needs a fixed workspace for repeatable matrix products
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    # warn_only: an op without a deterministic CUDA kernel is logged by torch instead of failing the run.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def train(cfg: DictConfig, run_dir: Path, on_epoch=None) -> dict:
    """Run one experiment, writing into `run_dir`, and return its final metrics.

    `on_epoch(epoch, row)` is called after every epoch (see `trainer.fit`)."""
    device = validate(cfg)
    configure_determinism(cfg.trainer.deterministic)
    # Environment, git state, data fingerprint, seeds and determinism: what a rerun is checked against.
    write_provenance(run_dir, cfg, device)
    seed_everything(cfg.seed)

    datasets = build_datasets(cfg)
    check_against_data(cfg)
    if cfg.trainer.get("check_data", True):  # runs saved before the key existed: on
        # Every sample is read once before training: a bad file stops the run here, one line per
        # problem, instead of mid-epoch; data_report.json in the run folder lists everything.
        check_before_training(cfg, datasets, run_dir)
    # Which images are in which split, so that the split can be reused (dataset.split_file=...).
    save_json(run_dir / "splits.json", {split: list(d.ids) for split, d in datasets.items()})
    loaders = build_loaders(cfg, datasets, device)
    seed_everything(cfg.seed)  # model initialisation does not depend on how the data were made
    model = build_model(cfg)
    first = collate([datasets["train"][0]])
    check_model_output(model, cfg, first)
    model = model.to(device)
    task = build_task(cfg)
    task.loss_fn.to(device)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, len(loaders["train"]))
    log.info(
        "data: %s | model: %s (%.2fM parameters) | device: %s | run folder: %s",
        {s: len(d) for s, d in datasets.items()},
        type(model).__name__,
        sum(p.numel() for p in model.parameters()) / 1e6,
        device,
        run_dir,
    )

    start = time.perf_counter()
    extra_state = {
        "config": plain(cfg),
        "task": task.name,
        "class_names": task.class_names,
        "seed": cfg.seed,
        "medtrain_version": __version__,
        # Evaluation preprocessing and the training input size (H, W): what serving rebuilds.
        "preprocessing": datasets["test"].preprocessing()
        | {"input_size": list(first["image"].shape[-2:])},
    }
    state = fit(
        model,
        task,
        loaders,
        optimizer,
        scheduler,
        device,
        cfg.trainer,
        run_dir,
        extra_state,
        on_epoch=on_epoch,
    )
    train_seconds = time.perf_counter() - start
    metrics = test(model, task, loaders, device, cfg.trainer, run_dir) | {
        "epochs_trained": state["epoch"]
    }
    # Bootstrap 95% intervals (and calibration) from the files test() just wrote, with a fixed seed
    # so that a rerun writes the same metrics.json.
    metrics |= confidence_intervals(run_dir, metrics=metrics)
    save_json(run_dir / "metrics.json", metrics)
    save_json(
        run_dir / "run_info.json",
        {
            "train_seconds": round(train_seconds, 2),
            "device": str(device),
            "python": platform.python_version(),
            **{f"{name}": version(name) for name in VERSIONED},
            "medtrain": __version__,
            "epochs_trained": state["epoch"],
        },
    )
    headline = ("auc", "acc", "balanced_acc", "sensitivity", "specificity", "f1", "acc@0.5")
    headline += ("dice", "iou", "hd95_mm", "precision", "recall")
    headline += ("mae", "rmse", "r2", "pearson", "qwk")
    summary = "  ".join(
        f"test/{k} {metrics[f'test/{k}']:.4f}" for k in headline if f"test/{k}" in metrics
    )
    log.info(
        "done in %.1fs of training; best epoch %s; %s",
        train_seconds,
        metrics["best_epoch"],
        summary,
    )
    log.info("report: %s", write_report(run_dir))
    log.info("results in %s", run_dir)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    JOBS_STARTED.append(len(JOBS_STARTED) + 1)
    try:
        metrics = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except MedtrainError as err:
        log.error("%s", err)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            FAILED_JOBS.append(HydraConfig.get().job.num)
            return None  # this job is recorded as failed (no metrics.json); the grid goes on
        sys.exit(2)
    # The monitored validation value (never a test value) is returned for sweepers that optimise it.
    return metrics.get(cfg.task.monitor)


def cli() -> None:
    """Entry point: Hydra's main, plus a list of valid keys when Hydra refuses an unknown one."""
    args = sys.argv[1:]
    if any(a.startswith("--config-name") or a.startswith("-cn") for a in args):
        # A rerun from a saved .hydra/config.yaml lacks conf/train.yaml's hydra settings: keep the
        # run-folder contract (train.log, outputs/multirun) unless the command line says otherwise.
        for key, value in (
            ("hydra.job.name", "train"),
            ("hydra.sweep.dir", "outputs/multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}"),
            ("+hydra.callbacks.sweep_summary._target_", "medtrain.callbacks.SweepSummary"),
        ):
            if not any(a.lstrip("+").startswith(f"{key.lstrip('+')}=") for a in args):
                sys.argv.append(f"{key}={value}")
    try:
        main()
    except SystemExit as exit_:
        # Hydra exits 1 both when it refuses the command line and after an error inside a job:
        # only the first, before any job started, is a config error (status 2, as the others).
        if exit_.code == 1 and not JOBS_STARTED:
            hint = unknown_key_hint(sys.argv[1:])
            if hint:
                print(hint, file=sys.stderr)
                sys.exit(2)
        raise
    if FAILED_JOBS:  # a grid went on past failed jobs; its exit status still says so
        print(
            f"medtrain: {len(FAILED_JOBS)} job(s) failed (job {', '.join(map(str, FAILED_JOBS))}); "
            "see sweep_summary.md in the sweep folder",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    cli()
