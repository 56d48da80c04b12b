"""CSV manifests: targets, splits, clinical columns and the errors a user sees for a bad row."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medtrain.data.manifest import Manifest
from medtrain.errors import ConfigError, DataError
from tests.conftest import train_in_process


def write_png(path: Path, brightness: int, size: int = 16, seed: int = 0) -> None:
    noise = np.random.default_rng(seed).integers(-20, 21, (size, size))
    pixels = np.clip(brightness + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def make_cases(folder: Path, targets: list, extra: dict[str, list] | None = None) -> Path:
    """One PNG per target under `folder/images` (brighter for class 1 / larger targets) and a
    `cases.csv` with columns image, target and any `extra` columns."""
    extra = extra or {}
    rows = []
    for i, target in enumerate(targets):
        name = f"images/case{i:03d}.png"
        bright = target > 50 if isinstance(target, float) else target in (1, "malignant")
        write_png(folder / name, 180 if bright else 60, seed=i)
        rows.append([name, target, *(values[i] for values in extra.values())])
    return write_csv(folder / "cases.csv", ["image", "target", *extra], rows)


def build_all(csv_path: Path, **kwargs) -> dict[str, Manifest]:
    return {s: Manifest(str(csv_path), s, **kwargs) for s in ("train", "val", "test")}


def test_class_names_are_sorted_strings_and_labels_follow_them(tmp_path):
    names = ["malignant", "benign", "cyst"] * 4
    splits = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    path = make_cases(tmp_path, names, {"split": splits})
    data = build_all(path)
    for ds in data.values():
        assert ds.class_names == ["benign", "cyst", "malignant"] and ds.num_classes == 3
    train = data["train"]
    assert train.in_channels == 1 and len(train) == 6
    for i in range(len(train)):
        row = int(train.ids[i][len("images/case") : -len(".png")])
        assert train.class_names[train[i]["label"].item()] == names[row]
    sample = train[0]
    assert sample["image"].shape == (1, 16, 16) and sample["label"].dtype == torch.int64
    assert "tabular" not in sample


def test_integer_targets_are_class_indices(tmp_path):
    path = make_cases(tmp_path, [0, 1, 2, 1] * 5)
    ds = Manifest(str(path), "train", val_fraction=0.2, test_fraction=0.2)
    assert ds.num_classes == 3 and ds.class_names == ["0", "1", "2"]


def test_regression_targets_are_the_csv_values(tmp_path):
    values = [12.5, 80.0, 33.25, 71.0, 5.0, 64.5, 18.0, 90.0, 44.0, 52.5]
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    path = make_cases(tmp_path, values, {"split": splits})
    ds = Manifest(str(path), "train", regression=True)
    assert ds.num_classes == 1 and ds.multilabel is False
    assert ds.labels.dtype == np.float64 and ds.labels.shape == (6, 1)
    np.testing.assert_array_equal(ds.labels[:, 0], np.asarray(values[:6], dtype=float))
    assert ds[1]["label"].tolist() == [80.0]
    test = Manifest(str(path), "test", regression=True)
    np.testing.assert_array_equal(test.labels[:, 0], np.asarray(values[8:], dtype=float))


def test_several_regression_columns_are_values_as_written(tmp_path):
    # 95.295 is no float32: the targets keep the CSV's values (predictions.csv showed
    # 95.29499816894531), one per target column, named by the columns.
    sizes = [95.295, 12.1, 33.3, 71.7, 5.05, 64.4, 18.8, 90.9, 44.4, 52.2]
    grades = list(range(10))
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    path = make_cases(tmp_path, sizes, {"grade": grades, "split": splits})
    ds = Manifest(str(path), "train", regression=True, target_column=["target", "grade"])
    assert ds.num_classes == 2 and ds.class_names == ["target", "grade"]
    np.testing.assert_array_equal(ds.labels, np.array([sizes[:6], grades[:6]], dtype=float).T)
    assert repr(float(ds.labels[0, 0])) == "95.295"
    with pytest.raises(ConfigError, match=r"several columns are several values per image for "):
        Manifest(str(path), "train", target_column=["target", "grade"])
    with pytest.raises(DataError, match=r"no column 'size' for dataset.target_column\[1\]"):
        Manifest(str(path), "train", regression=True, target_column=["target", "size"])
    named = Manifest(
        str(path),
        "train",
        regression=True,
        target_column=["target", "grade"],
        class_names=["size_mm", "grade"],
    )
    assert named.class_names == ["size_mm", "grade"]
    with pytest.raises(ConfigError, match=r"dataset.class_names=\['size'\] has 1 name\(s\), but"):
        Manifest(
            str(path),
            "train",
            regression=True,
            target_column=["target", "grade"],
            class_names=["size"],
        )
    with pytest.raises(ConfigError, match=r"dataset.target_column=\[\]: name the column"):
        Manifest(str(path), "train", regression=True, target_column=[])


def test_split_column_is_honoured_with_its_aliases(tmp_path):
    splits = ["train", "Valid", "test", "TRAIN", "validation", "val", "train", "test"]
    path = make_cases(tmp_path, [0, 1] * 4, {"split": splits, "case": list("abcdefgh")})
    data = build_all(path, id_column="case")
    assert data["train"].ids == ["a", "d", "g"]
    assert data["val"].ids == ["b", "e", "f"]
    assert data["test"].ids == ["c", "h"]


def test_seeded_split_is_the_same_for_every_split_and_run(tmp_path):
    path = make_cases(tmp_path, [0, 1] * 20)
    first, again = build_all(path, seed=3), build_all(path, seed=3)
    for split in first:
        assert first[split].ids == again[split].ids
    ids = [set(first[s].ids) for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set.union(*ids) == {f"images/case{i:03d}.png" for i in range(40)}
    assert [len(first[s]) for s in ("train", "val", "test")] == [28, 6, 6]
    for ds in first.values():  # stratified: each split holds both classes equally
        assert ds.labels.sum() * 2 == len(ds)
    other = build_all(path, seed=4)
    assert other["test"].ids != first["test"].ids


def test_tabular_columns_are_encoded_from_training_rows(tmp_path):
    n = 12
    ages = ["50", "61", "", "45", "70", "38", "59", "66", "NA", "72", "41", "55"]
    sex = ["F", "M"] * 6
    splits = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    path = make_cases(tmp_path, [0, 1] * 6, {"split": splits, "age": ages, "sex": sex})
    data = build_all(path, tabular_columns=["age", "sex"])
    train = data["train"]
    assert train.tabular_names == ["age", "age_missing", "sex=F", "sex=M"]
    assert train.num_features == 4 and data["test"].num_features == 4
    sample = data["val"][0]
    assert sample["tabular"].dtype == torch.float32 and sample["tabular"].shape == (4,)
    present = np.array([float(a) for a in ages[:8] if a])
    expected = (float(ages[0]) - present.mean()) / present.std()
    assert train[0]["tabular"][0].item() == pytest.approx(expected, rel=1e-5)
    assert sample["tabular"][1].item() == 1.0  # line 10 (the first val row) holds NA
    assert len(train) + len(data["val"]) + len(data["test"]) == n


def test_missing_column_names_the_closest_one(tmp_path):
    path = make_cases(tmp_path, [0, 1] * 3)
    with pytest.raises(DataError, match=r"no column 'Targets' for dataset.target_column") as err:
        Manifest(str(path), "train", target_column="Targets")
    assert "closest: 'target'" in str(err.value) and "['image', 'target']" in str(err.value)
    with pytest.raises(DataError, match=r"no column 'label' .* has columns") as err:
        Manifest(str(path), "train", target_column="label")
    assert "closest" not in str(err.value)
    # The one column nothing else claims is named as the fix.
    with pytest.raises(DataError, match=r"target_column \(dataset.target_column=target\?\)"):
        Manifest(str(path), "train", image_column="image", target_column="label", split_column=None)
    # A user's own column names (file, diagnosis, age) with the default keys: the column of file
    # names is named for image_column; no far-fetched "closest" (image -> age, target -> age).
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text("file,diagnosis,age\nimages/case000.png,normal,40\n")
    with pytest.raises(DataError) as err:
        Manifest(str(csv_path), "train")
    assert str(err.value).startswith(
        f"{csv_path}: no column 'image' for dataset.image_column (dataset.image_column=file?); "
        "no column 'target' for dataset.target_column (dataset.target_column=diagnosis?); the "
        "CSV has columns"
    )
    # A label column beside a patient column (two unclaimed): named by its usual name.
    csv_path.write_text("image,patient,label\nimages/case000.png,p1,normal\n")
    with pytest.raises(DataError, match=r"target_column \(dataset.target_column=label\?\)"):
        Manifest(str(csv_path), "train")


def test_missing_image_names_the_line_and_path(tmp_path):
    path = make_cases(tmp_path, [0, 1] * 3)
    (tmp_path / "images" / "case001.png").unlink()
    with pytest.raises(DataError, match=r"cases.csv: no such image file") as err:
        Manifest(str(path), "val")
    assert f"line 3: {tmp_path / 'images' / 'case001.png'}" in str(err.value)


def test_many_missing_images_are_summarised(tmp_path):
    path = make_cases(tmp_path, [0, 1] * 4)
    for i in range(5):
        (tmp_path / "images" / f"case{i:03d}.png").unlink()
    with pytest.raises(DataError, match=r"line 2: .*line 3: .*line 4: .*; and 2 more$"):
        Manifest(str(path), "train")


def test_bad_split_value_names_the_line(tmp_path):
    path = make_cases(tmp_path, [0, 1, 0], {"split": ["train", "trian", "test"]})
    with pytest.raises(DataError, match=r"must hold train, val .*: line 3: 'trian'"):
        Manifest(str(path), "train")


def test_non_numeric_regression_target_names_the_line(tmp_path):
    path = make_cases(tmp_path, [1.5, 2.5, 3.5, 4.5])
    rows = read_rows(path)
    rows[4][1] = "n/a?"
    write_csv(path, rows[0], rows[1:])
    with pytest.raises(DataError, match=r"column 'target' needs a number: line 5: 'n/a\?'$"):
        Manifest(str(path), "train", regression=True)
    # Missing, misspelt and infinite targets are named together (a missing one hid the others).
    rows[2][1], rows[3][1], rows[4][1] = "nan", "x", "inf"
    write_csv(path, rows[0], rows[1:])
    with pytest.raises(DataError) as err:
        Manifest(str(path), "train", regression=True)
    assert str(err.value).endswith(
        "task=regression: column 'target' needs a number (1 missing): "
        "line 3: 'nan'; line 4: 'x'; line 5: 'inf'"
    )
    rows[2][1], rows[3][1], rows[4][1] = "", "NA", "4.5"
    write_csv(path, rows[0], rows[1:])
    with pytest.raises(
        DataError, match=r"column 'target' is missing a target: line 3; line 4: 'NA'$"
    ):
        Manifest(str(path), "train", regression=True)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: rows[2].__setitem__(1, ""), r"column 'target' is missing a target: line 3"),
        (lambda rows: rows[3].__setitem__(0, rows[1][0]), r"line 4 repeats .* of line 2"),
        (lambda rows: rows[1].__setitem__(1, "0.5"), r"not class indices .*: line 2: '0.5'"),
    ],
)
def test_bad_rows_are_reported_by_line(tmp_path, edit, message):
    path = make_cases(tmp_path, [0, 1] * 3)
    rows = read_rows(path)
    edit(rows)
    write_csv(path, rows[0], rows[1:])
    with pytest.raises(DataError, match=message):
        Manifest(str(path), "train")


def test_unusable_files_and_config_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"no such file"):
        Manifest(str(tmp_path / "absent.csv"), "train")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty.csv: the file is empty"):
        Manifest(str(tmp_path / "empty.csv"), "train")
    write_png(tmp_path / "a.png", 0)
    write_csv(tmp_path / "noheader.csv", ["a.png", "0"], [["a.png", "1"]])
    with pytest.raises(DataError, match=r"looks like data: add a header line"):
        Manifest(str(tmp_path / "noheader.csv"), "train")
    path = make_cases(tmp_path, [0, 1] * 3)
    with pytest.raises(ConfigError, match=r"dataset.tabular_columns=\['target'\]"):
        Manifest(str(path), "train", tabular_columns=["target"])
    with pytest.raises(ConfigError, match=r"dataset.val_fraction=1.5"):
        Manifest(str(path), "train", val_fraction=1.5)
    # Excel's other CSVs: semicolons, Latin-1 (the line of the first bad byte), Windows paths.
    text = path.read_text()
    (tmp_path / "semicolons.csv").write_text(text.replace(",", ";"))
    with pytest.raises(DataError) as err:
        Manifest(str(tmp_path / "semicolons.csv"), "train")
    assert str(err.value) == (
        f"{tmp_path / 'semicolons.csv'}: line 1: the header 'image;target' is one column: the "
        "file separates its columns with ';'; save it with commas (in Excel: CSV UTF-8, comma "
        "delimited), the decimal point a dot"
    )
    lines = text.splitlines()
    lines[3] += ",Zürich"
    lines[0] += ",site"
    latin = "\n".join(line + ("" if "," * 2 in line else ",x") for line in lines) + "\n"
    (tmp_path / "latin1.csv").write_bytes(latin.replace(",x,Zürich", ",Zürich").encode("latin-1"))
    with pytest.raises(DataError) as err:
        Manifest(str(tmp_path / "latin1.csv"), "train")
    assert str(err.value) == (
        f"{tmp_path / 'latin1.csv'}: line 4: byte 0xfc ('ü' in Latin-1) is not UTF-8 text; save "
        "the file as UTF-8 (in Excel: CSV UTF-8)"
    )
    (tmp_path / "windows.csv").write_text(text.replace("images/", "images\\"))
    with pytest.raises(DataError) as err:
        Manifest(str(tmp_path / "windows.csv"), "train")
    assert (
        "the paths are written with \\ as on Windows: write them with / ('images\\case000.png' "
        f"is {tmp_path / 'images' / 'case000.png'})"
    ) in str(err.value)


def test_absolute_paths_and_rgb_images(tmp_path):
    rows = []
    for i in range(6):
        file = tmp_path / "elsewhere" / f"{i}.png"
        file.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 40 * (i % 2), dtype=np.uint8)).save(file)
        rows.append([str(file), i % 2, ["train", "train", "val", "val", "test", "test"][i]])
    path = write_csv(tmp_path / "m.csv", ["image", "target", "split"], rows)
    ds = Manifest(str(path), "test")
    assert ds.in_channels == 3 and ds[0]["image"].shape == (3, 8, 8)


def classification_run(tmp_path: Path, extra: list[str]) -> dict:
    path = make_cases(tmp_path / "data", [0, 1] * 20)
    overrides = [
        "dataset=manifest",
        f"dataset.path={path}",
        "dataset.image_size=16",
        "trainer.max_epochs=1",
        "trainer.batch_size=8",
        "trainer.progress=false",
        *extra,
    ]
    return train_in_process(tmp_path / "run", overrides)


def test_trains_end_to_end_through_the_config(tmp_path):
    metrics = classification_run(tmp_path, [])
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert math.isfinite(metrics["test/auc"]) and math.isfinite(metrics["test/loss"])


def test_regression_trains_end_to_end_through_the_config(tmp_path):
    targets = [float(v) for v in np.linspace(10, 90, 40)]
    path = make_cases(tmp_path / "data", targets, {"age": [str(30 + i) for i in range(40)]})
    overrides = [
        "dataset=manifest",
        f"dataset.path={path}",
        "dataset.image_size=16",
        "dataset.tabular_columns=[age]",
        "model=fusion",  # the image and the tabular column both reach the model
        "task=regression",
        "loss=mse",
        "trainer.max_epochs=1",
        "trainer.batch_size=8",
        "trainer.progress=false",
    ]
    metrics = train_in_process(tmp_path / "run", overrides)
    assert (tmp_path / "run" / "predictions.csv").is_file()
    assert math.isfinite(metrics["test/mae"]) and math.isfinite(metrics["test/loss"])
    # An image model would ignore the column the config lists: refused before training.
    image_only = [o for o in overrides if o != "model=fusion"]
    with pytest.raises(ConfigError) as err:
        train_in_process(tmp_path / "image_only", image_only)
    assert str(err.value) == (
        "dataset.tabular_columns=['age']: model=cnn reads only ['image'], so these clinical "
        "columns would be ignored; use model=fusion (images and the columns together), or leave "
        "dataset.tabular_columns empty"
    )


def test_a_run_of_grouped_data_records_each_case_s_group_for_its_intervals(tmp_path):
    """dataset.group_column: the run folder's groups.json maps every case to its patient; the
    report says the intervals resample the test split's patients."""
    import json

    patients = [f"p{i // 3}" for i in range(36)]  # 3 images per patient
    path = make_cases(tmp_path / "data", [(i // 3) % 2 for i in range(36)], {"patient": patients})
    run = tmp_path / "run"
    overrides = ["dataset=manifest", f"dataset.path={path}", "dataset.group_column=patient"]
    overrides += ["dataset.image_size=16", "trainer.max_epochs=1", "trainer.progress=false"]
    train_in_process(run, overrides)
    groups = json.loads((run / "groups.json").read_text())
    with open(path, newline="") as f:
        assert groups == {row["image"]: row["patient"] for row in csv.DictReader(f)}
    html = (run / "report.html").read_text(encoding="utf-8")
    test_ids = json.loads((run / "splits.json").read_text())["test"]
    patients_in_test = len({groups[i] for i in test_ids})
    assert 1 < patients_in_test < 10  # too few to resample: said, and the cases resampled
    assert (
        f"percentile bootstrap over the {len(test_ids)} test cases, each case alone: their "
        f"{patients_in_test} groups are too few to resample (at least 10)"
    ) in html


def test_a_cv_fold_standardizes_clinical_columns_on_its_own_training_cases(tmp_path):
    from medtrain.data.folds import assign_folds
    from medtrain.engine.build import build_datasets
    from medtrain.io import save_json
    from tests.conftest import compose_cfg

    ages = [str(30 + 3 * i) if i % 7 else "" for i in range(24)]
    sex = ["F", "M", "M"] * 8
    splits = ["train"] * 14 + ["val"] * 6 + ["test"] * 4
    path = make_cases(tmp_path, [0, 1] * 12, {"split": splits, "age": ages, "sex": sex})
    overrides = [
        "dataset=manifest",
        f"dataset.path={path}",
        "augmentation=none",
        "dataset.image_size=16",
    ]
    overrides.append("dataset.tabular_columns=[age,sex]")
    native = build_datasets(compose_cfg(overrides))
    pool = list(native["train"].ids) + list(native["val"].ids)
    folds = assign_folds(pool, 2, seed=0)
    save_json(tmp_path / "folds.json", {"folds": 2, "seed": 0, "ids": pool, "fold": folds.tolist()})
    cfg = compose_cfg([*overrides, f"+cv.folds_file={tmp_path / 'folds.json'}", "+cv.fold=1"])
    fold = build_datasets(cfg)
    # Every case's age standardized by the mean and sd of the ages of the fold's training cases.
    age = {f"images/case{i:03d}.png": a for i, a in enumerate(ages)}
    known = np.array([float(age[c]) for c in fold["train"].ids if age[c]])
    assert len(known) < 20  # not the data's own train split (14 cases) nor the pool (20)
    for split in ("train", "val", "test"):
        dataset = fold[split]
        assert dataset.tabular_names == ["age", "age_missing", "sex=F", "sex=M"]
        for k, case in enumerate(dataset.ids):
            if age[case]:
                expected = (float(age[case]) - known.mean()) / known.std()
                assert dataset.tabular[k][0] == pytest.approx(expected, rel=1e-5), (split, case)
    standardized = fold["train"].tabular[[bool(age[c]) for c in fold["train"].ids], 0]
    assert standardized.mean() == pytest.approx(0, abs=1e-6)
    assert standardized.std() == pytest.approx(1, abs=1e-5)


def test_a_regression_target_beyond_float32_is_named(tmp_path):
    """1e300 for a target: in a training row the loss became NaN (with advice about the learning
    rate), in a val row training ended with val/loss inf and val/mae 1.7e299."""
    targets = [float(10 * i) for i in range(12)]
    targets[5] = 1e300
    csv_path = make_cases(tmp_path, targets)
    with pytest.raises(DataError, match=r"target of images/case005.png in split .* is 1e\+300; "):
        Manifest(str(csv_path), "train", regression=True, seed=0)


def test_joined_labels_are_said_to_be_classes_of_their_own(tmp_path):
    """`effusion;nodule` is one class of its own (a manifest holds one class per image): warned
    about, since a user meant several labels of one image."""
    path = make_cases(tmp_path, ["effusion", "effusion;nodule", "nodule"] * 3)
    data = Manifest(str(path), "train", val_fraction=0, test_fraction=0)
    assert data.class_names == ["effusion", "effusion;nodule", "nodule"]
    assert data.data_warnings["joined_labels"] == (
        f"{path}: column 'target' holds 1 value(s) that join labels (e.g. 'effusion;nodule'): "
        "each distinct value is one class of its own (3 classes), not several labels of one "
        "image; for several labels per image set dataset.multilabel=true (and "
        "dataset.label_separator when they are not joined by '|')"
    )


def multilabel_cases(folder: Path, columns: dict[str, list]) -> Path:
    """Six images (two per split) and a `cases.csv` with columns image, split and `columns`."""
    splits = ["train", "train", "val", "val", "test", "test"]
    rows = []
    for k, split in enumerate(splits):
        name = f"images/case{k}.png"
        write_png(folder / name, 60 + 20 * k, seed=k)
        rows.append([name, split, *(values[k] for values in columns.values())])
    return write_csv(folder / "cases.csv", ["image", "split", *columns], rows)


def test_multilabel_targets_from_one_0_1_column_per_label(tmp_path):
    """CheXpert's form: a 0/1 column per finding (also true/false, yes/no), the columns naming the
    labels; each image a 0/1 vector, in the order of `dataset.target_column`."""
    path = multilabel_cases(
        tmp_path,
        {
            "effusion": ["1", "0", "true", "no", "1.0", "0"],
            "nodule": ["0", "1", "yes", "0", "1", "False"],
            "age": ["50"] * 6,
        },
    )
    data = build_all(path, multilabel=True, target_column=["nodule", "effusion"])
    for ds in data.values():
        assert ds.multilabel and ds.num_classes == 2 and ds.class_names == ["nodule", "effusion"]
    assert data["train"].labels.tolist() == [[0, 1], [1, 0]]
    assert data["val"].labels.tolist() == [[1, 1], [0, 0]]
    assert data["test"].labels.tolist() == [[1, 1], [0, 0]]
    assert data["train"].labels.dtype == np.float32  # BCE's targets
    assert data["val"][0]["label"].tolist() == [1.0, 1.0]
    # dataset.class_names names the columns, in the order wanted (it renamed them by position:
    # each label trained under another's name).
    ordered = Manifest(
        str(path),
        "train",
        multilabel=True,
        target_column=["nodule", "effusion"],
        class_names=["effusion", "nodule"],
    )
    assert ordered.class_names == ["effusion", "nodule"]
    assert ordered.labels.tolist() == [[1, 0], [0, 1]]
    for names, said in (
        (
            ["Nodule", "effusion"],
            "'Nodule' names no column (like 'nodule'?); column 'nodule' is left out",
        ),
        (["nodule"], "column 'effusion' is left out"),
        (["nodule", "nodule", "effusion"], "'nodule' is named twice"),
    ):
        with pytest.raises(ConfigError) as err:
            Manifest(
                str(path),
                "train",
                multilabel=True,
                target_column=["nodule", "effusion"],
                class_names=names,
            )
        assert str(err.value) == (
            f"dataset.class_names={names}: with one 0/1 column per label the names are the "
            "columns of dataset.target_column=['nodule', 'effusion'], in the order wanted: "
            f"{said}"
        )


def test_multilabel_targets_from_one_column_of_joined_names(tmp_path):
    """ChestX-ray14's form: `Effusion|Nodule` in one column, `dataset.no_label` for an image with
    none; the labels are the sorted names found, or `dataset.class_names` in its order."""
    cells = ["Effusion|Nodule", "No Finding", "Nodule", "Effusion", "Nodule | Effusion", "Mass"]
    path = multilabel_cases(tmp_path, {"finding": cells})
    data = build_all(path, multilabel=True, target_column="finding", no_label="No Finding")
    assert data["train"].class_names == ["Effusion", "Mass", "Nodule"]
    assert data["train"].labels.tolist() == [[1, 0, 1], [0, 0, 0]]
    assert data["val"].labels.tolist() == [[0, 0, 1], [1, 0, 0]]
    assert data["test"].labels.tolist() == [[1, 0, 1], [0, 1, 0]]
    ordered = Manifest(
        str(path),
        "test",
        multilabel=True,
        target_column="finding",
        no_label="No Finding",
        class_names=["Nodule", "Mass", "Effusion"],
    )
    assert ordered.labels.tolist() == [[1, 0, 1], [0, 1, 0]]
    # Another separator, and an empty cell for none of the labels.
    path = multilabel_cases(tmp_path, {"finding": ["a;b", "", "b", "a", "a", "b"]})
    ds = Manifest(
        str(path),
        "train",
        multilabel=True,
        target_column="finding",
        label_separator=";",
        no_label="",
    )
    assert ds.class_names == ["a", "b"] and ds.labels.tolist() == [[1, 1], [0, 0]]
    # `no_label` in any case ('no finding' among 'No Finding'); a number is its text; a yes/no
    # flag (YAML's `no_label: No`) is refused by key.
    path = multilabel_cases(tmp_path, {"finding": ["a", "no finding", "b", "0", "a|b", "b"]})
    ds = Manifest(
        str(path), "train", multilabel=True, target_column="finding", no_label="No Finding"
    )
    assert ds.labels.tolist() == [[0, 1, 0], [0, 0, 0]] and ds.class_names == ["0", "a", "b"]
    ds = Manifest(str(path), "val", multilabel=True, target_column="finding", no_label=0)
    assert ds.class_names == ["a", "b", "no finding"] and ds.labels.tolist() == [
        [0, 1, 0],
        [0, 0, 0],
    ]
    with pytest.raises(ConfigError, match="dataset.no_label=False: give the text of a cell"):
        Manifest(str(path), "train", multilabel=True, target_column="finding", no_label=False)


def test_multilabel_cells_that_are_no_labels_are_named_by_line_at_once(tmp_path):
    """A CheXpert uncertain -1, an empty 0/1 cell, a name outside `dataset.class_names`, 'No
    Finding' joined with a finding and an empty cell without `dataset.no_label`: each row named
    in one error, with what to do."""
    path = multilabel_cases(
        tmp_path,
        {"effusion": ["-1", "", "1", "0", "1", "2"], "nodule": ["0", "1", "1", "0", "1", "0"]},
    )
    with pytest.raises(DataError) as err:
        Manifest(str(path), "train", multilabel=True, target_column=["effusion", "nodule"])
    assert str(err.value) == (
        f"{path}: dataset.multilabel=true: rows without readable labels: line 2: column "
        "'effusion' holds '-1', not 0 or 1 (uncertain: decide it as 0 or 1 in the CSV); line 3: "
        "column 'effusion' holds '', not 0 or 1 (an empty cell is no answer: write 0 or 1); "
        "line 7: column 'effusion' holds '2', not 0 or 1"
    )
    cells = ["Effusion", "No Finding|Nodule", "", "Nodle", "Nodule", "Effusion"]
    path = multilabel_cases(tmp_path, {"finding": cells})
    with pytest.raises(DataError) as err:
        Manifest(
            str(path),
            "train",
            multilabel=True,
            target_column="finding",
            no_label="No Finding",
            class_names=["Effusion", "Nodule"],
        )
    assert str(err.value) == (
        f"{path}: dataset.multilabel=true: rows without readable labels: line 3: 'No "
        "Finding|Nodule' joins 'No Finding' (dataset.no_label) with labels; line 4: column "
        "'finding' is empty (an image without any label: set dataset.no_label to the value that "
        "says so, e.g. 'No Finding', or '' for an empty cell); line 5: 'Nodle': 'Nodle' not in "
        "['Effusion', 'Nodule']"
    )


def test_multilabel_settings_that_cannot_hold_are_refused(tmp_path):
    path = multilabel_cases(tmp_path, {"finding": ["a", "a", "a", "a", "a", "a"], "b": ["1"] * 6})
    with pytest.raises(
        DataError, match="holds only the label 'a': dataset.multilabel=true needs at"
    ):
        Manifest(str(path), "train", multilabel=True, target_column="finding")
    with pytest.raises(ConfigError, match="task=regression predicts numbers"):
        Manifest(str(path), "train", multilabel=True, regression=True, target_column="b")
    with pytest.raises(ConfigError, match="or one 0/1 column per label with dataset.multilabel"):
        Manifest(str(path), "train", target_column=["finding", "b"])
    with pytest.raises(ConfigError, match="holds 0/1 values, one label: that is binary class"):
        Manifest(str(path), "train", multilabel=True, target_column="b")
    with pytest.raises(ConfigError, match="dataset.label_separator=''"):
        Manifest(str(path), "train", multilabel=True, target_column="finding", label_separator="")
    # A label in no row (or in every row) cannot be learnt: a warning naming it.
    path = multilabel_cases(tmp_path, {"a": ["1", "0", "1", "0", "1", "0"], "b": ["0"] * 6})
    ds = Manifest(str(path), "train", multilabel=True, target_column=["a", "b"])
    assert ds.data_warnings["labels_in_no_row"] == (
        f"{path}: label(s) 'b' in no row: the model cannot learn them, and their AUC is undefined"
    )


def test_a_group_column_given_as_a_clinical_input_is_warned_about(tmp_path):
    patients = [f"p{k // 2}" for k in range(12)]
    path = make_cases(tmp_path, [0, 1] * 6, {"patient": patients, "age": list(range(12))})
    ds = Manifest(str(path), "train", group_column="patient", tabular_columns=["patient", "age"])
    assert ds.data_warnings["group_as_input"] == (
        "dataset.tabular_columns holds 'patient', the dataset.group_column: the model gets each "
        "image's group (its patient) as an input and can memorise it, while val and test hold "
        "groups it never trained on"
    )
    assert "group_as_input" not in Manifest(
        str(path), "train", group_column="patient", tabular_columns=["age"]
    ).__dict__.get("data_warnings", {})


def test_joined_labels_that_are_likely_no_labels_are_said(tmp_path):
    """From trial I: `Effusion|` (a trailing separator) names Effusion; `Pneumonia;Bright` where
    `|` joins, and `No Finding` without dataset.no_label (never given with another label), train
    as labels of their own: warned about, naming the key to set."""
    cells = ["Effusion|", "No Finding", "Effusion|Mass", "Pneumonia;Bright", "Mass", "No Finding"]
    path = multilabel_cases(tmp_path, {"finding": cells})
    ds = Manifest(str(path), "train", multilabel=True, target_column="finding")
    assert ds.class_names == ["Effusion", "Mass", "No Finding", "Pneumonia;Bright"]
    assert ds.labels.tolist() == [[1, 0, 0, 0], [0, 0, 1, 0]]
    assert ds.data_warnings["labels_joined_otherwise"] == (
        f"{path}: label(s) 'Pneumonia;Bright' hold another separator than "
        "dataset.label_separator='|': each is a label of its own; set dataset.label_separator, "
        "or correct those cells"
    )
    assert ds.data_warnings["no_label:No Finding"] == (
        f"{path}: label 'No Finding' is never given with another: if it says an image has none "
        "of the labels, set 'dataset.no_label=No Finding' (it trains as a label of its own)"
    )
    # `No Finding|` is the cell of no label too (a trailing separator after it).
    cells = ["a", "No Finding|", "b", "a|b", "No Finding", "b"]
    path = multilabel_cases(tmp_path, {"finding": cells})
    ds = Manifest(
        str(path), "train", multilabel=True, target_column="finding", no_label="No Finding"
    )
    assert ds.class_names == ["a", "b"] and ds.labels.tolist() == [[1, 0], [0, 0]]
    path = multilabel_cases(tmp_path, {"finding": ["a", "|", "b", "a|b", "a", "b"]})
    with pytest.raises(DataError, match=r"line 3: column 'finding' holds '\|': separators without"):
        Manifest(str(path), "train", multilabel=True, target_column="finding")
    # With the labels listed, an unknown negative finding points to dataset.no_label.
    path = multilabel_cases(tmp_path, {"finding": ["a", "No Finding", "b", "a|b", "a", "b"]})
    with pytest.raises(DataError, match=r"\(an image without any label\? set dataset.no_label="):
        Manifest(
            str(path), "train", multilabel=True, target_column="finding", class_names=["a", "b"]
        )


def test_a_multilabel_seeded_split_does_not_depend_on_the_order_of_the_labels(tmp_path):
    """The same images split alike whether the labels are 0/1 columns in one order, in another,
    or joined names (sorted): the strata are known by the names they hold (trial I: the two
    forms shared 29 of 60 test images)."""
    rng = np.random.default_rng(0)
    rows, labels = [], rng.random((80, 3)) < (0.5, 0.3, 0.15)
    for k, row in enumerate(labels):
        name = f"images/case{k:02d}.png"
        write_png(tmp_path / name, 100, seed=k)
        joined = "|".join(n for n, y in zip(("c", "a", "b"), row, strict=True) if y) or "none"
        rows.append([name, *map(int, row), joined])
    path = write_csv(tmp_path / "cases.csv", ["image", "c", "a", "b", "finding"], rows)
    tests = [
        Manifest(str(path), "test", multilabel=True, target_column=columns, **extra).ids
        for columns, extra in (
            (["c", "a", "b"], {}),
            (["a", "b", "c"], {}),
            ("finding", {"no_label": "none"}),
        )
    ]
    assert tests[0] == tests[1] == tests[2] and len(tests[0]) == 12


def test_a_grouped_multilabel_split_is_drawn_again_until_each_holds_every_label(tmp_path):
    """A grouped seeded split redrew for a class left out of a split, not for a label: a rare
    finding could have no positive in test."""
    from medtrain.data.manifest import classes_left_out

    labels = np.array([[1, 0], [1, 1], [0, 1], [1, 0]])
    assignment = np.array([0, 0, 1, 2])
    assert classes_left_out(assignment, labels, ["a", "b"]) == (
        "val without positives of label 'a'; test without positives of label 'b'"
    )
    assert classes_left_out(np.array([0, 1, 1, 2]), labels[[1, 1, 1, 1]], ["a", "b"]) == ""
