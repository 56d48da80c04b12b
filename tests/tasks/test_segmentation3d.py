"""Volumes end to end in the one loop: the synthetic 3D segmentation experiment (its Dice bar, 3D
metrics, volumes in mL, NIfTI masks with the case's affine, three-slice overlays) and 3D
classification."""

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medtrain.data.synthetic_volumes import SyntheticVolumes
from medtrain.errors import ConfigError
from tests.conftest import read_metrics, train_in_process

SEG3D = ["experiment=synthetic_segmentation3d", "trainer.progress=false"]


@pytest.fixture(scope="module")
def seg3d_run(tmp_path_factory):
    """The shipped synthetic 3D experiment, trained once (about 20 s on 2 cores)."""
    run_dir = tmp_path_factory.mktemp("seg3d") / "run"
    train_in_process(run_dir, SEG3D)
    return run_dir


def test_synthetic_3d_experiment_meets_the_dice_bar(seg3d_run):
    metrics = read_metrics(seg3d_run)
    assert metrics["test/dice"] >= 0.90
    assert metrics["test/hd95_mm"] < 3.0


def test_volumes_in_ml_and_nifti_masks_match_the_data(seg3d_run):
    test = SyntheticVolumes("test", seed=42, image_size=32, test_image_size=40, num_test=8)
    voxel_ml = 2.0 * 1.0 * 1.0 / 1000  # the experiment's spacing: 2 x 1 x 1 mm
    rows = list(csv.DictReader((seg3d_run / "volumes.csv").open()))
    assert [r["id"] for r in rows] == test.ids
    for row, mask in zip(rows, test.masks, strict=True):
        assert float(row["true_ml"]) == pytest.approx((mask == 1).sum() * voxel_ml)
    predictions = list(csv.DictReader((seg3d_run / "predictions.csv").open()))
    for row, prediction in zip(rows, predictions, strict=True):
        image = nib.load(seg3d_run / prediction["mask"])
        assert image.shape == (40, 40, 40)
        np.testing.assert_array_equal(image.affine, np.diag([2.0, 1.0, 1.0, 1.0]))
        labels = np.asarray(image.dataobj)
        assert float(prediction["volume_ml_class_1"]) == pytest.approx(
            (labels == 1).sum() * voxel_ml
        )
        assert float(row["pred_ml"]) == pytest.approx(float(prediction["volume_ml_class_1"]))
    metrics = read_metrics(seg3d_run)
    errors = [abs(float(r["pred_ml"]) - float(r["true_ml"])) for r in rows]
    assert metrics["test/volume_mae_ml_class_1"] == pytest.approx(np.mean(errors))


def test_report_overlays_show_three_orthogonal_slices(seg3d_run):
    overlays = sorted(p for p in (seg3d_run / "overlays").glob("*.png") if p.name != "grid.png")
    assert len(overlays) == 8
    width, height = Image.open(overlays[0]).size
    assert width >= 3 * 40 and height >= 40  # axial, coronal and sagittal side by side
    html = (seg3d_run / "report.html").read_text()
    assert "overlays" in html and html.count("data:image/png;base64") >= 2  # grid embedded


def test_3d_classification_trains_and_predicts_end_to_end(tmp_path):
    overrides = [
        "dataset.spatial_dims=3",
        "dataset.image_size=16",
        "dataset.num_train=96",
        "dataset.num_val=32",
        "dataset.num_test=32",
        "dataset.contrast=0.5",
        "model=resnet",
        "model.widths=[8,16]",
        "model.blocks=[1,1]",
        "augmentation=volume",
        "trainer.max_epochs=3",
        "trainer.batch_size=16",
        "trainer.progress=false",
        "trainer.report=false",
    ]
    train_in_process(tmp_path, overrides)
    metrics = read_metrics(tmp_path)
    assert math.isfinite(metrics["test/auc"]) and metrics["test/auc"] > 0.6
    saved = json.loads((tmp_path / "run_info.json").read_text())
    assert saved["peak_host_mb"] > 100  # the run logs its peak memory
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert len(rows) == 32


def test_instances_and_dihedral_views_are_refused_on_volumes(tmp_path):
    with pytest.raises(ConfigError, match="task.instances separates objects of 2D images"):
        train_in_process(tmp_path / "a", [*SEG3D, "task.instances={method: components}"])
    with pytest.raises(ConfigError, match="task.tta"):
        train_in_process(
            tmp_path / "b",
            [
                *SEG3D,
                "task.tta=dihedral",
                "dataset.num_train=2",
                "dataset.num_val=1",
                "dataset.num_test=1",
                "trainer.max_epochs=1",
                "trainer.report=false",
            ],
        )
