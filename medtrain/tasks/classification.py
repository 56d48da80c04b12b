"""Classification of whole images: binary, multi-class and multi-label."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medtrain import metrics as M
from medtrain.errors import ConfigError
from medtrain.io import save_csv
from medtrain.models import call_model


class ClassificationTask:
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
        flip_tta: at evaluation, average the logits of the image and its left-right mirror.
    """

    name = "classification"

    def __init__(
        self,
        loss: nn.Module,
        multilabel: bool = False,
        class_names: Sequence[str] | None = None,
        threshold: float | str = 0.5,
        target_sensitivity: float = 0.9,
        monitor: str = "val/auc",
        monitor_mode: str = "max",
        flip_tta: bool = False,
    ):
        if isinstance(threshold, str) and threshold not in M.THRESHOLD_METHODS:
            raise ConfigError(
                f"task.threshold={threshold!r}: use a number in (0, 1) or one of "
                f"{M.THRESHOLD_METHODS}"
            )
        if not isinstance(threshold, str) and not 0 < threshold < 1:
            raise ConfigError(f"task.threshold={threshold} must be in (0, 1)")
        if monitor_mode not in ("max", "min"):
            raise ConfigError(f"task.monitor_mode={monitor_mode!r}: choose 'max' or 'min'")
        self.loss_fn = loss
        self.multilabel = bool(multilabel)
        self.class_names = list(class_names or [])
        self.threshold_rule = threshold
        self.target_sensitivity = target_sensitivity
        self.monitor = monitor
        self.monitor_mode = monitor_mode
        self.flip_tta = flip_tta
        # Until chosen on validation data, a rule-based threshold evaluates at 0.5.
        self.threshold: float | list[float] = (
            0.5 if isinstance(threshold, str) else float(threshold)
        )

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        logits = call_model(model, batch)
        if self.flip_tta and not model.training:
            logits = (logits + call_model(model, batch, flip=True)) / 2
        return logits

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
