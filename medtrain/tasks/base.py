"""The task protocol: everything that differs between classification, regression and segmentation
(or a task of your own) is a method or attribute of a `Task`, so that the loop, prediction,
serving, export, ensembles, reports and config checks never ask which task they serve.

A task is chosen by `conf/task/<name>.yaml`, whose `_target_` names the class and whose keys are its
constructor's arguments; the loss of `conf/loss/` is passed in as `loss`. Its parts, in the order a
run meets them:

- **config, before any data is read** (class methods, given the composed config):
  `check_config` (do the dataset and loss fit?), `dataset_options` (extra dataset arguments),
  `fit_to_data` (what the training split decides, written into `cfg.task`), `check_against_data`
  (what the datasets inferred: classes, channels).
- **the loop**: `forward`, `loss`, `check_output` (one batch's output has the right shape),
  `collector(final)` (accumulates one evaluation: `update`, `metrics`, `save`), `fit_threshold`,
  `monitor` / `monitor_mode` (the checkpoint rule), `headline` (metrics logged at the end) and
  `intervals` (bootstrap confidence intervals from the files `save` wrote).
- **finished runs**: `preprocessing_class` (what evaluation preprocessing rebuilds), `infer`
  (outputs for unlabelled images), `prediction` (one output as a result dict), `to_json`,
  `prediction_fields` / `prediction_row` / `prediction_tables` (the prediction files), `info`.
- **export**: `postprocess` (what the exported model adds after the network), `unview`,
  `export_outputs`, `export_manifest`, `export_tolerance`.
- **ensembles**: `combine`, `combine_rule`, `average_rule`, `member_affine`. **reports**:
  `report_sections`, `report_targets`,
  `report_keys`.

`Task` implements what classification, regression and a task of your own usually share; a
subclass sets the class attributes and implements the methods that raise `NotImplementedError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from medtrain.data.base import ImageDataset
from medtrain.errors import ConfigError, LossMismatch
from medtrain.losses import loss_family
from medtrain.models import call_model
from medtrain.tasks.tta import View, check_tta, spatial_dims_of, tta_views

Choices = Mapping[str, str]  # config group -> the option chosen (`dataset` -> `seg_folder`)


# Refusals of `Task.check_config` that several tasks share, formatted with the chosen options.
MASKS_FOR_AN_IMAGE_TASK = (
    "dataset={dataset} holds masks for segmentation, but task={task}: add task=segmentation "
    "model=unet loss=dice_ce (see experiment=synthetic_segmentation)"
)
REGRESSION_LOSS = (
    "loss={loss} is a regression loss; task={task} needs a classification loss (cross_entropy, "
    "bce, focal), or use task=regression"
)
# The same refusal for segmentation: its losses are others (cross_entropy is refused there).
REGRESSION_LOSS_FOR_MASKS = (
    "loss={loss} is a regression loss; task={task} needs a segmentation loss (dice_ce, dice, "
    "dice_bce, dice_focal, seg_focal, tversky), or use task=regression"
)


def refuse_loss(cfg: DictConfig, choices: Choices, **refused: str) -> None:
    """Refuse the configured loss when its family (`medtrain.losses.loss_family`: `values`,
    `masks`, `classes`, or `other` for a loss it does not know) is a key of `refused`, with that
    message formatted with the chosen options (`{dataset}`, `{loss}`, `{task}`, ...).

    Raises:
        LossMismatch: the message.
    """
    family = loss_family(cfg.loss.get("_target_")) or "other"
    if family in refused:
        raise LossMismatch(refused[family].format(**choices))


class Collector(Protocol):
    """One evaluation pass of a task: outputs go in batch by batch, metrics and files come out."""

    def update(self, outputs: Any, batch: dict[str, Any]) -> None: ...

    def metrics(self, prefix: str) -> dict[str, float]:
        """Metric values keyed `<prefix>/<name>` (`val/auc`, `test/dice`)."""
        ...

    def save(self, run_dir: Path) -> dict[str, Any] | None:
        """Write the pass's files into the run folder (`predictions.csv`, ...); return summary
        numbers that join the test metrics (or None)."""
        ...


@dataclass
class Input:
    """What a prediction knows about one unlabelled image besides the model's output.

    Attributes:
        name: the image's name (file name, upload name), used in rows and errors.
        intensity: the image before normalization at its native size (H x W x C), for datasets
            whose preprocessing keeps it (segmentation); None otherwise.
        spacing: pixel size (row_mm, col_mm): the one asked for, else the file's, else the
            run's `dataset.spacing`; None: pixels.
        measure: measure what was found (off for slices of a volume, measured whole).
        max_objects: the most objects measured one by one (a server's bound on work and answer
            size); beyond it only totals are given. None: no limit.
        affine: a volume's voxel-to-world matrix (written into its predicted NIfTI mask); None
            for 2D images.
    """

    name: str
    intensity: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    measure: bool = True
    max_objects: int | None = None
    affine: np.ndarray | None = None


class Task:
    """The base of every task; see the module docstring for the protocol.

    Args:
        loss: a loss module taking (outputs, targets) as the task's `loss` passes them.
        class_names: one name per model output (classes, or predicted values).
        monitor: the validation metric that picks the best checkpoint; None: `default_monitor`.
        monitor_mode: `max` or `min`; None: the task's default (`default_monitor`).
        tta: test-time augmentation at evaluation (`medtrain.tasks.tta`): null, `hflip`, `flips`
            or `dihedral`; the views' outputs are averaged by `combine`.
        flip_tta: the key of runs saved before `tta`: true is `tta=hflip`.
    """

    name: ClassVar[str] = "task"
    # What each sample must hold: "classes" (a class per image), "values" (numbers per image) or
    # "masks" (a class per pixel). Datasets declare what they provide in `provides`.
    targets: ClassVar[str] = "classes"
    default_monitor: ClassVar[tuple[str, str]] = ("val/loss", "min")
    headline: ClassVar[tuple[str, ...]] = ()
    preprocessing_class: ClassVar[type] = ImageDataset
    # What a run of a 3D network (on volumes) rebuilds instead; None: `preprocessing_class`.
    volume_preprocessing_class: ClassVar[type | None] = None
    # Whether a whole volume's prediction is a label volume (`medtrain predict` writes it as NIfTI
    # with volumes in mL); false: a prediction per volume like any image's.
    labels_volumes: ClassVar[bool] = False
    combine_rule: ClassVar[str] = "mean of the outputs"
    # report.html after its config, data, metrics and curves: names of medtrain.analysis.report's
    # sections, or a task's own as (name, title, function of the report's `Run` returning HTML);
    # then the table of test targets in the data section, and task.* keys in the config section.
    report_sections: ClassVar[tuple[Any, ...]] = ()
    report_targets: ClassVar[str | None] = None
    report_keys: ClassVar[tuple[str, ...]] = ()
    # Whether predictions use the pixel spacing (measurements in mm); the HTTP service then keeps
    # the requested `spacing` apart per request.
    uses_spacing: ClassVar[bool] = False
    # Whether training on crops of another size than evaluation's is by design (patches of a
    # segmentation, evaluated whole); else a train-only size change is warned about.
    trains_on_patches: ClassVar[bool] = False
    output_unit: ClassVar[str] = "class"  # what each output is, in `check_output`'s message
    # Output channels after the classes' that are independent probabilities (a segmentation's
    # contact logit): averaged by sigmoid in ensembles, counted in an export's output width.
    sigmoid_outputs: int = 0
    threshold: Any = None  # decision threshold(s) chosen by `fit_threshold`, stored in best.pt
    window: Any = None  # the tile size evaluation feeds the network (None: whole images)

    def __init__(
        self,
        loss: nn.Module,
        class_names: Sequence[str] | None = None,
        monitor: str | None = None,
        monitor_mode: str | None = None,
        tta: str | None = None,
        flip_tta: bool = False,
    ):
        monitor_mode = monitor_mode or self.default_monitor[1]
        Task.check_settings({"monitor_mode": monitor_mode})
        self.loss_fn = loss
        self.class_names = list(class_names or [])
        self.monitor = monitor or self.default_monitor[0]
        self.monitor_mode = monitor_mode
        self.tta = check_tta(tta, flip_tta)

    # -- config, before any data is read ---------------------------------------------------------
    @staticmethod
    def check_settings(task: Mapping[str, Any]) -> None:
        """The task's settings that the config alone decides, checked before the data are read
        (`medtrain.engine.config.check_task_settings`) and again by the constructor; a task adds
        its own (calling this one)."""
        monitor_mode = task.get("monitor_mode")
        if monitor_mode is not None and monitor_mode not in ("max", "min"):
            raise ConfigError(f"task.monitor_mode={monitor_mode!r}: choose 'max' or 'min'")

    @classmethod
    def check_config(
        cls, cfg: DictConfig, provides: Sequence[str] | None, choices: Choices
    ) -> None:
        """Refuse a dataset or loss that cannot serve this task, naming the overrides that fix it.

        Args:
            provides: what the dataset's class says its samples hold (`Dataset.provides`); None
                when the class does not say.
        """
        if provides is not None and cls.targets not in provides:
            raise ConfigError(
                f"task={choices.get('task', cls.name)} needs {cls.targets} per sample, but "
                f"dataset={choices.get('dataset', '?')} provides {', '.join(provides)}"
            )

    @classmethod
    def dataset_options(cls, cfg: DictConfig) -> dict[str, Any]:
        """Extra keyword arguments for the dataset's constructor (e.g. `regression=True`)."""
        return {}

    @classmethod
    def fit_to_data(cls, cfg: DictConfig, train: Any) -> None:
        """Write what the training split decides into `cfg.task` (in `open_dict`), e.g. target
        statistics; values set in the config win."""

    @classmethod
    def check_against_data(cls, cfg: DictConfig) -> None:
        """Checks of `cfg.task` against what the datasets inferred (`cfg.dataset.num_classes`,
        ...), before the model is built."""

    @classmethod
    def fold_strata(cls, cfg: DictConfig, labels: np.ndarray) -> np.ndarray | None:
        """One stratum per case (its class, its grade) that cross-validation folds keep balanced,
        from the cases' `labels`; None: folds are drawn unstratified."""
        return None

    # -- the loop --------------------------------------------------------------------------------
    def forward(self, model: nn.Module, batch: dict[str, Any]) -> Any:
        """The model's outputs for a batch; with `tta` in evaluation, the views' outputs (brought
        back by `unview`) averaged by `combine`."""
        if model.training or self.tta is None:
            return call_model(model, batch)
        return self.averaged_views(lambda view: call_model(model, batch, view), batch["image"])

    def averaged_views(self, run: Callable[[View], Any], images: Any) -> Any:
        """`run(view)` (a network's outputs for the view of the images) for each of `tta`'s views,
        brought back to the images' frame and averaged by `combine`."""
        views = tta_views(self.tta, spatial_dims_of(images))
        outputs = [self.unview(view, run(view)) for view in views]
        return outputs[0] if len(outputs) == 1 else self.combine(outputs, [self] * len(outputs))

    def loss(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def check_output(self, output: torch.Tensor, model: str) -> None:
        """Refuse a model whose output (for a batch of one training sample) does not fit the task,
        naming `model` (the chosen option), instead of failing inside the loss.

        The default: image-level tasks need one row of `len(class_names)` outputs per image."""
        width = len(self.class_names)
        if output.ndim != 2 or output.shape[1] != width:
            raise ConfigError(
                f"model={model} outputs {tuple(output.shape)}; task={self.name} needs "
                f"(batch, {width}), one output per {self.output_unit}: medtrain's models take "
                f"model.num_classes={width} (${{dataset.num_classes}} follows the data); a model "
                f"of your own must end in {width} outputs"
            )

    def collector(self, final: bool = False) -> Collector:
        """A collector for one evaluation pass; `final` marks the test pass, whose `save` writes
        the run's prediction files."""
        raise NotImplementedError

    def fit_threshold(self, val: Collector) -> Any:
        """Choose decision thresholds on the validation pass (when the task has any); returns them
        (stored in `best.pt` and `metrics.json`), None when there are none."""
        return None

    @classmethod
    def intervals(cls, run_dir: Path, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Bootstrap 95% intervals of the test metrics, computed from the files the test pass wrote
        (`<key>_ci_low`, `<key>_ci_high`); empty when the task has none."""
        return {}

    # -- finished runs ---------------------------------------------------------------------------
    def infer(
        self,
        model: nn.Module,
        images: torch.Tensor,
        size: tuple[int, int] | None,
        extra: dict[str, torch.Tensor] | None = None,
    ) -> Any:
        """Outputs for a batch of unlabelled images of one shape (prediction, serving).

        Args:
            size: the images' native (height, width) when preprocessing resized them for the
                model; None when it did not say.
            extra: the batch's other inputs (`tabular`: encoded clinical values), if any.
        """
        return self.forward(model, {"image": images, **(extra or {})})

    def prediction(self, output: torch.Tensor, item: Input) -> dict[str, Any]:
        """One image's result (JSON-ready numbers and names) from its output (a batch of one)."""
        raise NotImplementedError

    def to_json(self, result: dict[str, Any], overlay: bool = False) -> dict[str, Any]:
        """A `prediction` result as the HTTP answer (arrays encoded); `overlay`: add a picture."""
        return result

    def prediction_fields(self) -> list[str]:
        """The columns of a prediction CSV between `file` and `error`."""
        raise NotImplementedError

    def prediction_row(self, name: str, result: dict[str, Any], files: Any) -> dict[str, Any]:
        """One CSV row (the `prediction_fields` columns) of the result for input `name`; `files`
        (`medtrain.inference.predict.PredictionFiles`) gives paths for per-image files (masks)."""
        raise NotImplementedError

    def prediction_tables(self, results: Sequence[dict[str, Any]]) -> dict[str, tuple[list, list]]:
        """Further tables of a prediction run: name -> (rows, columns), e.g. per-object
        measurements; written beside the prediction CSV."""
        return {}

    def info(self) -> dict[str, Any]:
        """What a client of the served model needs to know beyond the class names."""
        return {"multilabel": False, "threshold": self.threshold}

    # -- export ----------------------------------------------------------------------------------
    def unview(self, view: View, outputs: torch.Tensor) -> torch.Tensor:
        """Outputs of a test-time view brought back to the image's frame (image-level outputs do
        not move; pixel maps are turned and mirrored back: `View.invert`)."""
        return outputs

    def postprocess(self, outputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """What an exported model computes after the network, in the order of `export_outputs`."""
        raise NotImplementedError

    def export_outputs(self, width: int, pixels: Sequence[Any]) -> list[dict[str, Any]]:
        """The exported model's outputs: `name`, `dtype`, `shape` (e.g. ["batch", 2]; spatial
        outputs end with `pixels`), `meaning`."""
        raise NotImplementedError

    def export_manifest(self, preprocess: Any) -> dict[str, Any]:
        """Class or target names and how outputs become a decision, for the export manifest."""
        return {"class_names": [str(n) for n in self.class_names]}

    def export_tolerance(self) -> float:
        """How much larger than 1e-4 the exported model may differ from PyTorch (in units of the
        outputs' spread)."""
        return 1.0

    # -- ensembles -------------------------------------------------------------------------------
    def combine(self, outputs: list[Any], tasks: list[Task]) -> Any:
        """The ensemble's output from its members' outputs (each member with its own task)."""
        raise NotImplementedError

    def average_rule(self) -> str:
        """How `medtrain.models.ensemble.ModelAverage` averages networks of this task, as `combine`
        does: `softmax`, `sigmoid` (probabilities) or `mean` (values)."""
        raise NotImplementedError

    def member_affine(self, member: Task) -> tuple[list[float], list[float]] | None:
        """Per output, (scale, shift) that turn `member`'s outputs into this task's units (members
        standardised with other statistics); None when they are alike."""
        return None
