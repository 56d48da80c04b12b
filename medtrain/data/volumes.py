"""Reading 3D volumes: NIfTI files (nibabel), DICOM series folders ordered by slice position, and
multi-frame DICOM files; a cache so that decoded volumes are read once; slices back into volumes."""

from __future__ import annotations

import functools
import hashlib
import io
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtrain.data.readers import (
    PIL_FORMATS,
    READ_BY_SIGNATURE,
    a_file,
    checked_spacing,
    dicom_pixel_spacing,
    signature,
)
from medtrain.errors import ConfigError, DataError
from medtrain.io import atomic_write

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class Volume:
    """A decoded volume: `array` (3D, modality values: CT in Hounsfield units), `spacing` in mm
    per array axis, the voxel-to-world `affine` (4 x 4, RAS+ as in NIfTI: DICOM's LPS+ patient
    coordinates are converted, so a mask written with it lies where the image does) and the
    orientation codes of the array axes (e.g. ('R', 'A', 'S'))."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    orientation: tuple[str, str, str]
    source: str
    # The file's own affine when the axes were reordered (`canonical`): results are written back
    # in the file's voxel order with it (`to_stored`). None: the array is as stored.
    stored_affine: np.ndarray | None = None

    @property
    def file_affine(self) -> np.ndarray:
        """The affine of the file's own voxel order (`affine` when it is stored in RAS order)."""
        return self.affine if self.stored_affine is None else self.stored_affine


# The axis order every volume is read in (`canonical`): x to the patient's Right, y Anterior,
# z Superior (for an axial scan, slices last), as MONAI's Orientation("RAS") and nibabel's
# as_closest_canonical give it.
CANONICAL = ("R", "A", "S")
VOLUME_AXES = "".join(CANONICAL)  # what a checkpoint records of it (`volume_axes`)


def canonical(volume: Volume) -> Volume:
    """The volume with its axes permuted and flipped to the closest RAS order (no voxel
    resampled: an oblique volume keeps its voxels), with its affine, spacing and orientation to
    match, and the file's affine kept as `stored_affine`. The same anatomy then reaches the
    network in the same axis order whether a NIfTI file stored it x-first or a DICOM series
    slice-first."""
    from nibabel import orientations

    turn = orientations.io_orientation(volume.affine)
    if np.isnan(turn).any():  # an axis the affine collapses: no direction to order it by
        raise DataError(
            f"{volume.source}: its affine gives no direction to an axis "
            f"({np.round(volume.affine[:3, :3], 6).tolist()}); write the file with a full affine"
        )
    if np.array_equal(turn, orientations.axcodes2ornt(CANONICAL)):
        return volume
    spacing = _permuted(volume.spacing, turn)
    affine = volume.affine @ orientations.inv_ornt_aff(turn, volume.array.shape)
    return Volume(
        np.ascontiguousarray(orientations.apply_orientation(volume.array, turn)),
        (spacing[0], spacing[1], spacing[2]),
        affine,
        _axcodes(affine),
        volume.source,
        stored_affine=volume.affine,
    )


def _permuted(values: Sequence[float], turn: np.ndarray) -> list[float]:
    """Per-axis values (voxel sizes) moved to the axes a nibabel orientation array `turn` sends
    each axis to."""
    out = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(turn):
        out[int(target)] = float(values[axis])
    return out


def _turn(affine: np.ndarray, stored_affine: np.ndarray) -> np.ndarray:
    """The axis permutation and flips (nibabel's orientation array) from the order of `affine`
    (a `canonical` volume's) to the order of `stored_affine` (the file's)."""
    from nibabel import orientations

    return orientations.ornt_transform(
        orientations.io_orientation(affine), orientations.io_orientation(stored_affine)
    )


def to_stored(array: np.ndarray, affine: np.ndarray, stored_affine: np.ndarray) -> np.ndarray:
    """An array in the axis order of `affine` back in the order of `stored_affine`, so that a
    label volume written with the file's affine lies on the file's voxels."""
    from nibabel import orientations

    turned = orientations.apply_orientation(array, _turn(affine, stored_affine))
    return np.ascontiguousarray(turned)


