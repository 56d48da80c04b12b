"""One experiment end to end: check the config, build data, model and task, fit, test, and write
the run folder (metrics, predictions, report, provenance)."""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from medtrain import __version__
from medtrain.analysis.report import write_report
from medtrain.analysis.statistics import GROUPS_FILE
from medtrain.data.loading import collate
from medtrain.data.validation import built_warnings
from medtrain.data.volumes import VOLUME_AXES
from medtrain.engine import distributed
from medtrain.engine.acceleration import accelerated, memory_format
from medtrain.engine.build import (
    build_datasets,
    build_loaders,
    build_model,
    build_optimizer,
    build_scheduler,
    build_task,
    plain,
)
from medtrain.engine.callbacks import EpochCallback
from medtrain.engine.config import (
    check_against_data,
    check_inputs_read,
    check_model_output,
    first_samples,
    other_sizes,
    validate,
)
from medtrain.engine.data_check import check_before_training
from medtrain.engine.loop import fit, seed_everything, test
from medtrain.engine.memory import keep_freed_memory, peak_memory
from medtrain.engine.provenance import write_provenance
from medtrain.engine.resume import (
    check_before_resuming,
    check_new_run_folder,
    check_same_splits,
    resolve_auto,
    resume_path,
)
from medtrain.errors import ConfigError, DataError
from medtrain.io import read_json, save_json

log = logging.getLogger("medtrain")
VERSIONED = ("torch", "torchvision", "numpy", "hydra-core", "albumentations", "scikit-learn")


def configure_determinism(deterministic: bool) -> None:
    """Deterministic mode trades speed for bitwise-repeatable CUDA kernels (CPU runs already repeat)."""
    # cuBLAS needs a fixed workspace for repeatable matrix products. Every run has had it (MONAI
    # set it when imported; see provenance.determinism), deterministic or not: keep it so.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    # warn_only: an op without a deterministic CUDA kernel is logged by torch instead of failing the run.
    if deterministic or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    else:
        # The public function imports torch's whole compiler (about 1 s) to set its
        # `deterministic` flag, which is already off; set the same global flags without it.
        torch._C._set_deterministic_algorithms(False, warn_only=True)


def check_apart_from_data(cfg: DictConfig, run_dir: Path) -> None:
    """The run folder and the data must not hold each other: a run in a `seg_folder` dataset's
    folder wrote its predicted masks over the ground truth's `masks/`, a run in a manifest's
    folder writes beside its images, and a run inside an image folder is read as a class (and
    changes the data's fingerprint).

    Raises:
        ConfigError: naming both paths.
    """
    path = cfg.dataset.get("path") if "dataset" in cfg else None
    if not path:
        return  # generated data
    data, run = Path(str(path)).resolve(), run_dir.resolve()
    if data == run or run in data.parents or data in run.parents:
        where = "is" if data == run else "holds" if run in data.parents else "is inside"
        raise ConfigError(
            f"the run folder {run_dir} (hydra.run.dir) {where} the data (dataset.path={path}): "
            "a run writes masks, predictions and overlays where the data lie (and a folder "
            "dataset would read the run's files as data); train into a folder apart from the data"
        )


