"""Overlay pictures: contour colours on exact pixels, file names, the grid."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medtrain.analysis.overlays import (
    BOTH_COLOUR,
    PRED_COLOUR,
    TRUE_COLOUR,
    case_stems,
    display_rgb,
    draw_overlay,
    save_overlays,
)
from medtrain.errors import ConfigError, DataError


def square(top, left, size, shape=(40, 48)):
    mask = np.zeros(shape, dtype=np.int64)
    mask[top : top + size, left : left + size] = 1
    return mask


def ring(top, left, size, shape=(40, 48)):
    """The outermost pixels of a square, by hand."""
    return square(top, left, size, shape).astype(bool) & ~square(
        top + 1, left + 1, size - 2, shape
    ).astype(bool)


def colour_mask(rgb, colour):
    return (rgb == np.array(colour, dtype=np.uint8)).all(axis=-1)


def test_contours_are_green_and_magenta_exactly_on_the_boundaries():
    # A grey image can never produce pure green or magenta pixels by itself.
    image = np.random.default_rng(0).normal(100.0, 20.0, (40, 48))
    true, pred = square(5, 5, 12), square(20, 25, 10)
    rgb = draw_overlay(image, true, pred)
    assert rgb.dtype == np.uint8 and rgb.shape == (40, 48, 3)
    assert (colour_mask(rgb, TRUE_COLOUR) == ring(5, 5, 12)).all()
    assert (colour_mask(rgb, PRED_COLOUR) == ring(20, 25, 10)).all()


def test_coinciding_contours_are_white():
    image = np.zeros((40, 48))
    rgb = draw_overlay(image, square(5, 5, 12), square(5, 5, 12))
    assert (colour_mask(rgb, BOTH_COLOUR) == ring(5, 5, 12)).all()
    assert not colour_mask(rgb, TRUE_COLOUR).any()


def test_without_ground_truth_only_prediction_is_drawn():
    rgb = draw_overlay(np.zeros((40, 48)), None, square(0, 0, 10))
    assert not colour_mask(rgb, TRUE_COLOUR).any()
    assert (colour_mask(rgb, PRED_COLOUR) == ring(0, 0, 10)).all()  # the image border closes it


def test_display_stretches_percentiles_and_keeps_colour():
    image = np.linspace(-1000.0, 3000.0, 10_000).reshape(100, 100)
    rgb = display_rgb(image)
    assert rgb.shape == (100, 100, 3) and rgb.min() == 0 and rgb.max() == 255
    assert (rgb[..., 0] == rgb[..., 1]).all()
    low, high = np.percentile(image, [1, 99])
    inside = (image > low) & (image < high)
    expected = np.round((image - low) / (high - low) * 255)
    assert np.abs(rgb[..., 0][inside] - expected[inside]).max() <= 1
    colour = np.zeros((4, 4, 3))
    colour[..., 0] = 1.0
    assert (display_rgb(colour)[..., 1:] == 0).all()
    assert display_rgb(np.full((3, 3), 7.0)).max() == 0  # constant: no contrast to show


def test_files_grid_and_safe_names(tmp_path):
    pred = square(2, 2, 8, (30, 60))
    cases = [
        {"id": name, "image": np.full((30, 60), i, np.uint8), "true": None, "pred": pred}
        for i, name in enumerate(["a/b:c", "a_b_c", "grid", "..", "ok.1", "img/x.PNG"])
    ]
    paths = save_overlays(tmp_path / "overlays", cases, columns=2)
    names = [p.name for p in paths]
    assert names == [
        *("a_b_c.png", "a_b_c_2.png", "grid_2.png", "case.png", "ok.1.png", "img_x.png"),
        "grid.png",
    ]
    for path in paths:
        with Image.open(path) as img:
            img.load()
            assert img.mode == "RGB"
    with Image.open(paths[0]) as img:
        assert img.size == (60, 30)
    with Image.open(paths[-1]) as grid:
        width, height = grid.size
    assert width >= 2 * 160 and height >= 3 * 160  # 6 tiles in 2 columns: 3 rows
    assert not list((tmp_path / "overlays").glob(".*"))  # no temporary files left


def test_absolute_ids_name_files_without_the_folders_they_share(tmp_path):
    """An evaluation CSV of absolute paths wrote masks/data_lab_images_a.png for /data/lab/images/a.png."""
    ids = ["/data/lab/images/a.png", "/data/lab/images/b.png", "/data/lab/old/A.png", "img/a.png"]
    assert case_stems(ids) == {
        "/data/lab/images/a.png": "images_a",
        "/data/lab/images/b.png": "images_b",
        "/data/lab/old/A.png": "old_A",
        "img/a.png": "img_a",  # relative ids keep their folders, as before
    }
    assert case_stems(["/data/lab/a.png", "/data/lab/b.png"]) == {
        "/data/lab/a.png": "a",
        "/data/lab/b.png": "b",
    }
    assert case_stems(["C:\\scans\\a.png", "C:\\scans\\x\\a.png", "a"]) == {
        "C:\\scans\\a.png": "a",
        "C:\\scans\\x\\a.png": "x_a",
        "a": "a_2",  # one name each, whatever the ids
    }
    pred = square(2, 2, 8, (30, 60))
    cases = [{"id": i, "image": pred, "true": None, "pred": pred} for i in ids[:2]]
    paths = save_overlays(tmp_path, cases, stems=case_stems(ids))
    assert [p.name for p in paths] == ["images_a.png", "images_b.png", "grid.png"]


def test_max_cases_stops_reading_cases(tmp_path):
    read = []

    def cases():
        for i in range(10):
            read.append(i)
            yield {"id": f"c{i}", "image": np.zeros((8, 8)), "true": None, "pred": np.eye(8)}

    paths = save_overlays(tmp_path, cases(), max_cases=3)
    assert [p.name for p in paths] == ["c0.png", "c1.png", "c2.png", "grid.png"]
    assert read == [0, 1, 2]
    assert save_overlays(tmp_path / "none", []) == []


def test_bad_cases_are_refused(tmp_path):
    case = {"id": "x", "image": np.zeros((8, 8)), "true": np.zeros((8, 9)), "pred": np.eye(8)}
    with pytest.raises(DataError, match="'x'.*ground truth mask shape"):
        save_overlays(tmp_path, [case])
    with pytest.raises(DataError, match="lacks"):
        save_overlays(tmp_path, [{"id": "y", "image": np.zeros((8, 8))}])
    with pytest.raises(ConfigError):
        save_overlays(tmp_path, [], columns=0)
