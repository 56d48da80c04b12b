"""A finished run applied to new images: its best checkpoint, behind its own evaluation
preprocessing. `medtrain.predict`, `medtrain.serve` and `medtrain.export` share this one path."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from medtrain import __version__
from medtrain import metrics as M
from medtrain.analysis.measurements import measure_mask, totals
from medtrain.analysis.volumes import structure_volumes_ml
from medtrain.build import build, build_model, build_task
from medtrain.config import resolve_device, task_kind
from medtrain.data.base import ImageDataset
from medtrain.data.readers import MAX_PIXELS, Decoded, decode, read_image
from medtrain.data.segmentation import SegmentationDataset, pair
from medtrain.data.transforms import SeededAugment
from medtrain.data.volumes import normalize_volume, read_volume, stack_slices
from medtrain.errors import ConfigError, DataError, MedtrainError
from medtrain.io import file_sha256, load_checkpoint, read_json
from medtrain.models import input_keys
from medtrain.trainer import autocast


@dataclass
class LoadedRun:
    """A run rebuilt from a checkpoint: the config it trained with (resolved, with what its data
    inferred), its network with the checkpoint's weights (in eval mode), its task with the threshold
    chosen on validation, and the checkpoint dict itself."""

    run_dir: Path
    checkpoint_path: Path
    cfg: DictConfig
    model: nn.Module
    task: Any
    checkpoint: dict[str, Any]

    @cached_property
    def weights_sha256(self) -> str:
        """The checkpoint file's SHA-256 (what /info and export manifests report), hashed once."""
        return file_sha256(self.checkpoint_path)


