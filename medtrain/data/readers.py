"""Reading one 2D image from a file or from uploaded bytes: PNG, JPEG, TIFF (8/16 bit, grey or
colour), NPY/NPZ and DICOM, recognised by their magic bytes (the extension only speaks for content
without a signature medtrain knows, such as a DICOM file without its preamble).

The bytes may be hostile (the HTTP service decodes uploads), hence:
- every failure is a `DataError` naming the source, and nothing else (MemoryError, zlib.error,
  struct.error ...) leaves `decode`: `UnsupportedFormatError` when the bytes are no format medtrain
  reads (a GIF, BMP or EPS file stays unread whatever its name), `ImageTooLargeError` when the
  declared size is over the limits of `_check_size`, a plain `DataError` when a known format fails
  to decode;
- sizes are checked from the header (NPY header, NPZ member, Pillow header, DICOM tags) before
  anything is decompressed or decoded; a deflated DICOM is inflated in bounded steps;
- Pillow only ever opens the one format that the magic bytes name;
- pixel values must be finite and within float32's range (after the DICOM rescale), and a pixel
  spacing that a file states must lie within `SPACING_RANGE_MM`.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from medtrain.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
READABLE_EXTENSIONS = (*IMAGE_EXTENSIONS, ".npy", ".npz", ".dcm", ".dicom")
MAX_PIXELS = 64_000_000  # per image (8000 x 8000); bigger declared sizes are refused unread
# Besides its pixels an image may declare up to 4 values each (channels, frames, pages) of up to 8
# bytes (float64): its array never needs more than 32 bytes per allowed pixel.
VALUES_PER_PIXEL = 4
BYTES_PER_VALUE = 8
# What a deflated DICOM may hold besides its pixel data (header, overlays, icons, private tags).
DICOM_TAG_BYTES = 16 * 2**20
# The NPY magic, version and header length, and the largest header numpy parses (its default).
NPY_HEADER_BYTES = 12 + 10_000
# A pixel size a file may state, in mm: 1 nm (microscopy at 0.1 µm is 1e-4 mm) to 10 m.
SPACING_RANGE_MM = (1e-6, 1e4)
FLOAT32_MAX = float(np.finfo(np.float32).max)
# 72 and 96 dpi in pixels per metre, as rounded by common writers: display defaults, not a spacing.
SCREEN_PPM = {2834, 2835, 2836, 3779, 3780, 3781}
FORMATS = "PNG, JPEG, TIFF, DICOM, NPY or NPZ"
# Magic bytes at offset 0, tested before DICOM's `DICM` at offset 128 (see `sniff`).
SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
    b"\x93NUMPY": "npy",
    b"PK\x03\x04": "npz",
}
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}  # the one Pillow plugin per format
# Formats refused by name whatever the file is called (Pillow reads several of them; EPS would
# even run Ghostscript).
OTHER_SIGNATURES = {
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"%!PS": "PostScript (EPS)",
    b"\xc5\xd0\xd3\xc6": "EPS",
    b"%PDF": "PDF",
    b"RIFF": "RIFF (WebP)",
    b"\x00\x00\x01\x00": "ICO",
    b"8BPS": "Photoshop",
    b"\x00\x00\x00\x0cjP  ": "JPEG 2000",
    b"\xffO\xffQ": "JPEG 2000",
    b"qoif": "QOI",
    b"\x1f\x8b": "gzip",
}
# The format an extension names, when the content has no signature medtrain knows.
FORMAT_OF_SUFFIX = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".npy": "npy",
    ".npz": "npz",
    ".dcm": "dicom",
    ".dicom": "dicom",
}


class UnsupportedFormatError(DataError):
    """The bytes are not an image format medtrain reads."""


class ImageTooLargeError(DataError):
    """The image declares more pixels than the limit allows."""


@dataclass
class Decoded:
    """A decoded image: `array` (H x W or H x W x C; uint8, uint16 or float32), the pixel `spacing`
    (row_mm, col_mm) the file states (None if none), and the `format` it was read as."""

    array: np.ndarray
    spacing: tuple[float, float] | None
    format: str


def sniff(data: bytes, name: str = "") -> str:
    """The format of `data`: png, jpeg, tiff, npy, npz or dicom.

    By magic bytes: PNG, JPEG, NPY and NPZ at offset 0, then DICOM's `DICM` at offset 128, then
    TIFF. A DICOM preamble is 128 arbitrary bytes: it may look like a TIFF header (read as DICOM),
    while a file that starts as a PNG or JPEG is one even if its bytes 128..131 read `DICM`.
    Content without a known signature goes by its extension: a DICOM file without its preamble
    (anything else then fails to decode, as a broken file of that format).

    Raises:
        UnsupportedFormatError: the content is another format (GIF, BMP, EPS ...), or neither the
            content nor the extension names a readable format.
    """
    for magic, kind in SIGNATURES.items():
        if data.startswith(magic):
            return kind
    if data[128:132] == b"DICM":
        return "dicom"
    if data[:4] in TIFF_SIGNATURES:
        return "tiff"
    source = name or "upload"
    for magic, other in OTHER_SIGNATURES.items():
        if data.startswith(magic):
            raise UnsupportedFormatError(f"{source}: a {other} file; medtrain reads {FORMATS}")
    suffix = Path(name).suffix.lower()
    if suffix in FORMAT_OF_SUFFIX:
        return FORMAT_OF_SUFFIX[suffix]
    head = data[:8].hex(" ") if data else "nothing"
    raise UnsupportedFormatError(f"{source}: not a {FORMATS} file (it starts with {head})")


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS, modality: bool = False) -> Decoded:
    """Read an image file (see `decode`), naming the file in every error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror or err})") from err
    return decode(data, str(path), max_pixels, modality)