def spacing_to_stored(
    spacing: Sequence[float], affine: np.ndarray, stored_affine: np.ndarray
) -> list[float]:
    """Voxel sizes per axis of `affine`'s order, per axis of `stored_affine`'s."""
    return _permuted(spacing, _turn(affine, stored_affine))


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_volume(path: str | Path, ras: bool = True) -> Volume:
    """A NIfTI file, a DICOM series folder or a multi-frame DICOM file as a `Volume`, in RAS axis
    order (`canonical`; `ras=False`: in the file's stored order, as runs saved before release 0.3
    read volumes).

    Raises:
        DataError: naming the file or folder and what is wrong (NaN or infinite voxels included).
    """
    path = Path(path)
    if path.is_dir():
        volume = read_dicom_series(path)
    elif not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    elif path.suffix.lower() in (".npy", ".npz"):
        raise DataError(
            f"{path}: an array file holds no voxel size or orientation; give this volume as "
            "NIfTI or a DICOM series (its label volume is measured in mL and written in place)"
        )
    elif is_nifti(path):
        volume = read_nifti(path)
    else:
        picture = image_format(path)
        if picture:  # it was read as DICOM, and failed as one
            raise DataError(
                f"{path}: {picture}, not a volume; give a NIfTI file (.nii, .nii.gz), a DICOM "
                "series folder or a multi-frame DICOM file"
            )
        volume = read_dicom_frames(path)
    check_finite_voxels(volume, path)
    return canonical(volume) if ras else volume


def image_format(path: Path) -> str | None:
    """What 2D picture or document a file is by its first bytes ("a PNG image", "a PDF file"),
    or None (DICOM, or nothing medtrain knows: read as DICOM, whose error names what fails)."""
    with open(path, "rb") as handle:
        kind = signature(handle.read(132))
    if kind in PIL_FORMATS:
        return f"a {PIL_FORMATS[kind]} image"
    return a_file(kind) if kind not in (*READ_BY_SIGNATURE, None, "gzip") else None


def check_finite_voxels(volume: Volume, name: str | Path) -> None:
    """A volume's voxels must be finite numbers (a file, an upload: the same message).

    Raises:
        DataError: naming `name` and how many voxels are NaN or infinite.
    """
    if np.issubdtype(volume.array.dtype, np.floating) and not np.isfinite(volume.array).all():
        bad = int((~np.isfinite(volume.array)).sum())
        raise DataError(
            f"{name}: {bad} voxel(s) are NaN or infinite; replace them (e.g. with the background "
            "value) before training or prediction"
        )


def read_nifti(path: str | Path) -> Volume:
    """A NIfTI-1/2 volume in its stored voxel order, with the zooms as spacing and the affine kept
    (4D files must hold one volume)."""
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for broken, truncated or non-NIfTI files
        raise DataError(f"{path}: cannot read NIfTI ({type(err).__name__}: {err})") from err
    return nifti_volume(image, str(path))


# Header extensions a NIfTI upload may carry between its header and its voxels (bytes).
MAX_NIFTI_EXTENSIONS = 2**20


def is_nifti_bytes(data: bytes, name: str) -> bool:
    """Whether an upload is a NIfTI file: by its name, or a NIfTI-1/2 header size at its start
    (of its first inflated bytes when gzipped: a `.nii.gz` uploaded under another name)."""
    if is_nifti(name):
        return True
    if data[:2] == b"\x1f\x8b":
        try:
            data = zlib.decompressobj(wbits=31).decompress(data[:4096], 4)  # 4 bytes, no more
        except zlib.error:
            return False
    return len(data) >= 4 and int.from_bytes(data[:4], "little") in (348, 540)


