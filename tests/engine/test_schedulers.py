"""Learning-rate schedules: values at known steps."""

import pytest
import torch

from medtrain.engine import schedulers as S


def rates(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def make_opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_cosine_with_warmup():
    opt = make_opt()
    lr = rates(
        S.cosine_with_warmup(opt, epochs=4, steps_per_epoch=10, warmup_epochs=1, min_lr_ratio=0.1),
        opt,
        40,
    )
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(
        1.0
    )  # linear warm-up over 10 steps
    assert lr[10] == pytest.approx(1.0)
    assert lr[25] == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 15 / 30)).item())
    )
    assert min(lr) >= 0.1 - 1e-9


def test_multistep_milestones_are_fractions_of_training():
    opt = make_opt()
    lr = rates(
        S.multistep(opt, epochs=10, steps_per_epoch=2, milestones=[0.5, 0.75], gamma=0.1), opt, 20
    )
    assert (
        lr[9] == pytest.approx(1.0)
        and lr[10] == pytest.approx(0.1)
        and lr[15] == pytest.approx(0.01)
    )


def test_one_cycle_peaks_at_optimizer_lr():
    opt = make_opt(0.5)
    lr = rates(S.one_cycle(opt, epochs=2, steps_per_epoch=50, pct_start=0.3), opt, 100)
    assert max(lr) == pytest.approx(0.5, rel=1e-3)
    assert lr[0] == pytest.approx(0.5 / 25)


def test_plateau_steps_per_epoch_only():
    opt = make_opt()
    plateau = S.reduce_on_plateau(opt, epochs=5, steps_per_epoch=3, mode="max", patience=0)
    assert not S.steps_per_batch(plateau)
    assert S.steps_per_batch(S.constant(opt, 1, 1))
    plateau.step(0.9)
    plateau.step(0.8)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (  # the rate went negative: gradient ascent
            ["scheduler.min_lr_ratio=-1"],
            "scheduler.min_lr_ratio=-1: must be in [0, 1], the share of optimizer.lr the rate "
            "decays to (below 0 the rate turns negative and training climbs the loss; above 1 it "
            "rises)",
        ),
        (["scheduler.min_lr_ratio=5"], "scheduler.min_lr_ratio=5: must be in [0, 1]"),
        (["scheduler.warmup_epochs=-1"], "scheduler.warmup_epochs=-1: must be a number of epochs"),
        (
            ["scheduler=multistep", "scheduler.gamma=-1"],
            "scheduler.gamma=-1: must be in (0, 1], the factor the rate is multiplied by at each "
            "milestone (0 stops training, a negative factor makes the rate negative, above 1 it "
            "rises)",
        ),
        (["scheduler=multistep", "scheduler.gamma=0"], "scheduler.gamma=0: must be in (0, 1]"),
        (["scheduler=multistep", "scheduler.gamma=2"], "scheduler.gamma=2: must be in (0, 1]"),
        (
            ["scheduler=onecycle", "scheduler.pct_start=1"],
            "scheduler.pct_start=1: must be in (0, 1)",
        ),
        (  # a division by zero inside torch
            ["scheduler=onecycle", "scheduler.div_factor=0"],
            "scheduler.div_factor=0: must be >= 1",
        ),
        (
            ["scheduler=onecycle", "scheduler.final_div_factor=0.5"],
            "scheduler.final_div_factor=0.5: must be >= 1",
        ),
        (
            ["scheduler=plateau", "scheduler.factor=-0.5"],
            "scheduler.factor=-0.5: must be in (0, 1)",
        ),
        (
            ["scheduler=plateau", "scheduler.factor=abc"],
            "scheduler.factor='abc': must be in (0, 1)",
        ),
        (
            ["scheduler=plateau", "optimizer.lr=0.01", "scheduler.min_lr=0.1"],
            "scheduler.min_lr=0.1: must be in [0, optimizer.lr=0.01], the floor of the rate (above "
            "optimizer.lr a cut raises the rate)",
        ),
    ],
)
def test_a_schedule_that_would_raise_or_negate_the_rate_is_refused_by_its_key(overrides, message):
    """torch takes them without a word: the rate went negative, rose to 5x, or fell to zero."""
    from medtrain.engine.config import validate
    from medtrain.errors import ConfigError
    from tests.conftest import compose_cfg

    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(overrides))
    assert str(err.value).startswith(message), err.value


@pytest.mark.parametrize("option", ["cosine", "multistep", "onecycle", "plateau", "none"])
def test_the_shipped_schedules_are_within_their_ranges(option):
    from medtrain.engine.config import validate
    from tests.conftest import compose_cfg

    validate(compose_cfg([f"scheduler={option}"]))
