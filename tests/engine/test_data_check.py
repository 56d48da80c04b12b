"""The data check: every bad input gets one message naming its file or manifest row, and the report's
duplicates, class counts and intensities match an independent computation."""

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtrain.commands.check_data import exit_status, main
from medtrain.data.validation import check_datasets
from medtrain.engine.build import build_datasets
from medtrain.engine.config import compose_config
from medtrain.engine.data_check import check_before_training, check_config
from medtrain.errors import DataError
from tests.conftest import ROOT, SHARED_DATA
from tests.data.test_readers import make_dicom

PNEUMONIA = SHARED_DATA / "medmnist" / "pneumoniamnist.npz"


def write_png(path: Path, seed: int, size: int | tuple[int, int] = 16) -> np.ndarray:
    shape = (size, size) if isinstance(size, int) else size
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def write_manifest(folder: Path, rows: list[tuple[str, object, str]]) -> Path:
    """`cases.csv` with columns image, target, split; the header is line 1, row k is line k + 2."""
    path = folder / "cases.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "target", "split"])
        writer.writerows(rows)
    return path


def good_rows(folder: Path, start: int = 0) -> list[tuple[str, int, str]]:
    """Two readable images per split, one of each class."""
    rows = []
    for k, split in enumerate(("train", "train", "val", "val", "test", "test")):
        name = f"images/ok{start + k}.png"
        write_png(folder / name, seed=100 + start + k)
        rows.append((name, k % 2, split))
    return rows


def check(overrides: list[str], **kwargs) -> dict:
    return check_config(compose_config(overrides), workers=2, progress=False, **kwargs)


def manifest_overrides(path: Path, *extra: str) -> list[str]:
    return ["dataset=manifest", f"dataset.path={path}", *extra]


def test_unreadable_files_name_the_manifest_row_and_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "empty.png").write_bytes(b"")
    (images / "noise.png").write_bytes(np.random.default_rng(0).bytes(300))
    dicom = make_dicom(np.zeros((32, 32), np.uint16))
    (images / "cut.dcm").write_bytes(dicom[: len(dicom) - 1000])
    # The empty file is the first training row: the dataset reads it to decide the channels, so the
    # construction fails there, and the check still reads every other row.
    bad = [("images/empty.png", 0, "train"), ("images/noise.png", 1, "train")]
    bad += [("images/cut.dcm", 0, "val")]
    path = write_manifest(tmp_path, bad + good_rows(tmp_path))
    report = check(manifest_overrides(path))

    assert exit_status(report) == 1 and not report["ok"]
    errors = report["errors"]
    assert len(errors) == 3, errors
    for line, name in ((2, "empty.png"), (3, "noise.png"), (4, "cut.dcm")):
        [message] = [e for e in errors if name in e]
        assert message.startswith(f"{path} line {line}: {images / name}: ")
    assert "empty" in errors[0]
    assert report["splits"]["train"]["unreadable"] == 2
    assert report["splits"]["val"]["unreadable"] == 1


def test_missing_file_and_missing_column_are_data_errors_naming_the_csv(tmp_path):
    rows = good_rows(tmp_path) + [("images/gone.png", 1, "train")]
    path = write_manifest(tmp_path, rows)
    report = check(manifest_overrides(path))
    [message] = report["errors"]
    assert exit_status(report) == 1
    assert str(path) in message and "line 8" in message and "gone.png" in message

    no_column = manifest_overrides(path, "dataset.image_column=picture")
    [message] = check(no_column)["errors"]
    assert str(path) in message and "no column 'picture'" in message


def test_every_kind_of_row_problem_is_reported_at_once(tmp_path):
    # A missing file, a typo among class indices and a misspelt split: one check names all three
    # (it stopped at the first kind before), and training's error lists them too.
    rows = good_rows(tmp_path)
    rows[1] = ("images/gone.png", 1, "train")  # line 3
    rows[3] = (rows[3][0], "l", "val")  # line 5: a letter typed for a 1
    rows[4] = (rows[4][0], 0, "tset")  # line 6
    path = write_manifest(tmp_path, rows)
    report = check(manifest_overrides(path))
    assert exit_status(report) == 1
    assert report["errors"] == [
        f"{path}: no such image file (1 of 6 rows; paths in column 'image' are relative to "
        f"{tmp_path}): line 3: {tmp_path / 'images/gone.png'}",
        f"{path}: column 'target' mixes class indices and names (1 of 6 rows holds a name): write "
        "one kind (or list the names in dataset.class_names): line 5: 'l'",
        f"{path}: column 'split' must hold train, val (or valid, validation) or test (or remove "
        "the column to split by dataset.val_fraction and dataset.test_fraction): line 6: 'tset'",
    ]
    with pytest.raises(DataError) as err:
        build_datasets(compose_config(manifest_overrides(path)))
    assert str(err.value).splitlines() == report["errors"]


