"""Reading one 2D image from a file or from uploaded bytes: PNG, JPEG, TIFF (8/16 bit, grey or
colour), NPY/NPZ and DICOM, recognised by content first and by extension second.

Every failure is a `DataError` naming the source: `UnsupportedFormatError` when the bytes are no
format medtrain reads, `ImageTooLargeError` when the declared size exceeds the pixel limit (checked
from the header, before anything is decoded), a plain `DataError` when a known format fails to decode.
"""

from __future__ import annotations

import contextlib
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from medtrain.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
READABLE_EXTENSIONS = (*IMAGE_EXTENSIONS, ".npy", ".npz", ".dcm", ".dicom")
MAX_PIXELS = 64_000_000  # per image (8000 x 8000); bigger declared sizes are refused unread
# 72 and 96 dpi in pixels per metre, as rounded by common writers: display defaults, not a spacing.
SCREEN_PPM = {2834, 2835, 2836, 3779, 3780, 3781}
FORMATS = "PNG, JPEG, TIFF, DICOM, NPY or NPZ"
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
    """The format of `data`: png, jpeg, tiff, npy, npz or dicom (by magic bytes, then extension).

    Raises:
        UnsupportedFormatError: neither the content nor the extension names a readable format.
    """
    if data[128:132] == b"DICM":  # first: a DICOM preamble may itself look like a TIFF header
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    if data.startswith(b"PK\x03\x04"):
        return "npz"
    suffix = Path(name).suffix.lower()
    if (
        suffix in FORMAT_OF_SUFFIX
    ):  # e.g. DICOM without its 128-byte preamble; else a decoding error
        return FORMAT_OF_SUFFIX[suffix]
    head = data[:8].hex(" ") if data else "nothing"
    raise UnsupportedFormatError(
        f"{name or 'upload'}: not a {FORMATS} file (it starts with {head})"
    )


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
    TIFF gives its first page); NPY/NPZ arrays must be 2D, or H x W x C with 1, 3 or 4 channels; an NPZ
    holds one array (or one named `image`). DICOM: see `decode_dicom`.

    Args:
        data: the file's bytes.
        name: the file name (or upload name) used in messages and as an extension hint.
        max_pixels: refuse images that declare more pixels than this, before decoding them.
        modality: keep DICOM values in modality units (CT: Hounsfield units) instead of mapping
            them to [0, 1] through the file's display window; for `dataset.window`.
    """
    if not data:
        raise DataError(f"{name}: the file is empty")
    kind = sniff(data, name)
    if kind == "dicom":
        return decode_dicom(data, name, max_pixels, modality)
    if kind in ("npy", "npz"):
        return Decoded(_decode_array(data, name, kind, max_pixels), None, kind)
    return Decoded(*_decode_pil(data, name, max_pixels), kind)


def _decode_pil(
    data: bytes, name: str, max_pixels: int
) -> tuple[np.ndarray, tuple[float, float] | None]:
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"{name}: {width}x{height} pixels is over the limit of {max_pixels}"
                )
            spacing = _pil_spacing(img, io.BytesIO(data))
            img.load()
            if img.mode in ("P", "LA", "PA", "CMYK", "YCbCr"):
                img = img.convert("RGBA" if "A" in img.mode or img.mode == "P" else "RGB")
            array = np.array(img)
    except DataError:
        raise
    except Image.DecompressionBombError as err:  # PIL's own limit, met while opening the header
        raise ImageTooLargeError(f"{name}: {err}") from err
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise DataError(
            re.sub(
                r" <[^>]* at 0x[0-9a-f]+>", "", f"{name}: cannot read image ({err})"
            ).splitlines()[0]
        ) from err
    if array.dtype in (np.int32, np.uint32):  # PIL's mode "I" for 16-bit PNG/TIFF
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise DataError(f"{name}: 32-bit integer pixels outside 0..65535 are not supported")
        array = array.astype(np.uint16)
    if array.dtype.byteorder == ">":  # big-endian 16-bit TIFF: native order, so uint16 checks hold
        array = array.astype(array.dtype.newbyteorder("="))
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    return _checked(array, name), spacing


def _decode_array(data: bytes, name: str, kind: str, max_pixels: int) -> np.ndarray:
    try:
        if kind == "npy":
            handle = io.BytesIO(data)
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(handle)  # the header only: the size is checked unread
            if dtype.hasobject:
                raise DataError(f"{name}: object arrays are not images")
            _check_size(shape, name, max_pixels)
            array = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                keys = list(archive.files)
                key = "image" if "image" in keys else keys[0] if len(keys) == 1 else None
                if key is None:
                    raise DataError(
                        f"{name}: the NPZ holds {len(keys)} arrays {keys[:5]}; store one, or name "
                        "it 'image'"
                    )
                array = archive[key]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise DataError(f"{name}: cannot read array ({err})") from err
    _check_size(array.shape, name, max_pixels)
    numeric = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    if not (numeric or array.dtype == bool):  # bool stays bool: it scales to 0 and 1
        raise DataError(f"{name}: array of {array.dtype} is not an image")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise DataError(f"{name}: the array holds NaN or infinite values")
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    return _checked(array, name)


def _check_size(shape: tuple[int, ...], name: str, max_pixels: int) -> None:
    pixels = int(np.prod(shape[:2], dtype=np.int64)) if len(shape) >= 2 else 0
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"{name}: {'x'.join(map(str, shape))} is over the limit of {max_pixels} pixels"
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


def _pil_spacing(img: Image.Image, stream: BinaryIO) -> tuple[float, float] | None:
    """Pixel spacing when a PNG or TIFF states a metric resolution, else None.

    TIFFs: OME-TIFF `PhysicalSizeX/Y`, then ImageJ/Fiji's `unit=` with X/YResolution, then a
    resolution in centimetres. Resolutions given in inches (TIFF), and the 72 or 96 dpi that most
    software writes into PNGs by default, describe a screen rather than the specimen and are ignored.
    """
    if img.format == "PNG":
        phys = png_phys(stream)
        if phys is None:
            return None
        per_metre_x, per_metre_y, unit = phys
        if (
            unit != 1
            or per_metre_x <= 0
            or per_metre_y <= 0
            or {per_metre_x, per_metre_y} <= SCREEN_PPM
        ):
            return None
        return 1000.0 / per_metre_y, 1000.0 / per_metre_x
    if img.format == "TIFF":
        tags = img.tag_v2
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
        if unit != 3 or not x_res or not y_res:
            return None
        return 10.0 / float(y_res), 10.0 / float(x_res)
    return None


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


def _imagej_spacing(description: str, tags) -> tuple[float, float] | None:
    """ImageJ/Fiji TIFFs: `unit=` in the ImageDescription, X/YResolution in pixels per that unit."""
    if not description.startswith("ImageJ="):
        return None
    found = re.search(r"^unit=(.+)$", description, re.MULTILINE)
    scale = _unit_mm(found.group(1)) if found else None
    x_res, y_res = tags.get(282), tags.get(283)
    if scale is None or not x_res or not y_res or float(x_res) <= 0 or float(y_res) <= 0:
        return None
    return scale / float(y_res), scale / float(x_res)


def _ome_spacing(description: str) -> tuple[float, float] | None:
    """OME-TIFF: PhysicalSizeX/Y of the first `Pixels` element (unit attribute, default µm)."""
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", description)
    if pixels is None:
        return None
    sizes = []
    for axis in ("Y", "X"):
        size = re.search(rf'\bPhysicalSize{axis}="([^"]+)"', pixels.group(0))
        unit = re.search(rf'\bPhysicalSize{axis}Unit="([^"]+)"', pixels.group(0))
        scale = _unit_mm(unit.group(1)) if unit else 1e-3
        try:
            value = float(size.group(1)) if size else 0.0
        except ValueError:
            return None
        if scale is None or not value > 0:
            return None
        sizes.append(value * scale)
    return sizes[0], sizes[1]


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
    DICOM Pixel Spacing read from the header only), else None."""
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        return _dicom_spacing(path)
    if path.suffix.lower() not in (".png", ".tif", ".tiff"):
        return None
    try:
        # Headers only: PIL reads the TIFF tags lazily and png_phys skips chunk bodies, so checking
        # a folder's spacing does not read its pixels.
        with open(path, "rb") as handle, Image.open(handle) as img:
            return _pil_spacing(img, handle)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None