def decode_nifti(data: bytes, name: str, max_voxels: int, ras: bool = True) -> Volume:
    """A NIfTI-1/2 upload (`.nii`, or gzipped `.nii.gz`) as a `Volume`, its size checked from the
    header before the voxels are decompressed: a file declaring more than `max_voxels` voxels
    costs the reading of its header only, and a gzip stream is never inflated beyond the size its
    header declares.

    Raises:
        ImageTooLargeError: more voxels than `max_voxels`, naming `name`.
        DataError: a broken, truncated or non-NIfTI file, naming `name`.
    """
    import nibabel as nib

    from medtrain.data.decoding import ImageTooLargeError

    gzipped = data[:2] == b"\x1f\x8b"
    inflate = zlib.decompressobj(wbits=31) if gzipped else None
    try:
        head = inflate.decompress(data, 540) if inflate else data[:540]
        size = int.from_bytes(head[:4], "little")
        size = size if size in (348, 540) else int.from_bytes(head[:4], "big")
        if size not in (348, 540) or len(head) < size:
            raise DataError(f"{name}: not a NIfTI file (no NIfTI-1 or NIfTI-2 header)")
        kind = nib.Nifti1Image if size == 348 else nib.Nifti2Image
        header = kind.header_class.from_fileobj(io.BytesIO(head[:size]), check=False)
        shape = tuple(int(n) for n in header.get_data_shape())
        voxels = math.prod(shape) if shape else 0  # Python ints: no overflow
        if voxels > max_voxels:
            raise ImageTooLargeError(
                f"{name}: declares {' x '.join(map(str, shape))} = {voxels:,} voxels; at most "
                f"{max_voxels:,} are read"
            )
        offset = int(header.get_data_offset())
        if not size <= offset <= size + MAX_NIFTI_EXTENSIONS:  # vox_offset bounds what is inflated
            raise DataError(
                f"{name}: NIfTI voxel offset {offset} is outside {size}..{size + MAX_NIFTI_EXTENSIONS}"
            )
        needed = offset + voxels * header.get_data_dtype().itemsize
        if inflate:  # inflate only what the header declares (a bomb stops there)
            body = head + inflate.decompress(inflate.unconsumed_tail, max(needed - len(head), 1))
        else:
            body = data
        if len(body) < needed:
            raise DataError(f"{name}: truncated NIfTI ({len(body)} of {needed} bytes)")
        image = kind.from_bytes(body[:needed] if len(body) > needed else body)
    except DataError:
        raise
    except Exception as err:  # nibabel and zlib raise many types for hostile bytes
        raise DataError(f"{name}: cannot read NIfTI ({type(err).__name__}: {err})") from err
    volume = nifti_volume(image, name)
    check_finite_voxels(volume, name)
    return canonical(volume) if ras else volume


def nifti_volume(image, source: str) -> Volume:
    """A loaded nibabel image as a checked 3D `Volume` (4D files must hold one volume)."""
    try:
        array = np.asarray(image.dataobj)
        zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as err:
        raise DataError(f"{source}: cannot read NIfTI ({type(err).__name__}: {err})") from err
    path = source
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(f"{path}: NIfTI of shape {array.shape}; a 3D volume is needed")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        # complex voxels (MR k-space or phase data) or RGB records: no single intensity to learn
        raise DataError(f"{path}: NIfTI voxels of type {array.dtype}; give real-valued intensities")
    zooms = checked_spacing(zooms, str(path), "its header's voxel sizes (pixdim)")
    return Volume(array, zooms, affine, _axcodes(affine), str(path))


def _frame_rescale(ds, frames: int) -> list[tuple[float, float]]:
    """(slope, intercept) of each frame of an enhanced multi-frame DICOM: its own Pixel Value
    Transformation, else the shared one, else (1, 0)."""

    def transform(group) -> tuple[float, float] | None:
        if group is None or "PixelValueTransformationSequence" not in group:
            return None
        item = group.PixelValueTransformationSequence[0]
        return float(item.get("RescaleSlope", 1) or 1), float(item.get("RescaleIntercept", 0) or 0)

    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    common = transform(shared[0] if shared else None) or (1.0, 0.0)
    return [
        (transform(per_frame[k]) if k < len(per_frame) else None) or common for k in range(frames)
    ]


def nifti_spacing(path: str | Path) -> tuple[float, float, float] | None:
    """The voxel size a NIfTI header states (the header only, no voxels read), per axis in the
    RAS order `read_volume` gives (`canonical`); None for other files or an unreadable header."""
    import nibabel as nib
    from nibabel import orientations

    if not is_nifti(path):
        return None
    try:
        image = nib.load(str(path))
        zooms = [float(z) for z in image.header.get_zooms()[:3]]
        spacing = _permuted(zooms, orientations.io_orientation(image.affine))
        return (spacing[0], spacing[1], spacing[2])
    except Exception:  # read_volume names what is wrong with the file
        return None


