"""The one training/evaluation loop for every task: fit, train_one_epoch, evaluate, test."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from medtrain.data.loading import batch_length
from medtrain.engine import distributed
from medtrain.engine.acceleration import autocast, memory_format
from medtrain.engine.callbacks import (
    Epoch,
    EpochCallback,
    default_callbacks,
    save_checkpoints,
    save_history,
)
from medtrain.engine.resume import MEANT_WITHOUT_KEY, resume
from medtrain.engine.schedulers import optimizer_steps, steps_per_batch
from medtrain.errors import ConfigError, TrainingError
from medtrain.io import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) global random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(
    batch: dict[str, Any],
    device: torch.device,
    layout: torch.memory_format = torch.preserve_format,
) -> dict[str, Any]:
    """Move a batch's tensors (and lists of tensors of different sizes) to `device` (without
    waiting, from pinned memory); `layout` (e.g. channels-last) applies to the 4D `image`."""

    def move(value):
        if torch.is_tensor(value):
            return value.to(device, non_blocking=True)
        if isinstance(value, list) and value and torch.is_tensor(value[0]):
            return [v.to(device, non_blocking=True) for v in value]
        return value

    moved = {k: move(v) for k, v in batch.items()}
    image = moved.get("image")
    if layout is not torch.preserve_format and torch.is_tensor(image) and image.dim() in (4, 5):
        if image.dim() == 5 and layout == torch.channels_last:  # volumes: NDHWC
            layout = torch.channels_last_3d
        moved["image"] = image.contiguous(memory_format=layout)
    return moved


def train_one_epoch(
    model, loader, task, optimizer, scheduler, scaler, device, cfg: DictConfig, epoch: int, ema=None
) -> dict[str, float]:
    """One pass over the training split; returns `train/loss` (mean over batches) and `train/lr`.

    `ema`, when given, is a `torch.optim.swa_utils.AveragedModel` updated after every optimizer step.
    With several processes `model` is DistributedDataParallel and `loader` yields this process's
    share of each global batch; `train/loss` is then the global batches' mean loss.
    """
    model.train()
    total, batches = 0.0, 0
    lr = optimizer.param_groups[0]["lr"]  # the rate this epoch starts with
    accumulate = cfg.accumulate_grad_batches
    per_batch_schedule = steps_per_batch(scheduler)
    processes = distributed.world_size()
    shares = getattr(loader.batch_sampler, "shares", None)  # several processes: see ShardedBatches
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{cfg.max_epochs}",
        leave=False,
        disable=None if cfg.progress and distributed.is_main() else True,
    )
    layout = memory_format(cfg)
    for i, batch in enumerate(bar):
        batch = to_device(batch, device, layout)
        # Step after `accumulate` batches (or at the end of the epoch): the effective batch is larger.
        steps = (i + 1) % accumulate == 0 or i + 1 == len(loader)
        share = shares[i] if shares else 1.0
        with distributed.no_sync(model, steps):  # accumulated gradients are exchanged once
            with autocast(device, cfg.precision):
                loss = task.loss(task.forward(model, batch), batch)
            # The global batch's loss (each process weighs its share): every process sees the
            # same value, so that a NaN stops them all at the same batch.
            batch_loss = distributed.sum_across(loss.detach().float() * share)
            if not torch.isfinite(batch_loss):
                raise TrainingError(
                    f"loss became {batch_loss.item()} at epoch {epoch + 1}, batch {i}; "
                    "lower optimizer.lr or set trainer.gradient_clip_norm"
                )
            # Average over the accumulation window (the last window of an epoch may be shorter).
            window = min(accumulate, len(loader) - (i // accumulate) * accumulate)
            # DDP averages the processes' gradients; weighing each by share x processes makes that
            # the gradient of the global batch's mean loss, also for a last batch shared unevenly.
            weight = share * processes if processes > 1 else 1.0
            scaler.scale(loss * weight / window if processes > 1 else loss / window).backward()
        if steps:
            if cfg.gradient_clip_norm:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.gradient_clip_norm)
            scale = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            # fp16: a lowered loss scale means inf/NaN gradients, and the optimizer step was skipped.
            stepped = scaler.get_scale() >= scale
            if stepped and per_batch_schedule:
                scheduler.step()
            if stepped and ema is not None:
                ema.update_parameters(distributed.unwrap(model))
        total, batches = total + batch_loss.item(), batches + 1
        bar.set_postfix(loss=f"{total / batches:.4f}")
    return {"train/loss": total / max(batches, 1), "train/lr": lr}


@torch.no_grad()
def evaluate(
    model,
    loader,
    task,
    device,
    precision: str = "32",
    progress: bool = False,
    final: bool = False,
    loss_mean: str = "cases",
):
    """Run the model over a split; returns the task's collector (metrics, predictions) and mean loss.

    `loss_mean` (`trainer.loss_mean`): `cases`, the loss averaged over the split's cases (each
    batch's mean weighs by its size); `batches`, the mean of the batches' means, which counts a
    short last batch as much as a full one (runs before release 0.3 reported that).

    `final` marks the test pass, whose collector keeps what its `save` writes (masks, ...). With
    several processes each evaluates whole batches of the split dealt out in turn, and rank 0's
    collector receives every batch in the order of a single-process evaluation (without the model
    input `image`), so its metrics and files equal one process's; the other ranks' collectors stay
    empty and their loss is NaN.
    """
    model.eval()
    collector, total, weights = task.collector(final), 0.0, 0

    def computed():
        bar = tqdm(
            loader,
            desc="evaluate",
            leave=False,
            disable=None if progress and distributed.is_main() else True,
        )
        for batch in bar:
            batch = to_device(batch, device)
            with autocast(device, precision):
                outputs = task.forward(model, batch)
            loss = task.loss(outputs, batch).item()
            cases = batch_length(batch)
            if distributed.is_distributed():  # sent to rank 0
                batch = {k: v for k, v in batch.items() if k != "image"}
                outputs, batch = distributed.to_cpu(outputs), distributed.to_cpu(batch)
            yield outputs, batch, loss, cases if loss_mean == "cases" else 1

    total_batches = getattr(loader.batch_sampler, "total", len(loader))
    for outputs, batch, loss, weight in distributed.in_batch_order(computed(), total_batches):
        total, weights = total + loss * weight, weights + weight
        collector.update(outputs, batch)
    return collector, total / weights if weights else math.nan


def validation_row(collector: Any, val_loss: float, batches: int, epoch: int) -> dict:
    """An epoch's validation values (rank 0's), refused when the weights diverged in the epoch's
    last optimizer step, after the training loss was checked: the validation loss is then NaN or
    infinite (the metrics failed inside scikit-learn on NaN scores).

    Raises:
        TrainingError: saying what to change, as a training loss that diverges does.
    """
    if batches and not math.isfinite(val_loss):
        raise TrainingError(
            f"the validation loss became {val_loss} after epoch {epoch + 1} (the weights "
            "diverged in its last steps); lower optimizer.lr or set trainer.gradient_clip_norm"
        )
    return {"val/loss": val_loss, **collector.metrics("val")}


def loss_mean(trainer: Any) -> str:
    """`evaluate`'s `loss_mean` from the trainer config: a run saved before the key existed
    averaged batch means, and reruns so (`MEANT_WITHOUT_KEY`)."""
    return str(trainer.get("loss_mean", MEANT_WITHOUT_KEY["trainer.loss_mean"]))


def is_better(value: float, best: float | None, mode: str) -> bool:
    """Whether `value` beats `best`; a NaN (e.g. AUC of a one-class split) never does, except as the
    first value, so that a best checkpoint always exists."""
    if best is None:
        return True
    if math.isnan(value):
        return False
    return math.isnan(best) or (value > best if mode == "max" else value < best)


# The share of the average the first weights may keep at the end of a run before a fixed
# `trainer.ema_decay` is warned about (e^-3: its horizon is a third of the run's steps).
EMA_START_SHARE = math.exp(-3)


def ema_decay(cfg: DictConfig, steps_per_epoch: int) -> float | None:
    """The decay of the weights' exponential moving average for this run, or None without one.

    `trainer.ema_horizon` states the average's horizon, 1 / (1 - decay), as a share of the run's
    optimizer steps (`max_epochs` x `steps_per_epoch`), so that the average forgets its start
    (the first weights keep e^(-1/share) of it at the end) on 500 images as on 50,000.
    `trainer.ema_decay` is used as given, with a warning when the run is too short for it.
    """
    steps = max(cfg.max_epochs * steps_per_epoch, 1)
    horizon = cfg.get("ema_horizon")
    if horizon:
        decay = 1.0 - 1.0 / max(horizon * steps, 1.0)
        log.info(
            "weights averaged with decay %.6f: trainer.ema_horizon=%s of the run's %d optimizer "
            "steps (%.0f steps)",
            decay,
            horizon,
            steps,
            horizon * steps,
        )
        return decay
    if not cfg.ema_decay:
        return None
    decay = float(cfg.ema_decay)
    start = decay ** (steps - 1)  # the first update copies the weights; each later one decays them
    if start > EMA_START_SHARE:
        log.warning(
            "trainer.ema_decay=%s averages over about %.0f optimizer steps and this run makes %d: "
            "the first weights keep %.0f%% of the average that is validated, saved and tested; "
            "state the horizon as a share of the run instead (trainer.ema_decay=null "
            "trainer.ema_horizon=0.2) or lower the decay",
            cfg.ema_decay,
            1.0 / (1.0 - decay),
            steps,
            100 * start,
        )
    return decay


def new_state() -> dict[str, Any]:
    """The loop state a checkpoint carries (and resuming restores)."""
    return {"epoch": 0, "best_metric": None, "best_epoch": None, "stale_epochs": 0, "history": []}


def fit(
    model,
    task,
    loaders,
    optimizer,
    scheduler,
    device,
    cfg: DictConfig,
    run_dir: Path,
    extra_state: dict[str, Any],
    callbacks: Sequence[EpochCallback] = (),
    kept: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train with validation after every epoch (or every `trainer.val_every` epochs and after the
    last); then the epoch callbacks run in order: checkpoints
    (`checkpoints/best.pt`, `last.pt`), `history.csv`, TensorBoard, the log line, then `callbacks`.

    Args:
        cfg: the `trainer` config node.
        extra_state: saved into every checkpoint (config, class names, seed, ...).
        callbacks: called as `callback(epoch)` (a `medtrain.engine.callbacks.Epoch`) after the
            default ones; a hyperparameter search prunes a trial by raising from one.
        kept: when given, receives `best_val`: the best epoch's validation collector, loss and
            epoch number, which `test` then reuses instead of evaluating the split again.

    Returns:
        The loop state (history, best epoch and metric, ...), and `resumed_seconds`: the time of
        the epochs a resumed run had trained before (0 for a new run).
    """
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    main = distributed.is_main()
    net = distributed.unwrap(model)  # `model` is DistributedDataParallel with several processes
    # With an exponential moving average of the weights, the average is what is validated, saved
    # as "model" and tested; the raw weights are kept in the checkpoint to resume training.
    ema = None
    decay = ema_decay(cfg, optimizer_steps(len(loaders["train"]), cfg.accumulate_grad_batches))
    if decay is not None:
        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        ema.decay = decay  # saved in checkpoints: a resumed run is told when it changes
    evaluated = net if ema is None else ema.module
    state, resumed_seconds = new_state(), 0.0
    if cfg.resume:
        ckpt_dir, config = run_dir / "checkpoints", extra_state["config"]
        state = resume(cfg.resume, ckpt_dir, net, optimizer, scheduler, scaler, ema, config)
        # The epochs before the interruption: the run's training time is the whole run's.
        resumed_seconds = sum(float(row.get("time_s") or 0) for row in state["history"])
        distributed.decided(lambda: save_history(run_dir / "history.csv", state["history"]))
        check_last_validated(state, cfg, task.monitor)
    checkpoints = save_checkpoints(
        run_dir / "checkpoints", net, optimizer, scheduler, scaler, ema, extra_state
    )
    # Only rank 0 writes (checkpoints, history, TensorBoard) and runs `callbacks`; what they
    # raise (a sweep's pruning, a full disk) stops every rank.
    every_epoch = default_callbacks(run_dir, cfg, task.monitor, checkpoints) if main else []
    every_epoch += list(callbacks) if main else []
    seed = int(extra_state["seed"])
    try:
        for epoch in range(state["epoch"], cfg.max_epochs):
            if cfg.early_stopping_patience and state["stale_epochs"] >= cfg.early_stopping_patience:
                break
            # Randomness (shuffling, augmentation, dropout) is a function of (seed, epoch): resuming
            # at epoch k sees exactly what an uninterrupted run sees. Shuffling and augmentation
            # are the same on every rank; dropout is drawn per rank.
            seed_everything(seed * 1_000 + epoch + 1_000_003 * distributed.rank())
            loaders["train"].set_epoch(epoch)
            start = time.perf_counter()
            row = {"epoch": epoch + 1}
            row |= train_one_epoch(
                model, loaders["train"], task, optimizer, scheduler, scaler, device, cfg, epoch, ema
            )
            if validates(cfg, epoch):
                # Batch-norm statistics are each rank's own after its last batch: evaluate rank 0's.
                distributed.broadcast_module(evaluated)
                with views_in_validation(task, cfg):
                    collector, val_loss = evaluate(
                        evaluated,
                        loaders["val"],
                        task,
                        device,
                        cfg.precision,
                        loss_mean=loss_mean(cfg),
                    )
                row |= distributed.decided(
                    validation_row, collector, val_loss, len(loaders["val"]), epoch
                )
                step_on_plateau(scheduler, row, task.monitor, epoch)
            row["time_s"] = round(time.perf_counter() - start, 3)
            # Every rank keeps the same state from rank 0's numbers (early stopping agrees).
            improved = record(state, row, task.monitor, task.monitor_mode)
            if improved and kept is not None and reusable_validation(task, cfg):
                kept["best_val"] = (collector, val_loss, epoch + 1)  # the weights best.pt gets
            distributed.decided(run_callbacks, every_epoch, Epoch(epoch + 1, row, improved, state))
    finally:
        for callback in every_epoch:
            if hasattr(callback, "close"):
                callback.close()
    return state | {"resumed_seconds": resumed_seconds}


