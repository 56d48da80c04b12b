"""Regression: one or more numbers per image (a size in mm^2, an age, a disease grade), learned on
standardised targets and reported in the targets' own units."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from medtrain.analysis.agreement import bland_altman
from medtrain.analysis.plots import save_agreement_plots
from medtrain.analysis.statistics import regression_intervals
from medtrain.data.base import VolumeImages
from medtrain.errors import ConfigError, DataError
from medtrain.io import save_csv
from medtrain.metrics import regression as M
from medtrain.tasks.base import MASKS_FOR_AN_IMAGE_TASK, Choices, Input, Task, refuse_loss

log = logging.getLogger(__name__)

# Several values whose standard deviations differ by more than this: an average of their errors in
# their own units follows the widest one.
UNITS_APART = 3.0


def target_statistics(values: np.ndarray) -> dict[str, list[float]]:
    """Per-value mean and standard deviation of regression targets (N x K), and their range."""
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    std = values.std(axis=0)
    return {
        "target_mean": values.mean(axis=0).tolist(),
        "target_std": np.where(std > 0, std, 1.0).tolist(),  # a constant target is left unscaled
        "grade_range": [float(values.min()), float(values.max())],
    }


class RegressionTask(Task):
    """Predict values per image with any backbone whose head has one output per value.

    The network learns standardised targets, `(y - mean) / std` with the training split's statistics
    (written into the run's config, so predictions map back identically later); metrics, predictions
    and plots are in the targets' units.

    Args:
        loss: a loss module taking (outputs B x K, standardised targets B x K): MSE, L1, Huber.
        target_names: one name per predicted value (metric keys and prediction columns use them).
        target_mean: per-value mean used for standardising; None: 0 (set from the training split by
            `build_datasets`).
        target_std: per-value standard deviation; None: 1.
        standardize: learn standardised targets (recommended); False learns raw values.
        ordinal: the targets are integer grades: adds `acc` (of the prediction rounded and clipped to
            `grade_range`) and `qwk` (quadratic-weighted Cohen's kappa).
        grade_range: [lowest, highest] grade; None: the training split's range.
        cut_points: how ordinal predictions become grades: `round` (to the nearest grade) or
            `fitted` (cut points between grades that maximise accuracy on the validation
            outputs, `fit_threshold`; in a CV on the pooled out-of-fold outputs).
        monitor: the validation metric that picks the best checkpoint (e.g. `val/mae`).
        monitor_mode: `max` or `min`.
        tta: test-time augmentation at evaluation: null, `hflip`, `flips` or `dihedral`
            (`medtrain.tasks.tta`), averaged in target units.
        flip_tta: the key of runs saved before `tta` (true: `tta=hflip`).
        plots: write `scatter.png` and `bland_altman.png` at test time.
    """

    name = "regression"
    volume_preprocessing_class = VolumeImages  # runs of 3D networks
    targets = "values"
    default_monitor = ("val/mae", "min")
    headline = ("acc", "mae", "rmse", "r2", "pearson", "qwk")
    combine_rule = "mean of predicted values"
    output_unit = "target value"
    report_sections = ("scatter", "bland_altman")
    report_targets = "values"

    def __init__(
        self,
        loss: nn.Module,
        target_names: Sequence[str] | None = None,
        target_mean: Sequence[float] | float | None = None,
        target_std: Sequence[float] | float | None = None,
        standardize: bool = True,
        ordinal: bool = False,
        grade_range: Sequence[float] | None = None,
        cut_points: str = "round",
        monitor: str = "val/mae",
        monitor_mode: str = "min",
        tta: str | None = None,
        flip_tta: bool = False,
        plots: bool = True,
    ):
        self.check_settings(
            {
                "grade_range": grade_range,
                "target_std": target_std,
                "cut_points": cut_points,
                "ordinal": ordinal,
            }
        )
        std = np.atleast_1d(np.asarray(1.0 if target_std is None else target_std, dtype=np.float64))
        super().__init__(loss, target_names or ["target"], monitor, monitor_mode, tta, flip_tta)
        use = bool(standardize)
        self.mean = np.atleast_1d(np.asarray(target_mean or 0.0, dtype=np.float64)) * use
        self.std = std if use else np.ones_like(std)
        self.ordinal = bool(ordinal)
        if cut_points == "fitted" and len(self.class_names) != 1:
            raise ConfigError("task.cut_points=fitted needs one predicted value per image")
        self.cut_rule = cut_points
        self.grade_range = None if grade_range is None else (grade_range[0], grade_range[1])
        self.plots = plots

    @staticmethod
    def check_settings(task: Mapping[str, Any]) -> None:
        """The settings the config alone decides (`medtrain.engine.config.check_task_settings`
        calls this before the data are read; the constructor, again, with the values the data
        decided)."""
        Task.check_settings(task)
        grade_range, target_std = task.get("grade_range"), task.get("target_std")
        if grade_range is not None and (len(grade_range) != 2 or grade_range[0] >= grade_range[1]):
            raise ConfigError(f"task.grade_range={list(grade_range)} must be [lowest, highest]")
        if target_std is not None:
            std = np.atleast_1d(np.asarray(target_std, dtype=np.float64))
            if (std <= 0).any():
                raise ConfigError(f"task.target_std={std.tolist()} must be > 0")
        cut_points = task.get("cut_points", "round")
        if cut_points not in ("round", "fitted"):
            raise ConfigError(f"task.cut_points={cut_points!r}: choose round or fitted")
        if cut_points == "fitted" and not task.get("ordinal"):
            raise ConfigError("task.cut_points=fitted cuts grades: set task.ordinal=true")

    @classmethod
    def check_config(
        cls, cfg: DictConfig, provides: Sequence[str] | None, choices: Choices
    ) -> None:
        if provides is not None and "masks" in provides:
            raise ConfigError(MASKS_FOR_AN_IMAGE_TASK.format(**choices))
        if provides is not None and "values" not in provides:
            raise ConfigError(
                f"task=regression needs a number per image, but dataset={choices['dataset']} holds "
                "class labels only: use dataset=manifest (a target column), medmnist or "
                "synthetic_clinical"
            )
        other = "loss={loss} does not compare values; for task=regression use loss=mse, l1 or huber"
        # A loss of your own (family `other`) is not refused: one batch checks it before training.
        refuse_loss(cfg, choices, classes=other, masks=other)

    @classmethod
    def dataset_options(cls, cfg: DictConfig) -> dict[str, Any]:
        return {"regression": True}  # labels are values to predict, not classes

    @classmethod
    def fit_to_data(cls, cfg: DictConfig, train: Any) -> None:
        """The training split's target mean and standard deviation (and, for ordinal grades, their
        range), unless the config gives them.

        Raises:
            DataError: ordinal grades that are not whole numbers (they would be rounded silently).
        """
        if cfg.task.get("ordinal"):
            values = np.asarray(train.labels, dtype=np.float64).reshape(len(train.labels), -1)
            off = np.flatnonzero(~M.whole_grades(values))
            if len(off):
                shown = ", ".join(f"{train.ids[i]} ({values[i, 0]:g})" for i in off[:5])
                raise DataError(
                    f"task.ordinal=true takes whole-number grades; {len(off)} training target(s) "
                    f"are not: {shown}{', ...' if len(off) > 5 else ''}. Fix them, or set "
                    "task.ordinal=false for continuous values"
                )
        for key, value in target_statistics(train.labels).items():
            if key == "grade_range" and not cfg.task.get("ordinal"):
                continue
            if key == "grade_range" and cfg.task.get(key) is None and value[0] == value[1]:
                raise ConfigError(
                    f"task.ordinal=true: every training target is {value[0]}; set "
                    "task.grade_range=[lowest,highest] or check the training split"
                )
            if cfg.task.get(key) is None:  # values given in the config win
                cfg.task[key] = value
                if key == "grade_range":  # the data check says so of grades outside it
                    train.grade_range_of_split = True

    @classmethod
    def fold_strata(cls, cfg: DictConfig, labels: np.ndarray) -> np.ndarray | None:
        """Ordinal grades (one value per image): the grade of each case, so that rare grades reach
        every fold; other values: unstratified."""
        values = labels.reshape(len(labels), -1)
        if not cfg.task.get("ordinal") or values.shape[1] != 1:
            return None
        return np.rint(values[:, 0]).astype(np.int64)

    @classmethod
    def check_against_data(cls, cfg: DictConfig) -> None:
        values = cfg.dataset.num_classes
        for key in ("target_names", "target_mean", "target_std"):
            given = cfg.task.get(key)
            if OmegaConf.is_list(given) and len(given) != values:
                raise ConfigError(
                    f"task.{key} has {len(given)} values for {values} predicted value(s) per "
                    "image; give one per value"
                )
        cls._say_mixed_units(cfg)

    @staticmethod
    def _say_mixed_units(cfg: DictConfig) -> None:
        """A warning when the monitored metric averages errors of several values in their own
        units (`val/mae` of an age in years and a grade): the best checkpoint then follows the
        value of the widest spread alone."""
        monitor, std = cfg.task.get("monitor"), cfg.task.get("target_std")
        averaged = {f"val/{m}" for m in ("mae", "rmse", "bias")}
        if monitor not in averaged or not OmegaConf.is_list(std) or len(std) < 2:
            return
        spread = [float(s) for s in std]
        if max(spread) <= UNITS_APART * min(spread):
            return
        names = list(cfg.task.get("target_names") or range(len(spread)))
        said = ", ".join(f"{n} {s:.3g}" for n, s in zip(names, spread, strict=True))
        log.warning(
            "task.monitor=%s averages the values' errors in their own units (training standard "
            "deviations: %s): the best checkpoint follows %s; set task.monitor=val/loss "
            "(standardised values) or %s_<name> for the value that matters",
            monitor,
            said,
            names[int(np.argmax(spread))],
            monitor,
        )

    def standardized(self, values: torch.Tensor) -> torch.Tensor:
        """Targets in target units (B or B x K) -> what the network learns (B x K)."""
        if values.ndim == 1:  # one value per image, as labels are batched
            values = values.unsqueeze(1)
        # No reshape by the batch's length: inside an exported model (the average of test-time
        # views, `combine`) that length would be traced as a constant.
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=values.device)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=values.device)
        return (values.float() - mean) / std

    def values(self, outputs: torch.Tensor) -> torch.Tensor:
        """Network outputs -> predictions in target units (float64, B x K)."""
        mean = torch.as_tensor(self.mean, dtype=torch.float64, device=outputs.device)
        std = torch.as_tensor(self.std, dtype=torch.float64, device=outputs.device)
        return outputs.double() * std + mean

    def loss(self, outputs: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        target = self.standardized(batch["label"])
        if outputs.shape != target.shape:
            raise ConfigError(
                f"the model outputs {tuple(outputs.shape)} per batch, the targets are "
                f"{tuple(target.shape)}: the head needs one output per value "
                "(model.num_classes=${dataset.num_classes})"
            )
        return self.loss_fn(outputs.float(), target)

    def combine(self, outputs: list[torch.Tensor], tasks: list[RegressionTask]) -> torch.Tensor:
        """Ensemble: the mean of the members' predictions (each in target units, through each
        member's own standardisation), as outputs of this task."""
        mean = torch.stack([t.values(o) for o, t in zip(outputs, tasks, strict=True)]).mean(0)
        return self.standardized(mean)

    def average_rule(self) -> str:
        return "mean"

    def member_affine(self, member: RegressionTask) -> tuple[list[float], list[float]] | None:
        """A member's standardised outputs in this task's: (out * std_m + mean_m - mean) / std."""
        scale, shift = member.std / self.std, (member.mean - self.mean) / self.std
        if np.allclose(scale, 1) and np.allclose(shift, 0):
            return None
        return scale.tolist(), shift.tolist()

    def cut_points(self) -> list[float] | None:
        """The cut points between grades chosen by `fit_threshold` (None: rounding)."""
        return self.threshold.get("cut_points") if isinstance(self.threshold, dict) else None

    def fit_threshold(self, val: RegressionCollector) -> dict[str, list[float]] | None:
        """With `cut_points=fitted`, the grades' cut points fitted on the validation outputs."""
        if self.cut_rule != "fitted":
            return None
        target, pred = val.arrays()
        cuts = M.fit_cut_points(target[:, 0], pred[:, 0], self.grade_range)
        self.threshold = {"cut_points": cuts}
        return self.threshold

    def collector(self, final: bool = False) -> RegressionCollector:
        return RegressionCollector(self)

    @classmethod
    def intervals(cls, run_dir: Path, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return regression_intervals(run_dir)

    # -- finished runs ---------------------------------------------------------------------------
    def prediction(self, output: torch.Tensor, item: Input) -> dict[str, Any]:
        """`values` per target name in target units (and `value` when there is one)."""
        values = self.values(output)[0].cpu().numpy()
        result = {
            "values": {n: float(v) for n, v in zip(self.class_names, values, strict=True)},
            **({"value": float(values[0])} if len(values) == 1 else {}),
        }
        if self.ordinal and self.grade_range is not None and len(values) == 1:
            grade = M.to_grades(values[:1], self.grade_range, self.cut_points())[0]
            result["grade"] = int(grade)
        return result

    def prediction_fields(self) -> list[str]:
        value = ["value"] if len(self.class_names) == 1 else []
        grade = ["grade"] if self.ordinal and len(self.class_names) == 1 else []
        return [*grade, *value, *(f"value_{n}" for n in self.class_names)]

    def prediction_row(self, name: str, result: dict[str, Any], files: Any) -> dict[str, Any]:
        row = {f"value_{n}": repr(v) for n, v in result["values"].items()}
        if "value" in result:
            row["value"] = repr(result["value"])
        if "grade" in result:
            row["grade"] = result["grade"]
        return row

    # -- export ----------------------------------------------------------------------------------
    def postprocess(self, outputs: torch.Tensor) -> torch.Tensor:
        """Values in target units (float64): outputs * std + mean."""
        std = torch.as_tensor(self.std, dtype=torch.float64)
        mean = torch.as_tensor(self.mean, dtype=torch.float64)
        return outputs.double() * std + mean

    def export_outputs(self, width: int, pixels: Sequence[Any]) -> list[dict[str, Any]]:
        return [
            {
                "name": "values",
                "dtype": "float64",
                "shape": ["batch", width],
                "meaning": "predicted values in the targets' units (float64)",
            }
        ]

    def export_manifest(self, preprocess: Any) -> dict[str, Any]:
        names = [str(n) for n in self.class_names]
        return {
            "class_names": names,
            "regression": {
                "target_names": names,
                "target_mean": [float(m) for m in self.mean],
                "target_std": [float(s) for s in self.std],
                "note": "`values` are in the targets' units: outputs * std + mean is in the model",
                **(
                    {
                        "grades": {
                            "range": [float(g) for g in self.grade_range],
                            "cut_points": self.cut_points(),
                            "rule": "grade = lowest + the number of cut points <= value, clipped "
                            "to the range; without cut points the value rounded to the nearest "
                            "grade",
                        }
                    }
                    if self.ordinal and self.grade_range is not None
                    else {}
                ),
            },
        }

    def export_tolerance(self) -> float:
        """Values are compared in units of the targets' spread."""
        return max(float(np.max(self.std)), 1.0)


class RegressionCollector:
    """Accumulates one evaluation pass: ids, targets and predictions in target units."""

    def __init__(self, task: RegressionTask):
        self.task = task
        self.ids: list[str] = []
        self.targets: list[np.ndarray] = []
        self.preds: list[np.ndarray] = []

    def update(self, outputs: torch.Tensor, batch: dict[str, Any]) -> None:
        self.ids += list(batch["id"])
        target = batch["label"].double().reshape(len(batch["label"]), -1)
        self.targets.append(target.cpu().numpy())
        self.preds.append(self.task.values(outputs).cpu().numpy())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.targets), np.concatenate(self.preds)

    def metrics(self, prefix: str) -> dict[str, float]:
        target, pred = self.arrays()
        grades = self.task.grade_range if self.task.ordinal else None
        values = M.regression_metrics(
            target, pred, self.task.class_names, grades, self.task.cut_points()
        )
        return {f"{prefix}/{key}": value for key, value in values.items()}

    def save(self, run_dir: Path) -> dict[str, Any]:
        """Write `predictions.csv` (id, target, pred; one pair per value when there are several)
        and the plots; return the Bland-Altman bias and limits of agreement of each value."""
        target, pred = self.arrays()
        names = self.task.class_names
        pairs = (
            [("target", "pred")]
            if len(names) == 1
            else [(f"target_{n}", f"pred_{n}") for n in names]
        )
        rows = [
            {
                "id": i,
                **{t: repr(float(v)) for (t, _), v in zip(pairs, tv, strict=True)},
                **{p: repr(float(v)) for (_, p), v in zip(pairs, pv, strict=True)},
            }
            for i, tv, pv in zip(self.ids, target, pred, strict=True)
        ]
        fields = ["id"] + [t for t, _ in pairs] + [p for _, p in pairs]
        if self.task.ordinal and len(names) == 1:  # the grade each prediction decides
            grades = M.to_grades(pred[:, 0], self.task.grade_range, self.task.cut_points())
            for row, grade in zip(rows, grades, strict=True):
                row["grade"] = int(grade)
            fields.append("grade")
        save_csv(run_dir / "predictions.csv", rows, fields)
        summary: dict[str, Any] = {}
        for k, name in enumerate(names):
            suffix = "" if len(names) == 1 else f"_{name}"
            agreement = bland_altman(pred[:, k] - target[:, k])
            summary |= {
                f"bias{suffix}": agreement["mean_difference"],
                f"loa_lower{suffix}": agreement["lower_limit"],
                f"loa_upper{suffix}": agreement["upper_limit"],
            }
            if self.task.plots:
                save_agreement_plots(run_dir, target[:, k], pred[:, k], name, suffix)
        return summary
