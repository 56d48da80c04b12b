"""Learning-rate schedules. All but reduce-on-plateau step once per optimizer step; their lengths are
given in epochs (or fractions of training) so a config does not depend on the dataset size."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from omegaconf import DictConfig
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


# The keys of the schedules above that a value out of range turns into a rate that goes negative
# (training climbs the loss), is zero or rises where it should fall; torch and these functions
# take such values without a word (or fail deep inside: a division by zero). Each key: a test
# of the value (and optimizer.lr) and the rule an error states. Documented in
# docs/configuration.md#schedules; a schedule of the user's own is not checked, its keys may mean
# something else.
RANGES: dict[str, dict[str, tuple[Callable[[float, float], bool], str]]] = {
    "cosine_with_warmup": {
        "warmup_epochs": (lambda v, lr: v >= 0, "must be a number of epochs >= 0"),
        "min_lr_ratio": (
            lambda v, lr: 0 <= v <= 1,
            "must be in [0, 1], the share of optimizer.lr the rate decays to (below 0 the rate "
            "turns negative and training climbs the loss; above 1 it rises)",
        ),
    },
    "multistep": {
        "gamma": (
            lambda v, lr: 0 < v <= 1,
            "must be in (0, 1], the factor the rate is multiplied by at each milestone (0 stops "
            "training, a negative factor makes the rate negative, above 1 it rises)",
        ),
    },
    "one_cycle": {
        "pct_start": (
            lambda v, lr: 0 < v < 1,
            "must be in (0, 1), the share of training the rate rises for",
        ),
        "div_factor": (
            lambda v, lr: v >= 1,
            "must be >= 1: the rate starts at optimizer.lr / div_factor (below 1 it starts above "
            "its peak, 0 or less: infinite or negative)",
        ),
        "final_div_factor": (
            lambda v, lr: v >= 1,
            "must be >= 1: the rate ends at its start / final_div_factor (below 1 it ends above "
            "its start, 0 or less: infinite or negative)",
        ),
    },
    "reduce_on_plateau": {
        "factor": (
            lambda v, lr: 0 < v < 1,
            "must be in (0, 1), the factor the rate is multiplied by when the metric stalls",
        ),
        "patience": (
            lambda v, lr: isinstance(v, int) and v >= 0,
            "must be a whole number >= 0 (validations without improvement before a cut)",
        ),
        "min_lr": (
            lambda v, lr: 0 <= v <= lr,
            "must be in [0, optimizer.lr={lr}], the floor of the rate (above optimizer.lr a "
            "cut raises the rate)",
        ),
    },
}


def check_settings(scheduler: DictConfig | None, lr: float) -> None:
    """Refuse a value of one of medtrain's schedules that `RANGES` rules out, before anything
    is built.

    Args:
        lr: `optimizer.lr`, already checked to be a number > 0.

    Raises:
        ConfigError: naming the key, its value and the valid range.
    """
    if scheduler is None:
        return
    module, _, name = str(scheduler.get("_target_", "")).rpartition(".")
    if module != __name__:
        return
    for key, (ok, rule) in RANGES.get(name, {}).items():
        if key not in scheduler:  # the function's default
            continue
        value = scheduler[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and ok(value, lr)):
            raise ConfigError(f"scheduler.{key}={value!r}: {rule.format(lr=lr)}")


def steps_per_batch(scheduler: LRScheduler | ReduceLROnPlateau) -> bool:
    """Whether the trainer steps this scheduler after every optimizer step (else once per epoch)."""
    return not isinstance(scheduler, ReduceLROnPlateau)
