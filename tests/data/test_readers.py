"""Image readers: formats recognised by content, bit depths kept, DICOM rescaled and inverted, and a
clear error naming the file for everything else."""

from __future__ import annotations

import contextlib
import gc
import io
import resource
import struct
import time
import tracemalloc
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from medtrain.data.readers import (
    ImageTooLargeError,
    UnsupportedFormatError,
    decode,
    file_spacing,
    read_image,
    read_image_file,
    sniff,
)
from medtrain.errors import DataError
from tests.hostile_files import (
    DICM_PNG_PIXELS,
    big_png,
    bmp_named_jpg,
    deflate_dicom,
    deflated_dicom_bomb,
    dicom_rescale_slope,
    dicom_with_spacing,
    encode,
    eps_named_png,
    gif_named_png,
    make_dicom,  # also imported from here by the server tests
    nan_tiff,
    npy_header,
    npy_huge_header,
    npy_of,
    npz_bomb,
    png_chunk,
    png_declaring,
    png_with_dicm_at_128,
)

SHARED_DICOM = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom"


def png_bytes(array: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save)
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
    # MONOCHROME1 with a window: the window applies to the stored (modality) values, then the
    # picture is inverted (DICOM PS3.3 C.11.2 before C.11.6; pydicom's apply_voi_lut agrees).
    # Window [100, 300] on raw [[0, 100], [200, 400]]: [[0, 0], [0.5, 1]], inverted.
    cr = make_dicom(raw, photometric="MONOCHROME1", window=(200, 200))
    np.testing.assert_allclose(decode(cr, "cr_w.dcm").array, [[1, 1], [0.5, 0]], atol=1e-6)
    import pydicom
    from pydicom.pixels import apply_voi_lut

    ds = pydicom.dcmread(io.BytesIO(cr))
    voi = apply_voi_lut(ds.pixel_array.astype(np.float64), ds)  # windowed, not yet inverted
    expected = 1 - (voi - voi.min()) / (voi.max() - voi.min())
    # (the standard's linear function uses c - 0.5 and w - 1: within 1/w of medtrain's c and w)
    np.testing.assert_allclose(decode(cr, "cr_w.dcm").array, expected, atol=1 / 200)
    # In modality units (for CT windows) nothing is inverted: Hounsfield units stay as they are.
    hu = decode(make_dicom(raw, 2, -1024, photometric="MONOCHROME1"), "ct1.dcm", modality=True)
    np.testing.assert_allclose(hu.array, [[-1024, -824], [-624, -224]])


def test_decoding_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="empty.png: the file is empty"):
        decode(b"", "empty.png")
    with pytest.raises(UnsupportedFormatError, match="noise: not a PNG, JPEG, TIFF, DICOM"):
        decode(np.random.default_rng(0).bytes(300), "noise")
    # Named PNG without PNG's magic bytes: another format, whatever its name says (the service
    # answers 415); a PNG whose magic is damaged after its first bytes, or cut, is a broken PNG.
    with pytest.raises(UnsupportedFormatError, match="noise.png: not a PNG, .* whatever its name"):
        decode(np.random.default_rng(1).bytes(300), "noise.png")
    with pytest.raises(DataError, match="damaged.png: cannot read image"):
        decode(b"\x89PNG broken" + bytes(100), "damaged.png")
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
    with pytest.raises(
        DataError, match=r"nan.npy: pixel values are not finite \(NaN or infinite\)"
    ):
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


# -- hostile files: bombs, formats in disguise, non-finite pixels, absurd spacings ---------------
@dataclass
class Cost:
    """What decoding one file cost: the peak of Python and numpy allocations (tracemalloc), the
    growth of the process's peak resident size (ru_maxrss: it can only under-report, as an earlier
    test may have set the peak higher) and the wall time."""

    traced_mib: float = 0.0
    peak_rss_growth_mib: float = 0.0
    seconds: float = 0.0


@contextlib.contextmanager
def measured():
    """Measure the block's `Cost` (filled in when the block ends)."""
    cost = Cost()
    gc.collect()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    start = time.perf_counter()
    try:
        yield cost
    finally:
        cost.seconds = time.perf_counter() - start
        cost.traced_mib = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        cost.peak_rss_growth_mib = (rss_after - rss_before) / 1024