def in_multirun() -> bool:
    """Whether this is a job of a Hydra multirun (`medtrain -m`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def train(cfg: DictConfig, run_dir: Path, callbacks: Sequence[EpochCallback] = ()) -> dict:
    """Run one experiment, writing into `run_dir`, and return its final metrics.

    `callbacks` run after every epoch, after the default ones (see `medtrain.engine.callbacks`).
    Under torchrun every process calls this; they train one model with DistributedDataParallel,
    rank 0's `run_dir` is the run folder, and only rank 0 writes (`medtrain.engine.distributed`).
    """
    keep_freed_memory()  # also when called from Python rather than the command line
    device = distributed.setup(cfg, lambda: validate(cfg))
    # Under torchrun, rank 0's folder (every rank's Hydra resolved its own).
    run_dir = Path(distributed.decided(str, run_dir))
    distributed.decided(check_apart_from_data, cfg, run_dir)
    if cfg.trainer.resume == "auto":  # the run folder's last.pt if it has one, else a new run
        resolve_auto(cfg, run_dir)
    resumed = None  # what this session continues from, for its record in provenance.json
    if cfg.trainer.resume:  # a refused resume must leave the run folder as it was: check first
        resumed = distributed.decided(check_before_resuming, cfg, run_dir)
    checkpoints = (run_dir / "checkpoints").resolve()
    continues_here = bool(cfg.trainer.resume) and (
        resume_path(cfg.trainer.resume, checkpoints).resolve().parent == checkpoints
    )
    if not continues_here and not in_multirun():  # a grid's jobs: Hydra names their folders
        distributed.decided(check_new_run_folder, run_dir)
    configure_determinism(cfg.trainer.deterministic)
    # Environment, git state, data fingerprint, seeds and determinism: what a rerun is checked
    # against. A resumed session keeps the run's record and adds its own once its data passed
    # their checks (a refused session leaves no record).
    world = distributed.describe()
    if resumed is None:
        distributed.decided(lambda: write_provenance(run_dir, cfg, device, world) and None)
    seed_everything(cfg.seed)

    datasets = distributed.agreed(build_datasets, cfg)  # a file missing on one node stops all
    if distributed.is_distributed():  # the same cases and inferred values on every node
        distributed.check_same_config(cfg, datasets)
    distributed.agreed(check_against_data, cfg)
    if resumed is not None:  # before the data check rewrites anything of the run
        distributed.decided(check_same_splits, cfg, resumed, datasets)
    if cfg.dataset.get("tabular_columns"):  # before the data are read: the model must take them
        check_inputs_read(build_model(cfg), cfg.dataset.tabular_columns, cfg.model.get("_target_"))
    if cfg.trainer.get("check_data", True):  # runs saved before the key existed: on
        # Every sample is read once before training: a bad file stops the run here, one line per
        # problem, instead of mid-epoch; data_report.json in the run folder lists everything.
        distributed.decided(check_before_training, cfg, datasets, run_dir)
    elif distributed.is_main():  # said by the data check otherwise
        for line in built_warnings(datasets).values():
            log.warning("data: %s", line)
    if resumed is not None:
        distributed.decided(lambda: write_provenance(run_dir, cfg, device, world, resumed) and None)
    # Which images are in which split, so that the split can be reused (dataset.split_file=...).
    splits = {split: list(d.ids) for split, d in datasets.items()}
    distributed.decided(lambda: save_json(run_dir / "splits.json", splits) and None)
    groups = groups_of_cases(datasets)
    if groups:
        distributed.decided(lambda: save_json(run_dir / GROUPS_FILE, groups) and None)
    loaders = distributed.agreed(build_loaders, cfg, datasets, device)
    seed_everything(cfg.seed)  # model initialisation does not depend on how the data were made
    model = build_model(cfg)
    task = build_task(cfg)
    samples = first_samples(datasets["train"])
    first = collate(samples)
    sizes = other_sizes(datasets, task, samples[0])
    if sizes and distributed.is_main():
        log.warning("%s", sizes)
    distributed.agreed(check_model_output, model, task, first, cfg.loss)
    model = model.to(device, memory_format=memory_format(cfg.trainer, cfg.dataset.spatial_dims))
    task.loss_fn.to(device)
    trained = distributed.wrap(model, cfg.trainer, device)  # DistributedDataParallel, or itself
    trained = accelerated(trained, cfg.trainer)  # compiled when trainer.compile asks
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, len(loaders["train"]))
    # Cases per split (volumes, not their patches or slices; the samples an epoch draws when
    # they differ).
    per_epoch = len(datasets["train"])
    drawn = "" if per_epoch == len(datasets["train"].ids) else f" ({per_epoch} training samples)"
    log.info(
        "data: %s%s | model: %s (%s parameters) | device: %s | run folder: %s",
        {s: len(d.ids) for s, d in datasets.items()},
        drawn,
        type(model).__name__,
        f"{sum(p.numel() for p in model.parameters()):,}",
        device,
        run_dir,
    )
    processes = distributed.world_size()
    if processes > 1:
        batch = cfg.trainer.batch_size
        fewest, most = batch // processes, -(-batch // processes)
        share = str(fewest) if fewest == most else f"{fewest}-{most}"
        log.info(
            "distributed: %d processes (%s); global batch %d (%s per process) x %d accumulated = "
            "%d samples per optimizer step",
            processes,
            world["backend"],
            batch,
            share,
            cfg.trainer.accumulate_grad_batches,
            batch * cfg.trainer.accumulate_grad_batches,
        )
        if fewest < 2 and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
        ):
            log.warning(
                "trainer.batch_size=%d gives a process batches of %d sample: batch norm then "
                "normalises single samples; raise trainer.batch_size or set "
                "trainer.distributed.sync_batchnorm=true (CUDA)",
                batch,
                fewest,
            )

    start = time.perf_counter()
    extra_state = {
        "config": plain(cfg),
        "task": task.name,
        "class_names": task.class_names,
        "seed": cfg.seed,
        "medtrain_version": __version__,
        # Volumes are read in RAS axis order (`medtrain.data.volumes.canonical`); a run saved
        # without this key read them in each file's stored order, and is served so.
        "volume_axes": VOLUME_AXES,
        # Evaluation preprocessing and the training input size (H, W; or D, H, W): what serving
        # rebuilds.
        "preprocessing": datasets["test"].preprocessing()
        | {"input_size": list(first["image"].shape[2:])},
    }
    if processes > 1:  # what resuming compares (a single-process checkpoint has no entry)
        extra_state["world_size"] = processes
    encoding = getattr(datasets["train"], "tabular_state", None)
    if encoding is not None:  # how clinical columns become the model's input: what predict reads
        extra_state["tabular"] = encoding
    kept: dict = {}  # the best epoch's validation, reused by `test`
    state = fit(
        trained,
        task,
        loaders,
        optimizer,
        scheduler,
        device,
        cfg.trainer,
        run_dir,
        extra_state,
        callbacks,
        kept,
    )
    session_seconds = time.perf_counter() - start
    train_seconds = session_seconds + state["resumed_seconds"]  # a resumed run's: all its epochs
    if resumed is not None and state["epoch"] == resumed["after_epoch"]:
        # Tested again only (a finished job of a grid continued with trainer.resume=auto): its
        # training time is the one its run recorded, not its epochs' sum plus this test pass.
        train_seconds = recorded_train_seconds(resumed.get("run")) or train_seconds
    elif state["resumed_seconds"]:
        log.info(
            "trained %.1fs in this session, after %.1fs before it was resumed",
            session_seconds,
            state["resumed_seconds"],
        )
    # The replicas must be in step (DDP averages the same gradient into each): checked, not assumed.
    checksums = distributed.parameter_checksums(model) if processes > 1 else []
    if len(set(checksums)) > 1:
        log.warning("the processes' parameters differ after training: %s", checksums)
    metrics = test(model, task, loaders, device, cfg.trainer, run_dir, kept.get("best_val")) | {
        "epochs_trained": state["epoch"]
    }
    run_info = {"world": world, "parameter_checksums": checksums}
    return distributed.decided(finish, cfg, task, run_dir, metrics, train_seconds, device, run_info)


def groups_of_cases(datasets: dict) -> dict[str, str]:
    """{case id: group} of every split whose data name groups (`dataset.group_column`: the
    patient), for intervals that resample patients rather than images: one group per sample, or
    per volume of a dataset of slices (scored per volume)."""
    groups: dict[str, str] = {}
    for data in datasets.values():
        if getattr(data, "groups", None) is None:
            continue
        cases = data.ids if len(data.groups) == len(data.ids) else getattr(data, "cases", [])
        if len(cases) == len(data.groups):
            groups.update(zip(cases, data.groups, strict=True))
    return groups


def recorded_train_seconds(run: str | None) -> float | None:
    """The `train_seconds` a run folder's run_info.json recorded; None without a readable one."""
    try:
        info = read_json(Path(run) / "run_info.json") if run else None
    except DataError:
        return None
    seconds = info.get("train_seconds") if isinstance(info, dict) else None
    return float(seconds) if isinstance(seconds, (int, float)) else None


