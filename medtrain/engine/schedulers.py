"""Learning-rate schedules. All but reduce-on-plateau step once per optimizer step; their lengths are
given in epochs (or fractions of training) so a config does not depend on the dataset size."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, ReduceLROnPlateau

from medtrain.errors import ConfigError


def optimizer_steps(batches: int, accumulate: int) -> int:
    """Optimizer steps an epoch of `batches` makes, stepping every `accumulate` batches and at the
    end of the epoch (`medtrain.engine.loop.train_one_epoch`): what schedules and the weights'
    average are sized by."""
    return math.ceil(batches / accumulate)


def constant(optimizer: Optimizer, epochs: int, steps_per_epoch: int) -> LambdaLR:
    """No schedule: the optimizer's learning rate throughout."""
    return LambdaLR(optimizer, lambda step: 1.0)


def cosine_with_warmup(
    optimizer: Optimizer,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up for `warmup_epochs`, then cosine decay to `min_lr_ratio` x the base rate."""
    total = max(epochs * steps_per_epoch, 1)
    warmup = int(warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def multistep(
    optimizer: Optimizer,
    epochs: int,
    steps_per_epoch: int,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
) -> LambdaLR:
    """Multiply the rate by `gamma` at each milestone, a fraction of training (0.5 = half-way).

    Raises:
        ConfigError: a milestone outside (0, 1], such as an epoch number, which training would
            never reach.
    """
    wrong = [m for m in milestones if isinstance(m, bool) or not 0 < m <= 1]
    if wrong:
        given = list(milestones)
        within = all(not isinstance(m, bool) and 0 < m <= epochs for m in given)
        meant = (  # read as epochs: their fractions, or that training never reaches them
            f"as epochs of trainer.max_epochs={epochs} they are scheduler.milestones="
            f"{[round(m / epochs, 3) for m in given]}"
            if within
            else f"{wrong} lie outside it, as epochs too (trainer.max_epochs={epochs})"
        )
        raise ConfigError(
            f"scheduler.milestones={given}: milestones are fractions of training in (0, 1] "
            f"(0.5: half-way), not epochs; {meant}"
        )
    steps = sorted(int(m * epochs * steps_per_epoch) for m in milestones)
    return LambdaLR(optimizer, lambda step: gamma ** sum(step >= s for s in steps))


def one_cycle(
    optimizer: Optimizer,
    epochs: int,
    steps_per_epoch: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> OneCycleLR:
    """Smith's one-cycle policy peaking at the optimizer's learning rate."""
    return OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in optimizer.param_groups],
        total_steps=max(epochs * steps_per_epoch, 1),
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
    )


def reduce_on_plateau(
    optimizer: Optimizer,
    epochs: int,
    steps_per_epoch: int,
    mode: str = "max",
    factor: float = 0.1,
    patience: int = 3,
    min_lr: float = 0.0,
) -> ReduceLROnPlateau:
    """Cut the rate by `factor` when the monitored validation metric stalls (stepped after each
    validation: `patience` counts validations, every `trainer.val_every` epochs)."""
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
        raise ConfigError(f"scheduler.patience={patience!r}: must be a whole number >= 0")
    return ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience, min_lr=min_lr)


def steps_per_batch(scheduler: LRScheduler | ReduceLROnPlateau) -> bool:
    """Whether the trainer steps this scheduler after every optimizer step (else once per epoch)."""
    return not isinstance(scheduler, ReduceLROnPlateau)