BOMBS = [
    # (id, file name, payload builder, error, words in the message)
    ("deflated-dicom-private-tag", "bomb.dcm", lambda: deflated_dicom_bomb("private"),
     ImageTooLargeError, "over 16 MiB before its image size"),
    ("deflated-dicom-pixels", "bomb.dcm", lambda: deflated_dicom_bomb("pixels"),
     ImageTooLargeError, "1x10240x15360x1 (frames x rows x columns x samples)"),
    ("deflated-dicom-padding", "bomb.dcm", lambda: deflated_dicom_bomb("padding"),
     ImageTooLargeError, "more than its declared image"),
    ("npz-member", "bomb.npz", npz_bomb, ImageTooLargeError, "16384x16384 is over the limit"),
    ("npz-lying-header", "bomb.npz", lambda: npz_bomb((64, 64)), DataError,
     "its NPY header declares 4,224"),
    ("npy-header-1x1x1e12", "huge.npy", npy_huge_header, ImageTooLargeError,
     "1x1x1000000000000 is over the limit"),
    ("png-declaring-100000x100000", "bomb.png", lambda: png_declaring(100_000, 100_000),
     ImageTooLargeError, "over the limit"),
    ("png-9000x9000", "big.png", lambda: big_png(9000), ImageTooLargeError,
     "9000x9000x1 (rows x columns x bands) is over the limit: 81,000,000 pixels"),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, build, error, words", [b[1:] for b in BOMBS], ids=[b[0] for b in BOMBS]
)
def test_bombs_are_refused_before_they_inflate(name, build, error, words):
    """Each bomb is refused from its header under 100 MiB and 1 s (unprotected, the deflated DICOMs
    cost +600 MiB and ~2 s, the NPZ +257 MiB, the NPY header a MemoryError)."""
    data = build()
    assert len(data) < 400 * 1024
    with measured() as cost, pytest.raises(error) as refused:
        decode(data, name)
    message = str(refused.value)
    assert message.startswith(f"{name}: ") and words in message
    assert cost.traced_mib < 100, cost
    assert cost.peak_rss_growth_mib < 100, cost
    assert cost.seconds < 1.0, cost


@pytest.mark.parametrize(
    "shape, dtype, too_large",
    [
        ((10, 10), "<u1", False),
        ((10, 10, 4), "<f8", False),  # 4 channels of float64: 32 bytes per pixel, the most
        ((10, 11), "<u1", True),
        ((2, 10, 10), "<u1", True),  # frames count as pixels
        ((10, 10, 5), "<u1", True),  # a trailing axis over 4 is no channel axis
        ((1, 1, 10**30), "<u1", True),  # no integer overflow
        ((10, 10, 3), "V40", False),  # not numeric: refused as no image, unread
    ],
)
def test_every_declared_dimension_counts_towards_the_limit(shape, dtype, too_large):
    """Spatial pixels (all axes but a trailing channel axis of at most 4) <= max_pixels, values <=
    4 x max_pixels, bytes <= 32 x max_pixels; the header alone decides."""
    with pytest.raises(ImageTooLargeError if too_large else DataError) as refused:
        decode(npy_header(shape, dtype), "h.npy", max_pixels=100)
    if not too_large:  # refused for its missing data or its dtype, never for its size
        assert not isinstance(refused.value, ImageTooLargeError)


def test_pillow_and_dicom_sizes_count_bands_and_frames():
    rgb = png_bytes(np.zeros((10, 10, 3), np.uint8))
    assert decode(rgb, "rgb.png", max_pixels=100).array.shape == (10, 10, 3)
    with pytest.raises(ImageTooLargeError, match=r"10x11x3 \(rows x columns x bands\)"):
        decode(png_bytes(np.zeros((10, 11, 3), np.uint8)), "rgb.png", max_pixels=100)
    with pytest.raises(ImageTooLargeError, match="1x10x11x1 .frames x rows x columns x samples"):
        decode(make_dicom(np.zeros((10, 11), np.uint16)), "ct.dcm", max_pixels=100)


def test_valid_deflated_dicom_decodes_as_its_explicit_original():
    raw = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    plain = make_dicom(raw, slope=2, intercept=-1024)
    deflated = deflate_dicom(plain)
    want = decode(plain, "plain.dcm", modality=True)
    for data in (deflated, deflated[132:]):  # with and without the preamble
        got = decode(data, "deflated.dcm", modality=True)
        np.testing.assert_array_equal(got.array, want.array)
        assert got.spacing == want.spacing == (0.7, 0.8)
    with pytest.raises(DataError, match="cut.dcm: truncated deflated DICOM data"):
        decode(deflated[:-100], "cut.dcm")
    broken = deflated[:-500] + bytes(range(256)) * 2
    with pytest.raises(DataError, match="broken.dcm: "):
        decode(broken, "broken.dcm")


