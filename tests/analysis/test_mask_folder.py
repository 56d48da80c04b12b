"""The `medtrain measure` command on hand-made mask folders."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtrain.analysis.measurements import MEASUREMENT_FIELDS, TOTAL_FIELDS
from medtrain.commands.measure import main
from medtrain.errors import DataError
from tests.conftest import fail_if_called

ROOT = Path(__file__).resolve().parents[2]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def folder(tmp_path):
    """masks/a.png with two squares (255 = object), masks/b.png empty, images/ with the same stems."""
    masks, images = tmp_path / "masks", tmp_path / "images"
    masks.mkdir()
    images.mkdir()
    a = np.zeros((40, 50), np.uint8)
    a[5:15, 5:15] = 255
    a[20:30, 20:40] = 255
    Image.fromarray(a).save(masks / "a.png")
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(masks / "b.png")
    (masks / ".hidden.png").write_bytes(b"not an image")
    (masks / "notes.txt").write_text("ignored")
    Image.fromarray(np.full((40, 50), 10, np.uint8)).save(images / "a.png")
    Image.fromarray(np.full((40, 50), 20, np.uint8)).save(images / "b.tif")
    return tmp_path


def test_masks_named_with_a_suffix_find_their_images(folder, capsys):
    """`case_mask.png` beside `case.png` (what `dataset.mask_suffix` reads in training): named by
    mask_suffix=, and its absence said with the suffix to set."""
    for name in ("a", "b"):
        (folder / "masks" / f"{name}.png").rename(folder / "masks" / f"{name}_mask.png")
    argv = [f"masks={folder / 'masks'}", f"images={folder / 'images'}"]
    assert main([*argv, f"output={folder / 'no.csv'}"]) == 2
    err = capsys.readouterr().err
    assert "a_mask.png: no image named a_mask.* in images=" in err
    assert err.rstrip().endswith("(the masks end in '_mask': set mask_suffix=_mask)")
    # The suffix after the longest image name: case12_mask beside case1 and case12 is _mask.
    from medtrain.analysis.mask_folder import match_images

    for name in ("case1", "case12"):
        (folder / "images" / f"{name}.png").write_bytes((folder / "images" / "a.png").read_bytes())
    with pytest.raises(DataError, match=r"\(the masks end in '_mask': set mask_suffix=_mask\)"):
        match_images([folder / "case12_mask.png"], folder / "images")
    out = folder / "suffixed.csv"
    assert main([*argv, "mask_suffix=_mask", f"output={out}"]) == 0
    rows = read_csv(out)
    assert [(r["id"], r["mean_intensity"]) for r in rows] == [
        ("a_mask", "10.0"),
        ("a_mask", "10.0"),
    ]


def test_folder_with_images_and_spacing(folder, capsys):
    out = folder / "out" / "objects.csv"
    code = main(
        [
            f"masks={folder / 'masks'}",
            f"images={folder / 'images'}",
            "spacing=[0.5,0.25]",
            f"output={out}",
            "class_names=[background, no]",  # "no" stays a name, not YAML's false
            "source=true",
        ]
    )
    assert code == 0
    rows = read_csv(out)
    assert list(rows[0]) == MEASUREMENT_FIELDS
    assert [(r["id"], r["class"], r["object"], r["area_px"]) for r in rows] == [
        ("a", "no", "1", "100"),
        ("a", "no", "2", "200"),
    ]
    assert float(rows[1]["area_mm2"]) == 200 * 0.5 * 0.25
    assert float(rows[1]["mean_intensity"]) == 10.0
    assert (rows[1]["unit"], rows[1]["spacing_row"], rows[1]["spacing_col"]) == (
        "mm",
        "0.5",
        "0.25",
    )
    assert rows[1]["source"] == "true"
    totals = read_csv(folder / "out" / "objects_totals.csv")
    assert list(totals[0]) == TOTAL_FIELDS
    assert [(t["id"], t["count"], t["total_area_px"], t["mean_area_mm2"]) for t in totals] == [
        ("a", "2", "300", str(150 * 0.125)),
        ("b", "0", "0", ""),
    ]
    printed = capsys.readouterr().out
    assert "2 mask file(s)" in printed and "no: 2" in printed and str(out) in printed


def test_class_values_and_npy_masks(tmp_path, monkeypatch):
    mask = np.zeros((10, 10), np.uint8)
    mask[0:2, 0:2] = 128
    mask[5:9, 5:9] = 255
    np.save(tmp_path / "m.npy", mask)
    monkeypatch.chdir(tmp_path)
    assert main([f"masks={tmp_path / 'm.npy'}", "class_values={0:0,128:1,255:2}"]) == 0
    rows = read_csv(tmp_path / "measurements.csv")
    assert [(r["class"], r["area_px"], r["unit"]) for r in rows] == [
        ("class_1", "4", "px"),
        ("class_2", "16", "px"),
    ]
    # Unquoted in a shell, the braces are expanded into one argument per pair: accept that too.
    args = ["class_values=0:0", "class_values=128:1", "class_values=255:2", "output=b.csv"]
    assert main([f"masks={tmp_path / 'm.npy'}", *args]) == 0
    assert read_csv(tmp_path / "b.csv") == rows


def test_spacing_from_file_metadata_unless_given(tmp_path):
    mask = np.zeros((10, 10), np.uint8)
    mask[2:6, 2:6] = 255
    Image.fromarray(mask).save(tmp_path / "m.png", dpi=(101.6, 101.6))  # 0.25 mm per pixel
    assert main([f"masks={tmp_path / 'm.png'}", f"output={tmp_path / 'x.csv'}"]) == 0
    (row,) = read_csv(tmp_path / "x.csv")
    assert float(row["spacing_row"]) == pytest.approx(0.25, rel=1e-3)
    assert float(row["area_mm2"]) == pytest.approx(16 * 0.0625, rel=1e-3)
    assert main([f"masks={tmp_path / 'm.png'}", "spacing=0.5", f"output={tmp_path / 'y.csv'}"]) == 0
    (row,) = read_csv(tmp_path / "y.csv")
    assert float(row["area_mm2"]) == 16 * 0.25


def test_microscopy_measures_in_micrometres(tmp_path, capsys):
    """units=um: spacing= is in um and the length and area columns are named and given in um; a
    file's own spacing (mm) is converted. In mm, 0.25 um pixels gave areas of 1e-06 mm^2."""
    mask = np.zeros((10, 10), np.uint8)
    mask[2:6, 2:6] = 255  # 16 pixels, perimeter (Crofton) as in pixels times the spacing
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = tmp_path / "um.csv"
    assert main([f"masks={tmp_path / 'm.png'}", "units=um", "spacing=0.25", f"output={out}"]) == 0
    assert "(1 in um)" in capsys.readouterr().out
    (row,) = read_csv(out)
    assert (row["unit"], float(row["area_um2"]), float(row["spacing_row"])) == ("um", 1.0, 0.25)
    assert float(row["perimeter_um"]) == pytest.approx(float(row["perimeter_px"]) * 0.25)
    assert "area_mm2" not in row and "major_axis_um" in row
    (total,) = read_csv(tmp_path / "um_totals.csv")
    assert (total["total_area_um2"], total["mean_area_um2"], total["unit"]) == ("1.0", "1.0", "um")
    Image.fromarray(mask).save(tmp_path / "f.png", dpi=(101600, 101600))  # 0.25 um per pixel
    assert main([f"masks={tmp_path / 'f.png'}", "units=µm", f"output={tmp_path / 'f.csv'}"]) == 0
    (row,) = read_csv(tmp_path / "f.csv")
    assert float(row["area_um2"]) == pytest.approx(1.0, rel=1e-3)
    assert main([f"masks={tmp_path / 'm.png'}", "units=cm", f"output={tmp_path / 'c.csv'}"]) == 2
    assert "units='cm' must be mm or um" in capsys.readouterr().err
    assert not (tmp_path / "c.csv").exists()


