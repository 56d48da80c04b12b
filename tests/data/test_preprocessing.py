"""Preprocessing configured in YAML: CT windows, training-split statistics saved with the run,
crop/pad, resampling to a target spacing, and the segmentation manifest."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from medtrain.data.base import SPLITS
from medtrain.data.manifest import Manifest
from medtrain.data.seg_manifest import SegManifest
from medtrain.data.synthetic_segmentation import SyntheticShapes
from medtrain.data.transforms import WINDOW_PRESETS, crop_or_pad, parse_windows, window_ct
from medtrain.engine.build import build_datasets
from medtrain.errors import ConfigError, DataError
from medtrain.inference.predictor import Predictor
from tests.conftest import compose_cfg, read_metrics, train_in_process
from tests.data.test_readers import make_dicom


def test_window_presets_custom_and_stacked():
    assert parse_windows(None) is None
    assert parse_windows("lung") == [(-600.0, 1500.0)]
    assert parse_windows([40, 80]) == [(40.0, 80.0)]
    assert parse_windows(["brain", [300, 1500]]) == [WINDOW_PRESETS["brain"], (300.0, 1500.0)]
    with pytest.raises(ConfigError, match="'lungs' is not a preset"):
        parse_windows("lungs")
    with pytest.raises(ConfigError, match="width must be > 0"):
        parse_windows([[40, 0]])
    hu = np.array([[-1000.0, 0.0], [40.0, 1000.0]], np.float32)
    brain = window_ct(hu, [(40.0, 80.0)])  # 0..80 HU -> 0..1
    np.testing.assert_allclose(brain[..., 0], [[0, 0], [0.5, 1]])
    stacked = window_ct(hu, parse_windows(["brain", "lung"]))
    assert stacked.shape == (2, 2, 2)
    np.testing.assert_allclose(stacked[0, 0, 1], (-1000 + 1350) / 1500)  # lung: -1350..150


def test_manifest_of_ct_dicom_files_windowed_as_channels(tmp_path):
    """DICOM read in Hounsfield units (rescale applied), two windows -> two channels."""
    raw = np.array([[0, 1024], [1064, 2024]], np.uint16)  # HU = raw - 1024: -1024, 0, 40, 1000
    lines = ["image,target,split"]
    for k, split in enumerate(["train", "train", "val", "test"]):
        (tmp_path / f"{k}.dcm").write_bytes(make_dicom(raw, 1.0, -1024.0, window=(500, 100)))
        lines.append(f"{k}.dcm,{'ab'[k % 2]},{split}")
    (tmp_path / "cases.csv").write_text("\n".join(lines) + "\n")
    data = Manifest(
        str(tmp_path / "cases.csv"),
        "train",
        window=["brain", [0, 2000]],
        image_size=None,
        normalize={"mode": "none"},
    )
    assert data.in_channels == 2
    image = data[0]["image"].numpy()
    np.testing.assert_allclose(image[0], [[0, 0], [0.5, 1]], atol=1e-6)  # brain 0..80 HU
    np.testing.assert_allclose(image[1], [[0, 0.5], [0.52, 1]], atol=1e-6)  # -1000..1000 HU


def test_windowed_runs_refuse_display_images(tmp_path, finished_runs):
    """A run that windows HU values refuses PNG/JPEG/TIFF uploads (display values, not HU)."""
    from medtrain.data.readers import Decoded

    predictor = Predictor(finished_runs["classification"])
    predictor.preprocess.windows, predictor.preprocess.reads_modality = [(40.0, 80.0)], True
    with pytest.raises(DataError, match="x.png: this run windows CT values in Hounsfield units"):
        predictor.predict([Decoded(np.zeros((8, 8), np.uint8), None, "png")], ["x.png"])
    assert predictor.info()["input"]["window"] == [[40.0, 80.0]]


def test_a_window_on_pictures_is_refused_before_training(tmp_path):
    """dataset.window on PNG files trained on wrecked inputs (a lung window maps 0-255 to
    0.9-1.0 and clips every value above 150) and the run then refused its own kind of files."""
    from medtrain.data.image_folder import ImageFolder
    from medtrain.data.seg_folder import SegFolder

    for name in ("a", "b"):
        (tmp_path / "folder" / name).mkdir(parents=True)
        for k in range(4):
            Image.fromarray(np.full((8, 8), k, np.uint8)).save(tmp_path / f"folder/{name}/{k}.png")
    with pytest.raises(ConfigError, match=r"dataset.window windows CT values .* holds display"):
        ImageFolder(str(tmp_path / "folder"), "train", window="lung")
    ImageFolder(str(tmp_path / "folder"), "train")  # without a window: read as pictures
    rows = [f"folder/{name}/{k}.png,{name}" for name in ("a", "b") for k in range(4)]
    (tmp_path / "cases.csv").write_text("image,target\n" + "\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match=r"a/0.png \(and 7 more\) holds display .*cases.csv"):
        Manifest(str(tmp_path / "cases.csv"), "train", window="lung")
    for sub in ("images", "masks"):
        (tmp_path / "seg" / sub).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / f"seg/{sub}/{k}.tif")
    with pytest.raises(ConfigError, match=r"0.tif \(and 2 more\) holds display values"):
        SegFolder(str(tmp_path / "seg"), "train", window=[40, 80])


def test_dataset_statistics_come_from_the_training_split_and_are_saved(tmp_path, tiny):
    overrides = [*tiny, "dataset.normalize.mode=dataset", "trainer.max_epochs=1"]
    cfg = compose_cfg(overrides)
    datasets = build_datasets(cfg)
    train = np.stack([datasets["train"].read_image(i) for i in range(len(datasets["train"]))])
    assert cfg.dataset.normalize.mean[0] == pytest.approx(train.mean(), rel=1e-6)
    assert cfg.dataset.normalize.std[0] == pytest.approx(train.std(), rel=1e-6)
    sample = datasets["test"][0]["image"].numpy()[0]
    raw = datasets["test"].read_image(0)
    expected = (raw - cfg.dataset.normalize.mean[0]) / cfg.dataset.normalize.std[0]
    np.testing.assert_allclose(sample, expected, atol=1e-5)  # test images: training numbers
    run = tmp_path / "run"
    train_in_process(run, overrides)
    saved = Predictor(run).preprocess.normalize.params
    assert saved["mode"] == "dataset"
    assert saved["mean"][0] == pytest.approx(train.mean(), rel=1e-6)
    assert read_metrics(run)["test/auc"] > 0.5


def test_crop_or_pad_keeps_pixels_unscaled():
    image = np.arange(4 * 6, dtype=np.float32).reshape(4, 6, 1)
    padded = crop_or_pad(image, [6, 8])
    assert padded.shape == (6, 8, 1) and padded[0].sum() == 0
    np.testing.assert_array_equal(padded[1:5, 1:7], image)
    np.testing.assert_array_equal(crop_or_pad(image, 2)[..., 0], image[1:3, 2:4, 0])


def test_target_spacing_resamples_for_the_model_only():
    kwargs = {"num_classes": 2, "spacing": [0.5, 0.5], "target_spacing": [1.0, 1.0]}
    kwargs |= {"num_train": 2, "num_val": 2, "num_test": 2, "test_image_size": 96}
    val = SyntheticShapes("val", **kwargs)
    sample = val[0]
    assert sample["image"].shape == (1, 48, 48)  # 96 px at 0.5 mm -> 48 px at 1 mm
    assert sample["mask"].shape == (96, 96)  # scored at native size
    train = SyntheticShapes("train", image_size=64, **kwargs)
    assert train[0]["image"].shape == (1, 32, 32) and train[0]["mask"].shape == (32, 32)
    with pytest.raises(ConfigError, match="target_spacing"):
        SyntheticShapes("val", num_classes=2, target_spacing=[1.0])
    for bad in ([float("inf"), 0.5], [float("nan"), 0.5], [0.5, 0], "abc"):
        with pytest.raises(ConfigError, match=r"dataset.spacing=.*finite and > 0"):
            SyntheticShapes("val", num_classes=2, spacing=bad)
    square = SyntheticShapes("val", num_classes=2, spacing=0.5, num_val=1)  # one number: square
    assert square.spacing == (0.5, 0.5)


def write_pairs(root, count=12, size=32):
    (root / "img").mkdir(parents=True)
    (root / "msk").mkdir()
    rng = np.random.default_rng(0)
    lines = ["image,mask,split,spacing"]
    for k in range(count):
        mask = np.zeros((size, size), np.uint8)
        top, left = rng.integers(2, size - 12, 2)
        mask[top : top + 9, left : left + 9] = 255
        image = (rng.normal(60, 10, (size, size)) + (mask > 0) * 120).clip(0, 255)
        Image.fromarray(image.astype(np.uint8)).save(root / "img" / f"{k}.png")
        Image.fromarray(mask).save(root / "msk" / f"{k}.png")
        split = "train" if k < 8 else ("val" if k < 10 else "test")
        lines.append(f"img/{k}.png,msk/{k}.png,{split},{'0.5' if k % 2 else '0.5 0.25'}")
    (root / "cases.csv").write_text("\n".join(lines) + "\n")
    return root / "cases.csv"


def test_segmentation_manifest_rows_splits_and_spacing(tmp_path):
    csv_path = write_pairs(tmp_path)
    train = SegManifest(str(csv_path), "train", num_classes=2)
    test = SegManifest(str(csv_path), "test", num_classes=2)
    assert len(train) == 8 and test.ids == ["img/10.png", "img/11.png"]
    assert test.read_spacing(0) == (0.5, 0.25) and test.read_spacing(1) == (0.5, 0.5)
    assert test[0]["mask"].max() == 1  # {0, 255} is binary
    text = csv_path.read_text().replace("msk/3.png,train,0.5", "msk/3.png,train,fast")
    csv_path.write_text(text)
    with pytest.raises(DataError, match=r"cases.csv: column 'spacing' .* line 5: 'fast'"):
        SegManifest(str(csv_path), "train", num_classes=2)
    csv_path.write_text(text.replace("fast", "inf"))  # an infinite pixel would end the run late
    with pytest.raises(DataError, match=r"column 'spacing' .* line 5: 'inf'"):
        SegManifest(str(csv_path), "train", num_classes=2)
    csv_path.write_text(text.replace("fast", "0.5").replace("msk/4.png", "msk/missing.png"))
    with pytest.raises(
        DataError, match=r"no such mask file \(1 of 12 rows; .*line 6: .*missing.png"
    ):
        SegManifest(str(csv_path), "train", num_classes=2)
    mixed = text.replace("fast", "0.5").replace("msk/5.png,train,0.5", "msk/5.png,train,")
    csv_path.write_text(mixed)
    with pytest.raises(DataError, match=r"11 rows state a pixel spacing and 1 do not.*line 7"):
        SegManifest(str(csv_path), "train", num_classes=2)  # measurements need one unit
    fallback = SegManifest(str(csv_path), "train", num_classes=2, spacing=[1, 1])
    assert fallback[5]["spacing"].tolist() == [1.0, 1.0]  # the row without one: dataset.spacing
    csv_path.write_text(text.replace("fast", "0.5"))
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "msk" / "2.png")
    with pytest.raises(DataError, match=r"cases.csv line 4: .*2.png: mask is 20x20"):
        SegManifest(str(csv_path), "train", num_classes=2).load(2)


def test_segmentation_manifest_groups_stay_in_one_split_and_one_fold(tmp_path):
    """dataset.group_column: a patient's images share a split (seeded split) and a CV fold; an empty
    cell is refused naming its line."""
    from medtrain.experiments.cv import draw_folds, parse_args
    from tests.conftest import compose_cfg

    csv_path = write_pairs(tmp_path / "data", count=24)
    header, *rows = csv_path.read_text().splitlines()
    patients = [f"p{k // 3}" for k in range(24)]  # 8 patients of 3 images
    body = [
        ",".join(r.split(",")[:2] + [r.split(",")[3], p])
        for r, p in zip(rows, patients, strict=True)
    ]
    csv_path.write_text("image,mask,spacing,patient\n" + "\n".join(body) + "\n")
    kwargs = {"num_classes": 2, "group_column": "patient", "val_fraction": 0.25}
    splits = {s: SegManifest(str(csv_path), s, **kwargs) for s in ("train", "val", "test")}
    owner = {}
    for name, data in splits.items():
        assert len(data.groups) == len(data.ids)
        for patient in data.groups:
            assert owner.setdefault(patient, name) == name  # no patient in two splits
    cfg = compose_cfg(
        [
            "task=segmentation",
            "model=unet",
            "dataset=seg_manifest",
            f"dataset.path={csv_path}",
            "dataset.group_column=patient",
            "dataset.val_fraction=0.25",
        ]
    )
    folds = json.loads(
        draw_folds(parse_args([f"cv.dir={tmp_path / 'cv'}", "cv.folds=2"]), cfg).read_text()
    )
    assert folds["grouped"]
    fold_of = {}
    for patient, fold in zip(folds["group"], folds["fold"], strict=True):
        assert fold_of.setdefault(patient, fold) == fold
    assert not set(folds["test"]) & set(folds["ids"])
    csv_path.write_text(csv_path.read_text().replace(",p2\n", ",\n", 1))
    with pytest.raises(
        DataError, match=r"column 'patient' \(dataset.group_column\) is empty.*line 8"
    ):
        SegManifest(str(csv_path), "train", **kwargs)


def test_a_grouped_split_leaving_val_without_a_class_is_drawn_again(tmp_path):
    """10 patients, 3 with the rare class: seed 0's draw of patients leaves val with one class
    (no AUC to choose the best epoch by); the next seeds are drawn until val and test hold both,
    with a warning. A draw that holds every class (seed 1) is kept as it was."""
    rows = []
    for p in range(10):
        for k in range(4):
            Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(tmp_path / f"{p}_{k}.png")
            rows.append(f"{p}_{k}.png,{'malignant' if p < 3 else 'benign'},P{p}")
    (tmp_path / "cases.csv").write_text("image,target,patient\n" + "\n".join(rows) + "\n")

    def split(seed: int) -> dict[str, Manifest]:
        kwargs = {"group_column": "patient", "seed": seed}
        return {s: Manifest(str(tmp_path / "cases.csv"), s, **kwargs) for s in SPLITS}

    drawn = split(0)
    said = drawn["train"].data_warnings["split_redrawn"]  # reported by the data check
    assert "the groups drawn with seed 0 left train without class 'malignant'; val without " in said
    assert "val without class 'benign'; drawn again" in said
    assert "until every split holds every class" in said
    assert not hasattr(drawn["val"], "data_warnings")  # said once, by the train split
    for name, data in drawn.items():
        assert set(np.asarray(data.labels).tolist()) == {0, 1}, name
    owner: dict[str, str] = {}
    for name, data in drawn.items():
        for patient in data.groups:
            assert owner.setdefault(patient, name) == name  # still no patient in two splits
    kept = split(1)
    assert not hasattr(kept["train"], "data_warnings")
    first = kept["train"]._drawn(10, 0.15, 0.15, 1, None, "groups")  # the seed's own draw
    patients = {s: sorted(set(kept[s].groups)) for s in SPLITS}
    assert patients == {
        s: [f"P{p}" for p in np.flatnonzero(first == k)] for k, s in enumerate(SPLITS)
    }
    # Two patients of a class cannot be in three splits: the first draw is kept, and said.
    rare = [r.replace("malignant", "benign") if r.split(",")[2] == "P2" else r for r in rows]
    (tmp_path / "cases.csv").write_text("image,target,patient\n" + "\n".join(rare) + "\n")
    said = split(0)["train"].data_warnings["split_redrawn"]
    assert "so did 100 draws (too few groups of a class), and the first is kept" in said
    # The CSV's own split column putting a patient in two splits is warned about (leakage).
    leaky = [f"{row},{('train', 'val', 'test', 'train')[k % 4]}" for k, row in enumerate(rows)]
    (tmp_path / "cases.csv").write_text("image,target,patient,split\n" + "\n".join(leaky) + "\n")
    said = Manifest(str(tmp_path / "cases.csv"), "train", group_column="patient").data_warnings
    assert (
        "10 of 10 groups (dataset.group_column; e.g. P0, P1, P2) have rows in more"
        in (said["groups_in_splits"])
    )
    # The data check counts it: a warning, an error with check.duplicates=error.
    from medtrain.engine.data_check import check_config
    from tests.conftest import compose_cfg

    cfg = compose_cfg(
        [
            "dataset=manifest",
            f"dataset.path={tmp_path / 'cases.csv'}",
            "dataset.group_column=patient",
        ]
    )
    for duplicates, kind in (("warn", "warnings"), ("error", "errors")):
        report = check_config(cfg, workers=1, duplicates=duplicates, progress=False)
        assert [w for w in report[kind] if "have rows in more than one split" in w] == [
            said["groups_in_splits"]
        ]
        assert report["ok"] == (duplicates == "warn")


def test_segmentation_manifest_trains(tmp_path):
    csv_path = write_pairs(tmp_path / "data")
    run = tmp_path / "run"
    metrics = train_in_process(
        run,
        [
            "task=segmentation",
            "model=unet",
            "model.depth=2",
            "model.base_width=8",
            "loss=dice_ce",
            "augmentation=none",
            "dataset=seg_manifest",
            f"dataset.path={csv_path}",
            "trainer.max_epochs=2",
            "trainer.batch_size=4",
            "trainer.progress=false",
            "task.num_overlays=0",
        ],
    )
    assert 0 <= metrics["test/dice"] <= 1
    assert (run / "data_report.json").is_file() and (run / "masks").is_dir()
    # The spacing column reaches the measurements: img/10 is 0.5 x 0.25 mm, img/11 0.5 x 0.5 mm.
    with open(run / "measurements.csv", newline="") as f:
        truth = [r for r in csv.DictReader(f) if r["source"] == "true"]
    pixel_mm2 = {"img/10.png": 0.125, "img/11.png": 0.25}
    assert {r["id"] for r in truth} == set(pixel_mm2)
    for row in truth:
        assert float(row["area_mm2"]) == pytest.approx(float(row["area_px"]) * pixel_mm2[row["id"]])
        assert float(row["area_px"]) == 81  # each 9 x 9 square, counted by hand