def test_a_dicom_without_its_decoder_names_every_package_that_would_decode_it():
    """pydicom lists the decoders a compressed transfer syntax lacks one per line; the error keeps
    them all (the first line alone named none)."""
    pydicom_data = pytest.importorskip("pydicom.data")
    try:
        path = pydicom_data.get_testdata_file("JPEGLSNearLossless_08.dcm", download=False)
    except TypeError:  # an older pydicom without `download`
        path = pydicom_data.get_testdata_file("JPEGLSNearLossless_08.dcm")
    if path is None:
        pytest.skip("pydicom's JPEG-LS test file is not installed")
    try:
        import pydicom

        pydicom.dcmread(path).pixel_array  # noqa: B018 - decodes where a plugin is installed
        pytest.skip("a JPEG-LS decoder is installed")
    except RuntimeError:
        pass
    with pytest.raises(DataError) as err:
        decode(Path(path).read_bytes(), "ls.dcm")
    said = str(err.value)
    assert said.startswith("ls.dcm: cannot decode DICOM transfer syntax JPEG-LS Lossy")
    assert "\n" not in said and "pylibjpeg - requires pylibjpeg>=2.0" in said
    assert said.endswith(
        "(install the packages one of these names into medtrain's environment, e.g. pip install "
        "pylibjpeg pylibjpeg-libjpeg; gdcm's package is python-gdcm)"
    )


@pytest.mark.parametrize(
    "build, name, words",
    [
        (gif_named_png, "a.png", "a GIF file"),
        (bmp_named_jpg, "a.jpg", "a BMP file"),
        (eps_named_png, "a.png", "a PostScript (EPS) file"),
    ],
)
def test_other_formats_are_refused_unopened_whatever_their_name(monkeypatch, build, name, words):
    def no_pillow(*args, **kwargs):
        raise AssertionError("Pillow was asked to open the file")

    monkeypatch.setattr(Image, "open", no_pillow)
    with pytest.raises(UnsupportedFormatError) as refused:
        decode(build(), name)
    assert str(refused.value).startswith(f"{name}: {words}; medtrain reads PNG, JPEG, TIFF")


def test_a_nifti_volume_given_as_a_2d_image_is_named(tmp_path):
    """It was "a gzip file" (or "not a PNG ... file, it starts with 5c 01 00 00")."""
    import nibabel as nib

    volume = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    for name in ("v.nii.gz", "v.nii"):
        nib.save(volume, tmp_path / name)
    said = (
        ": a NIfTI volume, not a 2D image; here medtrain reads PNG, JPEG, TIFF, DICOM, NPY or NPZ "
        "(volumes are read by runs on volumes: a 3D network, or one trained on their slices)"
    )
    for name, given in (("v.nii.gz", "v.nii.gz"), ("v.nii", "v.nii"), ("v.nii", "upload.bin")):
        with pytest.raises(UnsupportedFormatError) as refused:
            decode((tmp_path / name).read_bytes(), given)
        assert str(refused.value) == given + said


def test_pillow_tries_only_the_format_the_magic_bytes_name(monkeypatch, tmp_path):
    opened = []
    real_open = Image.open

    def spy(fp, mode="r", formats=None):
        opened.append(formats)
        return real_open(fp, mode, formats)

    monkeypatch.setattr(Image, "open", spy)
    grey = np.zeros((8, 8), np.uint8)
    for image_format, name in (("PNG", "a.png"), ("JPEG", "b.png"), ("TIFF", "c.jpg")):
        decode(png_bytes(grey) if image_format == "PNG" else encode(grey, image_format), name)
    assert opened == [["PNG"], ["JPEG"], ["TIFF"]]
    # Noise under an image's name: no plugin is tried; it is no TIFF, whatever its name says.
    tried = len(opened)
    with pytest.raises(UnsupportedFormatError, match="noise.tif: not a PNG"):
        decode(np.random.default_rng(3).bytes(500), "noise.tif")
    assert len(opened) == tried