def test_connectivity_and_min_size(tmp_path):
    mask = np.zeros((10, 10), np.uint8)
    mask[2, 2] = mask[3, 3] = 1
    mask[6:9, 6:9] = 1
    np.save(tmp_path / "m.npy", mask)
    out = tmp_path / "o.csv"
    assert main([f"masks={tmp_path}", "connectivity=1", "min_size=1", f"output={out}"]) == 0
    assert len(read_csv(out)) == 3
    assert main([f"masks={tmp_path}", "connectivity=2", "min_size=3", f"output={out}"]) == 0
    assert [r["area_px"] for r in read_csv(out)] == ["9"]


def test_instance_label_masks_keep_touching_objects_apart(tmp_path):
    labels = np.zeros((20, 30), np.uint16)
    labels[2:8, 2:8] = 7  # 36 px, touching object 300 along a whole edge
    labels[2:8, 8:12] = 300  # 24 px: needs 16 bits, as Cellpose writes many objects
    labels[12:18, 20:25] = 12  # 30 px
    Image.fromarray(labels).save(tmp_path / "cells.png")
    out = tmp_path / "o.csv"
    args = [f"masks={tmp_path / 'cells.png'}", f"output={out}"]
    assert main([*args, "instances=true", "class_names=[background,cell]"]) == 0
    rows = read_csv(out)
    assert [(r["class"], r["object"], r["area_px"]) for r in rows] == [
        ("cell", "7", "36"),
        ("cell", "12", "30"),
        ("cell", "300", "24"),
    ]
    (total,) = read_csv(tmp_path / "o_totals.csv")
    assert (total["class"], total["count"], total["total_area_px"]) == ("cell", "3", "90")
    # read as classes instead, the labels are classes 7, 12 and 300 (one object each)
    assert main([*args, "instances=false"]) == 0
    assert sorted(r["class"] for r in read_csv(out)) == ["class_12", "class_300", "class_7"]
    # a mask with a single object keeps its label (it is not a binary {0, v} mask here)
    single = np.where(labels == 300, 300, 0).astype(np.uint16)
    Image.fromarray(single).save(tmp_path / "one.png")
    assert main([f"masks={tmp_path / 'one.png'}", f"output={out}", "instances=true"]) == 0
    assert [(r["class"], r["object"], r["area_px"]) for r in read_csv(out)] == [
        ("object", "300", "24")
    ]