def validates(cfg: DictConfig, epoch: int) -> bool:
    """Whether epoch `epoch` (from 0) ends with a validation: every `trainer.val_every` epochs
    and after the last one (a long validation, e.g. whole images scored as instances, then costs
    less of the training budget)."""
    every = cfg.get("val_every", 1)  # checked by medtrain.engine.config
    return (epoch + 1) % every == 0 or epoch + 1 == cfg.max_epochs


@contextmanager
def views_in_validation(task, cfg: DictConfig):
    """The epochs' validation with the task's test-time views (`task.tta`), or, with
    `trainer.val_tta=false`, on the images alone (each view is one more pass of the network); the
    best checkpoint's validation for the threshold and the test pass always use the views."""
    if reusable_validation(task, cfg):  # the views are the final validation's
        yield
        return
    views, task.tta = task.tta, None
    try:
        yield
    finally:
        task.tta = views


def reusable_validation(task, cfg: DictConfig) -> bool:
    """Whether an epoch's validation equals the best checkpoint's final one (same views)."""
    return cfg.get("val_tta", True) or getattr(task, "tta", None) is None


def check_last_validated(state: dict[str, Any], cfg: DictConfig, monitor: str) -> None:
    """A resumed run with no epoch left to train must end on a validated epoch (else its last
    epoch, or with `trainer.val_every` every epoch so far, was never validated)."""
    history = state["history"]
    if state["epoch"] >= cfg.max_epochs and not (history and monitor in history[-1]):
        raise ConfigError(
            f"trainer.max_epochs={cfg.max_epochs}: the checkpoint has trained {state['epoch']} "
            f"epochs and its last one was not validated (trainer.val_every="
            f"{cfg.get('val_every', 1)}); give trainer.max_epochs > {state['epoch']} to train "
            "and validate again"
        )


