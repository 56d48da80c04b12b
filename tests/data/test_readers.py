"""Image readers: formats recognised by content, bit depths kept, DICOM rescaled and inverted, and a
clear error naming the file for everything else."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtrain.data.readers import (
    ImageTooLargeError,
    UnsupportedFormatError,
    decode,
    read_image,
    sniff,
)
from medtrain.errors import DataError

SHARED_DICOM = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom"


def png_bytes(array: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def make_dicom(
    pixels: np.ndarray,
    slope: float = 1.0,
    intercept: float = 0.0,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    spacing: tuple[float, float] | None = (0.7, 0.8),
) -> bytes:
    """A minimal single-frame DICOM file (explicit VR little endian) built with pydicom."""
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
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_png_tiff_jpeg_npy_npz_keep_bit_depth(tmp_path):
    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = decode(png_bytes(grey8), "a.png")
    assert out.format == "png" and out.array.dtype == np.uint8
    np.testing.assert_array_equal(out.array, grey8)
    np.testing.assert_array_equal(decode(png_bytes(grey16), "b.png").array, grey16)
    np.testing.assert_array_equal(decode(png_bytes(rgb), "c.png").array, rgb)
    rgba = np.dstack([rgb, np.full((20, 30), 7, np.uint8)])
    np.testing.assert_array_equal(decode(png_bytes(rgba), "d.png").array, rgb)  # alpha dropped
    Image.fromarray(grey16).save(tmp_path / "e.tif")
    got = read_image(tmp_path / "e.tif").array
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, grey16)
    Image.fromarray(rgb).save(tmp_path / "f.jpg", quality=95)
    assert read_image(tmp_path / "f.jpg").array.shape == (20, 30, 3)
    np.save(tmp_path / "g.npy", grey16.astype(np.float32))
    np.testing.assert_array_equal(read_image(tmp_path / "g.npy").array, grey16.astype(np.float32))
    np.savez(tmp_path / "h.npz", image=grey8, other=grey16)
    np.testing.assert_array_equal(read_image(tmp_path / "h.npz").array, grey8)
    # Content wins over the name: a PNG called .jpg is read as PNG.
    (tmp_path / "i.jpg").write_bytes(png_bytes(grey8))
    assert read_image(tmp_path / "i.jpg").format == "png"


def test_png_spacing_from_metric_phys_only():
    grey = np.zeros((4, 4), np.uint8)
    metric = png_bytes(grey, dpi=(254, 127))  # 10 and 5 px per mm -> 0.1 mm columns, 0.2 mm rows
    assert decode(metric, "m.png").spacing == pytest.approx((0.2, 0.1), rel=1e-3)
    assert decode(png_bytes(grey, dpi=(72, 72)), "s.png").spacing is None  # a screen default


def test_dicom_rescale_inversion_window_and_spacing():
    raw = np.array([[0, 100], [200, 400]], dtype=np.uint16)
    # Modality values 2 * raw - 1024 = [[-1024, -824], [-624, -224]]; no window: min-max.
    plain = decode(make_dicom(raw, slope=2, intercept=-1024), "ct.dcm")
    np.testing.assert_allclose(plain.array, [[0, 0.25], [0.5, 1.0]], atol=1e-6)
    assert plain.spacing == (0.7, 0.8) and plain.format == "dicom"
    # MONOCHROME1: low values are bright, so the image is inverted.
    inverted = decode(make_dicom(raw, photometric="MONOCHROME1"), "cr.dcm")
    np.testing.assert_allclose(inverted.array, [[1, 0.75], [0.5, 0]], atol=1e-6)
    # The file's own window: centre -624, width 400 -> [-824, -424] maps to [0, 1], clipped.
    windowed = decode(make_dicom(raw, 2, -1024, window=(-624, 400)), "w.dcm")
    np.testing.assert_allclose(windowed.array, [[0, 0], [0.5, 1]], atol=1e-6)


def test_decoding_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="empty.png: the file is empty"):
        decode(b"", "empty.png")
    with pytest.raises(UnsupportedFormatError, match="noise: not a PNG, JPEG, TIFF, DICOM"):
        decode(np.random.default_rng(0).bytes(300), "noise")
    with pytest.raises(DataError, match="noise.png: cannot read image"):
        decode(np.random.default_rng(1).bytes(300), "noise.png")
    png = png_bytes(np.zeros((64, 64), np.uint8))
    with pytest.raises(DataError, match="cut.png: cannot read image"):
        decode(png[: len(png) // 2], "cut.png")
    dicom = make_dicom(np.zeros((64, 64), np.uint16))
    with pytest.raises(DataError, match="cut.dcm: "):
        decode(dicom[: len(dicom) - 2000], "cut.dcm")
    with pytest.raises(DataError, match="missing.png: cannot read file"):
        read_image(tmp_path / "missing.png")
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((4, 4, 2), np.float32))
    with pytest.raises(DataError, match=r"two.npy: shape \(4, 4, 2\) is not a 2D image"):
        decode(buffer.getvalue(), "two.npy")
    buffer = io.BytesIO()
    np.save(buffer, np.array([[np.nan, 1.0]]))
    with pytest.raises(DataError, match="nan.npy: the array holds NaN"):
        decode(buffer.getvalue(), "nan.npy")
    assert sniff(b"\x93NUMPY") == "npy"


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring `width` x `height`, with a few bytes of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10))


def test_declared_sizes_over_the_limit_are_refused_unread():
    with pytest.raises(
        ImageTooLargeError,
        match="bomb.png: .*(100000x100000 pixels is over the limit|exceeds limit)",
    ):
        decode(huge_png(100_000, 100_000), "bomb.png")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (50_000, 50_000)}
    )
    with pytest.raises(ImageTooLargeError, match="50000x50000 is over the limit"):
        decode(header.getvalue(), "big.npy")  # the header alone: no data follow
    with pytest.raises(ImageTooLargeError):
        decode(png_bytes(np.zeros((100, 100), np.uint8)), "small.png", max_pixels=5000)


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_DICOM.is_dir(), reason="needs ../shared/data/dicom")
@pytest.mark.parametrize(
    "name, shape, spacing",
    [
        ("CT_small.dcm", (128, 128), (0.661468, 0.661468)),
        ("MR_small.dcm", (64, 64), (0.3125, 0.3125)),
        ("MR2_UNCR.dcm", (1024, 1024), (0.195313, 0.195313)),
        ("RG3_J2KR.dcm", (1760, 1760), None),  # JPEG 2000 lossless, no pixel spacing stated
        ("US1_UNCR.dcm", (480, 640, 3), None),
        ("explicit_VR-UN.dcm", (512, 512), (0.859375, 0.859375)),
        ("MR-SIEMENS-DICOM-WithOverlays.dcm", (484, 484), (0.72314049586777, 0.72314049586777)),
        ("siemens_mosaic_0.dcm", (256, 256), (1.796875, 1.796875)),
        ("siemens_mosaic_1.dcm", (256, 256), (1.796875, 1.796875)),
    ],
)
def test_shared_single_frame_dicom_files_load(name, shape, spacing):
    image = read_image(SHARED_DICOM / "single" / name)
    assert image.array.shape == shape
    assert image.spacing == (pytest.approx(spacing) if spacing else None)
    if image.array.dtype == np.uint8:  # colour ultrasound keeps its 8-bit RGB values
        assert image.array.max() > 100
    else:  # grey: modality values through the file's window (or min-max) into [0, 1]
        assert image.array.dtype == np.float32
        assert image.array.min() >= 0 and image.array.max() <= 1 and image.array.max() > 0.5


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_DICOM.is_dir(), reason="needs ../shared/data/dicom")
@pytest.mark.parametrize(
    "name, frames", [("eCT_Supplemental.dcm", 2), ("emri_small.dcm", 10), ("liver.dcm", 3)]
)
def test_shared_multi_frame_dicom_files_are_refused_by_name(name, frames):
    with pytest.raises(DataError, match=f"{name}: multi-frame DICOM with {frames} frames"):
        read_image(SHARED_DICOM / "single" / name)


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_DICOM.is_dir(), reason="needs ../shared/data/dicom")
def test_shared_series_slices_load_with_2mm_spacing():
    files = sorted((SHARED_DICOM / "series_t1_brain_17").glob("*.dcm"))
    assert len(files) == 17
    for path in files:
        image = read_image(path)
        assert image.array.shape == (128, 88) and image.spacing == (2.0, 2.0)