def read_image_file(path: str | Path, modality: bool = False) -> np.ndarray:
    """Read an image file into an array keeping its bit depth (uint8 or uint16, grey or colour);
    `modality`: DICOM in modality units (e.g. Hounsfield units), for CT windowing."""
    return read_image(path, modality=modality).array


def decode(
    data: bytes, name: str = "upload", max_pixels: int = MAX_PIXELS, modality: bool = False
) -> Decoded:
    """Decode one 2D image from bytes.

    PNG/JPEG/TIFF keep their bit depth (palette images become RGB, alpha is dropped, a multi-page
    TIFF gives its first page: the other pages are never read); NPY/NPZ arrays must be 2D, or
    H x W x C with 1, 3 or 4 channels; an NPZ holds one array (or one named `image`). DICOM: see
    `decode_dicom`. Floating-point pixels must be finite and within float32's range; finite values
    up to 3.4e38 pass (normalising them without overflow is the preprocessing's task).

    Args:
        data: the file's bytes.
        name: the file name (or upload name) used in messages and as an extension hint.
        max_pixels: refuse images that declare more than this, before decoding them (see
            `_check_size` for the values and bytes allowed besides).
        modality: keep DICOM values in modality units (CT: Hounsfield units) instead of mapping
            them to [0, 1] through the file's display window; for `dataset.window`.

    Raises:
        DataError: naming `name`; `UnsupportedFormatError` and `ImageTooLargeError` among them.
    """
    if not data:
        raise DataError(f"{name}: the file is empty")
    kind = sniff(data, name)
    if kind == "dicom":
        return decode_dicom(data, name, max_pixels, modality)
    with _reading(name, "array" if kind in ("npy", "npz") else "image"):
        spacing = None
        if kind == "npy":
            array = _decode_npy(data, name, max_pixels)
        elif kind == "npz":
            array = _decode_npz(data, name, max_pixels)
        else:
            array, spacing = _decode_pil(data, name, kind, max_pixels)
        _check_finite(array, name)
        return Decoded(array, spacing, kind)


@contextlib.contextmanager
def _reading(name: str, what: str) -> Iterator[None]:
    """Report any exception raised while decoding `name` as a DataError naming it.

    Decoders given hostile bytes raise almost anything (ValueError, struct.error, zlib.error,
    EOFError, KeyError, RecursionError, MemoryError ...); each means the file cannot be read, and
    none may reach a caller (the HTTP service: a 500) as anything but a DataError.
    """
    try:
        yield
    except DataError:
        raise
    except Exception as err:
        kind = type(err).__name__
        kind = f"{type(err).__module__}.{kind}" if kind == "error" else kind  # zlib, struct
        lines = re.sub(r" <[^>]* at 0x[0-9a-f]+>", "", str(err)).strip().splitlines()
        reason = f"{kind}: {lines[0]}" if lines else kind
        raise DataError(f"{name}: cannot read {what} ({reason})") from err