def test_multi_class_names_keep_a_mask_that_shows_only_class_two(tmp_path):
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 2:5] = 2
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = tmp_path / "o.csv"
    assert main([f"masks={tmp_path}", "class_names=[bg,liver,tumour]", f"output={out}"]) == 0
    assert [(r["class"], r["area_px"]) for r in read_csv(out)] == [("tumour", "9")]


def test_masks_with_and_without_a_file_spacing_are_refused_unless_spacing_is_given(
    tmp_path, capsys
):
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 2:5] = 255
    Image.fromarray(mask).save(tmp_path / "a.png", dpi=(101.6, 101.6))  # states 0.25 mm
    Image.fromarray(mask).save(tmp_path / "b.png")  # states nothing
    out = tmp_path / "o.csv"
    assert main([f"masks={tmp_path}", f"output={out}"]) == 2
    err = capsys.readouterr().err
    assert "1 mask(s) state a pixel spacing" in err and "(e.g. a)" in err and "e.g. b)" in err
    assert not out.exists()  # refused before anything is written
    assert main([f"masks={tmp_path}", f"output={out}", "spacing=0.5"]) == 0
    assert {r["unit"] for r in read_csv(out)} == {"mm"}


def test_an_output_in_a_file_s_place_is_refused_before_any_mask_is_read(
    folder, capsys, monkeypatch
):
    from medtrain.analysis import mask_folder

    (folder / "afile").write_text("x\n")
    monkeypatch.chdir(folder)

    fail_if_called(monkeypatch, mask_folder, "measure_mask", "measured")
    before = sorted(folder.rglob("*"))
    assert main(["masks=masks", "output=afile/objects.csv"]) == 2
    assert capsys.readouterr().err == (
        "error: output=afile/objects.csv: afile is a file, not a folder\n"
    )
    assert sorted(folder.rglob("*")) == before and (folder / "afile").read_text() == "x\n"