def test_a_class_in_no_split_is_one_warning(tmp_path):
    # A 7 typed for a 1 makes an inferred num_classes of 8: classes 2-6 occur nowhere (one warning,
    # not one per split), class 7 only in train (val and test are told they lack it).
    rows = good_rows(tmp_path)
    rows[0] = (rows[0][0], 7, "train")
    rows[1] = (rows[1][0], 1, "train")
    report = check(manifest_overrides(write_manifest(tmp_path, rows)))
    assert exit_status(report) == 0
    assert report["warnings"] == [
        "classes '2', '3', '4', '5', '6' of dataset.num_classes=8 occur in no split: check "
        "dataset.num_classes and dataset.class_names (an inferred num_classes is the largest "
        "label + 1, so one mistyped label adds classes)",
        "train: no sample of class '0'",
        "val: no sample of class '7'",
        "test: no sample of class '7'",
    ]


def test_the_positive_class_is_said_and_a_negative_sounding_one_warned_about(tmp_path):
    """A binary task's positive class is index 1, the second name in sort order: "pneumonia"
    after "normal" is said in a note; "normal" after "abnormal" is warned about, with the fix."""
    rows = [(name, ("normal", "pneumonia")[k], split) for name, k, split in good_rows(tmp_path)]
    report = check(manifest_overrides(write_manifest(tmp_path, rows)))
    assert report["warnings"] == []
    assert (
        "the positive class (index 1) is 'pneumonia': AUC, sensitivity, specificity and the "
        "decision threshold are of it (dataset.class_names orders the classes)"
    ) in report["notes"]
    rows = [(name, ("abnormal", "normal")[k], split) for name, k, split in good_rows(tmp_path)]
    report = check(manifest_overrides(write_manifest(tmp_path, rows)))
    assert report["warnings"] == [
        "the positive class (index 1) is 'normal': AUC, sensitivity, specificity and the decision "
        "threshold are of it, and its name reads as the negative finding: if 'abnormal' is what "
        "you detect, set dataset.class_names=[normal,abnormal]"
    ]
    fixed = check(
        manifest_overrides(write_manifest(tmp_path, rows), "dataset.class_names=[normal,abnormal]")
    )
    assert fixed["warnings"] == [] and "the positive class (index 1) is 'abnormal'" in " ".join(
        fixed["notes"]
    )
    from medtrain.data.validation import reads_negative

    negative = ["Normal", "no_finding", "No Finding", "non-tumour", "healthy", "benign", "Negative"]
    assert all(map(reads_negative, negative))
    assert not any(map(reads_negative, ["abnormal", "nodule", "nonunion", "pneumonia", "tumour"]))


def test_a_rare_class_named_like_a_common_one_is_a_possible_typo(tmp_path):
    """One `pnuemonia` (a `normal` row mistyped) beside 12 `pneumonia` rows trains a third class: warned about, naming its
    row; classes that differ in a number only (grade_1, grade_2) are not."""
    rows = []
    for k in range(24):
        name = f"images/{k}.png"
        write_png(tmp_path / name, seed=k)
        rows.append((name, ("normal", "pneumonia")[k % 2], ("train", "val", "test")[k % 3]))
    rows[4] = (rows[4][0], "pnuemonia", "train")  # line 6
    report = check(manifest_overrides(write_manifest(tmp_path, rows)))
    typo = [w for w in report["warnings"] if "a typo?" in w]
    assert typo == [
        f"class 'pnuemonia' has 1 image(s) ({tmp_path / 'images/4.png'} ({tmp_path / 'cases.csv'} "
        "line 6)) and is named like 'pneumonia' (12): a typo? It trains as a class of its own; listing the "
        "classes in dataset.class_names makes a misspelt label an error"
    ]
    # The closest name is the one named ('Normal' is like 'normal' before 'abnormal').
    cased = [(n, ("abnormal", "normal")[k % 2], s) for k, (n, _, s) in enumerate(rows)]
    cased[4] = (cased[4][0], "Normal", "train")
    report = check(manifest_overrides(write_manifest(tmp_path, cased)))
    [typo] = [w for w in report["warnings"] if "a typo?" in w]
    assert "is named like 'normal' (12): a typo?" in typo
    graded = [
        (name, f"grade_{1 if k == 4 else 2 + k % 2}", split)
        for k, (name, _, split) in enumerate(rows)
    ]
    report = check(manifest_overrides(write_manifest(tmp_path, graded)))
    assert not [w for w in report["warnings"] if "a typo?" in w]
    # A multi-label manifest's labels alike: 'nodle' among 'nodule' findings.
    findings = [
        (n, ("effusion", "nodule", "effusion|nodule")[k % 3], s) for k, (n, _, s) in enumerate(rows)
    ]
    findings[4] = (findings[4][0], "effusion|nodle", "train")
    path = write_manifest(tmp_path, findings)
    report = check(manifest_overrides(path, "dataset.multilabel=true", "loss=bce"))
    assert [w for w in report["warnings"] if "a typo?" in w] == [
        f"label 'nodle' has 1 image(s) ({tmp_path / 'images/4.png'} ({path} line 6)) and is "
        "named like 'nodule' (15): a typo? It trains as a label of its own; listing the labels "
        "in dataset.class_names makes a misspelt label an error"
    ]


