"""`Predictor`: a finished run's predictions for new images, through its own evaluation
preprocessing; prediction files, the HTTP service and export checks all call it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtrain import __version__
from medtrain.analysis.volume_results import structure_objects, structure_volumes_ml
from medtrain.data.readers import (
    MAX_PIXELS,
    Decoded,
    UnsupportedFormatError,
    decode,
    is_array_file,
    read_file,
    read_image,
)
from medtrain.data.tabular import TabularEncoder, is_finite_number, is_missing
from medtrain.data.transforms import scale_mismatch
from medtrain.data.volume_transforms import spatial_size
from medtrain.data.volumes import (
    VOLUME_AXES,
    Volume,
    decode_nifti,
    is_nifti,
    is_nifti_bytes,
    normalize_volume,
    read_volume,
    spacing_to_stored,
    stack_slices,
    to_stored,
)
from medtrain.engine.acceleration import autocast
from medtrain.engine.config import resolve_device
from medtrain.errors import ConfigError, DataError, MedtrainError
from medtrain.inference.onnx_backend import OnnxNetwork, check_backend, onnx_network
from medtrain.inference.run import (
    eval_preprocessing,
    load_run,
    scale_matters,
    trained_values,
    volume_run,
    volume_settings,
)
from medtrain.io import read_json
from medtrain.models import input_keys
from medtrain.tasks.base import Input

# What `medtrain predict` reads for a 3D network besides what the service takes (`read`, `decode`).
PREDICT_ALSO_READS = "medtrain predict also reads DICOM series folders and multi-frame DICOM files"
# Why a pixel spacing given for a run on volumes is refused (predict's spacing=, the service's).
VOLUME_SPACING = (
    "this run reads volumes, whose voxel size comes from each file (the NIfTI header, the DICOM "
    "series); spacing= is the pixel size of 2D images"
)

log = logging.getLogger(__name__)


def warn_unread_spacing(path: Path, header: Sequence[str], column: str = "spacing") -> None:
    """Warn that a CSV's spacing column is not read for a run on volumes (each volume's voxel
    size comes from its file): it may be metadata that agrees, but a value meant to change the
    measurements would be ignored without a word."""
    if column in header:
        log.warning("%s: column %r is not read: %s", path, column, VOLUME_SPACING)


def other_scale(
    array: np.ndarray, dtypes: set[str], high: float, volume: bool = False
) -> str | None:
    """Why an input's pixel values are on another scale than the run's training images, or None
    (`scale_mismatch`, the data check's rule). 8/16-bit images are read as 0-1 of their bit depth
    and float images as they are, so a float image of 0-255 values given to a run trained on
    8-bit files (or an 8-bit file to a run trained on floats of 0-255) reaches the network 255
    times brighter (or darker), and answers without a sign of it. Volumes (`volume`) follow the
    same rule; the advice names the files they are saved in."""
    integers, eight_bit, floats = (
        ("an 8/16-bit (uint8/uint16) NIfTI or NPY", "a uint8 NIfTI or NPY", "a float NIfTI or NPY")
        if volume
        else ("an 8/16-bit PNG or TIFF", "an 8-bit PNG or TIFF", "a float NPY or TIFF")
    )
    finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
    if not finite.size:
        return None  # NaN and infinities are refused after preprocessing
    low, top = float(finite.min()), float(finite.max())
    kinds = "/".join(sorted(dtypes))
    mismatch = scale_mismatch(str(array.dtype), low, top, dtypes, high)
    if mismatch == "float_outside_0_1":
        return (
            f"{array.dtype} pixel values from {low:.4g} to {top:.4g}; this run was trained "
            f"on {kinds} images, read as 0-1 of their bit depth, and reads {array.dtype} "
            f"values as they are (0-1 expected): save it as {integers}, or scale it to 0-1 "
            "(divide 8-bit values by 255)"
        )
    if mismatch == "eight_bit_in_16":
        return (
            f"uint16 pixels of values up to {int(top)} only: an 8-bit image stored in 16 bits, "
            "read as 0-1 of 65535, 257 times darker than this run's uint8 training images; "
            f"save it as {eight_bit}"
        )
    if mismatch == "scaled_for_float":
        return (
            f"{array.dtype} pixels are read as 0-1 of their bit depth, but this run was trained "
            f"on {kinds} images of values up to {high:.4g}, read as they are: "
            f"give the values as its training images held them (e.g. {floats})"
        )
    if mismatch == "float_beyond_0_1":
        return (
            f"{array.dtype} pixel values from {low:.4g} to {top:.4g}; this run was trained on "
            f"{kinds} images of values up to {high:.4g}, read as they are: scale it as they "
            "were (0-1: divide 8-bit values by 255)"
        )
    return None


def refuse_constant(values: np.ndarray, name: str, volume: bool = False) -> None:
    """Refuse an image (or `volume`) whose every pixel (voxel) holds one value: a blank export,
    an empty field; normalized it is all zeros, and any answer would be the model's guess for
    nothing.

    Raises:
        DataError: naming `name` and the value.
    """
    if values.size and values.min() == values.max():
        unit, kind = ("voxel", "volume") if volume else ("pixel", "image")
        raise DataError(
            f"{name}: every {unit} holds {values.flat[0].item()!r}: a constant {kind} has "
            "nothing to predict from (normalized, it is all zeros, and any answer would be "
            "the model's guess for nothing)"
        )


def volume_decoded(volume: Volume) -> Decoded:
    """A volume (read in RAS order) as the predictor's input, with the file's own affine."""
    return Decoded(
        volume.array, tuple(volume.spacing), "volume", volume.affine, volume.stored_affine
    )


def in_stored_order(result: dict[str, Any], stored_affine: np.ndarray | None) -> dict[str, Any]:
    """A volume's result (`mask`, `affine`, `spacing`) in the file's own voxel order, when the
    volume was read reordered to RAS: the mask written with the file's affine then lies on the
    file's voxels, array for array. Volumes in mL do not depend on the order."""
    if stored_affine is None or "affine" not in result:
        return result
    affine = result["affine"]
    return result | {
        "mask": to_stored(result["mask"], affine, stored_affine),
        "affine": np.asarray(stored_affine, dtype=np.float64),
        "spacing": spacing_to_stored(result["spacing"], affine, stored_affine),
    }


@dataclass
class Prepared:
    """One image ready for the model: its `name`, the preprocessed `tensor` (C x H x W), the
    `intensity` kept for measurements and overlays (or None), the file's `spacing` (or None)."""

    name: str
    tensor: torch.Tensor
    intensity: np.ndarray | None
    spacing: tuple[float, ...] | None
    affine: np.ndarray | None = None  # a volume's voxel-to-world matrix
    stored_affine: np.ndarray | None = None  # the file's, when the volume was reordered to RAS
    tabular: torch.Tensor | None = None  # the encoded clinical values, for models that read them

    @property
    def shape_key(self) -> tuple:
        """Images with equal keys go through the model together."""
        spatial = self.tensor.ndim - 1  # C x H x W, or C x D x H x W for volumes
        native = () if self.intensity is None else self.intensity.shape[:spatial]
        return tuple(self.tensor.shape), native

    @property
    def nbytes(self) -> int:
        """Memory held: the tensor and the intensity image."""
        held = self.tensor.element_size() * self.tensor.nelement()
        return held + (0 if self.intensity is None else self.intensity.nbytes)


@dataclass
class SlicedVolume:
    """A volume for a run trained on its slices (`Predictor.prepare_sliced`): each slice ready
    for the model (`items`, along `axis`), and the volume's geometry to put the masks back."""

    name: str
    items: list[Prepared]
    axis: int
    volume: Decoded

    @property
    def nbytes(self) -> int:
        return sum(item.nbytes for item in self.items)


# A clinical value this many training standard deviations beyond the training values (below
# the smallest or above the largest) is refused: a unit slip, days for years, is far beyond them.
# Measured from the range, not the mean: a rare 0/1 flag's 1 lies 22 SD from its mean.
FAR_SD = 20.0


def far_beyond(value: float, code: Any) -> float:
    """How many of the column's training standard deviations `value` lies outside its training
    range (0 inside it)."""
    return max(code.low - value, value - code.high, 0.0) / code.std


class Predictor:
    """Predictions of a finished run for new images, as its evaluation computes them.

    Args:
        run_dir: a finished run (with `checkpoints/best.pt`).
        device: auto, cpu, cuda or cuda:N.
        max_pixels: images declaring more pixels are refused before decoding.
        trust: `_target_` names the run may build besides the allowed ones (`load_run`).
        backend: what runs the network: `torch`, or `onnx` (exported at start and run by ONNX
            Runtime, in float32: `medtrain.inference.onnx_backend`). Everything else is shared.
        threads: intra-op threads of the ONNX Runtime session; None: as many as torch uses
            (`torch.get_num_threads()`).
    """

    def __init__(
        self,
        run_dir: str | Path,
        device: str = "cpu",
        max_pixels: int = MAX_PIXELS,
        trust: Sequence[str] = (),
        backend: str = "torch",
        threads: int | None = None,
    ):
        check_backend(backend)
        run = load_run(run_dir, trust=trust)
        keys = input_keys(run.model)
        encoding = run.checkpoint.get("tabular")
        if set(keys) not in ({"image"}, {"image", "tabular"}) or (
            "tabular" in keys and not encoding
        ):
            why = (
                "its checkpoint does not record how the clinical columns were encoded (a run "
                "saved before predictions took them, or an ensemble of CV folds, which encode "
                "them each their own way: its members are scored by the CV)"
                if set(keys) == {"image", "tabular"}
                else "medtrain predict, evaluate and serve read image files, with clinical "
                "values for a model that also reads them"
            )
            raise ConfigError(f"run_dir: {run.run_dir} has a model reading {list(keys)}; {why}")
        # A model that also reads clinical columns: each image's values, encoded as in training.
        self.tabular_state = encoding if "tabular" in keys else None
        self.tabular = TabularEncoder.from_state(encoding) if self.tabular_state else None
        if self.tabular is not None and backend == "onnx":
            raise ConfigError(
                "backend=onnx runs models of images alone; this run also reads clinical columns"
            )
        self.run = run
        self.cfg = run.cfg
        self.task = run.task
        self.preprocess = eval_preprocessing(run.cfg, run.checkpoint.get("preprocessing"))
        self.backend = backend
        self.onnx_info: dict[str, Any] | None = None
        if backend == "onnx":
            threads = threads or torch.get_num_threads()
            self.model, self.onnx_info = onnx_network(run, self.preprocess, device, threads)
            # Batches stay on the host: ONNX Runtime moves them to its device itself.
            self.device, self.precision = torch.device("cpu"), "32"
        else:
            self.device = resolve_device(device, "device")
            self.model = run.model.to(self.device)
            self.precision = self.cfg.trainer.precision
        self.max_pixels = int(max_pixels)
        self.class_names = list(self.task.class_names)
        self.weights_sha256 = run.weights_sha256
        # Volumes in RAS order, as the run was trained; a run saved before that read them in
        # each file's stored order, and is given them so.
        self.ras = run.checkpoint.get("volume_axes") == VOLUME_AXES
        if self.reads_volumes and not self.ras:
            log.warning(
                "%s was trained before volumes were read in RAS axis order: its inputs are read "
                "in their stored order, as it was trained (train it again to read any file's "
                "order alike)",
                run.run_dir,
            )
        # Segmentation datasets may state one pixel spacing for files that state none.
        spacing = getattr(self.preprocess, "spacing", None)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.trained_values = trained_values(run.run_dir) if self.scale_matters else None

    # -- description ---------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What a client needs to know: task, classes, expected input, test metrics, checksum."""
        metrics = read_json(self.run.run_dir / "metrics.json") or {}
        pre = self.preprocess
        dims = int(getattr(pre, "spatial_dims", 2))
        size = spatial_size(pre.image_size, "dataset.image_size", dims)
        return {
            "task": self.task.name,
            "class_names": self.class_names,
            **self.task.info(),
            "input": {
                "channels": pre.in_channels,
                "size": None if size is None else list(size),
                "normalize": pre.normalize.described(),
                "formats": self.formats(),
                "window": None if pre.windows is None else [list(w) for w in pre.windows],
                "target_spacing": getattr(pre, "target_spacing", None),
                "volumes": self.volume_info(),
                # The pixel spacing (row, col mm) of a 2D file that states none: measurements in mm.
                "spacing": None if self.spacing is None else list(self.spacing),
                "note": self.input_note(),
            },
            "model": self.cfg.model.get("_target_"),
            # An ensemble's members (a fold ensemble, `medtrain ensemble`); 1 for one run.
            "members": len(self.cfg.model.get("members") or [None]),
            "tta": self.task.tta,  # the test-time views each prediction averages
            # Fields each prediction needs besides the image (a model that reads clinical
            # columns): each a number, or one of its training categories.
            "clinical_columns": {
                code.name: "number" if code.numeric else list(code.categories)
                for code in (self.tabular.codes if self.tabular else [])
            },
            "test_metrics": {k: v for k, v in metrics.items() if k.startswith("test/")},
            "weights_sha256": self.weights_sha256,
            "backend": self.backend_info(),
            "medtrain_version": __version__,
            "trained_with": self.run.checkpoint.get("medtrain_version"),
        }

    def formats(self) -> list[str]:
        """The file formats the service takes for this run (`info`; `medtrain predict` also reads
        DICOM series and multi-frame DICOM files for runs on volumes)."""
        if volume_run(self.cfg):
            return ["nifti", *(["npy", "npz"] if self.reads_volume_arrays else [])]
        if self.slices_volumes:  # whole volumes, segmented slice by slice
            return ["nifti"]
        if self.preprocess.reads_modality:
            return ["dicom", "npy", "npz"]
        return ["png", "jpeg", "tiff", "dicom", "npy", "npz"]

    def input_note(self) -> str:
        """What `info` says the run converts: a volume's voxel size only when it resamples."""
        pre = self.preprocess
        if not self.reads_volumes:
            note = (
                "images of any size, bit depth and grey/colour: converted by the run's evaluation"
            )
            note += " preprocessing"
        elif getattr(pre, "target_spacing", None) is not None:
            note = "volumes of any size and voxel size, in any axis order: read in RAS order and "
            note += f"resampled to {list(pre.target_spacing)} mm, as in training"
        else:
            note = "volumes of any size and axis order (read in RAS order); voxels are not "
            note += (
                "resampled (no dataset.target_spacing): give voxel sizes like the training data's"
            )
        return note + ("; CT windows need values in Hounsfield units" if pre.reads_modality else "")

    def volume_info(self) -> dict[str, Any] | None:
        """How the run reads volumes, for `info`: None for runs on 2D images."""
        if self.slices_volumes:
            return {
                **volume_settings(self.cfg),
                "note": "trained on slices of volumes: send whole NIfTI volumes, segmented "
                "slice by slice (medtrain predict also reads DICOM series); single images are "
                "refused",
            }
        if volume_run(self.cfg):
            return {
                "spatial_dims": 3,
                "note": "a 3D network: send a NIfTI volume (.nii or .nii.gz"
                + (", or an NPY/NPZ array D x H x W" if self.reads_volume_arrays else "")
                + f"; {PREDICT_ALSO_READS}); max_pixels bounds its voxels",
            }
        return None

    @property
    def on_cpu(self) -> bool:
        """Whether the network runs on the CPU (for `onnx`, ONNX Runtime's first provider)."""
        if isinstance(self.model, OnnxNetwork):
            return self.model.on_cpu
        return self.device.type == "cpu"

    def use_threads(self, threads: int) -> None:
        """Run the network on `threads` intra-op threads from now on (torch's setting is the
        process's; an ONNX session is made anew). A server process forked from the one that loaded
        the model sets its own here: threads of the parent do not exist in the child."""
        torch.set_num_threads(threads)
        if isinstance(self.model, OnnxNetwork):
            self.model.use_threads(threads)
            self.onnx_info = {**self.onnx_info, "threads": threads}  # type: ignore[dict-item]

    def backend_info(self) -> dict[str, Any]:
        """What runs the network, where, on how many threads; for `onnx` also the exported
        model's sha256 and its check against PyTorch."""
        if self.onnx_info is not None:
            return self.onnx_info
        return {
            "name": "torch",
            "runtime": f"torch {torch.__version__}",
            "device": str(self.device),
            "threads": torch.get_num_threads(),
        }

    # -- reading -------------------------------------------------------------------------------
    @property
    def reads_volume_arrays(self) -> bool:
        """Whether NPY/NPZ inputs are volumes (D x H x W): a 3D network of an image-level task,
        which needs no voxel size (a label volume in mL does: NIfTI or DICOM for those)."""
        return volume_run(self.cfg) and not self.task.labels_volumes

    def read(self, path: str | Path) -> Decoded:
        """A file (or DICOM series folder) as the run reads it: a volume for a 3D network (NIfTI,
        DICOM series or multi-frame DICOM; NPY/NPZ for an image-level task), else a 2D image."""
        suffix = Path(path).suffix.lower()
        if self.reads_volume_arrays and suffix in (".npy", ".npz"):
            return self.decode(read_file(path), str(path))
        if volume_run(self.cfg) and (is_nifti(path) or Path(path).is_dir() or suffix == ".dcm"):
            return volume_decoded(read_volume(path, self.ras))
        return self.as_run_reads(read_image(path, self.max_pixels, self.preprocess.reads_modality))

    def as_run_reads(self, image: Decoded) -> Decoded:
        """A 2D file without its own pixel spacing when the run ignored its files'
        (`dataset.file_spacing=false`: `dataset.spacing` measures every image, as in training);
        as it is otherwise."""
        if image.format == "volume" or self.reads_file_spacing:
            return image
        return dataclasses.replace(image, spacing=None)

    def decode(self, data: bytes, name: str) -> Decoded:
        """An upload's bytes decoded: a NIfTI volume for a 3D run (`max_pixels` bounds its voxels,
        read from the header before decompressing) or an NPY/NPZ volume for a 3D image-level run,
        else a 2D image."""
        if self.reads_volumes and is_nifti_bytes(data, name):  # a 3D network's, or its slices'
            return volume_decoded(decode_nifti(data, name, self.max_pixels, self.ras))
        if self.reads_volume_arrays and is_array_file(data):
            return decode(data, name, self.max_pixels, volume=True)
        if volume_run(self.cfg) and is_array_file(data):  # a label volume is measured in mL
            raise DataError(
                f"{name}: an array file holds no voxel size or orientation; send this volume as "
                "NIfTI (.nii, .nii.gz), whose header states them"
            )
        try:  # a 3D run refuses a 2D image in `accepts`, naming what it reads
            return self.as_run_reads(
                decode(data, name, self.max_pixels, self.preprocess.reads_modality)
            )
        except UnsupportedFormatError as err:
            if not volume_run(self.cfg):
                raise
            arrays = " or an NPY/NPZ array" if self.reads_volume_arrays else ""
            raise UnsupportedFormatError(
                f"{err}; this run's network is 3D: send a NIfTI volume (.nii, .nii.gz){arrays}"
            ) from err

    def accepts(self, image: Decoded, name: str) -> None:
        """Refuse inputs this run cannot read correctly.

        Raises:
            DataError: a 2D image for a run trained on slices of volumes (which are z-scored per
                volume: give the volume), or an 8/16-bit picture for a run that windows CT values
                (PNG/JPEG/TIFF hold display values, not Hounsfield units: give DICOM or NPY).
        """
        if volume_run(self.cfg) and image.format != "volume":
            arrays = " or NPY/NPZ array (D x H x W)" if self.reads_volume_arrays else ""
            raise DataError(
                f"{name}: this run's network is 3D; give a volume (a NIfTI file{arrays}; "
                f"{PREDICT_ALSO_READS})"
            )
        if self.slices_volumes and image.format != "volume":
            raise DataError(
                f"{name}: this run was trained on slices of volumes, each z-scored as a whole; "
                "give the whole volume (a NIfTI file; medtrain predict also reads DICOM series)"
            )
        if self.preprocess.reads_modality and image.format in ("png", "jpeg", "tiff"):
            raise DataError(
                f"{name}: this run windows CT values in Hounsfield units; a {image.format.upper()} "
                "holds display values. Send the DICOM (or an NPY of HU values)"
            )
        # Volumes of a 3D image-level run are scaled by their storage type, as 2D images are;
        # a segmentation run's, or one trained on slices, reads them as stored (modality units).
        scaled = image.format != "volume" or self.reads_volume_arrays
        if self.trained_values and scaled and not self.preprocess.reads_modality:
            volume = image.format == "volume"
            problem = other_scale(image.array, *self.trained_values, volume=volume)
            if problem:
                raise DataError(f"{name}: {problem}")

    @property
    def reads_file_spacing(self) -> bool:
        """Whether a 2D file's own pixel spacing counts (the run's `dataset.file_spacing`, true
        unless set false: then `dataset.spacing` measures every image, as in training)."""
        return self.cfg.dataset.get("file_spacing", True) is not False

    @property
    def scale_matters(self) -> bool:
        """Whether the input's pixel scale reaches the network (`scale_matters`)."""
        return scale_matters(self.preprocess)

    @property
    def clinical_columns(self) -> list[str]:
        """The clinical columns the run's model reads besides the image (none for most runs)."""
        return [] if self.tabular is None else self.tabular.columns

    def clinical(self, values: Mapping[str, Any] | None, name: str) -> torch.Tensor | None:
        """An image's clinical values (column -> cell, as in the training CSV: an empty cell or
        NA is a missing value) encoded as the training rows were; None for models of images
        alone.

        Raises:
            DataError: a column not given, or a value the encoding cannot read (a word in a
                column of numbers), naming `name`.
        """
        if self.tabular is None:
            return None
        values = values or {}
        missing = [c for c in self.tabular.columns if c not in values]
        if missing:
            raise DataError(
                f"{name}: no value for the clinical column(s) {missing}; this run's model reads "
                f"{self.tabular.columns} besides the image (an empty value is a missing one)"
            )
        encoder = TabularEncoder.from_state(self.tabular_state, name, lambda _: "given")
        cells = {c: ["" if values[c] is None else str(values[c]).strip()] for c in values}
        # Worded for a CSV's cells and a request's form fields alike.
        words = [
            f"{code.name}={cells[code.name][0]!r}"
            for code in encoder.codes or []
            if code.numeric
            and not is_missing(cells[code.name][0])
            and not is_finite_number(cells[code.name][0])
        ]
        if words:
            raise DataError(
                f"{name}: not a number: {'; '.join(words)}, where the training values are "
                "numbers; give a number, or an empty value (or NA) for a missing one"
            )
        unseen = [
            f"{code.name}={cells[code.name][0]!r} (training: {', '.join(code.categories)})"
            for code in encoder.codes or []
            if not code.numeric
            and not is_missing(cells[code.name][0])
            and cells[code.name][0] not in code.categories
        ]
        if unseen:  # encoded as none of the categories, it would read as a missing value
            raise DataError(
                f"{name}: a category no training row holds: {'; '.join(unseen)}; give one of "
                "the training categories (spelled alike), or an empty value for a missing one"
            )
        far = [
            f"{code.name}={cells[code.name][0]} lies {beyond:.3g} training standard deviations "
            f"beyond the training values ({code.low:.4g} to {code.high:.4g})"
            for code in encoder.codes or []
            if code.numeric
            and code.low is not None
            and code.high is not None
            and code.high > code.low  # a column of one value: nothing was learnt from it
            and not is_missing(cells[code.name][0])
            and (beyond := far_beyond(float(cells[code.name][0]), code)) > FAR_SD
        ]
        if far:  # age=1e30, or an age in days, answered "high risk, 1.0" without a word
            raise DataError(
                f"{name}: {'; '.join(far)}, where the model's answer means nothing; check the "
                "value and its unit"
            )
        return torch.from_numpy(encoder.transform(cells)[0])

    def prepare(
        self,
        image: Decoded,
        name: str,
        index: int = 0,
        clinical: Mapping[str, Any] | None = None,
    ) -> Prepared:
        """One decoded image as the model's input (the run's evaluation preprocessing): the part of
        a prediction that needs no model, run by the server outside its model lock.

        Raises:
            DataError: an input this run does not read (`accepts`), a constant image, one its
                preprocessing refuses, or one whose values overflow to NaN or infinity in
                preprocessing (e.g. 3e38 everywhere), naming `name`.
        """
        self.accepts(image, name)
        try:  # the file's spacing, for preprocessing that resamples (`target_spacing`)
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused below
                prepared = self.preprocess.prepare(image.array, index, image.spacing)
        except MedtrainError as err:  # e.g. a 2-channel image for a grey model
            raise DataError(f"{name}: {err}") from err
        tensor, intensity = prepared if isinstance(prepared, tuple) else (prepared, None)
        if not torch.isfinite(tensor).all():
            raise DataError(
                f"{name}: its pixel values overflow to NaN or infinity in the run's preprocessing "
                "(normalization); check the file's values and rescaling"
            )
        values = image.array
        # A slice of a volume may be blank (padding around the body): its volume was checked whole.
        if not (image.format == "volume" and values.ndim == 2):
            refuse_constant(values, name, volume=image.format == "volume")
        tabular = self.clinical(clinical, name)
        return Prepared(
            name, tensor, intensity, image.spacing, image.affine, image.stored_affine, tabular
        )

    @torch.no_grad()
    def forward(
        self, items: Sequence[Prepared], network: Callable[..., Any] | None = None
    ) -> list[torch.Tensor]:
        """The model's outputs for prepared images, one 1 x ... tensor each, in order; images of
        the same shape go through the model together.

        Args:
            network: what to call in place of the model, with the same inputs and outputs (the
                server's wrapper that takes its turn before each call of a tiled inference).
        """
        outputs: list[torch.Tensor | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for k, item in enumerate(items):
            groups.setdefault(item.shape_key, []).append(k)
        for (_, native), members in groups.items():
            batch = torch.stack([items[k].tensor for k in members]).to(self.device)
            extra = (
                {"tabular": torch.stack([items[k].tabular for k in members]).to(self.device)}
                if self.tabular is not None
                else {}
            )
            with autocast(self.device, self.precision):
                out = self.task.infer(network or self.model, batch, native or None, extra)
            for j, k in enumerate(members):
                outputs[k] = out[j : j + 1]
        return outputs  # type: ignore[return-value]

    def result(
        self,
        item: Prepared,
        output: torch.Tensor,
        spacing: Sequence[float] | None = None,
        measure: bool = True,
        max_objects: int | None = None,
    ) -> dict[str, Any]:
        """The task's result dict for one image from its model output (`prediction`).

        Raises:
            DataError: an output with NaN or infinite values (never reported as a finding).
        """
        if not torch.isfinite(output).all():
            raise DataError(
                f"{item.name}: the model's output is not finite (NaN or infinite) for this input; "
                "no prediction is made from it"
            )
        given = tuple(spacing) if spacing is not None else None
        found = Input(
            name=item.name,
            intensity=item.intensity,
            spacing=given or item.spacing or self.spacing,
            measure=measure,
            max_objects=max_objects,
            affine=item.affine,
        )
        return in_stored_order(self.task.prediction(output, found), item.stored_affine)

    def predict(
        self,
        images: Sequence[Decoded],
        names: Sequence[str],
        spacing: Sequence[float] | None = None,
        measure: bool = True,
        clinical: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[dict[str, Any]]:
        """One result dict per image (the task's `prediction`): `prepare`, `forward`, `result`.

        Args:
            images: decoded images (`read` or `decode`).
            names: their ids, used in errors and measurement rows.
            spacing: pixel spacing (row_mm, col_mm), e.g. for measurements; None: what each file
                states, else the run's `dataset.spacing`, else pixels.
            measure: measure what was found (off for slices of a volume, measured whole).
            clinical: each image's clinical values, for a model that reads them (`clinical`).
        """
        values = clinical or [None] * len(images)
        items = [
            self.prepare(im, n, k, v)
            for k, (im, n, v) in enumerate(zip(images, names, values, strict=True))
        ]
        outputs = self.forward(items)
        return [self.result(i, o, spacing, measure) for i, o in zip(items, outputs, strict=True)]

    # -- volumes -----------------------------------------------------------------------------
    @property
    def slices_volumes(self) -> bool:
        """Whether the run was trained on slices of volumes (`dataset=volume_slices`)."""
        return volume_settings(self.cfg) is not None

    @property
    def reads_volumes(self) -> bool:
        """Whether the run predicts whole volumes: a 3D network, or a 2D one on their slices."""
        return self.slices_volumes or volume_run(self.cfg)

    def prepare_sliced(self, volume: Decoded | Volume, name: str) -> SlicedVolume:
        """A decoded volume (`decode`) as a run trained on its slices reads it: normalized whole,
        each slice along the run's axis ready for the model (`volume_slices`)."""
        axis, slices, names = self.volume_slices(volume, name)
        items = [self.prepare(s, n, k) for k, (s, n) in enumerate(zip(slices, names, strict=True))]
        return SlicedVolume(name, items, axis, volume)

    def sliced_result(self, sliced: SlicedVolume, outputs: Sequence[torch.Tensor]) -> dict:
        """A sliced volume's result from its slices' outputs: the slices' masks put back together
        (in RAS order), its volumes in mL and objects, in the file's own voxel order."""
        masks = [
            self.result(item, out, measure=False)["mask"]
            for item, out in zip(sliced.items, outputs, strict=True)
        ]
        mask, volume = stack_slices(masks, sliced.axis), sliced.volume
        result = {
            "mask": mask,
            "affine": volume.affine,
            "spacing": list(volume.spacing),
            "volumes_ml": structure_volumes_ml(
                mask, volume.spacing, self.class_names, volume.affine
            ),
            "objects": structure_objects(mask, self.class_names, self.task.connectivity),
        }
        return in_stored_order(result, volume.stored_affine)

    @torch.no_grad()
    def predict_volume(self, path: str | Path, name: str) -> dict[str, Any]:
        """Segment a volume (NIfTI file, DICOM series folder) slice by slice, as the run's evaluation
        does (the same axis and volume normalization), and reassemble the slices.

        Returns:
            `mask` (the label volume), `affine`, `spacing` (mm per axis) and `volumes_ml` (per
            foreground class).
        """
        if not self.reads_volumes:
            raise ConfigError(
                f"{name}: a volume needs a run trained on volumes (a 3D network) or on their "
                "slices (dataset=volume_slices)"
            )
        if not self.slices_volumes:
            return self.predict_whole_volume(read_volume(path, self.ras), name)
        sliced = self.prepare_sliced(read_volume(path, self.ras), name)
        return self.sliced_result(sliced, self.forward(sliced.items))

    @torch.no_grad()
    def volume_logits(self, volume: Volume, name: str) -> tuple[torch.Tensor, np.ndarray]:
        """A volume's per-voxel class logits (1 x C x D x H x W, the volume's own size) and its
        intensities (D x H x W x C), as the run's evaluation computes them: whole with a 3D
        network, slice by slice (logits stacked along the slicing axis) with a 2D one."""
        if not self.slices_volumes:
            item = self.prepare(volume_decoded(volume), name)
            return self.forward([item])[0], item.intensity
        axis, slices, names = self.volume_slices(volume, name)
        items = [self.prepare(s, n, k) for k, (s, n) in enumerate(zip(slices, names, strict=True))]
        logits = torch.stack([out[0] for out in self.forward(items)], dim=1 + axis)
        return logits[None], np.stack([item.intensity for item in items], axis=axis)

    def volume_slices(self, volume: Volume, name: str) -> tuple[int, list[Decoded], list[str]]:
        """A volume as the run trained on it (`dataset=volume_slices`): normalized whole (a blank
        volume refused), then its slices along the run's axis, each with the in-plane spacing,
        named `<name>#<k>`; returns the axis, the slices and their names."""
        settings = volume_settings(self.cfg)
        axis = settings["axis"]
        refuse_constant(volume.array, name, volume=True)
        array = normalize_volume(volume.array, settings["volume_normalize"])
        plane = tuple(volume.spacing[a] for a in range(3) if a != axis)
        count = array.shape[axis]
        slices = [Decoded(np.take(array, k, axis=axis), plane, "volume") for k in range(count)]
        return axis, slices, [f"{name}#{k:03d}" for k in range(count)]

    def predict_whole_volume(self, volume: Volume, name: str) -> dict[str, Any]:
        """Segment a volume with a 3D network, as the run's evaluation does (its normalization,
        resampling, sliding windows and test-time views), at the volume's native size.

        Returns:
            `mask`, `affine`, `spacing` and `volumes_ml`, as `predict_volume`.
        """
        item = self.prepare(volume_decoded(volume), name)
        return self.result(item, self.forward([item])[0])