def test_masks_that_look_read_the_wrong_way_are_named(tmp_path, capsys):
    binary = np.zeros((20, 20), np.uint8)
    binary[2:5, 2:5] = binary[10:15, 10:15] = 255  # two nuclei of a binary mask
    Image.fromarray(binary).save(tmp_path / "binary.png")
    assert (
        main([f"masks={tmp_path / 'binary.png'}", f"output={tmp_path / 'o.csv'}", "instances=true"])
        == 0
    )
    err = capsys.readouterr().err
    assert "1 of 1 masks look misread (binary.png: label 255 covers 2 separate regions)" in err
    assert "drop it for binary or class masks" in err
    classes = np.zeros((20, 20), np.uint8)  # a class mask: classes 1 and 2, two regions each
    classes[0:3, 0:3] = classes[8:10, 8:10] = 1
    classes[15:18, 0:3] = classes[15:18, 15:18] = 2
    Image.fromarray(classes).save(tmp_path / "classes.png")
    args = [f"masks={tmp_path / 'classes.png'}", f"output={tmp_path / 'k.csv'}", "instances=true"]
    assert main(args) == 0
    assert "label 1 covers 2 separate regions (and 1 more labels do too)" in capsys.readouterr().err
    assert main([f"masks={tmp_path / 'binary.png'}", f"output={tmp_path / 'o.csv'}"]) == 0
    assert "warning" not in capsys.readouterr().err  # read as a binary mask: two objects, no doubt

    labels = np.zeros((40, 40), np.uint16)
    for k in range(12):  # 12 cells, one label each, as Cellpose writes them
        labels[(k // 4) * 10 : (k // 4) * 10 + 6, (k % 4) * 10 : (k % 4) * 10 + 6] = k + 1
    (tmp_path / "cells").mkdir()
    Image.fromarray(labels).save(tmp_path / "cells" / "c.png")
    args = [f"masks={tmp_path / 'cells'}", f"output={tmp_path / 'c.csv'}"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "c.png: 12 values, each one connected region" in err and "pass instances=true" in err
    assert main([*args, "instances=true"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert len(read_csv(tmp_path / "c.csv")) == 12
    # labels far apart in value (Cellpose after filtering) cost no more: they are renumbered
    big = np.where(labels > 0, labels.astype(np.int64) + 10**9, 0)
    np.save(tmp_path / "cells" / "c.npy", big)
    (tmp_path / "cells" / "c.png").unlink()
    assert main(args) == 0
    assert "c.npy: 12 values, each one connected region" in capsys.readouterr().err


def test_a_folder_of_few_object_labels_each_is_named_as_labels(tmp_path, capsys):
    """Masks of 3 to 7 cells each (too few values for one mask to tell) read as classes: their
    numbers 1..n vary between masks as counts do, so the folder is named; organ masks of the same
    three classes each are not."""
    (tmp_path / "cells").mkdir()
    for n in (3, 5, 7, 4):
        labels = np.zeros((30, 30), np.uint8)
        for k in range(n):
            labels[(k // 4) * 10 : (k // 4) * 10 + 6, (k % 4) * 7 : (k % 4) * 7 + 5] = k + 1
        Image.fromarray(labels).save(tmp_path / "cells" / f"c{n}.png")
    args = [f"masks={tmp_path / 'cells'}", f"output={tmp_path / 'c.csv'}"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert (
        "the masks look misread (4 masks hold values 1..n, each value one connected region, "
        "with n from 3 to 7): read as classes; if they are object labels"
    ) in err
    assert main([*args, "instances=true"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert len(read_csv(tmp_path / "c.csv")) == 3 + 5 + 7 + 4
    (tmp_path / "organs").mkdir()
    for k in range(4):
        organs = np.zeros((30, 30), np.uint8)
        organs[0:8, k : k + 8], organs[12:20, 0:8], organs[22:28, 10:20] = 1, 2, 3
        Image.fromarray(organs).save(tmp_path / "organs" / f"o{k}.png")
    assert main([f"masks={tmp_path / 'organs'}", f"output={tmp_path / 'o.csv'}"]) == 0
    assert "warning" not in capsys.readouterr().err
    # Cardiac slices (ACDC's 1 RV, 2 myocardium, 3 LV): most hold all three, the apex fewer; the
    # numbers vary, but the largest is the most common: classes, not counts.
    (tmp_path / "heart").mkdir()
    for k, n in enumerate((3, 3, 3, 3, 2, 1)):
        heart = np.zeros((30, 30), np.uint8)
        for c in range(n):
            heart[2 + 9 * c : 8 + 9 * c, 5:15] = c + 1
        Image.fromarray(heart).save(tmp_path / "heart" / f"s{k}.png")
    assert main([f"masks={tmp_path / 'heart'}", f"output={tmp_path / 'h.csv'}"]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["masks={tmp}/nowhere"], "no such file or folder"),
        (["masks={tmp}/empty"], "no .png"),
        (["masks={tmp}/bad"], "bad/m.png: not a PNG, JPEG, TIFF, DICOM, NPY or NPZ file"),
        (["masks={tmp}/good", "spacing=[0.5,-1]"], "positive"),
        (["masks={tmp}/good", "spacing=[0.5"], "cannot parse"),
        (["masks={tmp}/good", "colour=red"], "unknown key 'colour'; valid keys: masks, images"),
        (["masks={tmp}/good", "images={tmp}/empty"], "good/m.png: no image named m"),
        (["masks={tmp}/good", "class_names=[bg]"], "class_names"),
        (["masks={tmp}/good", "connectivity=4"], "connectivity"),
        (["masks={tmp}/good", "masks=x"], "given twice"),
        (["spacing=1"], "masks=<folder or file> is required"),
        (["{tmp}/good"], "expected key=value"),
        (["masks={tmp}/good", "instances=maybe"], "instances='maybe' must be true or false"),
        (["masks={tmp}/good", "instances=true", "class_values={{0:0,255:1}}"], "drop class_values"),
    ],
)
def test_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    for name in ("empty", "bad", "good"):
        (tmp_path / name).mkdir()
    (tmp_path / "bad" / "m.png").write_bytes(b"not a png")
    Image.fromarray(np.eye(5, dtype=np.uint8) * 255).save(tmp_path / "good" / "m.png")
    code = main([a.format(tmp=tmp_path) for a in args] + [f"output={tmp_path / 'o.csv'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err


def test_a_value_is_one_class_in_every_mask_of_a_folder(tmp_path):
    """Read without names, a mask holding only {0, 2} beside masks of {0, 1, 2} was taken for a
    binary {0, v} mask: its value 2 became class_1 while the others' was class_2."""
    (tmp_path / "masks").mkdir()
    both = np.zeros((20, 20), np.uint8)
    both[2:6, 2:6], both[10:14, 10:14] = 1, 2
    only_two = np.zeros((20, 20), np.uint8)
    only_two[10:14, 10:14] = 2
    Image.fromarray(both).save(tmp_path / "masks" / "a.png")
    Image.fromarray(only_two).save(tmp_path / "masks" / "b.png")
    assert main([f"masks={tmp_path / 'masks'}", f"output={tmp_path / 'm.csv'}"]) == 0
    rows = read_csv(tmp_path / "m.csv")
    assert sorted((r["id"], r["class"]) for r in rows) == [
        ("a", "class_1"),
        ("a", "class_2"),
        ("b", "class_2"),
    ]
    # A folder of binary masks ({0, 255}, {0, 1}) still reads as one class.
    for scale in (127, 0.5):
        (tmp_path / "binary").mkdir(exist_ok=True)
        Image.fromarray((only_two * scale).astype(np.uint8)).save(tmp_path / "binary" / "c.png")
        assert main([f"masks={tmp_path / 'binary'}", f"output={tmp_path / 'b.csv'}"]) == 0
        assert [r["class"] for r in read_csv(tmp_path / "b.csv")] == ["class_1"]
    # A folder whose masks all hold {0, 2} (a 3-class run's predictions of class 2 alone): the
    # docs' "a mask of only {0, 2} keeps class 2" held only beside masks of other classes.
    (tmp_path / "twos").mkdir()
    Image.fromarray(only_two).save(tmp_path / "twos" / "d.png")
    assert main([f"masks={tmp_path / 'twos'}", f"output={tmp_path / 't.csv'}"]) == 0
    assert [r["class"] for r in read_csv(tmp_path / "t.csv")] == ["class_2"]


def test_binary_masks_saved_two_ways_are_one_class_and_empty_masks_keep_their_rows(
    tmp_path, capsys
):
    """{0, 255} and {0, 1} masks in one folder (two tools' masks of the same objects) were read
    as class_1 and class_255, each image counted 0 in the other; a folder of empty masks wrote
    a totals table without a row. An .npz mask beside them is measured (it was skipped)."""
    (tmp_path / "masks").mkdir()
    mask = np.zeros((20, 20), np.uint8)
    mask[2:6, 2:6], mask[10:14, 10:15] = 1, 1
    Image.fromarray(mask * 255).save(tmp_path / "masks" / "a.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "b.png")
    np.savez(tmp_path / "masks" / "c.npz", mask=mask)
    assert main([f"masks={tmp_path / 'masks'}", f"output={tmp_path / 'm.csv'}"]) == 0
    assert "objects per class: class_1: 6" in capsys.readouterr().out
    totals = read_csv(tmp_path / "m_totals.csv")
    assert [(r["id"], r["class"], r["count"]) for r in totals] == [
        ("a", "class_1", "2"),
        ("b", "class_1", "2"),
        ("c", "class_1", "2"),
    ]
    (tmp_path / "empty").mkdir()
    for name in ("d", "e"):
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "empty" / f"{name}.png")
    assert main([f"masks={tmp_path / 'empty'}", f"output={tmp_path / 'e.csv'}"]) == 0
    totals = read_csv(tmp_path / "e_totals.csv")
    assert [(r["id"], r["class"], r["count"]) for r in totals] == [
        ("d", "class_1", "0"),
        ("e", "class_1", "0"),
    ]


def test_a_grey_image_and_doubtful_spacings_are_warned_about(tmp_path, capsys):
    """A grey image given as a mask was measured as 254 classes without a word; a spacing in
    micrometres typed as mm, and a mask stating another spacing than its image, went unsaid."""
    noise = np.random.default_rng(0).integers(0, 256, (32, 32)).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "grey.png")
    assert main([f"masks={tmp_path / 'grey.png'}", f"output={tmp_path / 'g.csv'}"]) == 0
    err = capsys.readouterr().err
    n = len(np.unique(noise[noise > 0]))
    assert f"the masks hold {n} values, read as {n} classes (class_1 to class_255): are they" in err
    mask = np.zeros((10, 10), np.uint8)
    mask[2:6, 2:6] = 255
    Image.fromarray(mask).save(tmp_path / "m.png", dpi=(101.6, 101.6))  # 0.25 mm
    assert main([f"masks={tmp_path / 'm.png'}", "spacing=500", f"output={tmp_path / 's.csv'}"]) == 0
    assert (
        "warning: a pixel spacing of 500 mm: spacing is in mm per pixel" in capsys.readouterr().err
    )
    (tmp_path / "images").mkdir()
    Image.fromarray(mask).save(tmp_path / "images" / "m.png", dpi=(254, 254))  # 0.1 mm
    argv = [f"masks={tmp_path / 'm.png'}", f"images={tmp_path / 'images'}"]
    assert main([*argv, f"output={tmp_path / 'i.csv'}"]) == 0
    err = capsys.readouterr().err
    assert "1 mask(s) state another pixel spacing than their image (e.g. m.png: (0.25, 0.25)" in err
    assert float(read_csv(tmp_path / "i.csv")[0]["spacing_row"]) == pytest.approx(0.25, rel=1e-3)
    assert main([*argv, "spacing=0.1", f"output={tmp_path / 'j.csv'}"]) == 0  # chosen: no word
    assert "warning" not in capsys.readouterr().err


def test_tables_replace_only_earlier_tables_of_measure(tmp_path, capsys):
    """output= replaced anything: a mask (made CSV text), a manifest, a run's measurements.csv
    (the ground truth's rows lost), a prediction's (its instances' rows lost). It replaces only an
    earlier table of measure, outside runs and predictions."""
    (tmp_path / "masks").mkdir()
    mask = tmp_path / "masks" / "m.png"
    Image.fromarray(np.eye(5, dtype=np.uint8) * 255).save(mask)
    manifest = tmp_path / "cases.csv"
    manifest.write_text("image,target\nmasks/m.png,1\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    (run / "measurements.csv").write_text(",".join(MEASUREMENT_FIELDS) + "\n")
    predicted = tmp_path / "predicted"  # medtrain predict's folder: its CSV names its masks
    predicted.mkdir()
    (predicted / "preds.csv").write_text("file,count_nucleus,mask,error\na.png,2,masks/a.png,\n")
    (predicted / "measurements.csv").write_text(",".join(MEASUREMENT_FIELDS) + "\n")
    for output, said in (
        (mask, "exists and is not an earlier table of medtrain measure (it holds no CSV text)"),
        (manifest, "(it holds the columns ['image', 'target'])"),
        (run / "measurements.csv", "is a run's file (its folder holds a run)"),
        (
            predicted / "measurements.csv",
            "measurements.csv is a prediction's table (beside preds.csv, which names its masks), "
            "which measure would replace",
        ),
    ):
        before = output.read_bytes()
        assert main([f"masks={tmp_path / 'masks'}", f"output={output}"]) == 2
        assert said in capsys.readouterr().err
        assert output.read_bytes() == before
    assert main([f"masks={tmp_path / 'masks'}", f"output={tmp_path / 'm.csv'}"]) == 0
    assert main([f"masks={tmp_path / 'masks'}", f"output={tmp_path / 'm.csv'}"]) == 0  # its own
    assert main([f"masks={tmp_path / 'masks'}", f"output={run / 'mine.csv'}"]) == 0  # a new file
    assert main([f"masks={tmp_path / 'masks'}", f"output={run / 'mine.csv'}"]) == 0  # its own
    # Beside a classification's predictions (no masks), its own earlier table is replaced.
    classified = tmp_path / "classified"
    classified.mkdir()
    (classified / "preds.csv").write_text("file,label,prob_lesion,error\na.png,lesion,0.9,\n")
    for _ in range(2):
        assert (
            main([f"masks={tmp_path / 'masks'}", f"output={classified / 'measurements.csv'}"]) == 0
        )


def test_command_line_runs_as_a_module(folder):
    # One real process (a few seconds, mostly importing torch through medtrain.data); the error
    # paths run in-process above.
    out = folder / "cli.csv"
    done = subprocess.run(
        [sys.executable, "-m", "medtrain", "measure", f"masks={folder / 'masks'}", f"output={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert len(read_csv(out)) == 2
    assert (folder / "cli_totals.csv").exists()
    assert "wrote" in done.stdout


def test_a_spacing_of_one_number_is_square_pixels_however_written():
    from omegaconf import OmegaConf

    from medtrain.analysis.mask_folder import spacing_arg
    from medtrain.errors import ConfigError

    for written in (0.5, [0.5]):
        assert spacing_arg(OmegaConf.create({"spacing": written})) == (0.5, 0.5)
    assert spacing_arg(OmegaConf.create({"spacing": [0.4, 0.5]})) == (0.4, 0.5)
    assert spacing_arg(OmegaConf.create({"spacing": None})) is None
    with pytest.raises(ConfigError, match="3 values given"):
        spacing_arg(OmegaConf.create({"spacing": [0.4, 0.5, 0.6]}))