def test_an_image_of_another_type_or_channels_is_noted_by_name(tmp_path):
    rows = good_rows(tmp_path)
    Image.fromarray(np.full((16, 16), 300, np.uint16)).save(tmp_path / rows[2][0])  # line 4
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / rows[5][0])  # line 7
    path = write_manifest(tmp_path, rows)
    report = check(manifest_overrides(path))
    assert exit_status(report) == 0
    assert report["notes"] == [
        f"images differ in stored type: uint8 (5), uint16 (1); not uint8: "
        f"{tmp_path / rows[2][0]} ({path} line 4) (each is converted by the run's "
        "preprocessing; check that they belong)",
        f"images differ in channels: 1 (5), 3 (1); not 1: {tmp_path / rows[5][0]} ({path} line 7)"
        " (each is converted by the run's preprocessing; check that they belong)",
    ]
    # The val split's summary: 8-bit and 16-bit values each by their own type, beside the pool.
    other = np.asarray(Image.open(tmp_path / rows[3][0]), dtype=np.float64)
    stats = report["splits"]["val"]["intensity"]
    assert stats["by_dtype"]["uint16"] == {
        "images": 1,
        "min": 300,
        "max": 300,
        "mean": 300,
        "std": 0,
    }
    assert stats["by_dtype"]["uint8"] == {
        "images": 1,
        "min": other.min(),
        "max": other.max(),
        "mean": pytest.approx(other.mean()),
        "std": pytest.approx(other.std()),
    }
    assert "by_dtype" not in report["splits"]["train"]["intensity"]


def test_images_of_one_value_are_warned_about_by_name(tmp_path):
    """Blank images (an empty export, a failed acquisition) train and test on nothing: one
    warning per split, naming them and their value; images that vary are not listed."""
    rows = good_rows(tmp_path)
    for k, value in ((0, 0), (1, 0), (4, 255)):  # two training images and one test image
        Image.fromarray(np.full((16, 16), value, np.uint8)).save(tmp_path / rows[k][0])
    path = write_manifest(tmp_path, rows)
    report = check(manifest_overrides(path))
    assert exit_status(report) == 0  # a warning: training may go on
    blank = [line for line in report["warnings"] if "single value" in line]
    assert blank == [
        f"train: 2 of 2 images hold a single value (0): {tmp_path / rows[0][0]} ({path} line 2); "
        f"{tmp_path / rows[1][0]} ({path} line 3); check that they were exported or read as "
        "they should",
        f"test: 1 of 2 images hold a single value (255): {tmp_path / rows[4][0]} ({path} line 6)"
        "; check that they were exported or read as they should",
    ]


def test_images_on_another_pixel_scale_are_refused_where_the_scale_matters(tmp_path):
    """Among 8-bit images, an 8-bit one stored in 16 bits reaches a fixed-statistics network 257
    times darker, a float one of 0-255 values 255 times brighter: errors naming them. Normalized
    per image, the scale does not reach the network: a note only."""
    rows = good_rows(tmp_path)
    pixels = np.random.default_rng(3).integers(0, 256, (16, 16))
    Image.fromarray(pixels.astype(np.uint16)).save(tmp_path / rows[2][0])  # line 4
    np.save(tmp_path / "images" / "float.npy", pixels.astype(np.float32))
    rows.append(("images/float.npy", 1, "train"))  # line 8
    path = write_manifest(tmp_path, rows)
    report = check(manifest_overrides(path, "dataset.normalize.mode=fixed"))
    assert exit_status(report) == 1
    high = max(np.asarray(Image.open(tmp_path / name)).max() for name, _, _ in rows[:2])  # train
    assert sorted(report["errors"]) == sorted(
        [
            f"1 image(s) are 8-bit values stored in 16 bits (uint16 up to 255), read 257 times "
            f"darker, where most training images are uint8 of values up to {high} "
            f"(dataset.normalize.mode=fixed): {tmp_path / rows[2][0]} ({path} line 4); store "
            "them as the others are, or normalize each image (dataset.normalize.mode=zscore or "
            "percentile)",
            f"1 image(s) are float images of values outside 0-1, read as they are (0-255 values "
            f"255 times brighter), where most training images are uint8 of values up to {high} "
            f"(dataset.normalize.mode=fixed): {tmp_path / 'images/float.npy'} ({path} line 8); "
            "store them as the others are, or normalize each image "
            "(dataset.normalize.mode=zscore or percentile)",
        ]
    )
    report = check(manifest_overrides(path, "dataset.normalize.mode=zscore"))
    assert exit_status(report) == 0 and not report["errors"]


def test_label_outside_the_classes_names_the_row(tmp_path):
    rows = good_rows(tmp_path)
    write_png(tmp_path / "images/five.png", seed=7)
    path = write_manifest(tmp_path, [*rows[:2], ("images/five.png", 5, "train"), *rows[2:]])
    report = check(manifest_overrides(path, "dataset.num_classes=2"))
    assert exit_status(report) == 1
    # The constructor's summary first, then the row it was about.
    assert "label 5" in report["errors"][0]
    assert (
        f"{path} line 4: {tmp_path / 'images/five.png'}: label 5 is outside the 2 classes"
        in (report["errors"][1])
    )


