"""Reading one 2D image from a file or from uploaded bytes: PNG, JPEG, TIFF (8/16 bit, grey or
colour), NPY/NPZ and DICOM, recognised by their magic bytes (the extension only speaks for content
without a signature medtrain knows, such as a DICOM file without its preamble).

The bytes may be hostile (the HTTP service decodes uploads), hence:
- every failure is a `DataError` naming the source, and nothing else (MemoryError, zlib.error,
  struct.error ...) leaves `decode`: `UnsupportedFormatError` when the bytes are no format medtrain
  reads (a GIF, BMP or EPS file stays unread whatever its name), `ImageTooLargeError` when the
  declared size is over the limits of `check_size`, a plain `DataError` when a known format fails
  to decode;
- sizes are checked from the header (NPY header, NPZ member, Pillow header, DICOM tags) before
  anything is decompressed or decoded; a deflated DICOM is inflated in bounded steps;
- Pillow only ever opens the one format that the magic bytes name;
- pixel values must be finite and within float32's range (after the DICOM rescale), and a pixel
  spacing that a file states must lie within `SPACING_RANGE_MM`.

DICOM is read by `medtrain.data.dicom_files`; the checks shared by every format live in
`medtrain.data.decoding` (both re-exported here).
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from medtrain.data.decoding import (  # noqa: F401  (re-exported: readers is where they are looked for)
    BYTES_PER_VALUE,
    MAX_PIXELS,
    SPACING_RANGE_MM,
    VALUES_PER_PIXEL,
    Decoded,
    ImageTooLargeError,
    UnsupportedFormatError,
    check_finite,
    check_size,
    checked_image,
    checked_spacing,
    checked_volume,
    reading,
    spacing_problem,
)
from medtrain.data.dicom_files import (  # noqa: F401
    decode_dicom,
    dicom_file_spacing,
    dicom_pixel_spacing,
)
from medtrain.errors import DataError
from medtrain.io import SCREEN_PPM

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
READABLE_EXTENSIONS = (*IMAGE_EXTENSIONS, ".npy", ".npz", ".dcm", ".dicom")
# The NPY magic, version and header length, and the largest header numpy parses (its default).
NPY_HEADER_BYTES = 12 + 10_000
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
# An uncompressed NIfTI-1 or NIfTI-2 file's first bytes: its header size, either byte order.
NIFTI_HEADERS = tuple(size.to_bytes(4, order) for size in (348, 540) for order in ("little", "big"))
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


def a_file(kind: str) -> str:
    """ "a GIF file", "an EPS file": a format named with its article."""
    return f"{'an' if kind[0] in 'AEIO' else 'a'} {kind} file"


def is_array_file(data: bytes) -> bool:
    """Whether `data` starts as an NPY or NPZ file (by `SIGNATURES`)."""
    return data.startswith(tuple(m for m, kind in SIGNATURES.items() if kind in ("npy", "npz")))


# The formats `signature` names that medtrain reads (the others are OTHER_SIGNATURES' names).
READ_BY_SIGNATURE = frozenset((*SIGNATURES.values(), "dicom", "tiff"))


def signature(data: bytes) -> str | None:
    """The format `data`'s first bytes name, in `sniff`'s order: one medtrain reads (png, jpeg,
    npy, npz, dicom, tiff; `READ_BY_SIGNATURE`), another's name from `OTHER_SIGNATURES` (GIF,
    BMP ...), or None."""
    for magic, kind in SIGNATURES.items():
        if data.startswith(magic):
            return kind
    if data[128:132] == b"DICM":
        return "dicom"
    if data[:4] in TIFF_SIGNATURES:
        return "tiff"
    return next(
        (other for magic, other in OTHER_SIGNATURES.items() if data.startswith(magic)), None
    )


def cut_in_signature(data: bytes, kind: str) -> bool:
    """Whether `data` is a damaged file of `kind`: it ends inside the format's magic bytes (cut
    short), or starts with their first four and loses them after (`\x89PNG` and then other
    bytes)."""
    magics = [m for m, k in SIGNATURES.items() if k == kind]
    magics += list(TIFF_SIGNATURES) if kind == "tiff" else []
    return any(
        (len(data) < len(magic) and magic.startswith(data)) or data[:4] == magic[:4]
        for magic in magics
    )


def file_signature(path: str | Path) -> str | None:
    """`signature` of a file's first bytes (DICOM's `DICM` lies at bytes 128..131); None for a
    file that names no format by them, or cannot be opened."""
    try:
        with open(path, "rb") as handle:
            return signature(handle.read(132))
    except OSError:
        return None


def sniff(data: bytes, name: str = "") -> str:
    """The format of `data`: png, jpeg, tiff, npy, npz or dicom.

    By magic bytes: PNG, JPEG, NPY and NPZ at offset 0, then DICOM's `DICM` at offset 128, then
    TIFF. A DICOM preamble is 128 arbitrary bytes: it may look like a TIFF header (read as DICOM),
    while a file that starts as a PNG or JPEG is one even if its bytes 128..131 read `DICM`.
    Content without a known signature is a DICOM file without its preamble when its name says
    DICOM (it then fails to decode if it is not one); PNG, JPEG, TIFF, NPY and NPZ files always
    start with their signature, so one named so without it is another format, whatever its name.

    Raises:
        UnsupportedFormatError: the content is another format (GIF, BMP, EPS ...), or neither the
            content nor the extension names a readable format.
    """
    kind = signature(data)
    if kind in READ_BY_SIGNATURE:
        return kind
    source = name or "upload"
    if name.lower().endswith((".nii", ".nii.gz")) or data[:4] in NIFTI_HEADERS:
        raise UnsupportedFormatError(
            f"{source}: a NIfTI volume, not a 2D image; here medtrain reads {FORMATS} (volumes are "
            "read by runs on volumes: a 3D network, or one trained on their slices)"
        )
    if kind is not None:  # another format's (OTHER_SIGNATURES)
        raise UnsupportedFormatError(f"{source}: {a_file(kind)}; medtrain reads {FORMATS}")
    suffix = Path(name).suffix.lower()
    named = FORMAT_OF_SUFFIX.get(suffix)
    if named == "dicom" or (named is not None and cut_in_signature(data, named)):
        return named  # decoded as such: a broken file of its format, not another format
    head = data[:8].hex(" ") if data else "nothing"
    named = ", whatever its name says" if suffix in FORMAT_OF_SUFFIX else ""
    raise UnsupportedFormatError(f"{source}: not a {FORMATS} file{named} (it starts with {head})")


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS, modality: bool = False) -> Decoded:
    """Read an image file (see `decode`), naming the file in every error."""
    return decode(read_file(path), str(path), max_pixels, modality)


def read_file(path: str | Path) -> bytes:
    """A file's bytes, naming it when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror or err})") from err


