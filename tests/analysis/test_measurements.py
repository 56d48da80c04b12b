"""Object measurements against geometry and scikit-image regionprops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import label, perimeter_crofton, regionprops

from medtrain.analysis.measurements import (
    MEASUREMENT_FIELDS,
    TOTAL_FIELDS,
    check_spacing,
    crofton_perimeter,
    measure_mask,
    totals,
)
from medtrain.errors import ConfigError, DataError


def disc(radius: float, size: int = 101) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size] - size // 2
    return (rows**2 + cols**2 <= radius**2).astype(np.int64)


def blobs(seed: int = 0, shape=(96, 96)) -> np.ndarray:
    """Random smooth blobs of two classes, some touching the border, some with holes."""
    field = ndi.gaussian_filter(np.random.default_rng(seed).random(shape), 2.5)
    mask = np.zeros(shape, dtype=np.int64)
    mask[field > np.quantile(field, 0.6)] = 1
    mask[field > np.quantile(field, 0.9)] = 2
    return mask


@pytest.mark.parametrize("radius", [20, 40])
def test_disc_area_and_perimeter_match_the_circle(radius):
    (row,) = measure_mask(disc(radius, size=2 * radius + 11))
    assert row["area_px"] == pytest.approx(math.pi * radius**2, rel=0.01)
    assert row["perimeter_px"] == pytest.approx(2 * math.pi * radius, rel=0.02)
    assert row["equivalent_diameter_px"] == pytest.approx(2 * radius, rel=0.01)
    assert row["major_axis_px"] == pytest.approx(row["minor_axis_px"])
    assert row["major_axis_px"] == pytest.approx(2 * radius, rel=0.02)


@pytest.mark.parametrize("radius, bias", [(5, 0.08), (10, 0.04)])
def test_small_disc_perimeter_bias_is_as_documented(radius, bias):
    # Nuclei are often this small: the Crofton estimate overshoots by the documented few percent.
    (row,) = measure_mask(disc(radius, size=2 * radius + 11))
    relative = row["perimeter_px"] / (2 * math.pi * radius) - 1
    assert relative == pytest.approx(bias, abs=0.01)
    assert row["area_px"] == pytest.approx(math.pi * radius**2, rel=0.05)


def test_columns_and_defaults_without_spacing():
    (row,) = measure_mask(disc(5, size=21), image_id="case 1")
    assert list(row) == MEASUREMENT_FIELDS
    assert (row["id"], row["source"], row["class"], row["object"]) == (
        "case 1",
        "pred",
        "class_1",
        1,
    )
    assert (row["unit"], row["spacing_row"], row["spacing_col"], row["mean_intensity"]) == (
        "px",
        1.0,
        1.0,
        "",
    )
    for name in ("area", "perimeter", "equivalent_diameter", "major_axis", "minor_axis"):
        assert row[f"{name}_mm" if name != "area" else "area_mm2"] == pytest.approx(
            row[f"{name}_px"]
        )


def test_separate_squares_are_separate_objects():
    mask = np.zeros((30, 30), dtype=np.int64)
    mask[2:8, 2:8] = 1
    mask[15:25, 10:20] = 1
    rows = measure_mask(mask)
    assert [(r["object"], r["area_px"]) for r in rows] == [(1, 36), (2, 100)]
    assert (rows[1]["bbox_min_row"], rows[1]["bbox_min_col"]) == (15, 10)
    assert (rows[1]["bbox_max_row"], rows[1]["bbox_max_col"]) == (
        25,
        20,
    )  # exclusive, as regionprops
    assert (rows[1]["centroid_row"], rows[1]["centroid_col"]) == (19.5, 14.5)


def test_connectivity_decides_whether_diagonal_pixels_join():
    mask = np.zeros((6, 6), dtype=np.int64)
    mask[2, 2] = mask[3, 3] = 1
    assert len(measure_mask(mask, connectivity=2)) == 1
    assert len(measure_mask(mask, connectivity=1)) == 2


def test_isotropic_spacing_scales_area_and_lengths():
    mask = disc(20, size=51)
    (px,) = measure_mask(mask)
    (mm,) = measure_mask(mask, spacing=(0.5, 0.5))
    assert mm["unit"] == "mm"
    assert mm["area_mm2"] == px["area_px"] / 4
    for name in ("perimeter", "equivalent_diameter", "major_axis", "minor_axis"):
        assert mm[f"{name}_mm"] == pytest.approx(px[f"{name}_px"] / 2)
    assert mm["perimeter_mm"] == pytest.approx(2 * math.pi * 10, rel=0.02)


def test_anisotropic_spacing_on_a_rectangle():
    mask = np.zeros((60, 40), dtype=np.int64)
    mask[10:50, 10:30] = 1  # 40 x 20 pixels = 20 x 20 mm with spacing (0.5, 1.0)
    (row,) = measure_mask(mask, spacing=(0.5, 1.0))
    assert row["area_mm2"] == 400.0
    # Crofton underestimates edges along the image axes: -6% on square pixels, -9% here.
    assert row["perimeter_mm"] == pytest.approx(80.0, rel=0.1)
    # Axes from the covariance of physical coordinates: 4 * sqrt(variance) per axis.
    rows, cols = np.nonzero(mask)
    assert row["major_axis_mm"] == pytest.approx(4 * np.std(rows * 0.5))
    assert row["minor_axis_mm"] == pytest.approx(4 * np.std(cols * 1.0))
    assert row["equivalent_diameter_mm"] == pytest.approx(math.sqrt(4 * 400 / math.pi))


def test_anisotropic_spacing_on_a_physical_circle():
    # A circle of radius 20 mm sampled with 0.5 mm rows and 1 mm columns is an ellipse in pixels.
    rows, cols = np.mgrid[-50:51, -30:31]
    mask = ((rows * 0.5) ** 2 + (cols * 1.0) ** 2 <= 20**2).astype(np.int64)
    (row,) = measure_mask(mask, spacing=(0.5, 1.0))
    assert row["area_mm2"] == pytest.approx(math.pi * 400, rel=0.01)
    assert row["perimeter_mm"] == pytest.approx(2 * math.pi * 20, rel=0.01)
    assert row["major_axis_mm"] == pytest.approx(row["minor_axis_mm"], rel=0.02)


def test_physical_values_match_regionprops_with_spacing():
    mask = blobs(1)
    labels = label(mask == 1)
    rows = [r for r in measure_mask(mask, spacing=(0.4, 0.7)) if r["class"] == "class_1"]
    props = regionprops(labels, spacing=(0.4, 0.7))
    assert len(rows) == len(props) > 3
    for row, prop in zip(rows, props, strict=True):
        assert row["area_mm2"] == pytest.approx(prop.area)
        assert row["equivalent_diameter_mm"] == pytest.approx(prop.equivalent_diameter_area)
        assert row["major_axis_mm"] == pytest.approx(prop.axis_major_length)
        assert row["minor_axis_mm"] == pytest.approx(prop.axis_minor_length)


def test_multi_class_masks_are_measured_per_class():
    mask = np.zeros((20, 20), dtype=np.int64)
    mask[1:5, 1:5] = 1
    mask[5:9, 1:5] = 2  # touches class 1 but is another class
    mask[12:18, 12:18] = 2
    rows = measure_mask(mask, class_names=["background", "nucleus", "cell"])
    assert [(r["class"], r["object"], r["area_px"]) for r in rows] == [
        ("nucleus", 1, 16),
        ("cell", 1, 16),
        ("cell", 2, 36),
    ]


def test_pixel_columns_match_regionprops_on_random_blobs():
    mask = blobs(0)
    rows = measure_mask(mask)
    expected = []
    for klass in (1, 2):
        for prop in regionprops(label(mask == klass, connectivity=2)):
            expected.append((f"class_{klass}", prop))
    assert len(rows) == len(expected) > 5
    for row, (klass, prop) in zip(rows, expected, strict=True):
        assert row["class"] == klass
        assert row["area_px"] == prop.area
        assert row["perimeter_px"] == pytest.approx(prop.perimeter_crofton, rel=1e-12)
        assert row["equivalent_diameter_px"] == pytest.approx(prop.equivalent_diameter_area)
        assert row["major_axis_px"] == pytest.approx(prop.axis_major_length)
        assert row["minor_axis_px"] == pytest.approx(prop.axis_minor_length, abs=1e-9)
        assert (row["centroid_row"], row["centroid_col"]) == pytest.approx(prop.centroid)
        bbox = (row["bbox_min_row"], row["bbox_min_col"], row["bbox_max_row"], row["bbox_max_col"])
        assert bbox == prop.bbox


def test_crofton_perimeter_equals_scikit_image_on_square_pixels():
    binary = blobs(3) > 0
    assert crofton_perimeter(binary) == pytest.approx(perimeter_crofton(binary, directions=4))
    assert crofton_perimeter(binary, (0.3, 0.3)) == pytest.approx(
        0.3 * perimeter_crofton(binary, directions=4)
    )


def test_mean_intensity_of_grey_and_colour_images():
    mask = np.zeros((8, 8), dtype=np.int64)
    mask[2:4, 2:5] = 1
    grey = np.arange(64, dtype=np.uint16).reshape(8, 8)
    (row,) = measure_mask(mask, image=grey)
    assert row["mean_intensity"] == pytest.approx(grey[2:4, 2:5].mean())
    colour = np.stack([grey, 2 * grey, np.zeros_like(grey)], axis=-1)
    (row,) = measure_mask(mask, image=colour)
    assert row["mean_intensity"] == pytest.approx(grey[2:4, 2:5].mean())  # (g + 2g + 0) / 3


def test_min_size_drops_small_objects_and_renumbers():
    mask = np.zeros((20, 20), dtype=np.int64)
    mask[1, 1] = 1
    mask[5:10, 5:10] = 1
    rows = measure_mask(mask, min_size=2)
    assert [(r["object"], r["area_px"]) for r in rows] == [(1, 25)]


def test_empty_mask_has_no_rows():
    assert measure_mask(np.zeros((5, 5), dtype=np.uint8)) == []


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"mask": np.zeros((2, 3, 4))}, DataError, "2D"),
        ({"mask": np.full((3, 3), 0.5)}, DataError, "whole numbers"),
        ({"mask": np.full((3, 3), -1)}, DataError, ">= 0"),
        ({"image": np.zeros((4, 3))}, DataError, "does not match"),
        ({"spacing": (0.5, -1.0)}, ConfigError, "positive"),
        ({"spacing": (0.5,)}, ConfigError, "two"),
        ({"spacing": ("a", 1)}, ConfigError, "two numbers"),
        ({"class_names": ["background"]}, DataError, "class index 1"),
        ({"connectivity": 3}, ConfigError, "connectivity"),
        ({"min_size": -1}, ConfigError, "min_size"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(kwargs, error, match):
    kwargs = {"mask": np.ones((3, 3), dtype=np.int64)} | kwargs
    with pytest.raises(error, match=match):
        measure_mask(kwargs.pop("mask"), **kwargs)


def test_totals_include_images_and_classes_without_objects():
    mask = np.zeros((20, 20), dtype=np.int64)
    mask[1:3, 1:3] = 1
    mask[5:10, 5:10] = 1
    rows = measure_mask(mask, spacing=(0.5, 0.5), image_id="a", class_names=["bg", "x", "y"])
    rows += measure_mask(np.zeros((4, 4)), spacing=(0.5, 0.5), image_id="b")
    table = totals(rows, ["a", "b"], ["x", "y"], source="pred", units="mm")
    assert [list(t) for t in table] == [TOTAL_FIELDS] * 4
    by_key = {(t["id"], t["class"]): t for t in table}
    assert by_key["a", "x"] | {} == {
        "id": "a",
        "source": "pred",
        "class": "x",
        "count": 2,
        "total_area_px": 29,
        "total_area_mm2": 29 / 4,
        "mean_area_mm2": 29 / 8,
        "unit": "mm",
    }
    for key in (("a", "y"), ("b", "x"), ("b", "y")):
        assert (by_key[key]["count"], by_key[key]["total_area_mm2"]) == (0, 0.0)
        assert by_key[key]["mean_area_mm2"] == ""


def test_totals_refuse_unlisted_classes_and_wrong_units():
    rows = measure_mask(np.ones((3, 3)), image_id="a")
    with pytest.raises(DataError, match="not among"):
        totals(rows, ["a"], ["nucleus"], source="pred")
    with pytest.raises(DataError, match="expected 'mm'"):
        totals(rows, ["a"], ["class_1"], source="pred", units={"a": "mm"})
    with pytest.raises(DataError, match="no unit"):
        totals(rows, ["a"], ["class_1"], source="pred", units={})
    assert totals(rows, ["a"], ["class_1"], source="true")[0]["count"] == 0  # other sources ignored


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e308, 0.0, -0.5, 1e-7, 2e4])
def test_check_spacing_refuses_non_finite_and_absurd_values(value):
    with pytest.raises(
        ConfigError, match=r"two positive numbers \(row_mm, col_mm\): .* from 1e-06 to 10000 mm"
    ):
        check_spacing((0.5, value))


def test_check_spacing_accepts_microscopy_to_metres():
    assert check_spacing((1e-4, 1e4)) == (1e-4, 1e4)  # 0.1 µm pixels, and 10 m
    assert check_spacing(["0.5", 2]) == (0.5, 2.0)
    assert check_spacing(None) is None


def test_structure_volumes_in_ml_count_voxels_times_their_volume():
    from medtrain.analysis.volume_results import structure_volumes_ml

    labels = np.zeros(4000, np.int64)
    labels[:1896] = 1  # 1896 voxels of 1 mm^3: 1.896 mL, written without float noise
    labels[1896:1900] = 2
    volumes = structure_volumes_ml(labels, (1.0, 1.0, 1.0), ["background", "a", "b"])
    assert volumes == {"a": 1.896, "b": 0.004}
    assert repr(volumes["a"]) == "1.896"  # once 1896 x 0.001 = 1.8960000000000001
    assert structure_volumes_ml(labels, (2.0, 1.0, 1.5), ["background", "a", "b"])["a"] == 5.688