def test_medmnist_label_outside_the_classes_names_the_array_entry(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    arrays["train_labels"][3] = 5
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    report = check(["dataset=medmnist", f"dataset.path={path}", "dataset.num_classes=2"])
    assert exit_status(report) == 1
    assert any(
        e.startswith(f"{path} train_images[3]: label 5 is outside") for e in report["errors"]
    )


def write_seg_folder(root: Path, names: list[str]) -> None:
    """16 x 16 images with {0, 255} masks whose every fifth pixel is foreground."""
    (root / "masks").mkdir(parents=True)
    mask = (np.arange(256).reshape(16, 16) % 5 == 0).astype(np.uint8) * 255
    for k, name in enumerate(names):
        write_png(root / "images" / f"{name}.png", seed=k)
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")


def test_segmentation_mask_of_the_wrong_size_or_class_names_the_mask(tmp_path):
    write_seg_folder(tmp_path, [f"img{k}" for k in range(6)])
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "masks/img2.png")
    three = np.zeros((16, 16), np.uint8)
    three[0, :3] = [1, 2, 3]
    Image.fromarray(three).save(tmp_path / "masks/img4.png")
    report = check(
        ["experiment=dsb2018_nuclei", f"dataset.path={tmp_path}", "dataset.val_size=1"]
        + ["dataset.test_size=1"]
    )
    assert exit_status(report) == 1
    assert sorted(report["errors"]) == [
        f"{tmp_path / 'masks/img2.png'}: mask is 12x12 but the image is 16x16",
        f"{tmp_path / 'masks/img4.png'}: mask value 3 is outside the 2 classes of "
        "dataset.num_classes=2 (3 nonzero values: if each is one object, these are instance "
        "labels: dataset.instance_labels=true; if they are classes, dataset.num_classes=4 (and "
        "dataset.class_names); else map stored values with dataset.class_values)",
    ]
    shares = report["splits"]["train"]["balance"]["pixel_fraction"]
    assert shares["nucleus"] == pytest.approx(52 / 256, abs=0.01)
    levels = np.zeros((16, 16), np.uint8)
    levels[:4, :4], levels[8:, 8:] = 128, 255  # three levels: classes, or a smoothed 0/255 mask
    Image.fromarray(levels).save(tmp_path / "masks/img4.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "masks/img2.png")  # 16x16 now
    report = check(
        ["experiment=dsb2018_nuclei", f"dataset.path={tmp_path}", "dataset.val_size=1"]
        + ["dataset.test_size=1"]
    )
    assert report["errors"] == [
        f"{tmp_path / 'masks/img4.png'}: a binary mask holds 3 values (0, 128, 255), not two: was "
        "it resized or saved with smoothing? Store 0 and one foreground value (255), resized with "
        "nearest neighbour; or, if the 3 values are classes, set dataset.num_classes=3 and "
        "dataset.class_values"
    ]
    # every mask unreadable as classes: the errors say so, no "no mask holds class" warnings
    for k in range(6):
        Image.fromarray(three).save(tmp_path / f"masks/img{k}.png")
    report = check(
        ["experiment=dsb2018_nuclei", f"dataset.path={tmp_path}", "dataset.val_size=1"]
        + ["dataset.test_size=1"]
    )
    assert len(report["errors"]) == 6
    assert not [w for w in report["warnings"] if "no mask holds" in w]


def test_a_dataset_spacing_the_files_override_is_warned_about(tmp_path):
    """PNGs saved at 300 dpi (image software's default) state 0.0847 mm, which wins over
    dataset.spacing: said, with the fix; with dataset.file_spacing=false, or tags that agree,
    nothing is said."""
    names = [f"img{k}" for k in range(6)]
    write_seg_folder(tmp_path, names)
    for name in names[:2]:
        path = tmp_path / "images" / f"{name}.png"
        Image.open(path).save(path, dpi=(300, 300))
    base = ["experiment=dsb2018_nuclei", f"dataset.path={tmp_path}", "dataset.val_size=1"]
    base += ["dataset.test_size=1", "dataset.spacing=[0.00025,0.00025]"]
    said = [w for w in check(base)["warnings"] if "dataset.spacing" in w]
    assert len(said) == 1 and said[0].startswith(
        "dataset.spacing=[0.00025, 0.00025] is not used for 2 of 6 images, whose files state "
        "another pixel spacing (e.g. "
    )
    assert "0.08467 x 0.08467 mm, a 300 dpi resolution tag)" in said[0]
    assert said[0].endswith("dataset.file_spacing=false measures every image with dataset.spacing")
    ignored = check([*base, "dataset.file_spacing=false"])["warnings"]
    assert not [w for w in ignored if "dataset.spacing" in w]
    agreeing = [*base[:-1], f"dataset.spacing=[{25.4 / 300},{25.4 / 300}]"]
    for name in names[2:]:  # every file states 300 dpi, as dataset.spacing does
        path = tmp_path / "images" / f"{name}.png"
        Image.open(path).save(path, dpi=(300, 300))
    assert not [w for w in check(agreeing)["warnings"] if "dataset.spacing" in w]


def test_quarter_turns_across_anisotropic_voxels_are_refused(tmp_path):
    """Axial volumes read in RAS order (0.7 x 0.7 x 3 mm): augmentation=volume's quarter turns in
    axes 1 and 2 would swap 0.7 and 3 mm voxels; refused, naming the plane of equal voxels.
    Turned there, or at an isotropic target_spacing, they pass."""
    from tests.data.test_volumes import make_cases

    make_cases(tmp_path, count=6, spacing=(0.7, 0.7, 3.0))
    base = ["experiment=hippocampus3d", "augmentation=volume", f"dataset.path={tmp_path}"]
    base += ["dataset.val_size=1", "dataset.test_size=1", "dataset.patch_size=[8,8,8]"]
    errors = check(base)["errors"]
    assert errors == [
        "augmentation.train: quarter turns in the plane of axes 1 and 2 (RandRotate90d "
        "spatial_axes) swap voxels of 0.7 and 3 mm (case_00: 0.7 x 0.7 x 3 mm), stretching what "
        "the network learns: turn in a plane of equal voxel sizes (here axes [0, 1]: "
        "augmentation.train.transforms.3.spatial_axes=[0,1]), set dataset.target_spacing to "
        "equal sizes, or drop RandRotate90d"
    ]
    assert not check([*base, "augmentation.train.transforms.3.spatial_axes=[0,1]"])["errors"]
    assert not check([*base, "dataset.target_spacing=[1.0,1.0,1.0]"])["errors"]
    # Voxels 1.2 times apart (an MRI of 1 x 1 x 1.2 mm) are turned; unknown sizes are not judged.
    assert not check([*base, "dataset.target_spacing=[1.0,1.0,1.2]"])["errors"]
    from medtrain.data.image_checks import anisotropic_turns
    from medtrain.engine.build import build_datasets
    from tests.conftest import compose_cfg

    unknown = build_datasets(
        compose_cfg(["experiment=synthetic_segmentation3d", "dataset.spacing=null"])
    )
    assert anisotropic_turns(unknown) is None


def test_a_loss_that_does_not_fit_the_task_is_reported_and_the_data_still_checked(tmp_path):
    # The loss reads no data: `task=segmentation` with the default loss=cross_entropy is refused
    # as training would refuse it, and the masks are checked all the same.
    write_seg_folder(tmp_path, [f"img{k}" for k in range(6)])
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "masks/img2.png")
    overrides = [
        "dataset=seg_folder",
        "task=segmentation",
        "model=unet",
        f"dataset.path={tmp_path}",
    ]
    report = check(overrides + ["dataset.val_size=1", "dataset.test_size=1"])
    assert report["config_errors"] == [
        "loss=cross_entropy is a classification loss; for task=segmentation use loss=dice_ce, "
        "dice, dice_bce, dice_focal, tversky or seg_focal"
    ]
    assert report["errors"] == [
        f"{tmp_path / 'masks/img2.png'}: mask is 12x12 but the image is 16x16"
    ]
    assert sum(s["samples"] for s in report["splits"].values()) == 6
    assert exit_status(report) == 2 and report["ok"] is False
    # Any other config error still stops before the data.
    report = check(overrides + ["dataset.val_size=1", "dataset.test_size=1", "optimizer.lr=0"])
    assert len(report["config_errors"]) == 1 and "optimizer.lr" in report["config_errors"][0]
    assert not report["splits"]