def check_label_geometry(image_path: str | Path, label: Volume, label_path: str | Path) -> None:
    """A label volume must lie on its image's voxels: the same stored axis order (each is read in
    RAS order by its own affine: a label whose affine states other axes, as nibabel's default for
    a label saved without one does, would be flipped or turned against its image), then the same
    voxel size (its mL would be wrong) and origin (within half a voxel). Read from the image's
    headers only: a NIfTI file's, a DICOM series' or a multi-frame DICOM file's plane geometry
    (one without plane geometry is not compared).

    Raises:
        DataError: naming the label, the image, and both axis orders or voxel sizes.
    """
    check_label_axes(image_path, label, label_path)
    check_label_spacing(image_path, label, label_path)
    check_label_origin(image_path, label, label_path)


def check_label_origin(image_path: str | Path, label: Volume, label_path: str | Path) -> None:
    """The position half of `check_label_geometry`: the label's first voxel must lie where the
    image's does (within half a voxel); a label shifted against its image (misregistered, or
    saved with another origin) would be scored and trained on as if it matched.

    Raises:
        DataError: naming both files and the distance in mm and in voxels.
    """
    image_affine = _image_affine(image_path)
    if image_affine is None:
        return
    shift = np.asarray(label.file_affine, dtype=np.float64)[:3, 3] - image_affine[:3, 3]
    try:  # the shift in the image's voxels, along each of its axes
        voxels = np.abs(np.linalg.solve(image_affine[:3, :3], shift))
    except np.linalg.LinAlgError:
        return
    if float(voxels.max()) > 0.5:
        mm = " ".join(f"{v:+.4g}" for v in shift)
        raise DataError(
            f"{label_path}: its first voxel lies ({mm}) mm from the image's ({image_path}), "
            f"{float(voxels.max()):.1f} voxels along an axis: the label does not lie on its "
            "image; save it with the image's affine"
        )


def check_label_spacing(image_path: str | Path, label: Volume, label_path: str | Path) -> None:
    """The voxel-size half of `check_label_geometry`."""
    image_spacing = _image_spacing(image_path)
    if image_spacing and not np.allclose(image_spacing, label.spacing, rtol=1e-3):
        label_mm, image_mm = (
            " x ".join(f"{v:.6g}" for v in s) for s in (label.spacing, image_spacing)
        )
        raise DataError(
            f"{label_path}: voxels of {label_mm} mm, the image's are {image_mm} mm "
            f"({image_path}); volumes in mL would be wrong"
        )


def check_label_axes(image_path: str | Path, label: Volume, label_path: str | Path) -> None:
    """The axis-order half of `check_label_geometry` (before shapes are compared: other axes
    explain other shapes)."""
    image_affine = _image_affine(image_path)
    if image_affine is not None:
        image_axes, label_axes = _axcodes(image_affine), _axcodes(label.file_affine)
        if image_axes != label_axes:
            raise DataError(
                f"{label_path}: its axes are stored as {''.join(map(str, label_axes))}, the "
                f"image's as {''.join(map(str, image_axes))} ({image_path}): a label must be "
                "saved with its image's affine. One saved without an affine gets nibabel's "
                "default (LAS), and would lie flipped against its image, which cannot be told "
                "apart from a label saved in other axes on purpose: save the labels with their "
                "image's affine"
            )


def _image_affine(path: str | Path) -> np.ndarray | None:
    """An image volume's stored affine from its headers alone (no voxels read): a NIfTI file's,
    a DICOM series folder's (`dicom_series_geometry`) or a multi-frame DICOM file's (its plane
    geometry); None for other files, a multi-frame file without plane geometry, or unreadable
    headers (`read_volume` names what is wrong with them). Kept per file and modification time:
    the label checks ask three times per case, and a series' headers are many files."""
    try:
        changed = Path(path).stat().st_mtime_ns
        if Path(path).is_dir():  # a series' file rewritten in place leaves the folder's time
            changed = max([changed, *(p.stat().st_mtime_ns for p in Path(path).iterdir())])
    except OSError:
        return None
    affine = _cached_image_affine(str(path), changed)
    return None if affine is None else affine.copy()