def finish(cfg, task, run_dir: Path, metrics: dict, train_seconds: float, device, run_info) -> dict:
    """Rank 0's end of a run: intervals, metrics.json, run_info.json, the report; returns the
    metrics."""
    # Bootstrap 95% intervals (and calibration) from the files test() just wrote, with a fixed seed
    # so that a rerun writes the same metrics.json.
    metrics |= task.intervals(run_dir, metrics)
    save_json(run_dir / "metrics.json", metrics)
    distributed_info = run_info if run_info["world"]["world_size"] > 1 else {}
    peak = peak_memory(device)
    save_json(
        run_dir / "run_info.json",
        {
            "train_seconds": round(train_seconds, 2),
            "device": str(device),
            "python": platform.python_version(),
            **{f"{name}": version(name) for name in VERSIONED},
            "medtrain": __version__,
            "epochs_trained": metrics["epochs_trained"],
            **peak,
            **distributed_info,
        },
    )
    summary = "  ".join(
        f"test/{k} {metrics[f'test/{k}']:.4f}" for k in task.headline if f"test/{k}" in metrics
    )
    log.info(
        "done in %.1fs of training; best epoch %s; %s",
        train_seconds,
        metrics["best_epoch"],
        summary,
    )
    log.info(
        "peak memory: %s",
        ", ".join(
            f"{k.removeprefix('peak_').removesuffix('_mb')} {v:.0f} MB" for k, v in peak.items()
        ),
    )
    if cfg.trainer.get("report", True):  # runs saved before the key existed: on
        # The config was composed by this run's user and has just been built: not checked again.
        log.info("report: %s", write_report(run_dir, checked=False))
    log.info("results in %s", run_dir)
    return metrics