def test_image_folder_random_bytes_and_empty_file(tmp_path):
    for k in range(12):
        write_png(tmp_path / f"class{k % 2}" / f"{k}.png", seed=k)
    (tmp_path / "class0/random.png").write_bytes(np.random.default_rng(1).bytes(200))
    (tmp_path / "class1/empty.png").write_bytes(b"")
    report = check(["dataset=image_folder", f"dataset.path={tmp_path}"])
    assert exit_status(report) == 1
    errors = sorted(report["errors"])
    assert len(errors) == 2
    assert errors[0].startswith(f"{tmp_path / 'class0/random.png'}: ")
    assert errors[1] == f"{tmp_path / 'class1/empty.png'}: the file is empty"


def test_duplicates_balance_and_intensity_match_numpy(tmp_path):
    pixels = {}
    rows = []
    layout = [
        ("a", 0, "train", 1),
        ("b", 1, "train", 2),
        ("b2", 1, "train", 2),
        ("c", 0, "train", 3),
    ]
    layout += [("d", 1, "val", 1), ("e", 0, "val", 4), ("f", 1, "test", 5), ("g", 0, "test", 6)]
    for name, target, split, seed in layout:
        pixels[name] = write_png(tmp_path / f"images/{name}.png", seed=seed)
        rows.append((f"images/{name}.png", target, split))
    path = write_manifest(tmp_path, rows)
    report = check(manifest_overrides(path))

    assert exit_status(report) == 0 and report["errors"] == []
    a, d = (
        f"{tmp_path / f'images/{n}.png'} ({path} line {line})" for n, line in (("a", 2), ("d", 6))
    )
    assert report["duplicates"]["across_splits"] == {"train/val": {"images": 1, "pairs": [[a, d]]}}
    assert f"val image {d} is identical to train image {a}" in report["warnings"]
    assert any("different labels" in w and "(0)" in w and "(1)" in w for w in report["warnings"])
    within = report["duplicates"]["within_split"]["train"]
    assert (within["images"], within["copies"], len(within["groups"][0])) == (1, 1, 2)
    assert report["notes"] == [
        "train: 1 image(s) stored more than once (1 extra copies; duplicates.within_split.train "
        "lists them)"
    ]
    for split in ("train", "val", "test"):
        mine = [(n, t) for n, t, s, _ in layout if s == split]
        counts = Counter(t for _, t in mine)
        assert report["splits"][split]["balance"]["counts"] == {"0": counts[0], "1": counts[1]}
        values = np.concatenate([pixels[n].ravel() for n, _ in mine]).astype(np.float64)
        stats = report["splits"][split]["intensity"]
        assert stats["mean"] == pytest.approx(values.mean())
        assert stats["std"] == pytest.approx(values.std())
        assert (stats["min"], stats["max"]) == (values.min(), values.max())
        assert stats["dtypes"] == {"uint8": len(mine)} and stats["channels"] == {"1": len(mine)}

    strict = check(manifest_overrides(path), duplicates="error")
    assert exit_status(strict) == 1 and strict["errors"] == [
        f"val image {d} is identical to train image {a}"
    ]


