"""Volume results: 3D metrics per volume (predicted whole, or reassembled from slice predictions),
structure volumes in mL against the ground truth, the predicted label volumes written as NIfTI, and
overlays of three orthogonal slices."""

from __future__ import annotations

import gzip
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtrain.analysis.agreement import bland_altman
from medtrain.analysis.overlays import case_stems, save_overlays
from medtrain.data.volumes import stack_slices, to_stored
from medtrain.errors import DataError
from medtrain.io import atomic_write, save_csv
from medtrain.metrics.segmentation import case_metrics

VOLUME_FIELDS = [
    "id",
    "class",
    "true_ml",
    "pred_ml",
    "difference_ml",
    "abs_rel_error",
    "true_objects",
    "pred_objects",
]


class VolumeAssembler:
    """Collects the evaluated slices of each volume; when a volume is complete, stacks them and
    scores it in 3D (a row of `rows`, the collector's per-case metrics).

    Args:
        task: the segmentation task (class names).
        final: the test pass: keep the volumes to write masks and overlays.
        rows: the collector's per-case metric rows, appended to.
    """

    def __init__(self, task: Any, final: bool, rows: list[dict[str, Any]]):
        self.task = task
        self.final = final
        self.rows = rows
        self.pending: dict[str, dict[str, Any]] = {}
        self.done: list[dict[str, Any]] = []

    def add(self, batch: dict[str, Any], k: int, pred: np.ndarray, true: np.ndarray) -> None:
        """Add sample `k` of a batch of slices (keys `volume`, `slice`, `num_slices`, ...)."""
        case = batch["volume"][k]
        entry = self.pending.setdefault(
            case,
            {
                "count": int(batch["num_slices"][k]),
                "axis": int(batch["slice_axis"][k]),
                "spacing": tuple(float(v) for v in batch["volume_spacing"][k]),
                "affine": batch["affine"][k].cpu().numpy(),
                # the file's own affine: the mask is written in the file's voxel order
                "stored_affine": (
                    batch["stored_affine"][k].cpu().numpy() if "stored_affine" in batch else None
                ),
                "slices": {},
            },
        )
        image = batch["intensity"][k].cpu().numpy() if self.final else None
        entry["slices"][int(batch["slice"][k])] = (pred, true, image)
        if len(entry["slices"]) == entry["count"]:
            self._finish(case)

    def _finish(self, case: str) -> None:
        entry = self.pending.pop(case)
        order = [entry["slices"][i] for i in range(entry["count"])]
        pred = stack_slices([p for p, _, _ in order], entry["axis"])
        true = stack_slices([t for _, t, _ in order], entry["axis"])
        overlay = None
        if self.final:
            # The slice with the most ground truth, drawn as the volume's overlay.
            best = max(range(len(order)), key=lambda i: int((order[i][1] > 0).sum()))
            overlay = {
                "id": case,
                "image": order[best][2],
                "true": order[best][1],
                "pred": order[best][0],
            }
        self._score(case, pred, true, entry["spacing"], entry["affine"], overlay)
        self._in_stored_order(pred, entry["affine"], entry["stored_affine"])

    def _in_stored_order(
        self, pred: np.ndarray, affine: np.ndarray, stored_affine: np.ndarray | None
    ) -> None:
        """The last volume's mask in its file's voxel order, with the file's affine, when the
        volume was read reordered to RAS: the written mask then lies on the file's voxels array
        for array, as `medtrain predict` writes it."""
        if self.final and stored_affine is not None:
            self.done[-1] |= {
                "pred": to_stored(pred, affine, stored_affine),
                "affine": np.asarray(stored_affine, dtype=np.float64),
            }

    def add_volume(
        self,
        case: str,
        pred: np.ndarray,
        true: np.ndarray,
        spacing: Sequence[float] | None,
        affine: np.ndarray,
        image: np.ndarray | None = None,
        stored_affine: np.ndarray | None = None,
    ) -> None:
        """Add a volume predicted whole (D x H x W labels; `image` D x H x W x C, for overlays);
        with `stored_affine` (the file's, when it was read reordered to RAS) its mask is written
        in the file's voxel order with that affine, as `medtrain predict` writes it."""
        overlay = None
        if self.final and image is not None:
            overlay = {"id": case, **orthogonal_slices(image, true, pred)}
        self._score(case, pred, true, spacing or (1.0, 1.0, 1.0), affine, overlay)
        self._in_stored_order(pred, affine, stored_affine)

    def _score(self, case, pred, true, spacing, affine, overlay) -> None:
        names = self.task.class_names
        self.rows.append({"id": case, **case_metrics(pred, true, names, spacing)})
        true_ml = structure_volumes_ml(true, spacing, names, affine)
        pred_ml = structure_volumes_ml(pred, spacing, names, affine)
        volumes = {name: (true_ml[name], pred_ml[name]) for name in true_ml}
        connectivity = getattr(self.task, "connectivity", 1)
        true_n, pred_n = (structure_objects(m, names, connectivity) for m in (true, pred))
        objects = {name: (true_n[name], pred_n[name]) for name in true_n}
        result = {"id": case, "volumes": volumes, "objects": objects}
        if self.final:
            result |= {"pred": pred, "affine": affine, "overlay": overlay}
        self.done.append(result)

    def check_complete(self) -> None:
        """Every volume seen must have had all its slices evaluated."""
        for case, entry in self.pending.items():
            raise DataError(
                f"volume {case}: {len(entry['slices'])} of its {entry['count']} slices were "
                "evaluated; validation and test splits must hold every slice"
            )

    def save(self, run_dir: Path) -> dict[str, float]:
        """Write `masks/<case>.nii.gz`, `volumes.csv`, `predictions.csv` and overlays; return the
        volume agreement per class as flat metrics."""
        self.check_complete()
        names = self.task.class_names[1:]
        rows, predictions = [], []
        # Two ids of one safe name (`a/b`, `a_b`) would write one file: the second gets `_2`.
        stems = case_stems((r["id"] for r in self.done), strip=nifti_stem)
        for result in self.done:
            mask_file = f"masks/{stems[str(result['id'])]}.nii.gz"
            write_nifti(run_dir / mask_file, result["pred"], result["affine"])
            prediction = {"id": result["id"], "mask": mask_file}
            for name in names:
                true_ml, pred_ml = result["volumes"][name]
                rows.append(
                    {
                        "id": result["id"],
                        "class": name,
                        "true_ml": repr(true_ml),
                        "pred_ml": repr(pred_ml),
                        "difference_ml": repr(pred_ml - true_ml),
                        "abs_rel_error": repr(abs(pred_ml - true_ml) / true_ml) if true_ml else "",
                        "true_objects": result["objects"][name][0],
                        "pred_objects": result["objects"][name][1],
                    }
                )
                prediction[f"volume_ml_{name}"] = repr(pred_ml)
                prediction[f"objects_{name}"] = result["objects"][name][1]
            predictions.append(prediction)
        save_csv(run_dir / "volumes.csv", rows, VOLUME_FIELDS)
        fields = ["id", "mask", *(f"volume_ml_{n}" for n in names)]
        fields += [f"objects_{n}" for n in names]
        save_csv(run_dir / "predictions.csv", predictions, fields)
        if self.task.num_overlays:
            cases = (r["overlay"] for r in self.done if r["overlay"] is not None)
            save_overlays(
                run_dir / "overlays", cases, max_cases=self.task.num_overlays, stems=stems
            )
        return volume_agreement(self.done, names)