# -- limits on what a file declares and holds ----------------------------------------------------
def _check_size(
    shape: Sequence[int], name: str, max_pixels: int, itemsize: int = 1, axes: str = ""
) -> None:
    """Refuse a declared shape before anything is decompressed or decoded, counting every
    dimension: its pixels (all dimensions but a trailing channel one of at most 4) over
    `max_pixels`, its values over VALUES_PER_PIXEL times that, or their bytes (`itemsize` each)
    over BYTES_PER_VALUE times those.

    Raises:
        DataError: a negative dimension.
        ImageTooLargeError: naming the file and the declared shape (described by `axes`).
    """
    dims = tuple(int(d) for d in shape)
    text = "x".join(map(str, dims)) + (f" ({axes})" if axes else "")
    if any(d < 0 for d in dims):
        raise DataError(f"{name}: the declared shape {text} has a negative dimension")
    values = math.prod(dims)  # Python integers: no overflow whatever the header says
    pixels = math.prod(dims[:-1]) if len(dims) >= 3 and dims[-1] <= 4 else values
    limits = (
        (pixels, max_pixels, "pixels"),
        (values, VALUES_PER_PIXEL * max_pixels, "values"),
        (values * itemsize, BYTES_PER_VALUE * VALUES_PER_PIXEL * max_pixels, "bytes"),
    )
    for count, limit, unit in limits:
        if count > limit:
            raise ImageTooLargeError(
                f"{name}: the declared shape {text} is over the limit: {count:,} {unit}, "
                f"at most {limit:,}"
            )


def _check_finite(values: np.ndarray, name: str, context: str = "") -> None:
    """Refuse floating-point pixels that are NaN or infinite, or beyond float32's range (they
    would become infinite as float32): a model would otherwise find them "normal"."""
    if not np.issubdtype(values.dtype, np.floating) or not values.size:
        return
    low, high = float(np.min(values)), float(np.max(values))  # NaN propagates to both
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = values.size - int(np.count_nonzero(np.isfinite(values)))
        raise DataError(
            f"{name}: pixel values are not finite (NaN or infinite){context}: {bad} of "
            f"{values.size}"
        )
    if max(-low, high) > FLOAT32_MAX:
        raise DataError(
            f"{name}: pixel values overflow float32{context}: magnitudes up to "
            f"{max(-low, high):.3g}, float32 holds at most {FLOAT32_MAX:.3g}"
        )


