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
    """The shipped synthetic 3D experiment, its cosine schedule cut to 4 of its 6 epochs, trained
    once (about 25 s on one core; measured test Dice 0.940, HD95 1.8 mm)."""
    run_dir = tmp_path_factory.mktemp("seg3d") / "run"
    train_in_process(run_dir, [*SEG3D, "trainer.max_epochs=4"])
    return run_dir


def test_synthetic_3d_experiment_clears_the_dice_bar_in_four_epochs(seg3d_run):
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


CLASSIFY3D = [
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


def test_3d_classification_trains_end_to_end(tmp_path):
    train_in_process(tmp_path, CLASSIFY3D)
    metrics = read_metrics(tmp_path)
    assert math.isfinite(metrics["test/auc"]) and metrics["test/auc"] > 0.6
    saved = json.loads((tmp_path / "run_info.json").read_text())
    assert saved["peak_host_mb"] > 100  # the run logs its peak memory
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert len(rows) == 32


def test_a_3d_classifier_predicts_serves_and_exports_as_it_evaluated(tmp_path, capsys):
    """`medtrain predict` on NPY and NIfTI volumes, `/predict`, and the ONNX export give the run's
    own test probabilities; a 2D array, a text file and `spacing=` are refused by name."""
    import io

    from medtrain.commands import main
    from medtrain.engine.build import build_datasets
    from medtrain.inference.predictor import Predictor
    from medtrain.inference.serve import create_app
    from tests.inference.test_serve import post, start, stop

    run = tmp_path / "run"
    train_in_process(run, [*CLASSIFY3D, "trainer.max_epochs=1"])
    test = build_datasets(Predictor(run).cfg)["test"]
    names = Predictor(run).class_names
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(6):  # half as NPY, half as NIfTI: stored voxel order, as the arrays are
        volume = test.read_image(i)
        if i % 2:
            nib.save(nib.Nifti1Image(volume, np.eye(4)), inputs / f"{test.ids[i]}.nii.gz")
        else:
            np.save(inputs / f"{test.ids[i]}.npy", volume)
    (inputs / "notes.txt").write_text("not a volume")  # not listed
    expected = {r["id"]: r for r in csv.DictReader((run / "predictions.csv").open())}

    def check(rows):
        assert len(rows) == 6
        for row in rows:
            truth = expected[row["file"].split(".")[0]]
            for k, name in enumerate(names):
                assert float(row[f"prob_{name}"]) == pytest.approx(
                    float(truth[f"prob_{k}"]), abs=1e-5
                )
            assert row["error"] == ""

    for backend in ("torch", "onnx"):
        if backend == "onnx":
            assert main(["export", f"run_dir={run}"]) == 0
        out = tmp_path / f"{backend}.csv"
        command = [f"run_dir={run}", f"inputs={inputs}", f"output={out}", f"backend={backend}"]
        assert main(["predict", *command]) == 0
        check(list(csv.DictReader(out.open())))
    assert main(["predict", f"run_dir={run}", f"inputs={inputs}", "spacing=[0.5,0.5]"]) == 2
    assert "spacing=[0.5, 0.5]: this run reads volumes" in capsys.readouterr().err
    # A volume on another scale than the training volumes (floats of 0-1), as NPY and NIfTI: refused
    # by name (it was answered with certainty), as a 2D image is.
    bright = tmp_path / "bright"
    bright.mkdir()
    np.save(bright / "b.npy", test.read_image(0) * 255)
    nib.save(nib.Nifti1Image(test.read_image(0) * 255, np.eye(4)), bright / "b.nii.gz")
    out = tmp_path / "bright.csv"
    assert main(["predict", f"run_dir={run}", f"inputs={bright}", f"output={out}"]) == 1
    for row in csv.DictReader(out.open()):
        assert row["label"] == "" and row["error"].startswith(
            f"{row['file']}: float32 pixel values from "
        ), row
        assert row["error"].endswith(
            "this run was trained on float32 images of values up to 1, read as they are: "
            "scale it as they were (0-1: divide 8-bit values by 255)"
        ), row

    running = start(create_app(Predictor(run)))
    try:
        buffer = io.BytesIO()
        np.save(buffer, test.read_image(0))
        status, answer = post(running.port, "/predict", ("file", "v.npy", buffer.getvalue()))
        assert status == 200, answer
        truth = expected[test.ids[0]]
        assert answer["probabilities"][names[0]] == pytest.approx(float(truth["prob_0"]), abs=1e-5)
        buffer = io.BytesIO()
        np.save(buffer, test.read_image(0)[0])
        status, answer = post(running.port, "/predict", ("file", "slice.npy", buffer.getvalue()))
        assert status == 422 and answer["detail"] == (
            "slice.npy: shape (16, 16) is not a volume (D x H x W)"
        )
        status, answer = post(running.port, "/predict", ("file", "notes.txt", b"hello"))
        assert status == 415 and "this run's network is 3D: send a NIfTI volume" in answer["detail"]
    finally:
        stop(running)


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