def nifti_stem(case: str) -> str:
    """A case id without a NIfTI file's extension (`a.nii.gz` -> `a`): its mask is
    `masks/<stem>.nii.gz`, never `a.nii.gz.nii.gz`."""
    for suffix in (".nii.gz", ".nii"):
        if case.lower().endswith(suffix):
            return case[: -len(suffix)]
    return case


def orthogonal_slices(
    image: np.ndarray, true: np.ndarray, pred: np.ndarray
) -> dict[str, np.ndarray]:
    """Three orthogonal slices (axial, coronal, sagittal: across depth, height and width) through
    the centre of the true structures (of the volume when it has none), side by side on one
    canvas: `image` (H' x W' x C), `true` and `pred` (H' x W'), for `save_overlays`."""
    found = np.argwhere(true > 0)
    centre = found.mean(0).round().astype(int) if len(found) else np.array(true.shape) // 2
    cuts = [(slice(None),) * axis + (int(centre[axis]),) for axis in range(3)]
    height = max(max(true[c].shape[0] for c in cuts), 1)

    def canvas(volume: np.ndarray) -> np.ndarray:
        parts = []
        for cut in cuts:
            part = volume[cut]
            pad = [(0, height - part.shape[0]), (0, 1)] + [(0, 0)] * (part.ndim - 2)
            parts.append(np.pad(part, pad))  # a 1-pixel gap between views
        return np.concatenate(parts, axis=1)

    return {"image": canvas(image), "true": canvas(true), "pred": canvas(pred)}


