"""DICOM images read from bytes as safely as the other formats: the file meta first, a deflated
data set inflated within a bound, Rows x Columns x frames checked before any pixel is decoded,
the modality rescale checked for finite values; and the pixel spacing a data set states."""

from __future__ import annotations

import io
import math
import zlib
from pathlib import Path

import numpy as np

from medtrain.data.decoding import (
    MAX_PIXELS,
    Decoded,
    ImageTooLargeError,
    check_finite,
    check_size,
    checked_spacing,
    reading,
)
from medtrain.errors import DataError

# What a deflated DICOM may hold besides its pixel data (header, overlays, icons, private tags).
DICOM_TAG_BYTES = 16 * 2**20


def dicom_file_spacing(path: Path) -> tuple[float, float] | None:
    try:
        ds = _dicom_dataset(path.read_bytes(), str(path), MAX_PIXELS)
    except Exception:  # unreadable (or too large) here: decoding reports it with its reason
        return None
    return dicom_pixel_spacing(ds, str(path))


def dicom_pixel_spacing(ds, name: str = "DICOM data set") -> tuple[float, float] | None:
    """(row, column) mm of a DICOM data set: Pixel Spacing, else Imager Pixel Spacing (projection
    radiographs); None when neither holds two values.

    Raises:
        DataError: naming `name`, the tag and the value, for a spacing that `checked_spacing`
            refuses (zero, negative, NaN, 1e308 ...).
    """
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        if value is None or isinstance(value, (str, bytes, int, float)) or len(value) != 2:
            continue
        return checked_spacing(value, name, key)
    return None


# -- DICOM ---------------------------------------------------------------------------------------
def decode_dicom(
    data: bytes, name: str = "upload", max_pixels: int = MAX_PIXELS, modality: bool = False
) -> Decoded:
    """Decode a single-frame DICOM image into float32 values in [0, 1] (or, with `modality`, in
    modality units such as Hounsfield units, for CT windowing).

    The stored values go through the modality transform (rescale slope and intercept: CT in
    Hounsfield units), then the file's own display window (Window Center / Width) when it has one,
    else the image's min-max, maps them to [0, 1]; MONOCHROME1 (bright = low values) is then
    inverted so that high values are bright as in every other format (with `modality`, values stay
    as the modality transform gives them: MONOCHROME1 concerns only how they are shown). Colour (RGB, YBR) images are converted to
    RGB. The spacing is Pixel Spacing (or Imager Pixel Spacing for projection radiographs). The
    size (frames x rows x columns x samples) is checked from the header before pixel data are
    decoded or, for the deflated transfer syntax, inflated.

    Raises:
        DataError: naming the file for truncated data, a multi-frame file, missing pixel data, a
            transfer syntax that no installed decoder handles (naming it), a non-finite Rescale
            Slope or Intercept, values that are not finite or overflow float32 after the rescale,
            or an absurd spacing; `ImageTooLargeError` for sizes over the limits.
    """
    with reading(name, "DICOM file"):
        volume, spacing, ds = _read_dicom(data, name, max_pixels)
        if volume.shape[0] != 1:
            raise DataError(
                f"{name}: multi-frame DICOM with {volume.shape[0]} frames; a 2D model takes one "
                "frame per file"
            )
        image = volume[0]
        if image.ndim == 2 and not modality:
            image = _display_range(image, ds)
        return Decoded(image, spacing, "dicom")


def _read_dicom(data: bytes, name: str, max_pixels: int):
    """(frames x H x W [x 3] modality values, spacing, dataset) of a DICOM file."""
    ds = _dicom_dataset(data, name, max_pixels)
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise DataError(f"{name}: DICOM file without pixel data (no image to read)")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types for missing decoders and broken data
        what = f"transfer syntax {syntax.name} ({syntax})" if syntax is not None else "pixel data"
        # pydicom lists the decoders it lacks one per line: all of them, on one line.
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        said = lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "")
        if "missing dependencies" in said:
            said += (
                " (install the packages one of these names into medtrain's environment, e.g. "
                "pip install pylibjpeg pylibjpeg-libjpeg; gdcm's package is python-gdcm)"
            )
        raise DataError(f"{name}: cannot decode DICOM {what}: {said}") from err
    if int(ds.get("NumberOfFrames", 1) or 1) == 1:
        pixels = pixels[None]
    if int(ds.get("SamplesPerPixel", 1) or 1) == 3:
        volume = pixels  # pydicom returns YBR colour already converted to RGB; bit depth kept
    else:
        volume = _modality_values(pixels, ds, name)
    return volume, dicom_pixel_spacing(ds, name), ds


def _dicom_dataset(data: bytes, name: str, max_pixels: int):
    """The data set of a DICOM file (with or without its preamble), its image size checked from
    the header by `_dicom_pixel_bytes` before any pixel is decoded; a deflated one is inflated by
    `_inflate_dicom`, in bounded steps, rather than whole by pydicom."""
    import pydicom
    from pydicom.dataset import FileDataset
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    stream = io.BytesIO(data)
    preamble = read_preamble(stream, force=True)
    meta = _read_file_meta_info(stream)  # what pydicom's read_file_meta_info does, for bytes
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    else:
        body = io.BytesIO(_inflate_dicom(data[stream.tell() :], name, max_pixels))
        dataset = read_dataset(body, is_implicit_VR=False, is_little_endian=True)
        ds = FileDataset(body, dataset, preamble, meta, is_implicit_VR=False, is_little_endian=True)
    _dicom_pixel_bytes(ds, name, max_pixels)
    return ds