def test_copies_stored_another_way_are_duplicates(tmp_path):
    """A grey PNG, its RGB and RGBA copies and a 16-bit DICOM of the same pixels show one image:
    across splits they are one duplicate; other pixels are not."""
    pixels = write_png(tmp_path / "images/a.png", seed=7)
    Image.fromarray(np.repeat(pixels[..., None], 3, -1)).save(tmp_path / "images/a_rgb.png")
    rgba = np.concatenate([np.repeat(pixels[..., None], 3, -1), np.full((16, 16, 1), 255)], -1)
    Image.fromarray(rgba.astype(np.uint8)).save(tmp_path / "images/a_rgba.png")
    (tmp_path / "images/a.dcm").write_bytes(make_dicom(pixels.astype(np.uint16), spacing=None))
    # Values rescaled (as a DICOM is shown: min-max) are the same picture; other pixels are not.
    (tmp_path / "images/a_x3.dcm").write_bytes(make_dicom(pixels.astype(np.uint16) * 3 + 40))
    other = np.random.default_rng(8).integers(0, 256, (16, 16)).astype(np.uint16)
    (tmp_path / "images/b.dcm").write_bytes(make_dicom(other, spacing=None))
    rows = [("images/a.png", 0, "train"), ("images/a_rgb.png", 0, "val")]
    rows += [("images/a_rgba.png", 0, "test"), ("images/a.dcm", 0, "test")]
    rows += [("images/a_x3.dcm", 0, "test"), ("images/b.dcm", 1, "test")]
    rows += good_rows(tmp_path)
    report = check(manifest_overrides(write_manifest(tmp_path, rows), "dataset.in_channels=3"))
    across = report["duplicates"]["across_splits"]
    assert {pair: found["images"] for pair, found in across.items()} == {
        "train/val": 1,
        "train/test": 1,
        "val/test": 1,
    }
    flat = json.dumps(across)
    assert all(name in flat for name in ("a.dcm", "a_rgba.png", "a_x3.dcm")) and "b.dcm" not in flat
    within = report["duplicates"]["within_split"]["test"]  # a_rgba.png, a.dcm and a_x3.dcm
    assert (within["images"], within["copies"]) == (1, 2)


def test_blank_images_of_other_values_are_not_one_image():
    """Ranks make every constant image alike; their value tells blank images apart."""
    from medtrain.data.image_checks import content_digest

    zero, dark = np.zeros((8, 8), np.float32), np.full((8, 8), -0.7, np.float32)
    assert content_digest(zero, 2) != content_digest(dark, 2)
    assert content_digest(zero, 2) == content_digest(np.zeros((8, 8), np.uint8), 2)
    two_levels = np.zeros((8, 8), np.uint8)
    two_levels[:4] = 200
    assert content_digest(two_levels, 2) == content_digest((two_levels > 0).astype(np.uint16), 2)


def test_images_of_several_sizes_need_an_image_size(tmp_path):
    rows = good_rows(tmp_path)
    write_png(tmp_path / "images/wide.png", seed=9, size=(16, 20))
    path = write_manifest(tmp_path, [*rows, ("images/wide.png", 0, "train")])
    report = check(manifest_overrides(path, "dataset.image_size=null"))
    assert report["errors"] == [
        "train: images have 2 sizes (16x16 ... 16x20) and dataset.image_size is null, so batches "
        "cannot be stacked: set dataset.image_size"
    ]
    assert exit_status(check(manifest_overrides(path))) == 0  # resized to 64 x 64 by default