def run_callbacks(callbacks: Sequence[EpochCallback], epoch: Epoch) -> None:
    for callback in callbacks:  # the place to add per-epoch work: pass `callbacks` to `fit`
        callback(epoch)


def step_on_plateau(scheduler, row: dict[str, Any], monitor: str, epoch: int) -> None:
    """Check that the monitored metric exists; step a schedule that follows it (reduce on
    plateau) unless it is NaN, which is logged instead."""
    if monitor not in row:
        raise ConfigError(
            f"task.monitor={monitor!r} is not a validation metric; "
            f"choose one of {sorted(k for k in row if k.startswith('val/'))}"
        )
    if math.isnan(row[monitor]):
        log.warning(
            "%s is NaN at epoch %d (does the val split hold every class?)", monitor, epoch + 1
        )
    elif not steps_per_batch(scheduler):
        scheduler.step(row[monitor])


def record(state: dict[str, Any], row: dict[str, Any], monitor: str, mode: str) -> bool:
    """Append the epoch to the state's history and update the best epoch; returns whether the
    monitored metric improved (never for an epoch without validation)."""
    state["history"].append(row)
    state["epoch"] = row["epoch"]
    if monitor not in row:  # an epoch without validation (trainer.val_every)
        return False
    improved = is_better(row[monitor], state["best_metric"], mode)
    if improved:
        state |= {"best_metric": row[monitor], "best_epoch": row["epoch"], "stale_epochs": 0}
    else:
        state["stale_epochs"] += 1
    return improved