def _dicom_spacing(path: Path) -> tuple[float, float] | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # unreadable here: decoding reports it with its reason
        return None
    return dicom_pixel_spacing(ds)


def dicom_pixel_spacing(ds) -> tuple[float, float] | None:
    """(row, column) mm of a DICOM data set: Pixel Spacing, else Imager Pixel Spacing (projection
    radiographs); None when neither holds two positive numbers."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return float(value[0]), float(value[1])
    return None


def decode_dicom(
    data: bytes, name: str = "upload", max_pixels: int = MAX_PIXELS, modality: bool = False
) -> Decoded:
    """Decode a single-frame DICOM image into float32 values in [0, 1] (or, with `modality`, in
    modality units such as Hounsfield units, for CT windowing).

    The stored values go through the modality transform (rescale slope and intercept: CT in
    Hounsfield units), then the file's own display window (Window Center / Width) when it has one,
    else the image's min-max, maps them to [0, 1]; MONOCHROME1 (bright = low values) is inverted so
    that high values are bright as in every other format. Colour (RGB, YBR) images are converted to
    RGB. The spacing is Pixel Spacing (or Imager Pixel Spacing for projection radiographs).

    Raises:
        DataError: naming the file for truncated data, a multi-frame file, missing pixel data, or a
            transfer syntax that no installed decoder handles (naming it).
    """
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
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut
    except ImportError as err:  # pragma: no cover - pydicom is a dependency
        raise DataError(f"{name}: reading DICOM needs pydicom ({err})") from err
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (
        InvalidDicomError,
        OSError,
        ValueError,
        EOFError,
        KeyError,
        TypeError,
        AttributeError,
    ) as err:
        raise DataError(f"{name}: not a readable DICOM file ({type(err).__name__}: {err})") from err
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise DataError(f"{name}: DICOM file without pixel data (no image to read)")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows < 1 or columns < 1:
        raise DataError(f"{name}: DICOM Rows/Columns missing or zero ({rows}x{columns})")
    if rows * columns > max_pixels or rows * columns * frames > 4 * max_pixels:
        raise ImageTooLargeError(
            f"{name}: DICOM of {frames} x {rows}x{columns} pixels is over the limit of {max_pixels}"
        )
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types for missing decoders and broken data
        what = f"transfer syntax {syntax.name} ({syntax})" if syntax is not None else "pixel data"
        raise DataError(f"{name}: cannot decode DICOM {what}: {err}".splitlines()[0]) from err
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    colour = samples == 3
    if frames == 1:
        pixels = pixels[None]
    if colour:  # pydicom returns YBR colour already converted to RGB; the bit depth is kept
        volume = pixels
    else:
        volume = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
        if photometric == "MONOCHROME1":
            volume = volume.max() + volume.min() - volume
    return volume, dicom_pixel_spacing(ds), ds


def _display_range(image: np.ndarray, ds) -> np.ndarray:
    """Modality values -> [0, 1] through the file's first display window, else its min-max."""
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
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
