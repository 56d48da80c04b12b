"""Hostile and edge-case image files as bytes, built in memory without allocating what they declare:
decompression bombs, formats in disguise, non-finite pixels and absurd spacings.

Plain functions (no fixtures) so that reader, prediction and server tests share them. The costly
builders are cached: each returns the same bytes every time.
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
import zipfile
import zlib

import numpy as np
from PIL import Image

MIB = 2**20
BOMB_MIB = 300  # what the DICOM bombs inflate to
NPZ_BOMB_SHAPE = (16384, 16384)  # uint8: 256 MiB of zeros in one NPZ member


def encode(array: np.ndarray, image_format: str, **save) -> bytes:
    """`array` saved by Pillow in `image_format` (PNG, JPEG, TIFF, GIF, BMP ...)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **save)
    return buffer.getvalue()


def npy_of(value: float, dtype: str = "<f4", shape: tuple[int, ...] = (16, 16)) -> bytes:
    """An NPY array of `shape` filled with `value` (e.g. 3e38 float32, NaN, 1e300 float64)."""
    buffer = io.BytesIO()
    np.save(buffer, np.full(shape, value, dtype=dtype))
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...], dtype: str = "<u1") -> bytes:
    """An NPY (version 1.0) header declaring `shape`, with no data behind it."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def npy_huge_header() -> bytes:
    """An NPY header declaring shape (1, 1, 10**12) uint8 (a terabyte), with no data."""
    return npy_header((1, 1, 10**12))


@functools.cache
def npz_bomb(shape: tuple[int, ...] = NPZ_BOMB_SHAPE) -> bytes:
    """An NPZ (~255 KiB) whose `image.npy` inflates to 256 MiB, its header declaring `shape`."""
    # The default shape is the true 16384 x 16384 uint8; a smaller one makes the header lie. The
    # member is written with zipfile's streaming writes, one MiB at a time.
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("image.npy", "w") as member,
    ):
        member.write(npy_header(shape))
        zeros = bytes(MIB)
        for _ in range(int(np.prod(NPZ_BOMB_SHAPE)) // MIB):
            member.write(zeros)
    return buffer.getvalue()


def gif_named_png() -> bytes:
    """A valid 16 x 16 GIF (to upload under a .png name)."""
    return encode(np.zeros((16, 16), np.uint8), "GIF")


def bmp_named_jpg() -> bytes:
    """A valid 16 x 16 BMP (to upload under a .jpg name)."""
    return encode(np.zeros((16, 16, 3), np.uint8), "BMP")


def eps_named_png() -> bytes:
    """A minimal EPS file (Pillow would hand it to Ghostscript), to upload under a .png name."""
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
        b"newpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n"
    )


def nan_tiff() -> bytes:
    """A 16 x 16 float32 TIFF whose pixels are all NaN."""
    return encode(np.full((16, 16), np.nan, np.float32), "TIFF")


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, body and CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


# The pixels of `png_with_dicm_at_128`: not constant, which predictions refuse.
DICM_PNG_PIXELS = (np.arange(256).reshape(16, 16) % 9).astype(np.uint8)


def png_with_dicm_at_128() -> bytes:
    """A valid 16 x 16 grey PNG (`DICM_PNG_PIXELS`) whose bytes 128..131 read `DICM`, as a
    DICOM file's do."""
    real = encode(DICM_PNG_PIXELS, "PNG")
    # signature (8) + IHDR chunk (25); the tEXt body starts after its length and type (8).
    offset = 128 - (33 + 8)
    body = b"Comment\0" + b"x" * (offset - 8) + b"DICM is not a DICOM file"
    data = real[:33] + png_chunk(b"tEXt", body) + real[33:]
    assert data[128:132] == b"DICM"
    return data


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG (a 4 x 4 image's data) whose IHDR declares `width` x `height`."""
    real = encode(np.zeros((4, 4), np.uint8), "PNG")
    ihdr = struct.pack(">II", width, height) + real[24:29]
    return real[:8] + png_chunk(b"IHDR", ihdr) + real[33:]


@functools.cache
def big_png(side: int) -> bytes:
    """A real `side` x `side` grey PNG of repeated ramps 0..255 (not constant: predictions refuse
    a constant image), encoded without the image."""
    compressor = zlib.compressobj(9)
    row = bytes([0]) + bytes(i % 256 for i in range(side))  # the filter byte (0: none), the row
    rows_per_chunk = max(1, MIB // len(row))
    idat = []
    for start in range(0, side, rows_per_chunk):
        idat.append(compressor.compress(row * min(rows_per_chunk, side - start)))
    idat.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"".join(idat))
        + png_chunk(b"IEND", b"")
    )


