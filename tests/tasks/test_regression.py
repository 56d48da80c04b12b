"""Regression: metrics against hand computations, standardisation, checks, and end-to-end runs whose
written metrics are recomputed from predictions.csv."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from medtrain.errors import ConfigError
from medtrain.io import load_checkpoint
from medtrain.metrics import regression as M
from medtrain.tasks import RegressionTask
from medtrain.tasks.regression import target_statistics
from tests.conftest import compose_cfg, run_cli, train_in_process

TINY_CLINICAL = [
    "dataset=synthetic_clinical",
    "dataset.num_train=160",
    "dataset.num_val=48",
    "dataset.num_test=48",
    "dataset.image_size=24",
    "trainer.batch_size=16",
    "trainer.progress=false",
]


def read_predictions(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    with (run_dir / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return (
        np.array([float(r["target"]) for r in rows]),
        np.array([float(r["pred"]) for r in rows]),
    )


def test_regression_metrics_match_hand_computation():
    rng = np.random.default_rng(0)
    target = rng.normal(10, 3, size=(50, 1))
    pred = target + rng.normal(0.5, 1, size=(50, 1))
    values = M.regression_metrics(target, pred, ["size"])
    error = (pred - target)[:, 0]
    assert values["mae"] == pytest.approx(np.abs(error).mean())
    assert values["rmse"] == pytest.approx(np.sqrt((error**2).mean()))
    ss_res, ss_tot = (error**2).sum(), ((target - target.mean()) ** 2).sum()
    assert values["r2"] == pytest.approx(1 - ss_res / ss_tot)
    assert values["pearson"] == pytest.approx(np.corrcoef(target[:, 0], pred[:, 0])[0, 1])


def test_ordinal_accuracy_and_quadratic_kappa():
    target = np.array([0, 1, 2, 3, 4, 4, 2, 0], dtype=float)
    pred = np.array([-0.7, 1.4, 2.6, 2.9, 5.8, 3.4, 1.5, 0.2])
    values = M.ordinal_metrics(target, pred, (0, 4))
    rounded = np.array([0, 1, 3, 3, 4, 3, 2, 0])  # rounded half to even, clipped to 0..4
    assert values["acc"] == pytest.approx((rounded == target).mean())
    # Quadratic-weighted kappa by hand: 1 - sum(w * observed) / sum(w * expected).
    k = 5
    observed = np.zeros((k, k))
    for t, p in zip(target.astype(int), rounded, strict=True):
        observed[t, p] += 1
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    weights = np.subtract.outer(np.arange(k), np.arange(k)) ** 2 / (k - 1) ** 2
    assert values["qwk"] == pytest.approx(
        1 - (weights * observed).sum() / (weights * expected).sum()
    )


def test_cut_points_decide_grades_and_fitting_finds_the_best_ones():
    pred = np.array([0.1, 0.9, 1.2, 2.2, 2.6, 3.9])
    cuts = [0.5, 1.0, 2.5, 3.0]  # grade = 0 + the cuts at or below the value
    np.testing.assert_array_equal(M.to_grades(pred, (0, 4), cuts), [0, 1, 2, 2, 3, 4])
    np.testing.assert_array_equal(M.to_grades(pred, (0, 4)), [0, 1, 1, 2, 3, 4])
    # Predictions shrunk towards the middle (value = 1 + grade / 2): rounding is wrong for most,
    # fitted cut points put every grade right, and no other cuts do better.
    target = np.repeat(np.arange(5), 20).astype(float)
    shrunk = 1 + target / 2 + np.tile(np.linspace(-0.2, 0.2, 20), 5)
    cuts = M.fit_cut_points(target, shrunk, (0, 4))
    assert M.ordinal_metrics(target, shrunk, (0, 4))["acc"] < 0.5
    assert M.ordinal_metrics(target, shrunk, (0, 4), cuts)["acc"] == 1.0
    assert cuts == sorted(cuts) and len(cuts) == 4
    # A task with fitted cuts chooses them on validation outputs and reports them.
    task = RegressionTask(torch.nn.L1Loss(), ordinal=True, grade_range=[0, 4], cut_points="fitted")
    collector = task.collector()
    collector.update(
        torch.tensor(shrunk)[:, None],
        {"id": list(map(str, range(100))), "label": torch.tensor(target)},
    )
    assert task.fit_threshold(collector) == {"cut_points": cuts}
    assert collector.metrics("val")["val/acc"] == 1.0
    # Grades 1 and 2 are predicted in 1.3-1.7 and 1.8-2.2: their cut lies between.
    assert task.prediction(torch.tensor([[1.72]]), None)["grade"] == 1
    assert task.prediction(torch.tensor([[1.78]]), None)["grade"] == 2
    with pytest.raises(ConfigError, match="task.cut_points=fitted cuts grades"):
        RegressionTask(torch.nn.L1Loss(), cut_points="fitted")


def test_offset_and_scale_leave_r2_and_pearson_unchanged():
    rng = np.random.default_rng(2)
    target = rng.normal(0, 1, size=(40, 1))
    pred = target + rng.normal(0, 0.3, size=(40, 1))
    base = M.regression_metrics(target, pred, ["y"])
    moved = M.regression_metrics(1000 + 5 * target, 1000 + 5 * pred, ["y"])
    assert moved["r2"] == pytest.approx(base["r2"]) and moved["pearson"] == pytest.approx(
        base["pearson"]
    )
    assert moved["mae"] == pytest.approx(5 * base["mae"])


def test_grades_outside_the_training_range_still_count_in_kappa():
    target = np.array([0.0, 1.0, 2.0, 4.0])
    pred = np.array([0.0, 1.0, 2.0, 2.0])
    values = M.ordinal_metrics(target, pred, (0, 2))  # grade 4 never seen in training
    assert values["qwk"] < 1.0 and values["acc"] == pytest.approx(0.75)


def test_several_values_are_averaged_and_named():
    target = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 35.0]])
    pred = np.array([[1.5, 10.0], [2.0, 22.0], [2.0, 30.0]])
    values = M.regression_metrics(target, pred, ["a", "b"])
    assert values["mae_a"] == pytest.approx(0.5) and values["mae_b"] == pytest.approx(7 / 3)
    assert values["mae"] == pytest.approx((0.5 + 7 / 3) / 2)


def test_standardisation_round_trip_and_statistics():
    values = np.array([[2.0], [4.0], [9.0]])
    stats = target_statistics(values)
    assert stats["target_mean"] == [5.0] and stats["target_std"] == [pytest.approx(values.std())]
    assert stats["grade_range"] == [2.0, 9.0]
    task = RegressionTask(torch.nn.MSELoss(), target_mean=[5.0], target_std=[2.0])
    z = task.standardized(torch.tensor([2.0, 9.0]))
    assert torch.allclose(z, torch.tensor([[-1.5], [2.0]]))
    assert torch.allclose(task.values(z), torch.tensor([[2.0], [9.0]], dtype=torch.float64))
    assert target_statistics(np.ones((4, 1)))["target_std"] == [1.0]  # constant: left unscaled


def test_bad_task_values_are_config_errors():
    with pytest.raises(ConfigError, match="task.target_std"):
        RegressionTask(torch.nn.MSELoss(), target_std=[0.0])
    with pytest.raises(ConfigError, match="task.grade_range"):
        RegressionTask(torch.nn.MSELoss(), grade_range=[4, 0])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=regression", "dataset=synthetic_clinical"], "loss=cross_entropy does not compare"),
        (["task=regression", "loss=mse"], "dataset=synthetic holds class labels"),
        (["task=regression", "loss=mse", "dataset=image_folder", "dataset.path=."], "class labels"),
        (["loss=mse"], r"regression loss; task=classification needs a classification loss \("),
        (  # it offered cross_entropy and bce, which segmentation refuses in turn
            ["experiment=synthetic_segmentation", "loss=huber"],
            r"task=segmentation needs a segmentation loss \(dice_ce, dice, dice_bce, dice_focal",
        ),
        (["task=regression", "loss=l1", "dataset=synthetic_segmentation"], "holds masks"),
    ],
)
def test_mismatched_task_dataset_and_loss_are_refused(overrides, message):
    from medtrain.engine.config import check_task

    with pytest.raises(ConfigError, match=message):
        check_task(compose_cfg(overrides))


def test_regression_end_to_end_on_lesion_area(tmp_path):
    run = tmp_path / "run"
    metrics = train_in_process(
        run, [*TINY_CLINICAL, "task=regression", "loss=huber", "trainer.max_epochs=6"]
    )
    target, pred = read_predictions(run)
    assert metrics["test/mae"] == pytest.approx(np.abs(pred - target).mean(), rel=1e-9)
    assert metrics["test/rmse"] == pytest.approx(np.sqrt(((pred - target) ** 2).mean()), rel=1e-9)
    assert metrics["test/bias"] == pytest.approx((pred - target).mean(), rel=1e-9)
    # The lesion area (mm^2) is learnt from the image, in the right units (no scale or offset slip).
    assert metrics["test/pearson"] > 0.8 and metrics["test/r2"] > 0.5
    assert abs(metrics["test/bias"]) < 0.25 * target.std()
    assert (run / "scatter.png").stat().st_size > 0 and (run / "bland_altman.png").is_file()
    # The training split's statistics are stored with the weights, so predictions map back later.
    config = load_checkpoint(run / "checkpoints" / "best.pt")["config"]
    areas = _train_areas(tmp_path)
    assert config["task"]["target_mean"][0] == pytest.approx(areas.mean())
    assert config["task"]["target_std"][0] == pytest.approx(areas.std(), rel=1e-6)
    assert config["dataset"]["class_names"] == ["area_mm2"]


def _train_areas(tmp_path) -> np.ndarray:
    from medtrain.engine.build import build_datasets

    cfg = compose_cfg([*TINY_CLINICAL, "task=regression", "loss=mse"])
    return build_datasets(cfg)["train"].labels[:, 0]


def test_ordinal_regression_on_grades(tmp_path):
    rng = np.random.default_rng(1)
    npz = tmp_path / "grades.npz"
    arrays = {}
    for split, n in (("train", 120), ("val", 40), ("test", 40)):
        grades = rng.integers(0, 5, n)
        images = (rng.normal(0, 8, (n, 12, 12)) + 40 * grades[:, None, None] + 20).clip(0, 255)
        arrays |= {f"{split}_images": images.astype(np.uint8), f"{split}_labels": grades[:, None]}
    np.savez(npz, **arrays)
    run = tmp_path / "run"
    metrics = train_in_process(
        run,
        [
            "dataset=medmnist",
            f"dataset.path={npz}",
            "task=regression",
            "task.ordinal=true",
            "task.monitor=val/qwk",
            "task.monitor_mode=max",
            "loss=mse",
            "model.widths=[16,32]",
            "trainer.max_epochs=4",
            "trainer.batch_size=16",
            "trainer.progress=false",
        ],
    )
    target, pred = read_predictions(run)
    rounded = np.clip(np.rint(pred), 0, 4)
    assert metrics["test/acc"] == pytest.approx((rounded == target).mean())
    assert metrics["test/qwk"] > 0.5
    config = load_checkpoint(run / "checkpoints" / "best.pt")["config"]
    assert config["task"]["grade_range"] == [0.0, 4.0]
    assert config["dataset"]["num_classes"] == 1  # one value per image, not five classes


def test_wrong_head_width_is_named_before_training(tmp_path):
    result = run_cli(
        *TINY_CLINICAL,
        "task=regression",
        "loss=mse",
        "model.num_classes=3",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 2
    assert "task=regression needs (batch, 1)" in result.stderr + result.stdout


def test_r2_of_targets_with_little_variance_and_of_equal_targets(tmp_path):
    from medtrain.analysis.statistics import regression_intervals

    rng = np.random.default_rng(0)
    target = rng.uniform(0, 0.3, 40)  # a sum of squares below 1 (0.33)
    pred = target + rng.normal(0, 0.05, 40)
    with open(tmp_path / "predictions.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [
                ["id", "target", "pred"],
                *([f"c{i}", t, p] for i, (t, p) in enumerate(zip(target, pred, strict=True))),
            ]
        )
    r2 = M.regression_metrics(target[:, None], pred[:, None], ["v"])["r2"]
    ss_res, ss_tot = ((pred - target) ** 2).sum(), ((target - target.mean()) ** 2).sum()
    assert r2 == pytest.approx(1 - ss_res / ss_tot) and ss_tot < 1
    intervals = regression_intervals(tmp_path)
    # The interval holds its estimate (it was 0.83-0.91 around R^2 0.61: divided by 1, not 0.33).
    assert intervals["test/r2_ci_low"] < r2 < intervals["test/r2_ci_high"]
    # Equal targets (a cohort of one grade, 1.4 read through float32): no variance to explain.
    same = np.full(10, np.float32(1.4), dtype=np.float64)
    values = M.regression_metrics(same[:, None], np.linspace(0, 3, 10)[:, None], ["v"])
    assert np.isnan(values["r2"]) and np.isnan(values["pearson"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no scikit-learn warning on the console
        assert np.isnan(M.ordinal_metrics(np.ones(6), np.full(6, 1.2), (0, 4))["qwk"])


def test_ordinal_grades_must_be_whole_numbers():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from medtrain.errors import DataError

    cfg = OmegaConf.create({"task": {"ordinal": True, "grade_range": None}})
    train = SimpleNamespace(labels=np.array([[0.0], [2.5], [3.0]]), ids=["a.png", "b.png", "c.png"])
    with pytest.raises(DataError) as err:
        RegressionTask.fit_to_data(cfg, train)
    assert str(err.value) == (
        "task.ordinal=true takes whole-number grades; 1 training target(s) are not: b.png (2.5). "
        "Fix them, or set task.ordinal=false for continuous values"
    )


def test_a_monitor_averaging_values_of_other_units_is_warned_about(caplog):
    """val/mae of an age (std 11) and a grade (std 1.2) follows the age alone."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "dataset": {"num_classes": 2},
            "task": {
                "monitor": "val/mae",
                "target_std": [11.1, 1.2],
                "target_names": ["age", "grade"],
                "target_mean": [50.0, 2.0],
            },
        }
    )
    with caplog.at_level("WARNING"):
        RegressionTask.check_against_data(cfg)
    assert caplog.messages == [
        "task.monitor=val/mae averages the values' errors in their own units (training standard "
        "deviations: age 11.1, grade 1.2): the best checkpoint follows age; set "
        "task.monitor=val/loss (standardised values) or val/mae_<name> for the value that matters"
    ]
    caplog.clear()
    cfg.task.target_std = [11.1, 5.0]  # alike enough
    RegressionTask.check_against_data(cfg)
    cfg.task.target_std, cfg.task.monitor = [11.1, 1.2], "val/loss"
    RegressionTask.check_against_data(cfg)
    assert caplog.messages == []