@functools.lru_cache(maxsize=64)
def _cached_image_affine(path: str, changed: int) -> np.ndarray | None:
    import nibabel as nib

    try:
        if is_nifti(path):
            return np.asarray(nib.load(str(path)).affine, dtype=np.float64)
        if Path(path).is_dir():
            return dicom_series_geometry(path)[2]
        if Path(path).suffix.lower() in (".npy", ".npz") or not Path(path).is_file():
            return None
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        measures = ds
        shared = ds.get("SharedFunctionalGroupsSequence")
        if shared and "PixelMeasuresSequence" in shared[0]:
            measures = shared[0].PixelMeasuresSequence[0]
        pixel = dicom_pixel_spacing(measures, str(path)) or (1.0, 1.0)
        return _frames_affine(ds, int(ds.get("NumberOfFrames", 1) or 1), pixel)
    except Exception:
        return None


def _image_spacing(path: str | Path) -> tuple[float, float, float] | None:
    """An image volume's voxel size per RAS axis from its headers alone (`nifti_spacing` for
    NIfTI; the affine's for DICOM); None where `_image_affine` gives no affine."""
    from nibabel import orientations

    if is_nifti(path):
        return nifti_spacing(path)
    affine = _image_affine(path)
    if affine is None:
        return None
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    spacing = _permuted(sizes, orientations.io_orientation(affine))
    return (spacing[0], spacing[1], spacing[2])


def _axcodes(affine: np.ndarray) -> tuple[str, str, str]:
    import nibabel as nib

    return tuple(nib.aff2axcodes(affine))