def voxel_volume_mm3(spacing: Sequence[float], affine: np.ndarray | None = None) -> float:
    """A voxel's volume: |det| of the affine's 3 x 3 part, the product of `spacing` without one.
    They differ where the affine shears the grid (a gantry-tilted CT): its voxel sizes (pixdim,
    the columns' lengths) then overstate the volume (by 4.4% for a shear of 0.3)."""
    if affine is not None:
        matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
        det = abs(float(np.linalg.det(matrix))) if matrix.shape == (3, 3) else 0.0
        if math.isfinite(det) and det > 0:
            return det
    return math.prod(spacing)


def structure_volumes_ml(
    mask: np.ndarray,
    spacing: Sequence[float],
    class_names: Sequence[str],
    affine: np.ndarray | None = None,
) -> dict[str, float]:
    """The volume in mL of each foreground class of a label volume with `spacing` mm per axis
    (with `affine`, the grid's voxel-to-mm matrix, a voxel's volume is `voxel_volume_mm3`'s)."""
    voxel_mm3 = voxel_volume_mm3(spacing, affine)
    # mm^3 -> mL last: 1896 voxels of 1 mm^3 are 1.896 mL, not 1896 x 0.001 = 1.8960000000000001
    return {
        name: float(int((mask == c).sum()) * voxel_mm3 / 1000.0)
        for c, name in enumerate(class_names)
        if c
    }


def structure_objects(
    mask: np.ndarray, class_names: Sequence[str], connectivity: int = 1
) -> dict[str, int]:
    """The number of separate objects (3D connected components) of each foreground class of a
    label volume; voxels touch through faces (`connectivity` 1: 6 neighbours) or also edges (2:
    18), as `task.connectivity` says."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(3, connectivity)
    return {
        name: int(ndimage.label(mask == c, structure=structure)[1])
        for c, name in enumerate(class_names)
        if c
    }


def volume_agreement(done: list[dict[str, Any]], names: list[str]) -> dict[str, float | None]:
    """Per class: mean absolute error (mL), mean absolute relative error, and Bland-Altman bias and
    limits of the predicted against the true structure volumes."""
    out: dict[str, float | None] = {}
    for name in names:
        true = np.array([r["volumes"][name][0] for r in done])
        pred = np.array([r["volumes"][name][1] for r in done])
        present = true > 0
        agreement = bland_altman(pred - true)
        out |= {
            f"volume_mae_ml_{name}": float(np.abs(pred - true).mean()) if len(true) else None,
            f"volume_mean_abs_rel_error_{name}": float(
                (np.abs(pred - true)[present] / true[present]).mean()
            )
            if present.any()
            else None,
            f"volume_bias_ml_{name}": agreement["mean_difference"],
            f"volume_loa_lower_ml_{name}": agreement["lower_limit"],
            f"volume_loa_upper_ml_{name}": agreement["upper_limit"],
        }
    return out


def nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A label volume as the bytes of a .nii.gz file with the case's affine (units mm), stated in
    both the qform and the sform with code 1 (scanner coordinates, as dcm2niix writes): nibabel
    alone leaves the qform's code 0, and tools that read only the qform (ITK's older readers,
    some viewers) then place the mask at the voxel grid's origin instead of on its image. An
    affine a qform cannot state (a sheared grid: a rotation and voxel sizes have no shear) is the
    sform's alone, with the qform's code 0: a qform of its nearest rotation would place the mask
    elsewhere than the sform, for a reader that prefers the qform."""
    import nibabel as nib

    affine = np.asarray(affine, dtype=np.float64)
    image = nib.Nifti1Image(np.asarray(array, dtype=np.uint8), affine)
    image.set_qform(affine, code=1)
    if not np.allclose(image.get_qform(), affine, atol=1e-4):
        image.set_qform(affine, code=0)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a label volume as .nii.gz with the case's affine, atomically."""
    data = nifti_bytes(array, affine)
    return atomic_write(path, lambda handle: handle.write(data), mode="wb")