def test_dicm_at_offset_128_makes_dicom_only_without_an_image_signature():
    png = png_with_dicm_at_128()
    assert sniff(png, "x.dcm") == "png"
    np.testing.assert_array_equal(decode(png, "x.dcm").array, DICM_PNG_PIXELS)
    # A DICOM preamble is 128 arbitrary bytes; one that looks like a TIFF header is still DICOM.
    dicom = make_dicom(np.full((4, 4), 9, np.uint16))
    tiff_looking = b"II*\x00" + dicom[4:]
    assert sniff(tiff_looking) == "dicom"
    assert decode(tiff_looking, "t.dcm", modality=True).array.max() == 9


def test_multi_page_tiff_and_animated_png_are_refused_not_guessed():
    pages = [Image.fromarray(np.full((8, 8), k, np.uint8)) for k in (1, 2, 3)]
    for image_format, name in (("TIFF", "p.tif"), ("PNG", "p.png")):
        buffer = io.BytesIO()
        pages[0].save(buffer, format=image_format, save_all=True, append_images=pages[1:])
        with pytest.raises(DataError, match=rf"{name}: the {image_format} holds several pages"):
            decode(buffer.getvalue(), name)
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF")  # one page: read
    np.testing.assert_array_equal(decode(buffer.getvalue(), "q.tif").array, np.full((8, 8), 1))