def read_image_file(path: str | Path, modality: bool = False) -> np.ndarray:
    """Read an image file into an array keeping its bit depth (uint8 or uint16, grey or colour);
    `modality`: DICOM in modality units (e.g. Hounsfield units), for CT windowing."""
    return read_image(path, modality=modality).array


def decode(
    data: bytes,
    name: str = "upload",
    max_pixels: int = MAX_PIXELS,
    modality: bool = False,
    volume: bool = False,
) -> Decoded:
    """Decode one 2D image from bytes.

    PNG/JPEG/TIFF keep their bit depth (palette images become RGB, alpha is dropped; a TIFF of
    several pages is refused, as is an animated PNG); NPY/NPZ arrays must be 2D, or
    H x W x C with 1, 3 or 4 channels; an NPZ holds one array (or one named `image`). DICOM: see
    `decode_dicom`. Floating-point pixels must be finite and within float32's range; finite values
    up to 3.4e38 pass (normalising them without overflow is the preprocessing's task).

    Args:
        data: the file's bytes.
        name: the file name (or upload name) used in messages and as an extension hint.
        max_pixels: refuse images that declare more than this, before decoding them (see
            `check_size` for the values and bytes allowed besides).
        modality: keep DICOM values in modality units (CT: Hounsfield units) instead of mapping
            them to [0, 1] through the file's display window; for `dataset.window`.
        volume: an NPY/NPZ holds a volume (D x H x W, format "volume", no voxel size), for a run
            whose network reads volumes; other formats are refused.

    Raises:
        DataError: naming `name`; `UnsupportedFormatError` and `ImageTooLargeError` among them.
    """
    if not data:
        raise DataError(f"{name}: the file is empty")
    kind = sniff(data, name)
    if volume and kind not in ("npy", "npz"):
        raise UnsupportedFormatError(f"{name}: a {kind.upper()} file; a volume array is NPY or NPZ")
    if kind == "dicom":
        return decode_dicom(data, name, max_pixels, modality)
    checked = checked_volume if volume else _image_of
    with reading(name, "array" if kind in ("npy", "npz") else "image"):
        spacing = None
        if kind == "npy":
            array = checked(_decode_npy(data, name, max_pixels), name)
        elif kind == "npz":
            array = checked(_decode_npz(data, name, max_pixels), name)
        else:
            array, spacing = _decode_pil(data, name, kind, max_pixels)
        check_finite(array, name)
        return Decoded(array, spacing, "volume" if volume else kind)


# -- PNG, JPEG, TIFF -----------------------------------------------------------------------------
EXIF_ORIENTATION = 0x0112  # 1: as stored; 2-8: mirrored and/or turned (5-8 swap rows and columns)
TURNED = (5, 6, 7, 8)