def test_regression_targets_and_an_empty_split(tmp_path):
    cfg_overrides = ["dataset=synthetic_clinical", "task=regression", "loss=mse"]
    cfg_overrides += ["dataset.num_train=20", "dataset.num_val=6", "dataset.num_test=6"]
    cfg = compose_config(cfg_overrides)
    datasets = build_datasets(cfg)
    targets = datasets["train"].labels[:, 0].copy()
    datasets["val"].labels[2] = np.nan
    datasets["test"].ids, datasets["test"].labels = [], datasets["test"].labels[:0]
    report = check_datasets(cfg, datasets, workers=2, progress=False)
    assert report["errors"] == [
        "val sample val_00002: target [nan] is not a finite number",
        "test: the split is empty",
    ]
    [summary] = report["splits"]["train"]["balance"]["targets"].values()
    assert summary == pytest.approx(
        {"min": targets.min(), "mean": targets.mean(), "max": targets.max()}
    )
    # Names for as many values as a regression does not have are replaced, with a warning.
    named = compose_config([*cfg_overrides, "dataset.class_names=[a,b]"])
    report = check_datasets(named, build_datasets(named), workers=2, progress=False)
    assert report["warnings"] == [
        "dataset.class_names=['a', 'b'] names 2 value(s), but the regression has 1 target "
        "value(s) per image: they are named ['target'] (give one name per target value, or null)"
    ]


def test_ordinal_grades_outside_the_grade_range_name_their_rows(tmp_path):
    """An ordinal run predicts grades within task.grade_range: a grade outside a range given is an
    error naming its row (it was scored as it was); outside the training split's own range (the
    key unset) it is a warning, since the split, not the data, decides it."""
    grades = (0, 9, 1, 2, -2, 3)
    rows = [
        (name, g, split) for (name, _, split), g in zip(good_rows(tmp_path), grades, strict=True)
    ]
    path = write_manifest(tmp_path, rows)
    ordinal = ["task=regression", "loss=mse", "task.ordinal=true"]
    report = check(manifest_overrides(path, *ordinal, "task.grade_range=[0,4]"))
    assert report["errors"] == [
        f"{path} line 3: {tmp_path / rows[1][0]}: grade 9 is outside task.grade_range=[0, 4]: fix "
        "the target or widen task.grade_range",
        f"{path} line 6: {tmp_path / rows[4][0]}: grade -2 is outside task.grade_range=[0, 4]: "
        "fix the target or widen task.grade_range",
    ]
    report = check(manifest_overrides(path, *ordinal))  # the training split's grades: 0-9
    assert report["errors"] == []
    assert (
        f"{path} line 6: {tmp_path / rows[4][0]}: grade -2 is outside the training split's grades "
        "0 to 9 (task.grade_range unset): the model cannot predict it; set "
        "task.grade_range=[lowest,highest] to cover every grade"
    ) in report["warnings"]
    assert check(manifest_overrides(path, "task=regression", "loss=mse"))["errors"] == []
    # A range given that happens to be the training split's own is still given: an error.
    report = check(manifest_overrides(path, *ordinal, "task.grade_range=[0,9]"))
    assert [line.split(": grade ")[1][:30] for line in report["errors"]] == [
        "-2 is outside task.grade_range"
    ]
    # A grade of a val or test row that is not whole: an error (the metrics would round it).
    halves = [
        (name, g, split) for (name, _, split), g in zip(rows, (0, 4, 2.5, 1, 3, 1.5), strict=True)
    ]
    path = write_manifest(tmp_path, halves)
    for extra in ([], ["task.grade_range=[0,4]"]):
        report = check(manifest_overrides(path, *ordinal, *extra))
        assert report["errors"] == [
            f"{path} line {line}: {tmp_path / rows[k][0]}: grade {g} is not a whole number "
            "(task.ordinal=true): fix the target, or set task.ordinal=false for continuous values"
            for line, k, g in ((4, 2, 2.5), (7, 5, 1.5))
        ]


def test_clinical_columns_an_image_model_would_ignore_are_a_config_error(tmp_path):
    """As training refuses them: `dataset.tabular_columns` with a model that reads only images."""
    rows = good_rows(tmp_path)
    path = tmp_path / "cases.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "target", "split", "age"])
        writer.writerows([(*row, 40 + k) for k, row in enumerate(rows)])
    report = check(manifest_overrides(path, "dataset.tabular_columns=[age]"))
    assert report["config_errors"] == [
        "dataset.tabular_columns=['age']: model=cnn reads only ['image'], so these clinical columns would be ignored; use model=fusion (images and the "
        "columns together), or leave dataset.tabular_columns empty"
    ]
    fused = check(manifest_overrides(path, "dataset.tabular_columns=[age]", "model=fusion"))
    assert fused["config_errors"] == [] and fused["errors"] == []