@pytest.mark.parametrize(
    "data, name, words",
    [
        (nan_tiff(), "nan.tif", "pixel values are not finite (NaN or infinite): 256 of 256"),
        (npy_of(np.inf), "inf.npy", "pixel values are not finite (NaN or infinite)"),
        (
            npy_of(-1e300, "<f8"),
            "big.npy",
            "pixel values overflow float32: magnitudes up to 1e+300",
        ),
        (dicom_rescale_slope("NaN"), "s.dcm", "DICOM RescaleSlope is NaN, not a finite number"),
        (dicom_rescale_slope("-inf"), "s.dcm", "DICOM RescaleSlope is -inf, not a finite number"),
        (
            dicom_rescale_slope(1e308),
            "s.dcm",
            "pixel values are not finite (NaN or infinite) after the rescale (slope 1e+308",
        ),
        (
            make_dicom(np.ones((4, 4), np.uint16), intercept=1e300),
            "i.dcm",
            "pixel values overflow float32 after the rescale (slope 1.0, intercept 1e+300)",
        ),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_non_finite_pixels_are_refused_naming_the_file(data, name, words):
    with pytest.raises(DataError) as refused:
        decode(data, name)
    assert str(refused.value).startswith(f"{name}: {words}")


def test_finite_float32_extremes_pass_the_reader():
    """3e38 is a finite float32: the reader passes it (preprocessing must normalise it without
    overflow); 1e300 does not fit float32 and is refused above."""
    assert decode(npy_of(3e38), "big.npy").array.max() == np.float32(3e38)


def png_with_phys(per_metre: int) -> bytes:
    """A 4 x 4 PNG whose pHYs chunk states `per_metre` pixels per metre on both axes."""
    real = png_bytes(np.zeros((4, 4), np.uint8))
    phys = png_chunk(b"pHYs", struct.pack(">IIB", per_metre, per_metre, 1))
    return real[:33] + phys + real[33:]


def tiff_with(**save) -> bytes:
    return encode(np.zeros((4, 4), np.uint8), "TIFF", **save)


def ome(size_x: str) -> dict:
    xml = f'<OME><Image><Pixels PhysicalSizeX="{size_x}" PhysicalSizeY="0.5"/></Image></OME>'
    return {"tiffinfo": {270: xml}}


@pytest.mark.parametrize(
    "data, name, words",
    [
        (dicom_with_spacing(1e308), "a.dcm", "PixelSpacing states a pixel spacing of (1e+308"),
        (dicom_with_spacing("NaN"), "a.dcm", "PixelSpacing states a pixel spacing of (nan"),
        (dicom_with_spacing(0), "a.dcm", "PixelSpacing states a pixel spacing of (0.0"),
        (dicom_with_spacing(-1), "a.dcm", "PixelSpacing states a pixel spacing of (-1.0"),
        (png_with_phys(0), "a.png", "its pHYs chunk states a pixel spacing of (inf, inf)"),
        (
            tiff_with(resolution_unit=3, resolution=0.0001),
            "a.tif",
            "its X/YResolution tags (per cm) states a pixel spacing of (100000.0",
        ),
        (tiff_with(**ome("NaN")), "a.tif", "its OME-XML PhysicalSizeY/X states"),
        (tiff_with(**ome("-2")), "a.tif", "-0.002 is not a number from 1e-06 to 10000 mm"),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_absurd_spacings_in_a_header_are_refused_naming_file_and_value(tmp_path, data, name, words):
    with pytest.raises(DataError) as refused:
        decode(data, name)
    assert str(refused.value).startswith(f"{name}: ") and words in str(refused.value)
    (tmp_path / name).write_bytes(data)  # dataset folders read spacings with file_spacing
    with pytest.raises(DataError, match="states a pixel spacing"):
        file_spacing(tmp_path / name)


def test_microscopy_spacings_are_accepted():
    assert decode(tiff_with(**ome("0.1")), "m.tif").spacing == pytest.approx((5e-4, 1e-4))
    assert decode(dicom_with_spacing("1e-4"), "m.dcm").spacing == pytest.approx((1e-4, 1e-4))


@pytest.mark.parametrize(
    "error, shown",
    [
        (MemoryError(), "(MemoryError)"),
        (struct.error("unpack"), "(struct.error: unpack)"),
        (zlib.error("bad"), "(zlib.error: bad)"),
        (ValueError("no"), "(ValueError: no)"),
        (KeyError("k"), "(KeyError: 'k')"),
        (RecursionError(), "(RecursionError)"),
    ],
)
def test_no_decoder_exception_leaves_decode_but_as_a_data_error(monkeypatch, error, shown):
    files = (
        (npy_of(1.0), "a.npy", "array"),
        (png_bytes(np.zeros((4, 4), np.uint8)), "a.png", "image"),
    )

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(np, "load", fails)
    monkeypatch.setattr(Image.Image, "load", fails)
    for data, name, what in files:
        with pytest.raises(DataError) as refused:
            decode(data, name)
        assert str(refused.value) == f"{name}: cannot read {what} {shown}"


@pytest.mark.filterwarnings("ignore")
def test_corrupted_files_of_every_format_raise_data_errors_only():
    """Bytes flipped and files cut at random in a valid file of each format: a decoded image or a
    DataError naming the file, never another exception."""
    rng = np.random.default_rng(7)
    grey = rng.integers(0, 256, (24, 24), dtype=np.uint8)
    archive = io.BytesIO()
    np.savez_compressed(archive, image=grey)
    dicom = make_dicom(grey.astype(np.uint16))
    valid = {
        "a.png": png_bytes(grey),
        "a.jpg": encode(grey, "JPEG"),
        "a.tif": encode(grey.astype(np.float32), "TIFF"),
        "a.npy": npy_of(1.0),
        "a.npz": archive.getvalue(),
        "a.dcm": dicom,
        "d.dcm": deflate_dicom(dicom),
    }
    for name, data in valid.items():
        for trial in range(40):
            broken = bytearray(data)
            if trial % 4 == 0:
                broken = broken[: rng.integers(1, len(data))]
            else:
                for at in rng.integers(0, len(data), rng.integers(1, 9)):
                    broken[at] = rng.integers(0, 256)
            try:
                decode(bytes(broken), name)
            except DataError as err:
                assert str(err).startswith(f"{name}: ")


@pytest.mark.parametrize("ext", [".jpg", ".png", ".tif"])
def test_an_exif_orientation_is_applied_as_viewers_apply_it(tmp_path, ext):
    """A camera's Orientation tag (6: turned 90 degrees clockwise for display): the image is read
    as shown, so a mask drawn on the shown image lies on it; a TIFF's spacing turns with it."""
    stored = np.zeros((20, 30), np.uint8)
    stored[2:6, 3:9] = 255  # a bright block near the stored top-left corner
    path = tmp_path / f"turned{ext}"
    if ext != ".tif":
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(stored).save(path, exif=exif, **({"quality": 95} if ext == ".jpg" else {}))
    else:  # 10 px/cm across the stored columns (1 mm), 20 px/cm down its rows (0.5 mm)
        tags = {274: 6, 282: 10.0, 283: 20.0, 296: 3}
        Image.fromarray(stored).save(path, tiffinfo=tags, compression="tiff_deflate")
    read = read_image_file(path)
    assert read.shape == (30, 20)
    assert np.abs(read.astype(int) - np.rot90(stored, -1).astype(int)).mean() < 3
    if ext != ".tif":
        with Image.open(path) as img:
            shown = np.asarray(ImageOps.exif_transpose(img))
        assert np.array_equal(read, shown)
    else:  # the same spacing as the image is decoded (predict) and as its header says (training)
        assert file_spacing(path) == pytest.approx((1.0, 0.5))
        assert read_image(path).spacing == pytest.approx((1.0, 0.5))