def _checked(array: np.ndarray, name: str) -> np.ndarray:
    """A 2D image: H x W, or H x W x C with C in 1, 3; anything else is refused."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise DataError(
            f"{name}: shape {array.shape} is not a 2D image (H x W, or H x W x 3 for colour)"
        )
    if min(array.shape[:2]) < 1:
        raise DataError(f"{name}: the image has no pixels (shape {array.shape})")
    return array


# -- PNG, JPEG, TIFF -----------------------------------------------------------------------------
def _decode_pil(
    data: bytes, name: str, kind: str, max_pixels: int
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """A PNG, JPEG or TIFF (its first page) read by Pillow, allowed to try that format only; its
    rows x columns x bands are checked from the header before any pixel is decoded."""
    try:
        with Image.open(io.BytesIO(data), formats=[PIL_FORMATS[kind]]) as img:
            width, height = img.size
            bands = len(img.getbands())
            _check_size((height, width, bands), name, max_pixels, axes="rows x columns x bands")
            spacing = _pil_spacing(img, io.BytesIO(data), name)
            img.load()
            if img.mode in ("P", "LA", "PA", "CMYK", "YCbCr"):
                img = img.convert("RGBA" if "A" in img.mode or img.mode == "P" else "RGB")
            array = np.array(img)
    except Image.DecompressionBombError as err:  # Pillow's own limit, met while opening the header
        raise ImageTooLargeError(f"{name}: the declared size is over the limit ({err})") from err
    if array.dtype in (np.int32, np.uint32):  # PIL's mode "I" for 16-bit PNG/TIFF
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise DataError(f"{name}: 32-bit integer pixels outside 0..65535 are not supported")
        array = array.astype(np.uint16)
    if array.dtype.byteorder == ">":  # big-endian 16-bit TIFF: native order, so uint16 checks hold
        array = array.astype(array.dtype.newbyteorder("="))
    return _image_of(array, name), spacing


def _image_of(array: np.ndarray, name: str) -> np.ndarray:
    """A decoded array as a 2D image: alpha dropped, then checked by `_checked`."""
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    return _checked(array, name)


# -- NPY, NPZ ------------------------------------------------------------------------------------
def _npy_layout(head: bytes, name: str, max_pixels: int) -> tuple[int, int]:
    """(header bytes, data bytes) of an NPY file from its first bytes alone: its shape checked
    against the limits and its dtype numeric or bool (no objects, strings or complex numbers)."""
    stream = io.BytesIO(head)
    version = np.lib.format.read_magic(stream)
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, _, dtype = read_header(stream)  # refuses headers over numpy's 10,000 bytes
    if dtype.kind not in "biuf":  # bool stays bool: it scales to 0 and 1
        raise DataError(f"{name}: array of {dtype} is not an image")
    _check_size(shape, name, max_pixels, dtype.itemsize)
    return stream.tell(), math.prod(shape) * dtype.itemsize


def _decode_npy(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """An NPY array, its header checked before the data are read."""
    offset, size = _npy_layout(data[:NPY_HEADER_BYTES], name, max_pixels)
    if len(data) - offset < size:
        raise DataError(
            f"{name}: truncated NPY: its header declares {size:,} bytes of data, the file holds "
            f"{len(data) - offset:,}"
        )
    return _image_of(np.load(io.BytesIO(data), allow_pickle=False), name)


def _decode_npz(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """The image array of an NPZ: the member's declared size and its NPY header are checked
    before more than that header is inflated."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = _npz_member(archive, name)
        where = f"{name}: member {member.filename}"
        # bzip2 and LZMA members inflate whole chunks at once, beyond any size asked for.
        if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise DataError(f"{where} is not stored or deflated as numpy writes NPZ files")
        if member.flag_bits & 0x1:
            raise DataError(f"{where} is encrypted")
        limit = NPY_HEADER_BYTES + BYTES_PER_VALUE * VALUES_PER_PIXEL * max_pixels
        if member.file_size > limit:
            raise ImageTooLargeError(
                f"{where} declares {member.file_size:,} bytes, over the limit of {limit:,}"
            )
        with archive.open(member) as stream:
            offset, size = _npy_layout(stream.read(NPY_HEADER_BYTES), where, max_pixels)
        if member.file_size != offset + size:
            raise DataError(
                f"{where} holds {member.file_size:,} bytes where its NPY header declares "
                f"{offset + size:,}"
            )
        with archive.open(member) as stream:  # reads exactly the declared bytes
            return _image_of(np.lib.format.read_array(stream, allow_pickle=False), name)


def _npz_member(archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    """The member holding the image: the NPZ's only array, or the one named `image`."""
    members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
    if "image" in members:
        return members["image"]
    if len(members) == 1:
        return next(iter(members.values()))
    raise DataError(
        f"{name}: the NPZ holds {len(members)} arrays {list(members)[:5]}; store one, or name "
        "it 'image'"
    )


# -- pixel spacing -------------------------------------------------------------------------------
def spacing_problem(spacing: Sequence[float]) -> str | None:
    """Why `spacing` (mm per pixel, per axis) is unusable, or None when every value is a finite
    number within SPACING_RANGE_MM."""
    low, high = SPACING_RANGE_MM
    for value in spacing:
        if not (math.isfinite(value) and low <= value <= high):
            return f"{value!r} is not a number from {low:g} to {high:g} mm"
    return None


def checked_spacing(spacing: Sequence, name: str, source: str) -> tuple[float, ...]:
    """`spacing` as the file `name` states it in `source` (a tag, a chunk), as floats.

    Raises:
        DataError: naming the file, the source and the value when `spacing_problem` finds one.
    """
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError) as err:
        raise DataError(f"{name}: {source} holds {spacing!r}, not numbers") from err
    if problem := spacing_problem(values):
        raise DataError(f"{name}: {source} states a pixel spacing of {values} mm; {problem}")
    return values