def read_dicom_series(folder: str | Path) -> Volume:
    """The DICOM files of a folder holding one series, as a volume (slices x rows x columns).

    Slices are ordered by their position along the slice normal (Image Position Patient projected on
    the cross product of the Image Orientation Patient vectors), never by file name or Instance
    Number alone; the slice spacing is the median distance between neighbouring positions. Pixel
    values go through the modality transform (rescale slope and intercept).

    Raises:
        DataError: no DICOM files, several series, missing or inconsistent geometry, duplicate
            positions, or slices of different sizes (naming the folder and files).
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut

    folder = Path(folder)
    ordered, spacing, affine = dicom_series_geometry(folder)
    slices = []
    for path, _ in ordered:
        ds = pydicom.dcmread(path)
        try:
            pixels = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        except Exception as err:
            raise DataError(
                f"{path}: cannot decode DICOM pixel data ({err})".splitlines()[0]
            ) from err
        if slices and pixels.shape != slices[0].shape:
            raise DataError(
                f"{path}: slice of {pixels.shape}, the series' first is {slices[0].shape}"
            )
        slices.append(pixels)
    array = np.stack(slices)
    return Volume(array, spacing, affine, _axcodes(affine), str(folder))


def dicom_series_geometry(
    folder: str | Path,
) -> tuple[list, tuple[float, float, float], np.ndarray]:
    """A DICOM series folder's files in slice order (path, header without pixels), its voxel
    size per array axis (slices, rows, columns) and its RAS+ affine, from the headers alone.

    Raises:
        DataError: as `read_dicom_series`.
    """
    import pydicom

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    headers = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM (a README, a thumbnail): skipped
            continue
        if "ImagePositionPatient" in ds and "Rows" in ds:
            headers.append((path, ds))
    if not headers:
        raise DataError(f"{folder}: no DICOM images with Image Position Patient in this folder")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise DataError(
            f"{folder}: holds {len(series)} series ({sorted(series)[:3]}); give one folder per series"
        )
    orientation = np.asarray(
        headers[0][1].get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float
    )
    normal = np.cross(orientation[:3], orientation[3:])
    positions = [
        float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))) for _, ds in headers
    ]
    order = np.argsort(positions, kind="stable")
    ordered = [headers[k] for k in order]
    sorted_positions = np.asarray(positions)[order]
    gaps = np.diff(sorted_positions)
    if len(gaps) and np.min(np.abs(gaps)) < 1e-4:
        k = int(np.argmin(np.abs(gaps)))
        raise DataError(
            f"{folder}: {ordered[k][0].name} and {ordered[k + 1][0].name} lie at the same position"
        )
    first = ordered[0][1]
    slice_spacing = (
        float(np.median(gaps)) if len(gaps) else float(first.get("SliceThickness", 1) or 1)
    )
    if len(gaps) and np.max(gaps) > 1.5 * slice_spacing:  # a file missing from the series
        k = int(np.argmax(gaps))
        raise DataError(
            f"{folder}: a gap of {gaps[k]:.3g} mm between {ordered[k][0].name} and "
            f"{ordered[k + 1][0].name}, where the slices are {slice_spacing:.3g} mm apart: a slice "
            "is missing from the series (volumes and measurements would be wrong)"
        )
    pixel_spacing = dicom_pixel_spacing(first, str(ordered[0][0])) or (1.0, 1.0)
    spacing = checked_spacing(
        (abs(slice_spacing), *pixel_spacing), str(folder), "its slice positions and PixelSpacing"
    )
    affine = np.eye(4)
    # Columns of the affine: slice direction, row direction (down the image), column direction.
    affine[:3, 0] = normal * slice_spacing
    affine[:3, 1] = orientation[3:] * pixel_spacing[0]
    affine[:3, 2] = orientation[:3] * pixel_spacing[1]
    affine[:3, 3] = np.asarray(ordered[0][1].ImagePositionPatient, float)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # DICOM's LPS+ -> NIfTI's RAS+
    return ordered, spacing, affine


def read_dicom_frames(path: str | Path) -> Volume:
    """A multi-frame DICOM file (frames x rows x columns) with the modality transform applied."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as err:
        raise DataError(
            f"{path}: cannot read DICOM ({type(err).__name__}: {err})".splitlines()[0]
        ) from err
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DataError(f"{path}: colour DICOM is not a volume")
    if pixels.ndim == 2:  # a slice is no volume: a network on volumes would measure it as one
        raise DataError(
            f"{path}: a DICOM of one frame (a 2D image); a volume is a multi-frame DICOM file or "
            "a folder of one series"
        )
    array = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    if "RescaleIntercept" not in ds and "ModalityLUTSequence" not in ds:
        # Enhanced multi-frame objects keep slope and intercept in the functional groups.
        for k, (slope, intercept) in enumerate(_frame_rescale(ds, len(array))):
            array[k] = array[k] * slope + intercept
    measures = ds
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and "PixelMeasuresSequence" in shared[0]:  # enhanced multi-frame objects
        measures = shared[0].PixelMeasuresSequence[0]
    row, col = dicom_pixel_spacing(measures, str(path)) or (1.0, 1.0)
    between = measures.get("SpacingBetweenSlices") or measures.get("SliceThickness") or 1.0
    spacing = checked_spacing(
        (between, row, col), str(path), "its SpacingBetweenSlices/SliceThickness and PixelSpacing"
    )
    affine = _frames_affine(ds, len(array), (row, col))
    if affine is None:  # no plane geometry: the frames' order as stored, axes unknown
        return Volume(array, spacing, np.diag([*spacing, 1.0]), ("?", "?", "?"), str(path))
    spacing = checked_spacing(
        tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)),
        str(path),
        "its frames' positions and PixelSpacing",
    )
    return Volume(array, spacing, affine, _axcodes(affine), str(path))