def pil_orientation(img: Image.Image) -> int:
    """A Pillow image's Orientation tag (1-8; 1 without one, or an invalid one), read without
    decoding pixels where the header holds it: a TIFF's tags, a JPEG's EXIF, a PNG's eXIf chunk
    before its pixels."""
    try:
        if img.format == "TIFF":
            value = img.tag_v2.get(EXIF_ORIENTATION, 1)
        elif img.format == "PNG":  # its getexif() would decode the pixels to look further
            exif = Image.Exif()
            if img.info.get("exif"):
                exif.load(img.info["exif"])
            value = exif.get(EXIF_ORIENTATION, 1)
        else:
            value = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a broken tag: read as stored
        return 1
    return int(value) if value in range(1, 9) else 1


def _decode_pil(
    data: bytes, name: str, kind: str, max_pixels: int
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """A PNG, JPEG or TIFF of one page read by Pillow, allowed to try that format only; its
    rows x columns x bands are checked from the header before any pixel is decoded."""
    try:
        with Image.open(io.BytesIO(data), formats=[PIL_FORMATS[kind]]) as img:
            width, height = img.size
            bands = len(img.getbands())
            check_size((height, width, bands), name, max_pixels, axes="rows x columns x bands")
            if getattr(img, "is_animated", False):  # reading one page would be a guess
                raise DataError(
                    f"{name}: the {kind.upper()} holds several pages (a stack or series); "
                    "send one 2D image"
                )
            spacing = _pil_spacing(img, io.BytesIO(data), name)
            orientation = pil_orientation(img)  # before load: Pillow turns a TIFF on load
            img.load()
            if orientation == 1 and kind == "png":  # an eXIf chunk after the pixels
                orientation = pil_orientation(img)
            # A camera's or scanner's Orientation tag: the image as every viewer (and the
            # annotation tool a mask was drawn in) shows it, not as its pixels are stored.
            if orientation != 1:
                img = ImageOps.exif_transpose(img)  # nothing left to do where Pillow turned it
                if orientation in TURNED and spacing is not None:  # rows and columns swapped
                    spacing = (spacing[1], spacing[0])
            if img.mode in ("P", "LA", "PA", "CMYK", "YCbCr"):
                img = img.convert("RGBA" if "A" in img.mode or img.mode == "P" else "RGB")
            array = np.array(img)
    except Image.DecompressionBombError as err:  # Pillow's own limit, met while opening the header
        raise ImageTooLargeError(
            f"{name}: the declared size is over the limit of {max_pixels:,} pixels "
            f"(and over Pillow's own: {err})"
        ) from err
    if array.dtype in (np.int32, np.uint32):  # PIL's mode "I" for 16-bit PNG/TIFF
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise DataError(f"{name}: 32-bit integer pixels outside 0..65535 are not supported")
        array = array.astype(np.uint16)
    if array.dtype.byteorder == ">":  # big-endian 16-bit TIFF: native order, so uint16 checks hold
        array = array.astype(array.dtype.newbyteorder("="))
    return _image_of(array, name), spacing


def _image_of(array: np.ndarray, name: str) -> np.ndarray:
    """A decoded array as a 2D image: alpha dropped, then checked by `checked_image`."""
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    return checked_image(array, name)


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
    check_size(shape, name, max_pixels, dtype.itemsize)
    return stream.tell(), math.prod(shape) * dtype.itemsize


def _decode_npy(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """An NPY array, its header checked before the data are read (its shape: by the caller)."""
    offset, size = _npy_layout(data[:NPY_HEADER_BYTES], name, max_pixels)
    if len(data) - offset < size:
        raise DataError(
            f"{name}: truncated NPY: its header declares {size:,} bytes of data, the file holds "
            f"{len(data) - offset:,}"
        )
    return np.load(io.BytesIO(data), allow_pickle=False)


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
            return np.lib.format.read_array(stream, allow_pickle=False)


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


# -- pixel spacing stated by a file ---------------------------------------------------------------
def _pil_spacing(img: Image.Image, stream: BinaryIO, name: str) -> tuple[float, float] | None:
    """Pixel spacing when a PNG or TIFF states a metric resolution, else None.

    TIFFs: OME-TIFF `PhysicalSizeX/Y`, then ImageJ/Fiji's `unit=` with X/YResolution, then a
    resolution in centimetres. Resolutions given in inches (TIFF), and the 72, 96 or 100 dpi that most
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
                return dicom_file_spacing(path)
            if kind not in ("png", "tiff"):
                return None
            with Image.open(handle, formats=[PIL_FORMATS[kind]]) as img:
                spacing = _pil_spacing(img, handle, str(path))
                if spacing is not None and pil_orientation(img) in TURNED:
                    spacing = (spacing[1], spacing[0])  # as `_decode_pil` turns the image
                return spacing
    except (UnsupportedFormatError, OSError, ValueError, SyntaxError):
        return None  # UnidentifiedImageError is an OSError; a refused spacing is raised