def _pil_spacing(img: Image.Image, stream: BinaryIO, name: str) -> tuple[float, float] | None:
    """Pixel spacing when a PNG or TIFF states a metric resolution, else None.

    TIFFs: OME-TIFF `PhysicalSizeX/Y`, then ImageJ/Fiji's `unit=` with X/YResolution, then a
    resolution in centimetres. Resolutions given in inches (TIFF), and the 72 or 96 dpi that most
    software writes into PNGs by default, describe a screen rather than the specimen and are ignored.

    Raises:
        DataError: a stated spacing that `checked_spacing` refuses (zero, negative, absurd ...).
    """
    if img.format == "PNG":
        stated = _png_spacing(stream)
    elif img.format == "TIFF":
        stated = _tiff_spacing(img.tag_v2)
    else:
        return None
    if stated is None:
        return None
    spacing, source = stated
    return checked_spacing(spacing, name, source)


def _pixel_size(unit_mm: float, per_unit) -> float:
    """The size of one of `per_unit` pixels per `unit_mm` mm: inf for a resolution of zero, NaN
    for an undefined one (a rational over zero), both refused by `checked_spacing`."""
    per_unit = float(per_unit)
    return unit_mm / per_unit if per_unit else math.inf


def _png_spacing(stream: BinaryIO):
    """((row, col) mm, source) from a PNG's pHYs chunk in metres, unless it is a screen default."""
    phys = png_phys(stream)
    if phys is None:
        return None
    per_metre_x, per_metre_y, unit = phys
    if unit != 1 or {per_metre_x, per_metre_y} <= SCREEN_PPM:
        return None
    return (_pixel_size(1000.0, per_metre_y), _pixel_size(1000.0, per_metre_x)), "its pHYs chunk"


def _tiff_spacing(tags):
    """((row, col) mm, source) from a TIFF's OME-XML, ImageJ or centimetre resolution tags."""
    description = tags.get(270)
    if isinstance(description, bytes):
        description = description.decode("utf-8", "replace")
    elif isinstance(description, str):  # PIL reads the tag as Latin-1; OME-XML is UTF-8 (µm)
        with contextlib.suppress(UnicodeError):
            description = description.encode("latin-1").decode("utf-8")
    if isinstance(description, str) and (
        stated := _ome_spacing(description) or _imagej_spacing(description, tags)
    ):
        return stated
    unit = tags.get(296, 2)  # ResolutionUnit: 1 none, 2 inch, 3 centimetre
    x_res, y_res = tags.get(282), tags.get(283)
    if unit != 3 or x_res is None or y_res is None:
        return None
    spacing = _pixel_size(10.0, y_res), _pixel_size(10.0, x_res)
    return spacing, "its X/YResolution tags (per cm)"


# Length units that microscopy software writes, in mm.
LENGTH_UNITS_MM = {
    "nm": 1e-6,
    "um": 1e-3,
    "µm": 1e-3,
    "μm": 1e-3,
    "micron": 1e-3,
    "microns": 1e-3,
    "micrometer": 1e-3,
    "micrometre": 1e-3,
    "mm": 1.0,
    "millimeter": 1.0,
    "millimetre": 1.0,
    "cm": 10.0,
    "m": 1000.0,
}


def _unit_mm(unit: str) -> float | None:
    unit = unit.strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ")
    return LENGTH_UNITS_MM.get(unit) or LENGTH_UNITS_MM.get(unit.lower())


def _imagej_spacing(description: str, tags):
    """ImageJ/Fiji TIFFs: `unit=` in the ImageDescription, X/YResolution in pixels per that unit."""
    if not description.startswith("ImageJ="):
        return None
    found = re.search(r"^unit=(.+)$", description, re.MULTILINE)
    scale = _unit_mm(found.group(1)) if found else None
    x_res, y_res = tags.get(282), tags.get(283)
    if scale is None or x_res is None or y_res is None:
        return None
    spacing = _pixel_size(scale, y_res), _pixel_size(scale, x_res)
    return spacing, "its ImageJ unit and X/YResolution tags"


def _ome_spacing(description: str):
    """OME-TIFF: PhysicalSizeX/Y of the first `Pixels` element (unit attribute, default µm)."""
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", description)
    if pixels is None:
        return None
    sizes = []
    for axis in ("Y", "X"):
        size = re.search(rf'\bPhysicalSize{axis}="([^"]+)"', pixels.group(0))
        unit = re.search(rf'\bPhysicalSize{axis}Unit="([^"]+)"', pixels.group(0))
        scale = _unit_mm(unit.group(1)) if unit else 1e-3
        if size is None or scale is None:
            return None
        try:
            sizes.append(float(size.group(1)) * scale)
        except ValueError:
            return None
    return (sizes[0], sizes[1]), "its OME-XML PhysicalSizeY/X"