def test(
    model, task, loaders, device, cfg: DictConfig, run_dir: Path, best_val: tuple | None = None
) -> dict[str, Any]:
    """Evaluate the best checkpoint: choose the threshold on val, then touch the test split once.

    The task's collector writes its files (`predictions.csv`, ...); the chosen threshold is stored in
    `best.pt` so that prediction and serving use it. Returns the final metrics (on every rank; rank
    0 reads the checkpoint, sends its weights, and computes and writes everything). `best_val`
    (`fit`'s `kept["best_val"]`): the validation of the best checkpoint's weights made during
    training, used when it is the checkpoint's epoch (not one before a resume) instead of a second
    pass over the split.
    """
    best_path = run_dir / "checkpoints" / "best.pt"
    held: dict[str, Any] = {}

    def load() -> None:  # rank 0; its weights are then sent to the other ranks
        held["checkpoint"] = load_checkpoint(best_path)
        model.load_state_dict(held["checkpoint"]["model"])

    distributed.decided(load)
    checkpoint = held.get("checkpoint")
    distributed.broadcast_module(model)
    best_epoch = distributed.decided(lambda: checkpoint["best_epoch"])
    if best_val is not None and best_val[2] == best_epoch:
        val, val_loss = best_val[:2]
    else:
        val, val_loss = evaluate(
            model, loaders["val"], task, device, cfg.precision, loss_mean=loss_mean(cfg)
        )
    threshold = distributed.decided(task.fit_threshold, val)  # only rank 0's collector is filled
    tested = len(loaders["test"].dataset) > 0  # a CV's fold without a test split: val alone
    test_collector, test_loss = (
        evaluate(
            model,
            loaders["test"],
            task,
            device,
            cfg.precision,
            final=True,
            loss_mean=loss_mean(cfg),
        )
        if tested
        else (None, None)
    )

    def results() -> dict[str, Any]:
        saved = (test_collector.save(run_dir) or {}) if tested else {}  # task files and numbers
        values = {
            **(test_collector.metrics("test") if tested else {}),
            **{f"test/{key}": value for key, value in saved.items()},
            **({"test/loss": test_loss} if tested else {}),
            **val.metrics("val"),
            "val/loss": val_loss,
            "best_epoch": checkpoint["best_epoch"],
            **threshold_entries(threshold, task.class_names),
        }
        checkpoint["threshold"] = threshold
        save_checkpoint(best_path, checkpoint)
        return values

    return distributed.decided(results)


def threshold_entries(threshold: Any, names: list[str]) -> dict[str, float]:
    """The decision threshold(s) as flat metrics.json entries: `threshold` (binary), one
    `threshold_<label>` per label (multi-label), `cut_points_<k>` (ordinal regression with fitted
    cut points), none (multi-class, segmentation, other regression)."""
    if isinstance(threshold, dict):  # e.g. an ordinal regression's grade cut points
        return {
            f"{key}_{k}": v for key, values in threshold.items() for k, v in enumerate(values, 1)
        }
    if isinstance(threshold, list):
        return {f"threshold_{n}": t for n, t in zip(names, threshold, strict=True)}
    return {} if threshold is None else {"threshold": threshold}