def load_run(run_dir: str | Path, key: str = "run_dir", checkpoint: str = "best") -> LoadedRun:
    """Rebuild a finished run from `checkpoints/<checkpoint>.pt` (loaded with `weights_only=True`).

    Args:
        key: the argument named in error messages.

    Raises:
        ConfigError: no such run, not a medtrain checkpoint, or weights that do not fit the config.
    """
    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        raise ConfigError(
            f"{key}: {run_dir} has no checkpoints/{checkpoint}.pt (is it a finished run?)"
        )
    try:
        state = load_checkpoint(path)
        cfg = OmegaConf.create(state["config"])
    except Exception as err:  # not a medtrain checkpoint, or written by an incompatible version
        raise ConfigError(f"{key}: cannot read {path} as a medtrain checkpoint ({err})") from err
    with open_dict(cfg):
        cfg.trainer.num_workers = 0
    model = build_model(cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(
            f"{key}: the weights in {path} do not fit its model config ({first})"
        ) from err
    model.eval()
    task = build_task(cfg)
    if state.get("threshold") is not None:
        task.threshold = state["threshold"]
    return LoadedRun(run_dir, path, cfg, model, task, state)


def eval_preprocessing(
    cfg: DictConfig, saved: dict[str, Any] | None = None
) -> ImageDataset | SegmentationDataset:
    """An empty dataset of the run's kind holding its evaluation preprocessing (channels, size,
    normalization, the `augmentation.eval` pipeline): its `prepare` is what evaluation runs.

    Args:
        saved: the checkpoint's `preprocessing` entry (the dataset's own `preprocessing()` plus the
            training `input_size`). Image-level models whose data were not resized get images of
            another size resized to the training size. None (runs saved before it existed): taken
            from `cfg.dataset`.
    """
    kind = task_kind(cfg.task)
    base = SegmentationDataset if kind == "segmentation" else ImageDataset
    if saved is not None:
        kwargs = {k: v for k, v in saved.items() if k != "input_size"}
        if base is ImageDataset and kwargs.get("image_size") is None and saved.get("input_size"):
            kwargs["image_size"] = list(saved["input_size"])
    else:
        accepted = set(inspect.signature(base.__init__).parameters) - {"self", "split", "transform"}
        kwargs = {k: v for k, v in OmegaConf.to_container(cfg.dataset).items() if k in accepted}
        if base is ImageDataset:
            kwargs["regression"] = kind == "regression"
    pipeline = build(cfg.augmentation.eval, "augmentation.eval")
    return base("test", transform=SeededAugment(pipeline, cfg.seed), **kwargs)


def volume_settings(cfg: DictConfig) -> dict[str, Any] | None:
    """How a run trained on slices of volumes (`dataset=volume_slices`) made its slices: the
    `axis` and the whole-volume normalization; None for runs trained on 2D images."""
    data = cfg.dataset
    if not str(data.get("_target_", "")).endswith("VolumeSlices"):
        return None
    return {
        "axis": int(data.get("axis", 0)),
        "volume_normalize": data.get("volume_normalize", "zscore"),
    }


class Predictor:
    """Predictions of a finished run for new images, as its evaluation computes them.

    Args:
        run_dir: a finished run (with `checkpoints/best.pt`).
        device: auto, cpu, cuda or cuda:N.
        max_pixels: images declaring more pixels are refused before decoding.
    """

    def __init__(self, run_dir: str | Path, device: str = "cpu", max_pixels: int = MAX_PIXELS):
        run = load_run(run_dir)
        keys = input_keys(run.model)
        if keys != ("image",):
            raise ConfigError(
                f"run_dir: {run.run_dir} has a model reading {list(keys)}; prediction from image "
                "files serves image-only models (tabular columns are not part of an upload)"
            )
        self.run = run
        self.cfg = run.cfg
        self.task = run.task
        self.kind = task_kind(run.cfg.task)
        self.device = resolve_device(device)
        self.model = run.model.to(self.device)
        self.preprocess = eval_preprocessing(run.cfg, run.checkpoint.get("preprocessing"))
        self.max_pixels = int(max_pixels)
        self.class_names = list(self.task.class_names)
        self.weights_sha256 = run.weights_sha256
        # Segmentation datasets may state one pixel spacing for files that state none.
        spacing = getattr(self.preprocess, "spacing", None)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    # -- description ---------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What a client needs to know: task, classes, expected input, test metrics, checksum."""
        metrics = read_json(self.run.run_dir / "metrics.json") or {}
        pre = self.preprocess
        size = pair(pre.image_size, "dataset.image_size")
        return {
            "task": self.kind,
            "class_names": self.class_names,
            "multilabel": bool(getattr(self.task, "multilabel", False)),
            "threshold": getattr(self.task, "threshold", None),
            "input": {
                "channels": pre.in_channels,
                "size": None if size is None else list(size),
                "normalize": pre.normalize.described(),
                "formats": ["dicom", "npy", "npz"]
                if pre.reads_modality
                else ["png", "jpeg", "tiff", "dicom", "npy", "npz"],
                "window": None if pre.windows is None else [list(w) for w in pre.windows],
                "target_spacing": getattr(pre, "target_spacing", None),
                "volumes": None
                if not self.slices_volumes
                else {
                    **volume_settings(self.cfg),
                    "note": "trained on slices of volumes: predict whole volumes (NIfTI, DICOM "
                    "series) with medtrain.predict; single images are refused",
                },
                "note": "any size, bit depth and grey/colour: converted by the run's evaluation "
                "preprocessing"
                + ("; CT windows need values in Hounsfield units" if pre.reads_modality else ""),
            },
            "model": self.cfg.model.get("_target_"),
            "test_metrics": {k: v for k, v in metrics.items() if k.startswith("test/")},
            "weights_sha256": self.weights_sha256,
            "medtrain_version": __version__,
            "trained_with": self.run.checkpoint.get("medtrain_version"),
        }

    # -- reading -------------------------------------------------------------------------------
    def read(self, path: str | Path) -> Decoded:
        return read_image(path, self.max_pixels, self.preprocess.reads_modality)

    def decode(self, data: bytes, name: str) -> Decoded:
        return decode(data, name, self.max_pixels, self.preprocess.reads_modality)

    def accepts(self, image: Decoded, name: str) -> None:
        """Refuse inputs this run cannot read correctly.

        Raises:
            DataError: a 2D image for a run trained on slices of volumes (which are z-scored per
                volume: give the volume), or an 8/16-bit picture for a run that windows CT values
                (PNG/JPEG/TIFF hold display values, not Hounsfield units: give DICOM or NPY).
        """
        if self.slices_volumes and image.format != "volume":
            raise DataError(
                f"{name}: this run was trained on slices of volumes, each z-scored as a whole; "
                "give the volume (NIfTI file or DICOM series) to medtrain.predict"
            )
        if self.preprocess.reads_modality and image.format in ("png", "jpeg", "tiff"):
            raise DataError(
                f"{name}: this run windows CT values in Hounsfield units; a {image.format.upper()} "
                "holds display values. Send the DICOM (or an NPY of HU values)"
            )

    def _prepare(self, image: Decoded, name: str, index: int) -> tuple[torch.Tensor, Any]:
        self.accepts(image, name)
        try:
            if self.kind == "segmentation":  # the file's spacing, for `target_spacing`
                prepared = self.preprocess.prepare(image.array, index, image.spacing)
            else:
                prepared = self.preprocess.prepare(image.array, index)
        except MedtrainError as err:  # e.g. a 2-channel image for a grey model
            raise DataError(f"{name}: {err}") from err
        return prepared if isinstance(prepared, tuple) else (prepared, None)

    # -- predicting ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        images: Sequence[Decoded],
        names: Sequence[str],
        spacing: Sequence[float] | None = None,
        measure: bool = True,
    ) -> list[dict[str, Any]]:
        """One result dict per image (see `result_*`), batching images that share a shape.

        Args:
            images: decoded images (`read` or `decode`).
            names: their ids, used in errors and measurement rows.
            spacing: pixel spacing (row_mm, col_mm) for segmentation measurements; None: what
                each file states, else the run's `dataset.spacing`, else pixels.
            measure: segmentation: measure the objects of each mask (off for slices of a volume,
                which is measured whole).
        """
        prepared = [
            self._prepare(im, n, k) for k, (im, n) in enumerate(zip(images, names, strict=True))
        ]
        results: list[dict[str, Any] | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for k, (tensor, intensity) in enumerate(prepared):
            native = () if intensity is None else intensity.shape[:2]
            groups.setdefault((tuple(tensor.shape), native), []).append(k)
        for (_, native), members in groups.items():
            batch = {"image": torch.stack([prepared[k][0] for k in members]).to(self.device)}
            if self.kind == "segmentation":  # evaluation returns logits at the mask's native size
                batch["mask"] = torch.zeros((len(members), *native), device=self.device)
            with autocast(self.device, self.cfg.trainer.precision):
                outputs = self.task.forward(self.model, batch)
            for j, k in enumerate(members):
                results[k] = self._result(
                    outputs[j : j + 1], images[k], names[k], prepared[k][1], spacing, measure
                )
        return results  # type: ignore[return-value]

    def _result(
        self, output, image: Decoded, name: str, intensity, spacing, measure: bool
    ) -> dict[str, Any]:
        if self.kind == "classification":
            return self.result_classification(output)
        if self.kind == "regression":
            values = self.task.values(output)[0].cpu().numpy()
            return {
                "values": {n: float(v) for n, v in zip(self.class_names, values, strict=True)},
                **({"value": float(values[0])} if len(values) == 1 else {}),
            }
        mask = self.task.predict_masks(output)[0]
        if not measure:
            return {"mask": mask}
        return self.result_segmentation(mask, image, name, intensity, spacing)

    def result_classification(self, logits: torch.Tensor) -> dict[str, Any]:
        probs = self.task.probabilities(logits).cpu().numpy().astype(np.float64)
        pred = M.decide(probs, self.task.multilabel, self.task.threshold)[0]
        names = self.class_names
        out: dict[str, Any] = {"probabilities": dict(zip(names, map(float, probs[0]), strict=True))}
        if self.task.multilabel:
            out["labels"] = [n for n, p in zip(names, pred, strict=True) if p]
        else:
            out |= {"label": names[int(pred)], "label_index": int(pred)}
        return out

    def result_segmentation(
        self, mask: np.ndarray, image: Decoded, name: str, intensity, spacing
    ) -> dict[str, Any]:
        spacing = tuple(spacing) if spacing is not None else image.spacing or self.spacing
        units = "px" if spacing is None else "mm"
        rows = measure_mask(
            mask,
            spacing=spacing,
            image=intensity,
            class_names=self.class_names,
            image_id=name,
            source="pred",
            connectivity=self.task.connectivity,
        )
        summary = totals(rows, [name], self.class_names[1:], source="pred", units=units)
        return {
            "mask": mask,
            "intensity": intensity,
            "spacing": None if spacing is None else [float(s) for s in spacing],
            "units": units,
            "measurements": rows,
            "totals": summary,
        }

    # -- volumes -----------------------------------------------------------------------------
    @property
    def slices_volumes(self) -> bool:
        """Whether the run was trained on slices of volumes (`dataset=volume_slices`)."""
        return volume_settings(self.cfg) is not None

    @torch.no_grad()
    def predict_volume(self, path: str | Path, name: str) -> dict[str, Any]:
        """Segment a volume (NIfTI file, DICOM series folder) slice by slice, as the run's evaluation
        does (the same axis and volume normalization), and reassemble the slices.

        Returns:
            `mask` (the label volume), `affine`, `spacing` (mm per axis) and `volumes_ml` (per
            foreground class).
        """
        if not self.slices_volumes:
            raise ConfigError(
                f"{name}: a volume needs a run trained on slices of volumes (dataset=volume_slices)"
            )
        settings = volume_settings(self.cfg)
        axis = settings["axis"]
        volume = read_volume(path)
        array = normalize_volume(volume.array, settings["volume_normalize"])
        plane = tuple(volume.spacing[a] for a in range(3) if a != axis)
        slices = [
            Decoded(np.take(array, k, axis=axis), plane, "volume") for k in range(array.shape[axis])
        ]
        names = [f"{name}#{k:03d}" for k in range(len(slices))]
        results = self.predict(slices, names, spacing=plane, measure=False)
        mask = stack_slices([r["mask"] for r in results], axis)
        return {
            "mask": mask,
            "affine": volume.affine,
            "spacing": list(volume.spacing),
            "volumes_ml": structure_volumes_ml(mask, volume.spacing, self.class_names),
        }
