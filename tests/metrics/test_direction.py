"""Which way a metric improves, and the checkpoint rule held to it."""

import pytest

from medtrain.engine.config import check_monitor
from medtrain.errors import ConfigError
from medtrain.metrics.direction import metric_direction
from tests.conftest import compose_cfg


@pytest.mark.parametrize(
    "key, way",
    [
        ("val/auc", "max"),
        ("val/balanced_accuracy", "max"),
        ("val/dice_nucleus", "max"),
        ("val/instance_score", "max"),
        ("val/pq", "max"),
        ("val/r2", "max"),
        ("val/qwk", "max"),
        ("val/loss", "min"),
        ("val/mae", "min"),
        ("test/rmse_age", "min"),
        ("test/hd95_mm", "min"),
        ("test/count_mae_nucleus", "min"),
        ("test/count_median_abs_rel_error", "min"),
        ("test/area_mean_abs_rel_error", "min"),
        ("val/ece", "min"),
        ("test/volume_bias_ml_left", None),  # signed: neither way is better
        ("val/my_metric", None),
        # what follows the metric's name is a class, label or target of the user's
        ("val/auc_hearing_loss", "max"),
        ("val/sensitivity_weight_loss", "max"),
        ("val/r2_refractive_error", "max"),
        ("val/mae_score", "min"),
        ("val/dice_loss_region", "max"),
        ("val/accuracy", "max"),
        ("val/auc_macro", "max"),
    ],
)
def test_metric_direction_from_its_name(key, way):
    assert metric_direction(key) == way


def test_a_monitor_against_its_metric_is_refused_before_training():
    """task.monitor=val/r2 with regression's default min kept the worst epoch's checkpoint."""
    with pytest.raises(
        ConfigError,
        match=r"task.monitor=val/r2 is better higher, but "
        r"task.monitor_mode=min: .* set task.monitor_mode=max",
    ):
        check_monitor(compose_cfg(["task=regression", "task.monitor=val/r2"]))
    with pytest.raises(ConfigError, match="set task.monitor_mode=min"):
        check_monitor(compose_cfg(["task.monitor=val/loss"]))  # classification's max
    check_monitor(compose_cfg(["task=regression", "task.monitor=val/r2", "task.monitor_mode=max"]))
    check_monitor(compose_cfg(["task.monitor=val/my_metric", "task.monitor_mode=min"]))
    # task.monitor=null is the task's default metric: held to the config's mode all the same
    # (the RetinaMNIST recipe's max with regression's val/mae kept its first, worst epoch).
    with pytest.raises(
        ConfigError,
        match=r"task.monitor=null \(the task's default, val/mae\) is better lower, but "
        r"task.monitor_mode=max: .* set task.monitor_mode=min",
    ):
        check_monitor(compose_cfg(["experiment=retinamnist_regression", "task.monitor=null"]))
    check_monitor(
        compose_cfg(
            ["experiment=retinamnist_regression", "task.monitor=null", "task.monitor_mode=min"]
        )
    )