def _frames_affine(ds, frames: int, pixel: tuple[float, float]) -> np.ndarray | None:
    """The RAS+ affine of an enhanced multi-frame DICOM's frames from their plane geometry (the
    functional groups' Plane Orientation and each frame's Plane Position), as a series' is built;
    None when the file states no such geometry, or its frames are not one evenly spaced stack
    (a segmentation object's frames of several segments)."""

    def plane(group, sequence: str, key: str) -> np.ndarray | None:
        if group is None or sequence not in group or key not in group[sequence][0]:
            return None
        return np.asarray([float(v) for v in group[sequence][0].get(key)], dtype=np.float64)

    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    first = per_frame[0] if per_frame else None
    orientation = plane(
        shared[0] if shared else None, "PlaneOrientationSequence", "ImageOrientationPatient"
    )
    if orientation is None:
        orientation = plane(first, "PlaneOrientationSequence", "ImageOrientationPatient")
    positions = [plane(g, "PlanePositionSequence", "ImagePositionPatient") for g in per_frame]
    if (
        orientation is None
        or orientation.shape != (6,)
        or frames < 2
        or len(positions) != frames
        or any(p is None or p.shape != (3,) for p in positions)
    ):
        return None
    stack = np.stack(positions)
    steps = np.diff(stack, axis=0)
    if np.linalg.norm(steps[0]) < 1e-6 or not np.allclose(steps, steps[0], atol=1e-3):
        return None
    affine = np.eye(4)
    affine[:3, 0] = steps[0]  # frame to frame
    affine[:3, 1] = orientation[3:] * pixel[0]  # row to row runs along the column direction
    affine[:3, 2] = orientation[:3] * pixel[1]
    affine[:3, 3] = stack[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # DICOM's LPS+ -> NIfTI's RAS+


class VolumeCache:
    """Decoded volumes kept so that later epochs (and, on disk, later runs) do not decode again.

    Args:
        mode: `memory` (a dict for this process), `disk` (uncompressed .npy files in `folder`,
            memory-mapped when read and kept open, shared by later runs and loader workers) or
            `none`.
        folder: the disk cache's folder (required for `disk`).
    """

    MODES = ("memory", "disk", "none")

    def __init__(self, mode: str = "memory", folder: str | Path | None = None):
        if mode not in self.MODES:
            raise ConfigError(f"dataset.cache={mode!r}: choose one of {self.MODES}")
        if mode == "disk" and not folder:
            raise ConfigError("dataset.cache=disk needs dataset.cache_dir=<folder>")
        self.mode = mode
        self.folder = Path(folder) if folder else None
        self.memory: dict[str, np.ndarray] = {}

    def array(self, path: str | Path, read=None, variant: str = "") -> np.ndarray:
        """The volume array of `path` (decoded by `read(path)`, default `read_volume`);
        `variant` names how `read` makes it (its normalization, the classes labels are read
        for), so that another reading of the same file is not taken from the cache."""
        read = read or (lambda p: read_volume(p).array)
        key = self.memory_key(path, variant)
        if self.mode == "none":
            return read(path)
        if self.mode == "memory":
            if key not in self.memory:
                self.memory[key] = read(path)
            return self.memory[key]
        if key in self.memory:  # opened once per process, then kept (memory-mapped)
            return self.memory[key]
        file = self.folder / f"{self._key(path, variant)}.npy"
        if file.is_file():
            array = np.load(file, mmap_mode="r")
        else:
            array = np.ascontiguousarray(read(path))
            self.folder.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            np.save(buffer, array)
            # Written atomically: a half-written cache file is never read.
            atomic_write(file, lambda handle: handle.write(buffer.getvalue()), mode="wb")
        self.memory[key] = array
        return array

    @staticmethod
    def memory_key(path: str | Path, variant: str = "") -> str:
        """The key of `path` read as `variant` in this process's dict."""
        return f"{path}|{variant}" if variant else str(path)

    @staticmethod
    def _key(path: str | Path, variant: str = "") -> str:
        """The file's path, size and modification time, and how it is read: an edited file, or
        one read another way, is decoded again."""
        stat = Path(path).stat()
        # "ras": volumes are cached in RAS order (release 0.3); "v2": label volumes keep values
        # over 255 and read binary {0, v} as {0, 1}; older cache files are not read.
        text = f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}:ras:v2:{variant}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]


VOLUME_NORMALIZE = ("zscore", "nonzero_zscore", "none")


def normalize_volume(array: np.ndarray, mode: str) -> np.ndarray:
    """A volume as float32, z-scored over all its voxels (`zscore`), over its non-zero voxels
    (`nonzero_zscore`, for skull-stripped MRI) or unchanged (`none`)."""
    if mode not in VOLUME_NORMALIZE:
        raise ConfigError(f"dataset.volume_normalize={mode!r}: choose one of {VOLUME_NORMALIZE}")
    array = array.astype(np.float32)
    if mode == "none":
        return array
    values = array[array != 0] if mode == "nonzero_zscore" else array
    values = values if values.size else array
    return (array - values.mean()) / max(float(values.std()), 1e-6)


def stack_slices(slices: Sequence[np.ndarray], axis: int) -> np.ndarray:
    """Reassemble 2D slices (in order) into a volume, the slices lying along `axis`."""
    return np.stack(list(slices), axis=axis)