def make_dicom(
    pixels: np.ndarray,
    slope: float | str = 1.0,
    intercept: float | str = 0.0,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    spacing: tuple[float | str, float | str] | None = (0.7, 0.8),
) -> bytes:
    """A minimal single-frame 16-bit DICOM file (explicit VR little endian) built with pydicom."""
    ds = _dicom_dataset(pixels.shape, photometric)
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    with warnings.catch_warnings():  # invalid DS values (NaN, inf) are what some tests want
        warnings.simplefilter("ignore")
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        if spacing is not None:
            ds.PixelSpacing = list(spacing)
        ds.PixelData = pixels.tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _dicom_dataset(shape: tuple[int, int], photometric: str = "MONOCHROME2"):
    """A CT data set with file meta for an image of `shape` (16-bit, unsigned), no pixel data."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("test.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def deflate_dicom(data: bytes) -> bytes:
    """A valid DICOM file re-encoded by pydicom in the Deflated Explicit VR Little Endian syntax."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_rescale_slope(value: float | str) -> bytes:
    """A 16 x 16 DICOM of raw value 100 whose RescaleSlope is `value` (NaN, 'inf', 1e308 ...)."""
    return make_dicom(np.full((16, 16), 100, np.uint16), slope=value)


def dicom_with_spacing(value: float | str) -> bytes:
    """A 16 x 16 DICOM whose PixelSpacing is `value` on both axes (1e308, NaN, 0, -1 ...)."""
    return make_dicom(np.zeros((16, 16), np.uint16), spacing=(value, value))


@functools.cache
def _deflated_zeros_mib() -> bytes:
    """One MiB of zeros as raw deflate blocks (level 9) ending on a full flush: copies of it
    concatenate into a valid deflate stream, so a bomb costs one MiB of compression to build."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)


def _explicit_element(group: int, element: int, vr: bytes, length: int) -> bytes:
    """The header of an explicit VR little endian element with a 4-byte length (OB, OW ...)."""
    return struct.pack("<HH2sHI", group, element, vr, 0, length)


@functools.cache
def deflated_dicom_bomb(placement: str = "private") -> bytes:
    """A ~300 KiB deflated DICOM (Deflated Explicit VR Little Endian) inflating to 300 MiB."""
    # The zeros lie in a private OB element before Rows/Columns (`private`, a 64 x 64 image), in
    # the pixel data of a declared 10240 x 15360 image (`pixels`), or in trailing padding after a
    # 64 x 64 image's pixel data (`padding`).
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    size = BOMB_MIB * MIB
    shape = (10240, size // (2 * 10240)) if placement == "pixels" else (64, 64)
    ds = _dicom_dataset(shape)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    if placement != "pixels":
        ds.PixelData = bytes(2 * shape[0] * shape[1])
    if placement == "private":
        ds.add_new(0x00090010, "LO", "MEDTRAIN HOSTILE")  # the private creator of (0009,10xx)
        bomb, split = _explicit_element(0x0009, 0x1010, b"OB", size), 0x00091010
    elif placement == "pixels":
        bomb, split = _explicit_element(0x7FE0, 0x0010, b"OW", size), 0x7FE00010
    elif placement == "padding":
        bomb, split = _explicit_element(0xFFFC, 0xFFFC, b"OB", size), 0xFFFCFFFC
    else:
        raise ValueError(f"placement={placement!r}: private, pixels or padding")

    def encoded(keep) -> bytes:
        """The elements of `ds` whose tags `keep` accepts, explicit VR little endian."""
        part = Dataset()
        for element in ds:
            if keep(element.tag):
                part.add(element)
        stream = DicomBytesIO()
        stream.is_little_endian, stream.is_implicit_VR = True, False
        write_dataset(stream, part)
        return stream.getvalue()

    before, after = encoded(lambda tag: tag < split), encoded(lambda tag: tag > split)
    head = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    tail = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    meta = DicomBytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return b"".join(
        [
            b"\0" * 128 + b"DICM" + meta.getvalue(),
            head.compress(before + bomb) + head.flush(zlib.Z_FULL_FLUSH),
            _deflated_zeros_mib() * BOMB_MIB,
            tail.compress(after) + tail.flush(),
        ]
    )