def test_a_regression_target_of_one_value_is_warned_about(tmp_path):
    rows = [(name, 50, split) for name, _, split in good_rows(tmp_path)]
    path = write_manifest(tmp_path, rows)
    report = check(manifest_overrides(path, "task=regression", "loss=mse"))
    assert (
        report["errors"] == []
        and (
            "train: every target of 'target' is 50 (2 rows): the model has nothing to learn, and "
            "R^2 and correlations are undefined; check the target column"
        )
        in report["warnings"]
    )


def test_training_hook_writes_the_report_and_stops_on_errors(tmp_path):
    cfg = compose_config(["dataset.num_train=40", "dataset.num_val=10", "dataset.num_test=10"])
    datasets = build_datasets(cfg)
    report = check_before_training(cfg, datasets, tmp_path / "ok")
    assert report["ok"] and (tmp_path / "ok/data_report.json").is_file()
    assert report["splits"]["train"]["balance"]["counts"] == {"normal": 20, "lesion": 20}

    datasets["val"].labels[0] = 7
    with pytest.raises(DataError, match=r"1 problem.*\nval sample val_00000: label 7 is outside"):
        check_before_training(cfg, datasets, tmp_path / "bad")
    saved = json.loads((tmp_path / "bad/data_report.json").read_text())
    assert saved["ok"] is False and len(saved["errors"]) == 1


def test_cli_options_and_config_errors(tmp_path, capsys):
    assert main(["--help"]) == 0 and "check.duplicates" in capsys.readouterr().out
    assert main(["check.nope=1"]) == 2 and "unknown key 'nope'" in capsys.readouterr().err
    assert main(["check.workers=0"]) == 2 and "check.workers=0" in capsys.readouterr().err
    assert main(["check.workers=true"]) == 2 and "whole number" in capsys.readouterr().err
    assert main(["dataset.nope=1"]) == 2 and "nope" in capsys.readouterr().err
    # A config error found while building (no such folder) still writes the report.
    status = main(
        ["dataset=image_folder", f"dataset.path={tmp_path / 'none'}"] + [f"check.output={tmp_path}"]
    )
    assert status == 2 and "config error: dataset.path=" in capsys.readouterr().err
    assert json.loads((tmp_path / "data_report.json").read_text())["config_errors"]
    # A run's folder keeps its own report (predict and serve read its pixel scale from it).
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "data_report.json").write_text('{"mine": 1}')
    assert main([f"check.output={run}"]) == 2
    assert "holds a run (checkpoints), whose data_report.json" in capsys.readouterr().err
    assert (run / "data_report.json").read_text() == '{"mine": 1}'


def test_python_m_check_data_prints_one_line_per_problem(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images/empty.png").write_bytes(b"")
    path = write_manifest(tmp_path, good_rows(tmp_path) + [("images/empty.png", 1, "val")])
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "medtrain", "check-data", "dataset=manifest", f"dataset.path={path}"]
        + [f"check.output={out}", "check.workers=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"error: {path} line 8: {tmp_path / 'images/empty.png'}: the file is empty"
    ]
    assert f"report: {out / 'data_report.json'}" in done.stdout
    assert json.loads((out / "data_report.json").read_text())["splits"]["val"]["samples"] == 3


@pytest.mark.realdata
@pytest.mark.skipif(not PNEUMONIA.is_file(), reason="needs ../shared/data/medmnist")
def test_pneumoniamnist_train_and_val_share_8_images():
    report = check(["experiment=pneumoniamnist", f"dataset.path={PNEUMONIA}"])
    across = report["duplicates"]["across_splits"]
    # 8 distinct images occur in both splits; 2 of them twice in train, hence 10 pairs.
    assert list(across) == ["train/val"]
    assert across["train/val"]["images"] == 8 and len(across["train/val"]["pairs"]) == 10
    within = report["duplicates"]["within_split"]
    assert (within["train"]["images"], within["train"]["copies"]) == (18, 18)
    assert (within["test"]["images"], within["test"]["copies"]) == (3, 3)
    assert exit_status(report) == 0 and len(report["warnings"]) == 10
    assert report["splits"]["train"]["balance"]["counts"] == {"normal": 1214, "pneumonia": 3494}


def test_entries_of_a_cv_fold_are_named_by_their_place_in_the_file(tmp_path):
    """A fold's val split holds entries of the file's train array: messages named them by their
    position in the fold (val_images[2211] of a file of 524 val images)."""
    from omegaconf import OmegaConf

    from medtrain.data.folds import regrouped
    from medtrain.data.medmnist import MedMNIST
    from medtrain.data.validation import Names
    from tests.data.test_datasets import write_npz

    path = tmp_path / "d.npz"
    write_npz(path)
    train = MedMNIST(str(path), "train")
    fold_val = regrouped([(train, [7, 3])], "val", None)
    names = Names(OmegaConf.create({"dataset": {"path": str(path)}}), fold_val)
    assert names.name(0) == f"{path} train_images[7]"
    assert names.name(1) == f"{path} train_images[3]"
