"""Epoch callbacks: what happens after each trained and validated epoch, as small callables that
`fit` runs in order (detectron2's hooks at epoch granularity, without a class hierarchy).

A callback is any callable taking an `Epoch`. The default list (see `default_callbacks`) saves the
checkpoints, appends to `history.csv`, writes TensorBoard scalars and logs the epoch; callers add
their own after these, e.g. a sweep's pruning, which raises to stop a trial. A callback with a
`close()` is closed when `fit` ends, also after an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.optim.swa_utils import AveragedModel

from medtrain.io import save_checkpoint, save_csv

log = logging.getLogger("medtrain.engine.loop")  # the epoch lines are the loop's


@dataclass
class Epoch:
    """What a callback sees once an epoch is trained and validated.

    Attributes:
        number: the epoch, from 1.
        row: its `history.csv` row: `epoch`, `train/loss`, `train/lr`, `val/loss`, the validation
            metrics, `time_s` (no `val/` entries for an epoch without validation:
            `trainer.val_every`).
        improved: whether the monitored metric beat the best so far (`best.pt` is this epoch).
        state: the loop state saved in every checkpoint: `epoch`, `best_metric`, `best_epoch`,
            `stale_epochs`, `history`.
    """

    number: int
    row: dict[str, Any]
    improved: bool
    state: dict[str, Any]


EpochCallback = Callable[[Epoch], None]


def ema_entries(model: nn.Module, ema: AveragedModel | None) -> dict[str, Any]:
    """The checkpoint entries of an exponential moving average of the weights: the raw weights
    (`training_model`, to resume training) and the averaged steps. The average itself is saved as
    `model`, since it is what is validated, tested and served."""
    if ema is None:
        return {}
    entries = {"training_model": model.state_dict(), "ema_steps": int(ema.n_averaged)}
    if getattr(ema, "decay", None) is not None:  # the decay this run's horizon gave
        entries["ema_decay"] = float(ema.decay)
    return entries


def save_checkpoints(
    folder: Path,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    ema: AveragedModel | None,
    extra_state: dict[str, Any],
) -> EpochCallback:
    """`best.pt` when the monitored metric improved, `last.pt` after every epoch: a plain dict of
    `extra_state` (config, class names, seed, ...), the loop state, the evaluated weights, and the
    optimizer, schedule and loss-scaler states that resuming restores."""
    evaluated = model if ema is None else ema.module

    def save(epoch: Epoch) -> None:
        checkpoint = {
            **extra_state,
            **epoch.state,
            "model": evaluated.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            **ema_entries(model, ema),
        }
        if epoch.improved:
            save_checkpoint(folder / "best.pt", checkpoint)
        save_checkpoint(folder / "last.pt", checkpoint)

    return save


def save_history(path: Path, history: list[dict[str, Any]]) -> None:
    """`history.csv`: one row per epoch, columns in the order they first appear, `time_s` last
    (an epoch without validation, `trainer.val_every`, comes before the `val/*` columns)."""
    fields = list(dict.fromkeys(key for row in history for key in row))
    fields = [f for f in fields if f != "time_s"] + ["time_s"] * ("time_s" in fields)
    save_csv(path, history, fields)


def write_history(path: Path) -> EpochCallback:
    """Rewrite `history.csv` (atomically) with every epoch so far."""
    return lambda epoch: save_history(path, epoch.state["history"])


class TensorBoard:
    """Every number of the epoch's row as a TensorBoard scalar, under `<run folder>/tensorboard`."""

    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter  # imported only when asked for

        self.writer = SummaryWriter(str(folder))

    def __call__(self, epoch: Epoch) -> None:
        for key, value in epoch.row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, epoch.number)

    def close(self) -> None:
        self.writer.close()


def log_epoch(max_epochs: int, monitor: str) -> EpochCallback:
    """One log line per epoch: losses, the monitored metric, `*best*` when it improved, seconds."""

    def write(epoch: Epoch) -> None:
        row = epoch.row
        if monitor not in row:  # trained, not validated (trainer.val_every)
            log.info(
                "epoch %d/%d  train/loss %.4f  (%.1fs)",
                epoch.number,
                max_epochs,
                row["train/loss"],
                row["time_s"],
            )
            return
        log.info(
            "epoch %d/%d  train/loss %.4f  val/loss %.4f  %s %.4f%s  (%.1fs)",
            epoch.number,
            max_epochs,
            row["train/loss"],
            row["val/loss"],
            monitor,
            row[monitor],
            "  *best*" if epoch.improved else "",
            row["time_s"],
        )

    return write


def default_callbacks(
    run_dir: Path, cfg: Any, monitor: str, checkpoints: EpochCallback
) -> list[EpochCallback]:
    """The callbacks every run has, in order: `checkpoints` (see `save_checkpoints`), history,
    TensorBoard (with `trainer.tensorboard`), the log line."""
    callbacks: list[EpochCallback] = [checkpoints, write_history(run_dir / "history.csv")]
    if cfg.tensorboard:
        callbacks.append(TensorBoard(run_dir / "tensorboard"))
    callbacks.append(log_epoch(cfg.max_epochs, monitor))
    return callbacks