def png_phys(stream: BinaryIO) -> tuple[int, int, int] | None:
    """The pHYs chunk of a PNG read from `stream` (at its start): pixels per unit in x and y, and
    the unit (1 = metre). Only chunk headers are read; chunk bodies are skipped with seeks."""
    stream.seek(8)  # after the signature
    while len(header := stream.read(8)) == 8:
        length, kind = int.from_bytes(header[:4], "big"), header[4:]
        if kind == b"pHYs" and length == 9:
            body = stream.read(9)
            if len(body) < 9:
                return None
            return int.from_bytes(body[0:4], "big"), int.from_bytes(body[4:8], "big"), body[8]
        if kind in (b"IDAT", b"IEND"):
            return None  # pHYs must come before the image data
        stream.seek(length + 4, io.SEEK_CUR)  # the body and its CRC
    return None


def file_spacing(path: str | Path) -> tuple[float, float] | None:
    """Pixel spacing (row, column) in mm that an image file states (metric PNG/TIFF resolution,
    DICOM Pixel Spacing), else None (also for files that do not open: decoding names why).

    Raises:
        DataError: a stated spacing that `checked_spacing` refuses.
    """
    path = Path(path)
    if path.suffix.lower() not in (".png", ".tif", ".tiff", ".dcm", ".dicom"):
        return None
    try:
        # Headers only: PIL reads the TIFF tags lazily and png_phys skips chunk bodies, so checking
        # a folder's spacing does not read its pixels.
        with open(path, "rb") as handle:
            kind = sniff(handle.read(132), path.name)
            if kind == "dicom":
                return _dicom_spacing(path)
            if kind not in ("png", "tiff"):
                return None
            with Image.open(handle, formats=[PIL_FORMATS[kind]]) as img:
                return _pil_spacing(img, handle, str(path))
    except (UnsupportedFormatError, OSError, ValueError, SyntaxError):
        return None  # UnidentifiedImageError is an OSError; a refused spacing is raised


def _dicom_spacing(path: Path) -> tuple[float, float] | None:
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
    else the image's min-max, maps them to [0, 1]; MONOCHROME1 (bright = low values) is inverted so
    that high values are bright as in every other format. Colour (RGB, YBR) images are converted to
    RGB. The spacing is Pixel Spacing (or Imager Pixel Spacing for projection radiographs). The
    size (frames x rows x columns x samples) is checked from the header before pixel data are
    decoded or, for the deflated transfer syntax, inflated.

    Raises:
        DataError: naming the file for truncated data, a multi-frame file, missing pixel data, a
            transfer syntax that no installed decoder handles (naming it), a non-finite Rescale
            Slope or Intercept, values that are not finite or overflow float32 after the rescale,
            or an absurd spacing; `ImageTooLargeError` for sizes over the limits.
    """
    with _reading(name, "DICOM file"):
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
        raise DataError(f"{name}: cannot decode DICOM {what}: {err}".splitlines()[0]) from err
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
    Allocated each), checked by `_check_size` before any pixel is decoded, compressed or not.

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
    _check_size(shape, name, max_pixels, value_bytes, "frames x rows x columns x samples")
    return math.prod(shape) * value_bytes


def _modality_values(pixels: np.ndarray, ds, name: str) -> np.ndarray:
    """Stored values through the modality transform (rescale slope and intercept: CT in Hounsfield
    units), MONOCHROME1 inverted so that high values are bright, as float32.

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
        if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
            values = values.max() + values.min() - values
    slope, intercept = ds.get("RescaleSlope", 1), ds.get("RescaleIntercept", 0)
    _check_finite(values, name, f" after the rescale (slope {slope}, intercept {intercept})")
    return values.astype(np.float32)


def _display_range(image: np.ndarray, ds) -> np.ndarray:
    """Modality values -> [0, 1] through the file's first display window, else its min-max
    (computed in float64: values near float32's limit do not overflow on the way)."""
    image = image.astype(np.float64)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and math.isfinite(center) and 0 < width < math.inf:
        low = center - width / 2
        return np.clip((image - low) / width, 0.0, 1.0).astype(np.float32)
    low, high = float(image.min()), float(image.max())
    return ((image - low) / max(high - low, 1e-6)).astype(np.float32)


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