def _inflate_dicom(deflated: bytes, name: str, max_pixels: int) -> bytes:
    """The data set of a Deflated Explicit VR Little Endian DICOM, inflated in two bounded steps:
    DICOM_TAG_BYTES, which must reach past the image's size (group 0028: Rows, Columns ...), then
    only as far as the pixel data that size declares plus DICOM_TAG_BYTES. A bomb is refused after
    a few MiB, whatever it inflates to.

    Raises:
        ImageTooLargeError: the image's size lies beyond DICOM_TAG_BYTES, is over the limits, or the
            data set holds more than that size explains.
        DataError: a corrupt or truncated deflate stream.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    tags_mib = DICOM_TAG_BYTES // 2**20
    try:
        head = inflater.decompress(deflated, DICOM_TAG_BYTES)
        if inflater.eof:
            return head
        if len(head) < DICOM_TAG_BYTES:  # all the input read, the stream unfinished
            raise DataError(f"{name}: truncated deflated DICOM data")
        header = _dicom_image_header(head)
        if header is None:
            raise ImageTooLargeError(
                f"{name}: the deflated DICOM holds over {tags_mib} MiB before its image size "
                "(Rows, Columns)"
            )
        allowed = _dicom_pixel_bytes(header, name, max_pixels) + DICOM_TAG_BYTES
        rest = inflater.decompress(inflater.unconsumed_tail, allowed - len(head) + 1)
    except zlib.error as err:
        raise DataError(f"{name}: corrupt deflated DICOM data ({err})") from err
    if len(head) + len(rest) > allowed:
        raise ImageTooLargeError(
            f"{name}: the deflated DICOM inflates to over {allowed:,} bytes, more than its "
            f"declared image and {tags_mib} MiB of tags"
        )
    if not inflater.eof:
        raise DataError(f"{name}: truncated deflated DICOM data")
    return head + rest


def _dicom_image_header(head: bytes):
    """The elements up to group 0028 (Image Pixel: Rows, Columns ...) read from the first bytes
    of a deflated DICOM's inflated data set, or None when they do not all lie within them."""
    from pydicom.filereader import read_dataset

    beyond: list[int] = []

    def past_image_group(tag, vr, length) -> bool:
        if tag >> 16 > 0x0028:
            beyond.append(tag)
        return bool(beyond)

    # Long values (private data, overlays) are skipped, not read: only the header is wanted.
    header = read_dataset(
        io.BytesIO(head),
        is_implicit_VR=False,
        is_little_endian=True,
        stop_when=past_image_group,
        defer_size=1024,
    )
    return header if beyond else None


def _dicom_pixel_bytes(ds, name: str, max_pixels: int) -> int:
    """The bytes of pixel data a DICOM header declares (frames x rows x columns x samples, at Bits
    Allocated each), checked by `check_size` before any pixel is decoded, compressed or not.

    Raises:
        DataError: Rows or Columns missing or zero.
        ImageTooLargeError: the declared size is over the limits.
    """
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows < 1 or columns < 1:
        raise DataError(f"{name}: DICOM Rows/Columns missing or zero ({rows}x{columns})")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    value_bytes = max(1, -(-int(ds.get("BitsAllocated", 16) or 16) // 8))
    shape = (frames, rows, columns, samples)
    check_size(shape, name, max_pixels, value_bytes, "frames x rows x columns x samples")
    return math.prod(shape) * value_bytes


def _modality_values(pixels: np.ndarray, ds, name: str) -> np.ndarray:
    """Stored values through the modality transform (rescale slope and intercept: CT in Hounsfield
    units), as float32. MONOCHROME1 changes only how they are shown (`_display_range`): Hounsfield
    units stay Hounsfield units.

    Raises:
        DataError: a Rescale Slope or Intercept that is not finite (naming it), or values that are
            not finite or overflow float32 after the transform.
    """
    from pydicom.pixels import apply_modality_lut

    for tag in ("RescaleSlope", "RescaleIntercept"):
        value = ds.get(tag)
        if value not in (None, "") and not math.isfinite(float(value)):
            raise DataError(f"{name}: DICOM {tag} is {value}, not a finite number")
    with np.errstate(over="ignore", invalid="ignore"):  # checked below, naming the file
        values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    slope, intercept = ds.get("RescaleSlope", 1), ds.get("RescaleIntercept", 0)
    check_finite(values, name, f" after the rescale (slope {slope}, intercept {intercept})")
    return values.astype(np.float32)


def _display_range(image: np.ndarray, ds) -> np.ndarray:
    """Modality values -> [0, 1] through the file's first display window, else its min-max
    (computed in float64: values near float32's limit do not overflow on the way), then inverted
    for MONOCHROME1 (low values bright), so that bright is 1 as in every other format. The window
    applies to the modality values, before the inversion, as the DICOM standard orders them (VOI
    LUT, then presentation)."""
    image = image.astype(np.float64)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and math.isfinite(center) and 0 < width < math.inf:
        shown = np.clip((image - (center - width / 2)) / width, 0.0, 1.0)
    else:
        low, high = float(image.min()), float(image.max())
        shown = (image - low) / max(high - low, 1e-6)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        shown = 1.0 - shown
    return shown.astype(np.float32)


def _first(value) -> float | None:
    """The first number of a DICOM value that may hold several (Window Center: 40\\400 ...)."""
    if value is None:
        return None
    if not isinstance(value, (int, float, str)):
        value = value[0] if len(value) else None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
