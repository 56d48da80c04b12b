"""Classification of whole images: binary, multi-class and multi-label."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from medtrain.analysis.statistics import classification_intervals
from medtrain.data.base import VolumeImages
from medtrain.data.multilabel import checked_settings, label_strata
from medtrain.errors import ConfigError, LossMismatch
from medtrain.io import save_csv
from medtrain.metrics import classification as M
from medtrain.tasks.base import (
    MASKS_FOR_AN_IMAGE_TASK,
    REGRESSION_LOSS,
    Choices,
    Input,
    Task,
    refuse_loss,
)


class ClassificationTask(Task):
    """Binary, multi-class and multi-label image classification.

    Args:
        loss: a loss module taking (logits, labels).
        multilabel: independent sigmoid outputs instead of one softmax.
        class_names: names used in metric keys and prediction files.
        threshold: decision threshold on the positive (or each label's) probability: a number, or
            `youden` / `sensitivity` to choose it on the validation split after training.
        target_sensitivity: the sensitivity that `threshold=sensitivity` aims for.
        monitor: the validation metric that picks the best checkpoint (e.g. `val/auc`).
        monitor_mode: `max` or `min`.
        tta: test-time augmentation at evaluation: null, `hflip`, `flips` or `dihedral`
            (`medtrain.tasks.tta`), averaged in probability space.
        flip_tta: the key of runs saved before `tta` (true: `tta=hflip`).
        label_separator: what joins a multi-label prediction's labels in its CSV cell (the
            training data's, from conf/task/classification.yaml; `;` for runs saved before).
        no_label: the cell of a multi-label prediction of none of the labels (None: empty).
    """

    name = "classification"
    volume_preprocessing_class = VolumeImages  # runs of 3D networks
    targets = "classes"
    default_monitor = ("val/auc", "max")
    headline = (
        "auc",
        "acc",
        "balanced_acc",
        "sensitivity",
        "specificity",
        "f1",
        "acc@0.5",
        "precision",
    )
    combine_rule = "mean of probabilities"
    report_sections = ("roc", "pr", "confusion", "calibration", "operating_point", "gradcam")
    report_targets = "classes"
    report_keys = ("threshold",)

    def __init__(
        self,
        loss: nn.Module,
        multilabel: bool = False,
        class_names: Sequence[str] | None = None,
        threshold: float | str = 0.5,
        target_sensitivity: float = 0.9,
        monitor: str = "val/auc",
        monitor_mode: str = "max",
        tta: str | None = None,
        flip_tta: bool = False,
        label_separator: str = ";",
        no_label: str | None = None,
    ):
        self.check_settings({"threshold": threshold})
        super().__init__(loss, class_names, monitor, monitor_mode, tta, flip_tta)
        self.multilabel = bool(multilabel)
        # How a multi-label prediction's CSV cell joins its labels: as the data's cells did.
        self.label_separator, self.no_label = checked_settings(label_separator, no_label, "task.")
        self.threshold_rule = threshold
        self.target_sensitivity = target_sensitivity
        # Until chosen on validation data, a rule-based threshold evaluates at 0.5; a list holds
        # one per label (multi-label).
        self.threshold: float | list[float] = (
            0.5
            if isinstance(threshold, str)
            else [float(t) for t in threshold]
            if isinstance(threshold, Sequence)
            else float(threshold)
        )

    @staticmethod
    def check_settings(task: Mapping[str, Any]) -> None:
        Task.check_settings(task)
        threshold = task.get("threshold", 0.5)
        if isinstance(threshold, str) and threshold not in M.THRESHOLD_METHODS:
            raise ConfigError(
                f"task.threshold={threshold!r}: use a number in (0, 1) or one of "
                f"{M.THRESHOLD_METHODS}"
            )
        many = OmegaConf.is_list(threshold) or isinstance(threshold, list | tuple)
        values = list(threshold) if many else [threshold]
        if not isinstance(threshold, str) and not all(
            isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 1 for v in values
        ):
            said = f"{list(values)}: each of its numbers" if many else f"{threshold}"
            raise ConfigError(f"task.threshold={said} must be in (0, 1)")

    @classmethod
    def check_config(
        cls, cfg: DictConfig, provides: Sequence[str] | None, choices: Choices
    ) -> None:
        if provides is not None and "classes" not in provides:
            raise ConfigError(MASKS_FOR_AN_IMAGE_TASK.format(**choices))
        masks = (
            "loss={loss} is a segmentation loss; for task=classification use loss=cross_entropy, "
            "bce or focal"
        )
        refuse_loss(cfg, choices, values=REGRESSION_LOSS, masks=masks)

    @classmethod
    def check_against_data(cls, cfg: DictConfig) -> None:
        data, task = cfg.dataset, cfg.task
        rule = task.get("threshold")
        if isinstance(rule, str) and not data.multilabel and data.num_classes > 2:
            raise ConfigError(
                f"task.threshold={rule!r} applies to binary and multi-label tasks; this dataset "
                f"has {data.num_classes} classes (the prediction is the most probable one): use 0.5"
            )
        if OmegaConf.is_list(rule) and (not data.multilabel or len(rule) != data.num_classes):
            raise ConfigError(
                f"task.threshold={list(rule)}: a list is one threshold per label of a multi-label "
                + (
                    f"task; this one has {data.num_classes} labels ({list(data.class_names)})"
                    if data.multilabel
                    else "task; this one has one class per image: give one number"
                )
            )
        sensitivity = task.get("target_sensitivity", 0.9)
        if not 0 < sensitivity <= 1:
            raise ConfigError(f"task.target_sensitivity={sensitivity!r}: must be in (0, 1]")
        target = str(cfg.loss.get("_target_", ""))  # last: `check-data` goes on after these
        if data.multilabel and target.endswith("CrossEntropy"):
            raise LossMismatch(
                "loss=cross_entropy cannot train multi-label targets "
                f"(dataset {data.get('path')}); use loss=bce or loss=focal"
            )
        if not data.multilabel and target.endswith("BCEWithLogits"):
            raise LossMismatch(
                "loss=bce trains independent sigmoid outputs, but the labels are one class per "
                "image; use loss=cross_entropy or loss=focal"
            )

    @classmethod
    def fold_strata(cls, cfg: DictConfig, labels: np.ndarray) -> np.ndarray | None:
        """The class of each case; a multi-label case's combination of labels, the rare ones
        pooled (`label_strata`)."""
        if labels.ndim == 1:
            return labels
        names = None if cfg is None else cfg.dataset.get("class_names")
        return label_strata(labels, None if names is None else list(names))

    def loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return self.loss_fn(logits.float(), batch["label"])

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return (
            torch.sigmoid(logits.float())
            if self.multilabel
            else torch.softmax(logits.float(), dim=1)
        )

    def combine(self, outputs: list[torch.Tensor], tasks: list[ClassificationTask]) -> torch.Tensor:
        """Ensemble: the mean of the members' probabilities, as logits of this task (their softmax,
        or sigmoid for multi-label, gives the mean back)."""
        probs = torch.stack([t.probabilities(o) for o, t in zip(outputs, tasks, strict=True)])
        probs = probs.mean(0).clamp(1e-12, 1 - 1e-7)
        return torch.logit(probs) if self.multilabel else probs.log()

    def average_rule(self) -> str:
        return "sigmoid" if self.multilabel else "softmax"

    def collector(self, final: bool = False) -> ClassificationCollector:
        return ClassificationCollector(self)

    def fit_threshold(self, val: ClassificationCollector) -> float | list[float] | None:
        """Choose the decision threshold(s) on validation outputs when the config asks for it.

        Returns None for multi-class tasks, whose prediction is the most probable class.
        """
        target, probs = val.arrays()
        if not self.multilabel and probs.shape[1] > 2:
            return None
        if isinstance(self.threshold_rule, str):
            if self.multilabel:
                self.threshold = [
                    M.choose_threshold(
                        target[:, k], probs[:, k], self.threshold_rule, self.target_sensitivity
                    )
                    for k in range(probs.shape[1])
                ]
            elif probs.shape[1] == 2:
                self.threshold = M.choose_threshold(
                    target, probs[:, 1], self.threshold_rule, self.target_sensitivity
                )
        return self.threshold

    @classmethod
    def intervals(cls, run_dir: Path, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return classification_intervals(run_dir, None if metrics is None else dict(metrics))

    # -- finished runs ---------------------------------------------------------------------------
    def prediction(self, output: torch.Tensor, item: Input) -> dict[str, Any]:
        """`probabilities` per class, and `label` (with `label_index`) or, multi-label, `labels`."""
        probs = self.probabilities(output).cpu().numpy().astype(np.float64)
        pred = M.decide(probs, self.multilabel, self.threshold)[0]
        names = self.class_names
        out: dict[str, Any] = {"probabilities": dict(zip(names, map(float, probs[0]), strict=True))}
        if self.multilabel:
            out["labels"] = [n for n, p in zip(names, pred, strict=True) if p]
        else:
            out |= {"label": names[int(pred)], "label_index": int(pred)}
        return out

    def prediction_fields(self) -> list[str]:
        label = ["labels"] if self.multilabel else ["label"]
        return [*label, *(f"prob_{n}" for n in self.class_names)]

    def prediction_row(self, name: str, result: dict[str, Any], files: Any) -> dict[str, Any]:
        """The label(s) and each class's probability (full precision)."""
        row: dict[str, Any] = {}
        if "labels" in result:  # as the training data wrote them, so a manifest reads them back
            row["labels"] = self.label_separator.join(result["labels"]) or self.no_label or ""
        else:
            row["label"] = result["label"]
        return row | {f"prob_{n}": repr(p) for n, p in result["probabilities"].items()}

    def info(self) -> dict[str, Any]:
        return {"multilabel": self.multilabel, "threshold": self.threshold}

    # -- export ----------------------------------------------------------------------------------
    def postprocess(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.probabilities(outputs)

    def export_outputs(self, width: int, pixels: Sequence[Any]) -> list[dict[str, Any]]:
        return [
            {
                "name": "probabilities",
                "dtype": "float32",
                "shape": ["batch", width],
                "meaning": "class probabilities (softmax; sigmoid per label for multi-label)",
            }
        ]

    def export_manifest(self, preprocess: Any) -> dict[str, Any]:
        names = [str(n) for n in self.class_names]
        if self.multilabel:
            threshold = self.threshold
            threshold = threshold if isinstance(threshold, list) else [threshold] * len(names)
            decision = "label k is present when probabilities[k] >= threshold[k]"
        elif len(names) == 2:
            threshold = self.threshold
            decision = f"{names[1]} when probabilities[1] >= threshold, else {names[0]}"
        else:
            threshold, decision = None, "the most probable class"
        written = {"label_separator": self.label_separator, "no_label": self.no_label}
        return {
            "class_names": names,
            "multilabel": self.multilabel,
            "threshold": threshold,
            "decision": decision,
            **(written if self.multilabel else {}),  # how medtrain predict writes the labels
        }


class ClassificationCollector:
    """Accumulates one evaluation pass: ids, targets and probabilities, then computes metrics."""

    def __init__(self, task: ClassificationTask):
        self.task = task
        self.ids: list[str] = []
        self.targets: list[np.ndarray] = []
        self.probs: list[np.ndarray] = []

    def update(self, logits: torch.Tensor, batch: dict[str, Any]) -> None:
        self.ids += list(batch["id"])
        self.targets.append(batch["label"].cpu().numpy())
        self.probs.append(self.task.probabilities(logits).cpu().numpy().astype(np.float64))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.targets), np.concatenate(self.probs)

    def metrics(self, prefix: str) -> dict[str, float]:
        target, probs = self.arrays()
        names, threshold = self.task.class_names, self.task.threshold
        if self.task.multilabel:
            thresholds = threshold if isinstance(threshold, list) else [threshold] * probs.shape[1]
            values = M.multilabel_metrics(target.astype(int), probs, thresholds, names)
        elif probs.shape[1] == 2:
            values = M.binary_metrics(target, probs[:, 1], threshold)
        else:
            values = M.multiclass_metrics(target, probs, names)
        return {f"{prefix}/{key}": value for key, value in values.items()}

    def save(self, run_dir: Path) -> None:
        """Write `predictions.csv` and `confusion_matrix.csv` (multi-label: one 2 x 2 block per label)."""
        rows, fields = self.prediction_rows()
        save_csv(run_dir / "predictions.csv", rows, fields)
        target, probs = self.arrays()
        matrix = M.confusion(target, probs, self.task.multilabel, self.task.threshold)
        names = self.task.class_names
        if self.task.multilabel:
            cm_rows = [
                {"label": names[k], "true": t, "pred_0": int(m[t, 0]), "pred_1": int(m[t, 1])}
                for k, m in enumerate(matrix)
                for t in (0, 1)
            ]
            cm_fields = ["label", "true", "pred_0", "pred_1"]
        else:
            cm_rows = [
                {
                    "true": names[t],
                    **{f"pred_{n}": int(v) for n, v in zip(names, row, strict=True)},
                }
                for t, row in enumerate(matrix)
            ]
            cm_fields = ["true"] + [f"pred_{n}" for n in names]
        save_csv(run_dir / "confusion_matrix.csv", cm_rows, cm_fields)

    def prediction_rows(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Rows of `predictions.csv` and its columns: id, target(s), pred(s), prob_k."""
        target, probs = self.arrays()
        pred = M.decide(probs, self.task.multilabel, self.task.threshold)
        k_range = range(probs.shape[1])
        if self.task.multilabel:
            fields = ["id"] + [f"target_{k}" for k in k_range] + [f"pred_{k}" for k in k_range]
            rows = [
                {
                    "id": i,
                    **{f"target_{k}": int(t[k]) for k in k_range},
                    **{f"pred_{k}": int(p[k]) for k in k_range},
                }
                for i, t, p in zip(self.ids, target, pred, strict=True)
            ]
        else:
            fields = ["id", "target", "pred"]
            rows = [
                {"id": i, "target": int(t), "pred": int(p)}
                for i, t, p in zip(self.ids, target, pred, strict=True)
            ]
        fields += [f"prob_{k}" for k in k_range]
        for row, p in zip(rows, probs, strict=True):
            row.update({f"prob_{k}": repr(float(p[k])) for k in k_range})
        return rows, fields
