"""What a segmentation run's evaluation keeps and writes: each image scored as it arrives
(`per_case_metrics.csv`) and, in the test pass, prediction masks, instance label images,
measurements against the ground truth's and overlays (`SegmentationCollector`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medtrain.analysis.agreement import measurement_agreement
from medtrain.analysis.instances import separate_instances
from medtrain.analysis.measurements import MEASUREMENT_FIELDS, TOTAL_FIELDS, measure_mask, totals
from medtrain.analysis.overlays import case_stems, save_overlays
from medtrain.analysis.volume_results import VolumeAssembler
from medtrain.errors import ConfigError, DataError
from medtrain.io import save_csv, save_json, save_png
from medtrain.metrics.instances import instance_metrics, summarize_instances
from medtrain.metrics.segmentation import case_metrics, summarize

if TYPE_CHECKING:
    from medtrain.tasks.segmentation import SegmentationTask

Logits = torch.Tensor | list[torch.Tensor]


def _spacing(value: torch.Tensor) -> tuple[float, ...] | None:
    """A sample's pixel (voxel) size in mm, or None when unknown (NaN)."""
    sizes = tuple(float(v) for v in value)
    return None if any(math.isnan(v) for v in sizes) else sizes


class SegmentationCollector:
    """Scores each image as it arrives (`per_case_metrics.csv`); in the final (test) pass it also
    keeps the masks to write prediction masks, measurements and overlays."""

    def __init__(self, task: SegmentationTask, final: bool = False):
        self.task = task
        self.final = final
        self.rows: list[dict[str, Any]] = []
        self.cases: list[dict[str, Any]] = []
        self.volumes = VolumeAssembler(task, final, self.rows)

    def update(self, logits: Logits, batch: dict[str, Any]) -> None:
        outputs = logits if isinstance(logits, list) else list(logits[:, None])
        masks = batch["mask"]
        for k, (output, case_id) in enumerate(zip(outputs, batch["id"], strict=True)):
            pred = self.task.predict_masks(output)[0]
            true = masks[k].cpu().numpy().astype(np.uint8)
            if "volume" in batch:  # slices of volumes: scored per reassembled volume
                self.volumes.add(batch, k, pred, true)
                continue
            if pred.ndim == 3:  # a whole volume: scored in 3D, its structures in mL
                if self.task.instances is not None:
                    raise ConfigError(
                        "task.instances separates objects of 2D images; volumes are scored in "
                        "3D: set task.instances=null"
                    )
                image = batch["intensity"][k].cpu().numpy() if self.final else None
                spacing = _spacing(batch["spacing"][k])
                affine = batch["affine"][k].cpu().numpy()
                # The file's own affine (`medtrain evaluate`): its mask is written in its order.
                stored = (
                    batch["stored_affine"][k].cpu().numpy() if "stored_affine" in batch else None
                )
                self.volumes.add_volume(case_id, pred, true, spacing, affine, image, stored)
                continue
            spacing = _spacing(batch["spacing"][k])
            row = {"id": case_id, **case_metrics(pred, true, self.task.class_names, spacing)}
            case = {"id": case_id, "pred": pred, "true": true, "spacing": spacing}
            if self.task.instances is not None:
                case |= self._instances(pred, true, batch, k, output)
                row |= instance_metrics(case["true_instances"], case["pred_instances"])
            self.rows.append(row)
            if self.final:
                self.cases.append(case | {"image": batch["intensity"][k].cpu().numpy()})

    def _instances(
        self, pred: np.ndarray, true: np.ndarray, batch: dict[str, Any], k: int, logits: Any
    ) -> dict[str, np.ndarray]:
        """The case's predicted and true objects as label images: the true ones from the
        dataset's instance labels when it has them, else the connected components of its mask."""
        if "instances" in batch:
            true_instances = batch["instances"][k].cpu().numpy()
        else:
            true_instances = separate_instances(
                true == 1, "components", connectivity=self.task.connectivity
            )
        return {
            "pred_instances": self.task.instance_labels(pred, logits),
            "true_instances": true_instances,
        }

    def metrics(self, prefix: str) -> dict[str, float]:
        self.volumes.check_complete()
        values = summarize(
            [{k: v for k, v in r.items() if k != "id"} for r in self.rows], self.task.class_names
        )
        if self.task.instances is not None:
            values |= summarize_instances(self.rows)
        return {f"{prefix}/{key}": value for key, value in values.items()}

    def save(self, run_dir: Path) -> dict[str, float]:
        """Write per-case metrics, prediction masks, measurements, their agreement with the ground
        truth, and overlays; return count and area agreement as flat metrics."""
        run_dir = Path(run_dir)
        fields = list(dict.fromkeys(key for row in self.rows for key in row))
        save_csv(run_dir / "per_case_metrics.csv", self.rows, fields)
        if self.volumes.done:
            return self.volumes.save(run_dir)
        names = self.task.class_names
        objects: list[dict[str, Any]] = []
        summaries = {"pred": [], "true": []}
        # Ids that differ only in punctuation or case get _2, _3 ...
        stems = case_stems(case["id"] for case in self.cases)
        mask_files = {case["id"]: f"masks/{stems[str(case['id'])]}.png" for case in self.cases}
        separated = self.task.instances is not None
        for case in self.cases:
            for source in ("pred", "true"):
                rows = measure_mask(
                    case[f"{source}_instances"] if separated else case[source],
                    spacing=case["spacing"],
                    image=case["image"],
                    class_names=names,
                    image_id=case["id"],
                    source=source,
                    connectivity=self.task.connectivity,
                    instances=separated,
                )
                objects += rows
                units = "px" if case["spacing"] is None else "mm"
                summaries[source] += totals(
                    rows, [case["id"]], names[1:], source=source, units=units
                )
            mask_file = run_dir / mask_files[case["id"]]
            write_mask(mask_file, case["pred"], len(names), case["spacing"])
            if separated:
                write_instances(
                    run_dir / instances_file(mask_files[case["id"]]),
                    case["pred_instances"],
                    case["spacing"],
                )
        save_csv(run_dir / "measurements.csv", objects, MEASUREMENT_FIELDS)
        save_csv(
            run_dir / "measurement_totals.csv", summaries["true"] + summaries["pred"], TOTAL_FIELDS
        )
        agreement = measurement_agreement(summaries["true"], summaries["pred"])
        save_json(run_dir / "measurement_agreement.json", agreement)
        self._save_predictions(run_dir, summaries["pred"], mask_files)
        if self.task.num_overlays:
            save_overlays(
                run_dir / "overlays", self.cases, max_cases=self.task.num_overlays, stems=stems
            )
        return headline_agreement(agreement)

    def _save_predictions(
        self, run_dir: Path, pred_totals: list[dict[str, Any]], mask_files: Mapping[str, str]
    ) -> None:
        """`predictions.csv`: one row per test image with its mask file, per-class count and area
        in pixels and (when the image has a pixel spacing) in mm^2, and the unit."""
        units = {case["id"]: "px" if case["spacing"] is None else "mm" for case in self.cases}
        by_case = {case_id: {"id": case_id, "mask": mask_files[case_id]} for case_id in units}
        if self.task.instances is not None:
            for case_id, row in by_case.items():
                row["instances"] = instances_file(mask_files[case_id])
        for total in pred_totals:
            case_id, klass = total["id"], total["class"]
            by_case[case_id][f"count_{klass}"] = total["count"]
            by_case[case_id][f"area_px_{klass}"] = total["total_area_px"]
            mm2 = total["total_area_mm2"] if units[case_id] == "mm" else ""
            by_case[case_id][f"area_mm2_{klass}"] = mm2
        rows = [row | {"unit": units[case_id]} for case_id, row in by_case.items()]
        fields = list(dict.fromkeys(key for row in rows for key in row))
        save_csv(run_dir / "predictions.csv", rows, fields)


