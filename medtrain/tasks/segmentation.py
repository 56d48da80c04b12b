"""Segmentation of every pixel into classes: losses over masks, whole-image tiled inference, per-image
metrics, and at test time masks, measurements in physical units and overlays."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from scipy import ndimage
from skimage.morphology import remove_small_objects
from torch import nn

from medtrain.analysis.instances import check_instances, contact_pixels, separate_instances
from medtrain.analysis.measurements import (
    MEASUREMENT_FIELDS,
    measure_mask,
    total_row,
    totals,
)
from medtrain.analysis.overlays import draw_overlay
from medtrain.analysis.statistics import segmentation_intervals
from medtrain.analysis.volume_results import (
    structure_objects,
    structure_volumes_ml,
)
from medtrain.data.segmentation import SegmentationDataset
from medtrain.data.volume_segmentation import VolumeSegmentationDataset
from medtrain.data.volume_transforms import spatial_size
from medtrain.errors import ConfigError, DataError
from medtrain.io import png_bytes
from medtrain.models.ensemble import mean_class_logits
from medtrain.models.sliding_window import check_inference, sliding_window_inference
from medtrain.tasks.base import REGRESSION_LOSS_FOR_MASKS, Choices, Input, Task, refuse_loss
from medtrain.tasks.segmentation_results import (
    Logits,
    SegmentationCollector,
    as_label_png,
    mask_pixels,
    object_count,
    write_instances,
    write_mask,
)
from medtrain.tasks.tta import View, check_tta, tta_views

INSTANCE_HEADLINE = ("instance_score", "pq", "count_median_abs_rel_error")


class SegmentationTask(Task):
    """Binary or multi-class segmentation (one class per pixel, background = class 0).

    Training sees batches of equal-size patches or resized images; evaluation segments each whole
    image, tiled into overlapping windows when `inference.window` is set, and scores it against its
    mask at native size.

    Args:
        loss: a loss module taking (logits B x K x H x W, target B x 1 x H x W), e.g. MONAI's.
        class_names: one name per class, background first (metric keys use them).
        monitor: the validation metric that picks the best checkpoint (e.g. `val/dice`).
        monitor_mode: `max` or `min`.
        inference: `window` (int, [h, w] or None for one pass over the whole image), `overlap`
            (fraction of the window), `blend` (`gaussian` or `constant`), `batch_size` (windows per
            forward pass).
        tta: test-time augmentation at evaluation: null, `hflip`, `flips` or `dihedral`
            (`medtrain.tasks.tta`), averaged in probability space.
        flip_tta: the key of runs saved before `tta` (true: `tta=hflip`).
        deep_supervision_decay: weight ratio between successive coarser outputs of a
            deep-supervision model (1, r, r^2, ..., normalised to sum to 1).
        min_object_size: predicted components of this many pixels or fewer are removed before
            scoring and measuring (0 keeps everything).
        connectivity: 1 (4-connected) or 2 (8-connected) components when counting objects.
        num_overlays: test cases drawn in `overlays/`.
        instances: None, or `{method: watershed, sigma: px, h: px}` / `{method: components}` /
            `{method: contacts, threshold: p, sigma: px}`
            (`medtrain.analysis.instances.check_instances`): the predicted objects
            are separated into instances (`medtrain.analysis.instances`; binary tasks), scored one
            by one against the true objects (the dataset's instance labels, or else the connected
            components of the true mask) with the instance score, panoptic quality and counts
            (`medtrain.metrics.instances`), and at test time written as label images
            (`instances/`) and measured object by object. `contacts` learns where objects
            touch in one more output channel than classes (`model.num_classes` = classes + 1),
            from training masks that mark those pixels (`dataset.contacts`).
    """

    name = "segmentation"
    targets = "masks"
    default_monitor = ("val/dice", "max")
    headline = ("dice", "iou", "hd95_mm", "precision", "recall")
    preprocessing_class = SegmentationDataset
    volume_preprocessing_class = VolumeSegmentationDataset  # runs of 3D networks
    labels_volumes = True
    combine_rule = "mean of probabilities"
    report_sections = ("overlays",)
    report_targets = "objects"
    uses_spacing = True
    trains_on_patches = True

    def __init__(
        self,
        loss: nn.Module,
        class_names: Sequence[str],
        monitor: str = "val/dice",
        monitor_mode: str = "max",
        inference: Mapping[str, Any] | None = None,
        tta: str | None = None,
        flip_tta: bool = False,
        deep_supervision_decay: float = 0.5,
        min_object_size: int = 0,
        connectivity: int = 2,
        num_overlays: int = 16,
        instances: Mapping[str, Any] | None = None,
    ):
        settings = {"connectivity": connectivity, "min_object_size": min_object_size}
        settings |= {"num_overlays": num_overlays, "inference": inference, "instances": instances}
        self.check_settings(settings)
        inference = dict(inference or {})
        super().__init__(loss, class_names, monitor, monitor_mode, tta, flip_tta)
        self.window = inference.get("window")
        self.blend = inference.get("blend", "gaussian")
        self.overlap = inference.get("overlap", 0.5)
        self.window_batch = inference.get("batch_size", 8)
        if self.window is not None:  # without a window the image is predicted in one pass
            check_inference(self.window, self.overlap, self.blend, self.window_batch)
            self.overlap, self.window_batch = float(self.overlap), int(self.window_batch)
        self.decay = deep_supervision_decay
        self.min_object_size = int(min_object_size)
        self.connectivity = connectivity
        self.num_overlays = num_overlays
        self.instances = None if instances is None else check_instances(instances)
        if self.instances is not None:  # what an instance run is judged by: in logs and CV tables
            self.headline = (*self.headline, *INSTANCE_HEADLINE)
        # The learned contact map: one output channel after the classes' (`instances.contacts`).
        self.contacts = self.instances is not None and self.instances["method"] == "contacts"
        if self.instances is not None and len(self.class_names) != 2:
            raise ConfigError(
                f"task.instances separates the objects of one class; this task has "
                f"{len(self.class_names) - 1} foreground classes ({list(self.class_names[1:])}): "
                "set task.instances=null"
            )

    @staticmethod
    def check_settings(task: Mapping[str, Any]) -> None:
        """Connectivity, sizes, the tiled inference's keys and values, and `task.instances`'s
        keys (its one foreground class is checked with the class names, which the data may
        decide)."""
        Task.check_settings(task)
        connectivity = task.get("connectivity", 2)
        if connectivity not in (1, 2):
            raise ConfigError(f"task.connectivity={connectivity}: use 1 (4-) or 2 (8-connected)")
        if task.get("min_object_size", 0) < 0 or task.get("num_overlays", 16) < 0:
            raise ConfigError("task.min_object_size and task.num_overlays must be >= 0")
        inference = dict(task.get("inference") or {})
        unknown = set(inference) - {"window", "overlap", "blend", "batch_size"}
        if unknown:
            raise ConfigError(
                f"task.inference has unknown keys {sorted(unknown)}; valid: window, overlap, "
                "blend, batch_size"
            )
        if inference.get("window") is not None:
            check_inference(
                inference["window"],
                inference.get("overlap", 0.5),
                inference.get("blend", "gaussian"),
                inference.get("batch_size", 8),
            )
        if task.get("instances") is not None:
            check_instances(task["instances"])

    @classmethod
    def check_config(
        cls, cfg: DictConfig, provides: Sequence[str] | None, choices: Choices
    ) -> None:
        if provides is not None and "masks" not in provides:
            raise ConfigError(
                f"task=segmentation needs masks, but dataset={choices['dataset']} holds one label "
                "per image: use dataset=seg_folder or dataset=synthetic_segmentation"
            )
        dims = cfg.dataset.get("spatial_dims") or 2
        tta_views(check_tta(cfg.task.get("tta"), cfg.task.get("flip_tta", False)), dims)
        window = cfg.task.get("inference", {}).get("window")
        if window is not None:
            check_inference(window, 0.0, "constant", 1, spatial_dims=dims)
        if cfg.task.get("instances") and dims == 3:
            raise ConfigError(
                "task.instances separates objects of 2D images; volumes are scored in 3D: set "
                "task.instances=null"
            )
        settings = cfg.task.get("instances")
        method = settings.get("method") if isinstance(settings, Mapping) else None
        marks = bool(cfg.dataset.get("contacts"))
        if method == "contacts" and not marks:
            raise ConfigError(
                "task.instances.method=contacts learns where objects touch from training masks "
                "that mark them: set dataset.contacts=true (dataset=seg_folder with "
                "dataset.instance_labels=true)"
            )
        if marks and method != "contacts":
            raise ConfigError(
                "dataset.contacts=true marks where objects touch (mask value 2), which only "
                "task.instances.method=contacts learns: set it, or dataset.contacts=false"
            )
        if cfg.task.get("instances") and choices["dataset"] == "volume_slices":
            raise ConfigError(
                "task.instances separates objects of 2D images; dataset=volume_slices is scored "
                "per volume: set task.instances=null"
            )
        classes = (  # last: `check-data` goes on after a loss refusal
            "loss={loss} is a classification loss; for task=segmentation use loss=dice_ce, "
            "dice, dice_bce, dice_focal, tversky or seg_focal"
        )
        refuse_loss(cfg, choices, values=REGRESSION_LOSS_FOR_MASKS, classes=classes)

    def check_output(self, output: torch.Tensor, model: str) -> None:
        if output.ndim not in (4, 5):
            raise ConfigError(
                f"model={model} outputs {tuple(output.shape)}, one value per image; "
                "task=segmentation needs a mask per image: use model=unet or model=basic_unet"
            )
        width = len(self.class_names) + self.sigmoid_outputs
        if output.shape[1] != width:
            contact = " and one for the contacts (task.instances.method=contacts)"
            raise ConfigError(
                f"model={model} outputs {output.shape[1]} channels; task=segmentation needs "
                f"{width}: one per class ({len(self.class_names)}, dataset.class_names)"
                + (contact if self.contacts else "")
                + f": set model.num_classes={width} (model.out_channels for basic_unet)"
            )

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> Any:
        """Training: the model's raw output (a tuple for deep supervision). Evaluation: logits at each
        mask's native size (a list when the images differ in size)."""
        images = batch["image"]
        if model.training:
            if isinstance(images, list):  # whole images of different sizes: one at a time
                return [model(image[None]) for image in images]
            return model(images)
        # The masks' spatial axes: 2 for images, 3 for volumes (an image is C x [D x] H x W).
        dims = (images[0] if isinstance(images, list) else images[0]).ndim - 1
        if isinstance(images, list) or isinstance(batch["mask"], list):
            images = images if isinstance(images, list) else list(images)
            return [
                self.infer(model, image[None], tuple(mask.shape[-dims:]))
                for image, mask in zip(images, batch["mask"], strict=True)
            ]
        return self.infer(model, images, tuple(batch["mask"].shape[-dims:]))

    def infer(
        self,
        model: nn.Module,
        images: torch.Tensor,
        size: tuple[int, ...] | None = None,
        extra: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits of whole images (or volumes): tiled when `inference.window` is set, averaged over
        the views of `tta` (as log-probabilities), resized to `size` (the native height and width,
        or depth, height and width) when the model saw them resized."""

        def predict(x: torch.Tensor) -> torch.Tensor:
            if self.window is None:
                return model(x)
            return sliding_window_inference(
                model, x, self.window, self.overlap, self.blend, self.window_batch
            )

        logits = self.averaged_views(lambda view: predict(view.apply(images)).float(), images)
        if size is None or tuple(logits.shape[2:]) == tuple(size):
            return logits
        mode = "trilinear" if logits.ndim == 5 else "bilinear"
        return F.interpolate(logits, size=tuple(size), mode=mode, align_corners=False)

    def unview(self, view: View, outputs: torch.Tensor) -> torch.Tensor:
        return view.invert(outputs)

    def loss(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        masks = batch["mask"]
        if self.contacts and "instances" in batch:  # evaluation: mark the contacts as training does
            masks = self.marked_contacts(masks, batch["instances"])
        if isinstance(outputs, list):
            masks = masks if isinstance(masks, list) else list(masks)
            losses = [self._loss(o, m[None]) for o, m in zip(outputs, masks, strict=True)]
            return torch.stack(losses).mean()
        return self._loss(outputs, masks)

    def marked_contacts(self, masks: Any, instances: Any) -> Any:
        """Evaluation masks with the contact pixels of their instance labels as 2, as the dataset
        marks training masks (`dataset.contacts`)."""

        def marked(mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            touching = contact_pixels(labels.cpu().numpy())
            return torch.where(torch.from_numpy(touching).to(mask.device), 2, mask)

        if isinstance(masks, list) or isinstance(instances, list):
            return [marked(m, i) for m, i in zip(masks, instances, strict=True)]
        return torch.stack([marked(m, i) for m, i in zip(masks, instances, strict=True)])

    def _loss(self, outputs: torch.Tensor | tuple, masks: torch.Tensor) -> torch.Tensor:
        target = masks[:, None]
        if isinstance(outputs, tuple):  # deep supervision: finest output first, coarser weigh less
            weights = [self.decay**k for k in range(len(outputs))]
            return sum(
                w * self._one_loss(o.float(), target, finest=k == 0)
                for k, (w, o) in enumerate(zip(weights, outputs, strict=True))
            ) / sum(weights)
        return self._one_loss(outputs.float(), target)

    def _one_loss(
        self, logits: torch.Tensor, target: torch.Tensor, finest: bool = True
    ) -> torch.Tensor:
        """The configured loss of the classes; with contacts, plus `contact_loss` of the contact
        channel against the marked pixels (mask value 2, a nucleus pixel) at the finest output
        only: contacts are 1-2 px wide, which the up-sampled coarse outputs of deep supervision
        cannot draw, so there they would only pull the shared features."""
        if not self.contacts:
            return self.loss_fn(logits, target)
        classes = len(self.class_names)
        loss = self.loss_fn(logits[:, :classes], target.clamp_max(classes - 1))
        if not finest:
            return loss
        return loss + contact_loss(logits[:, classes:], (target == classes).float())

    @property
    def sigmoid_outputs(self) -> int:
        """The contact channel after the classes' (`task.instances.method=contacts`)."""
        return int(self.contacts)

    def predict_masks(self, logits: torch.Tensor) -> np.ndarray:
        """Class masks (uint8, B x H x W) from logits, with small predicted objects removed."""
        masks = logits[:, : len(self.class_names)].argmax(1).to(torch.uint8).cpu().numpy()
        if self.min_object_size:
            for mask in masks:
                for klass in range(1, len(self.class_names)):
                    keep = remove_small_objects(
                        mask == klass, max_size=self.min_object_size, connectivity=self.connectivity
                    )
                    mask[(mask == klass) & ~keep] = 0
        return masks

    def instance_labels(
        self, mask: np.ndarray, logits: torch.Tensor | None = None, **settings: Any
    ) -> np.ndarray:
        """The predicted objects of a class mask (after `predict_masks`) as an instance-label
        image (`task.instances`, with `settings` in place of its own); `contacts` reads the
        contact channel of the image's logits (1 x C x H x W)."""
        assert self.instances is not None
        settings = self.instances | settings
        contact = None
        if settings["method"] == "contacts":
            if logits is None or logits.shape[1] != len(self.class_names) + 1:
                raise ValueError("task.instances.method=contacts needs the logits' contact channel")
            contact = torch.sigmoid(logits[0, len(self.class_names)].float()).cpu().numpy()
        return separate_instances(
            mask == 1, connectivity=self.connectivity, contact=contact, **settings
        )

    def combine(self, outputs: list[Logits], tasks: list[SegmentationTask]) -> Logits:
        """Ensemble: the mean of the members' per-pixel class probabilities, as logits (their
        softmax gives the mean back); outputs are lists when the images differ in size."""

        def mean_log_prob(maps: Sequence[torch.Tensor]) -> torch.Tensor:
            stacked = torch.stack([m.float() for m in maps])
            return mean_class_logits(stacked, self.sigmoid_outputs)

        if isinstance(outputs[0], list):
            return [mean_log_prob(maps) for maps in zip(*outputs, strict=True)]
        return mean_log_prob(outputs)

    def average_rule(self) -> str:
        return "softmax"

    def collector(self, final: bool = False) -> SegmentationCollector:
        return SegmentationCollector(self, final)

    @classmethod
    def intervals(cls, run_dir: Path, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return segmentation_intervals(run_dir)

    # -- finished runs ---------------------------------------------------------------------------
    def prediction(self, output: torch.Tensor, item: Input) -> dict[str, Any]:
        """The class `mask` and, when measuring, each object's `measurements`, per-class `totals`,
        the `spacing` used and its `units` (mm, or px without a spacing)."""
        mask = self.predict_masks(output)[0]
        if mask.ndim == 3:  # a volume: its structures in mL, the mask for a NIfTI file
            if item.spacing is not None and len(item.spacing) != 3:
                raise DataError(
                    f"{item.name}: spacing={list(item.spacing)} names {len(item.spacing)} axes; "
                    "a volume's voxel size has 3 (depth, row, col mm; a NIfTI file states its own)"
                )
            spacing = tuple(item.spacing) if item.spacing else (1.0, 1.0, 1.0)
            affine = item.affine if item.affine is not None else np.diag([*spacing, 1.0])
            return {
                "mask": mask,
                "affine": np.asarray(affine, dtype=np.float64),
                "spacing": [float(s) for s in spacing],
                "units": "mm" if item.spacing else "voxels (1 mm assumed)",
                "volumes_ml": structure_volumes_ml(mask, spacing, self.class_names, affine),
                "objects": structure_objects(mask, self.class_names, self.connectivity),
            }
        separated = (
            {} if self.instances is None else {"instances": self.instance_labels(mask, output)}
        )
        if not item.measure:
            return {"mask": mask, **separated}
        spacing = item.spacing
        units = "px" if spacing is None else "mm"
        result = {
            "mask": mask,
            **separated,
            "intensity": item.intensity,
            "spacing": None if spacing is None else [float(s) for s in spacing],
            "units": units,
        }
        counted = (
            self.count_objects(mask, separated.get("instances"))
            if item.max_objects is not None
            else {}
        )
        found = sum(count for count, _ in counted.values())
        if item.max_objects is not None and found > item.max_objects:
            return result | {
                "measurements": [],
                "measurements_left_out": found,
                "note": f"{found} objects: over the {item.max_objects} measured one by one "
                "(max_objects), so only totals are given; `medtrain measure` on the mask "
                "measures every object",
                "totals": self.count_totals(counted, item.name, spacing, units),
            }
        rows = measure_mask(
            separated.get("instances", mask),
            spacing=spacing,
            image=item.intensity,
            class_names=self.class_names,
            image_id=item.name,
            source="pred",
            connectivity=self.connectivity,
            instances=bool(separated),
        )
        summary = totals(rows, [item.name], self.class_names[1:], source="pred", units=units)
        return result | {"measurements": rows, "totals": summary}

    def count_objects(
        self, mask: np.ndarray, instances: np.ndarray | None = None
    ) -> dict[str, tuple[int, int]]:
        """Per foreground class, its (object count, area in pixels): cheap, unlike measuring.
        Objects are connected components, or the labels of `instances` (`task.instances`)."""
        structure = ndimage.generate_binary_structure(2, self.connectivity)
        counted = {}
        for klass, name in enumerate(self.class_names[1:], start=1):
            inside = mask == klass
            count = (
                object_count(instances)
                if instances is not None
                else int(ndimage.label(inside, structure)[1])
            )
            counted[name] = (count, int(inside.sum()))
        return counted

    @staticmethod
    def count_totals(
        counted: Mapping[str, tuple[int, int]], name: str, spacing, units: str
    ) -> list[dict[str, Any]]:
        """`totals` rows (`TOTAL_FIELDS`) from `count_objects`, without measuring each object."""
        pixel_mm2 = 1.0 if spacing is None else float(spacing[0]) * float(spacing[1])
        return [
            total_row(name, klass, count, area, area * pixel_mm2, "pred", units)
            for klass, (count, area) in counted.items()
        ]

    def to_json(self, result: dict[str, Any], overlay: bool = False) -> dict[str, Any]:
        """The mask (and overlay) as base64 PNG, with the pixel value of each class."""
        names = self.class_names
        mask = result["mask"]
        if "volumes_ml" in result:  # a volume: structure volumes, the mask's shape and values
            out = {k: v for k, v in result.items() if k not in ("mask", "affine")}
            out["mask_shape"] = list(mask.shape)
            out["mask_values"] = {n: k for k, n in enumerate(names)}
            return out
        pixels = mask_pixels(np.arange(len(names)), len(names))  # as the run's masks/
        out = {k: v for k, v in result.items() if k not in ("mask", "intensity", "instances")}
        for key in ("measurements", "totals"):  # a CSV's empty cell is JSON's null
            if key in out:
                out[key] = [{k: None if v == "" else v for k, v in row.items()} for row in out[key]]
        spacing = result.get("spacing")  # stated in the PNGs, as in the run's masks/
        mask_png = png_bytes(mask_pixels(mask, len(names)), spacing)
        out["mask"] = base64.b64encode(mask_png).decode("ascii")
        if "instances" in result:  # a 16-bit PNG: 0 background, 1..N one number per object
            labels = as_label_png(result["instances"], "the answer's instances")
            out["instances"] = base64.b64encode(png_bytes(labels, spacing)).decode("ascii")
            out["instance_count"] = object_count(labels)
        out["mask_values"] = {n: int(v) for n, v in zip(names, pixels, strict=True)}
        out["mask_shape"] = list(mask.shape)
        if overlay:
            picture = draw_overlay(result["intensity"], None, mask)
            out["overlay"] = base64.b64encode(png_bytes(picture)).decode("ascii")
        return out

    def prediction_fields(self) -> list[str]:
        """The columns of a run's own predictions.csv: the mask file, per class the count and area
        (pixels, and mm^2 when the image has a spacing), the unit."""
        per_class = [
            f"{what}_{n}" for n in self.class_names[1:] for what in ("count", "area_px", "area_mm2")
        ]
        separated = [] if self.instances is None else ["instances"]
        return ["mask", *separated, *per_class, "unit"]

    def prediction_row(self, name: str, result: dict[str, Any], files: Any) -> dict[str, Any]:
        mask_path, shown = files.new_file(name, ".png")
        spacing = result.get("spacing")
        write_mask(mask_path, result["mask"], len(self.class_names), spacing)
        row: dict[str, Any] = {"mask": shown, "unit": result["units"]}
        if "instances" in result:  # instances/<stem>.png for masks/<stem>.png, as in a run folder
            labels_path, row["instances"] = files.companion("instances", mask_path)
            write_instances(labels_path, result["instances"], spacing)
        for total in result["totals"]:
            row[f"count_{total['class']}"] = total["count"]
            row[f"area_px_{total['class']}"] = total["total_area_px"]
            mm2 = repr(float(total["total_area_mm2"])) if result["units"] == "mm" else ""
            row[f"area_mm2_{total['class']}"] = mm2
        return row

    def prediction_tables(self, results: Sequence[dict[str, Any]]) -> dict[str, tuple[list, list]]:
        """`measurements`: one row per predicted object."""
        objects = [row for result in results for row in result["measurements"]]
        return {"measurements": (objects, MEASUREMENT_FIELDS)}

    # -- export ----------------------------------------------------------------------------------
    def postprocess(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        classes = len(self.class_names)
        probs = torch.softmax(outputs[:, :classes], dim=1)
        if outputs.shape[1] > classes:  # the contact channel (`contacts`): its own probability
            probs = torch.cat([probs, torch.sigmoid(outputs[:, classes:])], 1)
        return probs, outputs

    def export_outputs(self, width: int, pixels: Sequence[Any]) -> list[dict[str, Any]]:
        shape = ["batch", width, *pixels]
        return [
            {
                "name": "probabilities",
                "dtype": "float32",
                "shape": shape,
                "meaning": "per-pixel class probabilities (softmax over classes); with "
                "segmentation.channels > num_classes the last channel is the probability that "
                "the pixel lies where two objects touch (sigmoid; task.instances.method=contacts)",
            },
            {
                "name": "logits",
                "dtype": "float32",
                "shape": shape,
                "meaning": "per-pixel class logits: blend these over windows and resize them to "
                "the image's size before taking the most probable class, as medtrain does",
            },
        ]

    def export_manifest(self, preprocess: Any) -> dict[str, Any]:
        names = [str(n) for n in self.class_names]
        dims = int(getattr(preprocess, "spatial_dims", 2))
        window = spatial_size(self.window, "task.inference.window", dims)
        return {
            "class_names": names,
            "segmentation": {
                "num_classes": len(names),
                # The network's output channels: the classes', then with task.instances.method=
                # contacts the logit that a pixel lies where two objects touch.
                "channels": len(names) + self.sigmoid_outputs,
                "window": None if window is None else list(window),
                "overlap": self.overlap,
                "blend": self.blend,
                "batch_size": self.window_batch,
                "min_object_size": self.min_object_size,
                "connectivity": self.connectivity,
                "spacing": None if preprocess.spacing is None else list(preprocess.spacing),
                "mask": f"the most probable class of each {'voxel' if dims == 3 else 'pixel'}; "
                f"then objects of min_object_size {'voxels' if dims == 3 else 'pixels'} or fewer "
                + (
                    "(connectivity 1: 6-, 2: 18-connected)"
                    if dims == 3
                    else "(connectivity 1: 4-, 2: 8-connected)"
                )
                + " become background",
                "note": "the model file is the whole-image network; with a window, medtrain blends "
                "the logits of overlapping windows (starts every window * (1 - overlap) pixels, "
                "the last one at the image end; images smaller than the window zero-padded "
                "around; gaussian weights: sigma 0.125 * window, floor 1e-3, as MONAI), as "
                "examples/run_exported.py does; with task.tta each window's views are averaged "
                "inside the model, close to medtrain's views of the whole image (equal without "
                "a window)",
                "instances": None
                if self.instances is None
                else {
                    **self.instances,
                    "note": "medtrain separates touching objects of the mask into one label "
                    "each by this method (medtrain.analysis.instances.separate_instances), and "
                    "counts and measures those; examples/run_exported.py does not: it counts "
                    "connected components, which merges touching objects; use medtrain predict "
                    "or the service for objects",
                },
            },
        }


def contact_loss(logits: torch.Tensor, touching: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus the soft Dice loss of the batch, of contact logits against the
    contact pixels (0/1). Contacts are about 0.1% of DSB2018's pixels: cross-entropy alone learned
    their prior (every probability under 0.22, true contacts' median 0.016: docs/benchmarks.md);
    the Dice term weighs the few contact pixels as much as the rest."""
    probs = torch.sigmoid(logits)
    overlap = (probs * touching).sum()
    dice = 1 - (2 * overlap + 1) / (probs.sum() + touching.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, touching) + dice