def headline_agreement(agreement: dict[str, Any]) -> dict[str, float | None]:
    """Count and area agreement per class as flat metric keys (`count_mae_<class>`, ...)."""
    keys = {
        "count_mae": "count_mean_absolute_error",
        "count_median_abs_rel_error": "count_median_absolute_relative_error",
        "area_mae_mm2": "area_mean_absolute_error_mm2",
        "area_mean_abs_rel_error": "area_mean_absolute_relative_error",
    }
    return {
        f"{short}_{klass}": entry["summary"][long]
        for klass, entry in agreement["classes"].items()
        for short, long in keys.items()
    }


def mask_pixels(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """A class mask as stored pixels (uint8): binary masks as 0/255 (viewable), multi-class masks
    as class indices."""
    return (mask * 255).astype(np.uint8) if num_classes == 2 else mask.astype(np.uint8)


def write_mask(
    path: Path, mask: np.ndarray, num_classes: int, spacing: Sequence[float] | None = None
) -> None:
    """Save a predicted mask as PNG (see `mask_pixels`) that states the image's pixel `spacing`
    (row, col mm), so that measuring the file again gives mm."""
    save_png(path, mask_pixels(mask, num_classes), spacing)


def instances_file(mask_file: str) -> str:
    """Where a test image's instance labels go in the run folder, beside its mask: `masks/<id>.png`
    -> `instances/<id>.png`."""
    return "instances/" + mask_file.removeprefix("masks/")


def object_count(labels: np.ndarray) -> int:
    """The number of objects of an instance-label image (its distinct nonzero labels)."""
    return int(np.count_nonzero(np.unique(labels)))


def as_label_png(labels: np.ndarray, what: str) -> np.ndarray:
    """Instance labels as the uint16 array of a 16-bit PNG (0 background, one number per object);
    more than 65,535 objects do not fit one and are refused, naming `what`."""
    top = int(labels.max(initial=0))
    if top > np.iinfo(np.uint16).max:
        raise DataError(
            f"{what}: object label {top} does not fit a 16-bit label image (at most 65,535 "
            "objects an image); segment tiles of the image, or set task.instances=null"
        )
    return labels.astype(np.uint16)


def write_instances(path: Path, labels: np.ndarray, spacing: Sequence[float] | None = None) -> None:
    """Save an instance-label image as a 16-bit PNG (`as_label_png`) stating the pixel `spacing`."""
    save_png(path, as_label_png(labels, str(path)), spacing)
