"""Export of finished runs: the files compute what PyTorch computes, the manifest holds the run's
numbers, and examples/run_exported.py reproduces `Predictor` without medtrain."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from omegaconf import open_dict
from PIL import Image
from torch import nn

from medtrain.commands.export import main
from medtrain.data.readers import read_image
from medtrain.data.transforms import Normalize
from medtrain.errors import ConfigError, DataError
from medtrain.inference import Predictor, load_run
from medtrain.inference.export import export_run
from medtrain.models.cnn import SimpleCNN
from medtrain.models.fusion import Fusion
from medtrain.models.tabular import TabularMLP
from medtrain.tasks.tta import tta_views
from tests.conftest import ON_CPU, fail_if_called

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "run_exported.py"
TASKS = ("classification", "regression", "segmentation")
FORMATS = ("onnx", "torchscript")
# Blocks medtrain (sys.modules[name] = None makes `import medtrain` fail), then runs the example.
NO_MEDTRAIN = (
    "import runpy, sys; sys.modules['medtrain'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One thread, here and in the example's process: tiny models gain nothing from more, and on
    shared cores threads waiting for each other cost seconds."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scan(height: int, width: int, seed: int, kind: str = "L") -> np.ndarray:
    """A synthetic image: a bright blob on a noisy background, 8-bit grey, RGB or 16-bit grey."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    centre = rng.uniform(0.3, 0.7, 2) * (height, width)
    blob = np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * (height / 8) ** 2))
    image = np.clip(0.3 + 0.5 * blob + 0.1 * rng.standard_normal((height, width)), 0, 1)
    if kind == "RGB":
        return (np.stack([image, 0.9 * image, 0.8 * image], -1) * 255).astype(np.uint8)
    return (image * 65535).astype(np.uint16) if kind == "I;16" else (image * 255).astype(np.uint8)


def write_scans(folder: Path) -> list[Path]:
    """PNG files of several sizes and storage types (8-bit grey, RGB, 16-bit grey)."""
    folder.mkdir(parents=True, exist_ok=True)
    shapes = [(96, 96, "L"), (80, 120, "RGB"), (40, 30, "I;16"), (130, 100, "L")]
    paths = []
    for k, (height, width, kind) in enumerate(shapes):
        paths.append(folder / f"scan{k}.png")
        Image.fromarray(scan(height, width, k, kind)).save(paths[-1])
    return paths


def load_exported(folder: Path, manifest: dict):
    """The exported file as a function from a numpy batch to numpy outputs."""
    path = folder / manifest["model_file"]
    if manifest["format"] == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda images: session.run(None, {"image": images})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path))

    @torch.no_grad()
    def run(images):
        out = module(torch.from_numpy(images))
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]

    return run


@torch.no_grad()
def reference(run, images: torch.Tensor) -> list[np.ndarray]:
    """What the exported model should output, from the task's own code: probabilities, values in
    target units, or per-pixel probabilities and logits of the whole image (no window)."""
    task, kind = run.task, run.task.name
    if kind == "segmentation":
        window, task.window = task.window, None
        logits = task.infer(run.model, images)
        task.window = window
        return [logits.softmax(1).numpy(), logits.numpy()]
    outputs = task.forward(run.model, {"image": images})
    if kind == "classification":
        return [task.probabilities(outputs).numpy()]
    return [task.values(outputs).numpy()]


def example(export_dir: Path, files: list[Path], *options: str) -> subprocess.CompletedProcess:
    """The example run isolated (-I) and with medtrain made unimportable."""
    args = [str(EXAMPLE), str(export_dir), *map(str, files), *options]
    return subprocess.run(
        [sys.executable, "-I", "-c", NO_MEDTRAIN, *args], capture_output=True, text=True
    )


def run_example(
    export_dir: Path, files: list[Path], masks: Path | None, *options: str
) -> list[dict]:
    """The example's CSV rows (it must succeed)."""
    done = example(export_dir, files, *options, *([] if masks is None else ["--masks", str(masks)]))
    assert done.returncode == 0, done.stderr
    return list(csv.DictReader(io.StringIO(done.stdout)))


def assert_same_predictions(rows: list[dict], expected: list[dict], kind: str, names) -> None:
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        if kind == "classification":
            probs = [float(row[f"prob_{n}"]) for n in names]
            np.testing.assert_allclose(probs, list(want["probabilities"].values()), atol=1e-4)
            if "labels" in want:  # the manifest's labels joined by "|" (as the data's)
                assert row["labels"] == ("|".join(want["labels"]) or "none")
            else:
                assert row["label"] == want["label"]
        elif kind == "regression":
            values = [float(row[f"value_{n}"]) for n in names]  # medtrain predict's columns
            np.testing.assert_allclose(values, list(want["values"].values()), rtol=1e-6, atol=1e-4)
        else:
            mask = np.asarray(Image.open(row["mask"]))
            mask = mask // 255 if len(names) == 2 else mask
            np.testing.assert_array_equal(mask, want["mask"])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", TASKS)
def test_export_matches_pytorch_predictor_and_manifest(finished_runs, tmp_path, kind, fmt):
    predictor = Predictor(finished_runs[kind])
    run = predictor.run
    out = tmp_path / "export"
    manifest = export_run(run, fmt, out)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", manifest["model_file"]]
    )

    # 16 images through the run's own evaluation preprocessing, in the file and in PyTorch.
    size = (96, 96) if kind == "segmentation" else (40, 40)
    prepared = [predictor.preprocess.prepare(scan(*size, seed=k), k) for k in range(16)]
    images = torch.stack([p[0] if isinstance(p, tuple) else p for p in prepared])
    got = load_exported(out, manifest)(images.numpy())
    for have, want in zip(got, reference(run, images), strict=True):
        assert have.shape == want.shape
        np.testing.assert_allclose(have, want, rtol=1e-6, atol=1e-4)

    # The example script, without medtrain, predicts image files as Predictor does.
    files = write_scans(tmp_path / "scans")
    expected = predictor.predict([read_image(f) for f in files], [f.name for f in files])
    # segmentation masks go to the export's masks/ unless --masks says (never the working folder)
    rows = run_example(out, files, None if kind == "segmentation" else tmp_path / "masks")
    assert_same_predictions(rows, expected, kind, predictor.class_names)
    if kind == "segmentation":
        assert (out / "masks" / f"{files[0].stem}.png").is_file()

    saved = run.checkpoint["preprocessing"]
    normalize = {k: v for k, v in manifest["preprocessing"]["normalize"].items() if k != "rule"}
    assert normalize == saved["normalize"]
    assert manifest["task"] == kind
    assert manifest["class_names"] == run.checkpoint["class_names"]
    assert manifest["input"]["channels"] == saved["in_channels"]
    assert manifest["input"]["dtype"] == "float32" and manifest["input"]["layout"] == "NCHW"
    assert manifest["weights_sha256"] == predictor.weights_sha256
    model_bytes = (out / manifest["model_file"]).read_bytes()
    assert manifest["files"] == {manifest["model_file"]: hashlib.sha256(model_bytes).hexdigest()}
    assert manifest["exporter"]["opset"] == (17 if fmt == "onnx" else None)
    assert manifest["tta"] == {"choice": None, "views": 1, "inside_model": True}
    if kind == "classification":
        assert manifest["threshold"] == run.checkpoint["threshold"] == 0.5
        assert manifest["input"]["size"] == saved["input_size"]
        assert manifest["preprocessing"]["resize"]["size"] == saved["input_size"]
        assert manifest["preprocessing"]["order"][-1] == "normalize"
    elif kind == "regression":
        assert manifest["regression"]["target_names"] == ["area_mm2"]
        assert manifest["regression"]["target_mean"] == list(run.cfg.task.target_mean)
        assert manifest["regression"]["target_std"] == list(run.cfg.task.target_std)
        assert manifest["outputs"][0]["dtype"] == "float64"
    else:
        assert manifest["input"]["size"] is None
        assert manifest["input"]["dynamic_axes"] == ["batch", "height", "width"]
        assert manifest["preprocessing"]["order"][-1] == "resize"
        assert manifest["segmentation"]["window"] == [48, 48]
        assert [o["name"] for o in manifest["outputs"]] == ["probabilities", "logits"]


def test_example_script_does_not_import_medtrain():
    source = EXAMPLE.read_text()
    assert "import medtrain" not in source and "from medtrain" not in source


def test_example_script_follows_other_settings(finished_runs, tmp_path):
    """Multi-label decisions, per-image normalization, flip TTA; for segmentation a fixed model
    size (logits resized back to each image's size), percentile normalization and small-object
    removal."""
    classifier = Predictor(finished_runs["classification"])
    task = classifier.task
    task.multilabel, task.threshold, task.tta = True, [0.45, 0.55], "hflip"
    task.no_label = "none"  # the export writes it in an image of no label's cell
    params = {"mode": "zscore", "invert": "auto"}
    classifier.preprocess.normalize = Normalize(**params)
    classifier.run.checkpoint["preprocessing"]["normalize"] = params

    segmenter = Predictor(finished_runs["segmentation"])
    segmenter.task.min_object_size = 20
    params = {"mode": "percentile", "percentiles": [2.0, 98.0], "invert": True}
    segmenter.preprocess.normalize = Normalize(**params)
    segmenter.preprocess.image_size = (64, 64)
    segmenter.run.checkpoint["preprocessing"] |= {"normalize": params, "image_size": [64, 64]}

    files = write_scans(tmp_path / "scans")
    for name, predictor in {"classification": classifier, "segmentation": segmenter}.items():
        manifest = export_run(predictor.run, "onnx", tmp_path / name)
        expected = predictor.predict([read_image(f) for f in files], [f.name for f in files])
        rows = run_example(tmp_path / name, files, tmp_path / f"masks_{name}")
        assert_same_predictions(rows, expected, name, predictor.class_names)
    # The network sees 48 x 48 windows of the 64 x 64 resized image: the export takes any size.
    assert manifest["input"]["size"] is None and manifest["segmentation"]["min_object_size"] == 20
    assert manifest["preprocessing"]["resize"]["size"] == [64, 64]


def test_example_script_counts_objects_and_measures_areas_in_mm2(finished_runs, tmp_path):
    """Per foreground class the objects medtrain counts in the same mask (connected components),
    and with --spacing the area in mm^2; without it, in the run's own spacing (the manifest's)."""
    predictor = Predictor(finished_runs["segmentation"])
    export_run(predictor.run, "onnx", tmp_path / "export")
    files = write_scans(tmp_path / "scans")
    expected = predictor.predict([read_image(f) for f in files], [f.name for f in files])
    rows = run_example(tmp_path / "export", files, tmp_path / "masks", "--spacing", "0.5,0.25")
    names = predictor.class_names
    for row, want in zip(rows, expected, strict=True):
        counted = predictor.task.count_objects(want["mask"])
        for name in names[1:]:
            count, area = counted[name]
            assert int(row[f"count_{name}"]) == count and int(row[f"pixels_{name}"]) == area
            assert float(row[f"area_mm2_{name}"]) == pytest.approx(area * 0.125)
    assert any(int(row[f"count_{names[1]}"]) > 1 for row in rows)  # not a trivial count
    # The masks carry their spacing (rows, columns), as medtrain's own: `medtrain measure` on
    # them measures in mm (they were written without one, and measured in pixels).
    from medtrain.data.readers import file_spacing

    for mask in (tmp_path / "masks").glob("*.png"):
        assert file_spacing(mask) == pytest.approx((0.5, 0.25), rel=1e-3)
    plain = run_example(tmp_path / "export", files[:1], tmp_path / "masks")
    own = predictor.cfg.dataset.spacing  # the synthetic data's 0.5 mm pixels
    pixels = int(plain[0][f"pixels_{names[1]}"])
    assert float(plain[0][f"area_mm2_{names[1]}"]) == pytest.approx(pixels * own[0] * own[1])


def test_example_script_runs_either_format_of_a_shared_folder(finished_runs, tmp_path):
    """Both formats of one run in one folder: `--format` picks either, and both predict what the
    run does; a format the folder lacks is named."""
    predictor = Predictor(finished_runs["classification"])
    folder = tmp_path / "export"
    export_run(predictor.run, "torchscript", folder)
    export_run(predictor.run, "onnx", folder)
    files = write_scans(tmp_path / "scans")
    expected = predictor.predict([read_image(f) for f in files], [f.name for f in files])
    for fmt in ("onnx", "torchscript"):
        rows = run_example(folder, files, None, "--format", fmt)
        assert_same_predictions(rows, expected, "classification", predictor.class_names)
    (folder / "model.pt").unlink()
    export_run(predictor.run, "onnx", tmp_path / "only")
    done = example(tmp_path / "only", files[:1], "--format", "torchscript")
    assert done.returncode == 1
    assert f"{tmp_path / 'only'} holds no torchscript export (it holds onnx)" in done.stderr
    # A run folder given for its export folder (a traceback: no manifest.json)
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    shutil.copy(tmp_path / "only" / "manifest.json", run / "export" / "manifest.json")
    for given, folder in (
        (run, run / "export"),
        (run / "checkpoints", "medtrain export's output="),
    ):
        done = example(given, files[:1])
        assert done.returncode == 1
        assert done.stderr == f"{given}: no manifest.json here; give the export folder ({folder})\n"


def test_example_script_makes_no_finding_of_a_corrupt_scan(finished_runs, tmp_path):
    # A NaN array came out "normal" (the decision rule's else): now an error row and status 1.
    export_dir = tmp_path / "export"
    export_run(Predictor(finished_runs["classification"]).run, "onnx", export_dir)
    nan, huge = tmp_path / "nan.npy", tmp_path / "huge.npy"
    np.save(nan, np.full((16, 16), np.nan, np.float32))
    # Negative: values above 1.5 are another pixel scale than the run's 0-1 floats, refused first
    huge_values = np.full((16, 16), -3e38, np.float32)
    huge_values[0, 0] = -2e38  # not constant (a constant image is refused as blank first)
    np.save(huge, huge_values)
    done = example(export_dir, [nan, huge])
    assert done.returncode == 1
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["label"] for r in rows] == ["", ""]
    # As medtrain reads them: NaN refused in the file, -3e38 once normalized.
    assert rows[0]["error"] == "pixel values are not finite (NaN or infinite): 256 of 256"
    assert rows[1]["error"].startswith("not finite (NaN or infinite) after preprocessing") or (
        rows[1]["error"].startswith("the model's output is not finite")
    ), rows[1]


def test_example_script_refuses_what_predict_refuses(finished_runs, tmp_path):
    """A constant image, a GIF named .png, an 8-bit image stored in 16 bits and a float image of
    0-255 values for a run of 8-bit images that normalizes by fixed statistics: medtrain predict
    refuses each, and so does the example, which answered them before."""
    from medtrain.commands.predict import main as predict

    run = tmp_path / "run"  # a copy whose data check saw 8-bit training images
    shutil.copytree(finished_runs["classification"], run)
    report = json.loads((run / "data_report.json").read_text())
    report["splits"]["train"]["intensity"] |= {"dtypes": ["uint8"], "max": 255.0}
    (run / "data_report.json").write_text(json.dumps(report))
    manifest = export_run(Predictor(run).run, "onnx", tmp_path / "export")
    trained = manifest["preprocessing"]["training_images"]
    assert trained["dtypes"] == ["uint8"] and trained["scale_matters"]
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16)).astype(np.uint8)
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(inputs / "constant.png")
    Image.fromarray(pixels).save(inputs / "gif.png", format="GIF")
    Image.fromarray(pixels.astype(np.uint16)).save(inputs / "wide.tif")
    np.save(inputs / "float255.npy", pixels.astype(np.float32))
    Image.fromarray(pixels).save(inputs / "good.png")
    done = example(tmp_path / "export", sorted(inputs.iterdir()))
    assert done.returncode == 1, done.stderr
    errors = {Path(r["file"]).name: r["error"] for r in csv.DictReader(io.StringIO(done.stdout))}
    assert errors["good.png"] == ""
    assert errors["constant.png"] == "every pixel has the same value: no prediction is made from it"
    assert errors["gif.png"].startswith("cannot read: a GIF image")
    assert errors["wide.tif"].startswith(
        "another pixel scale than the run's training images: an 8-bit image stored in 16 bits"
    )
    assert errors["float255.npy"].startswith(
        "another pixel scale than the run's training images: float32 values from"
    )
    assert predict([f"run_dir={run}", f"inputs={inputs}", f"output={tmp_path / 'p.csv'}"]) == 1
    with open(tmp_path / "p.csv", newline="") as handle:
        refused = {r["file"] for r in csv.DictReader(handle) if r["error"]}
    assert refused == {"constant.png", "gif.png", "wide.tif", "float255.npy"}


def test_example_script_refuses_what_is_no_2d_image_and_goes_on(finished_runs, tmp_path):
    """A volume, a channel-first or 5-channel array, a stack of pages or an animated PNG are no
    one 2D image: medtrain predict refuses each, and the example (which read a slice, some
    channels or the first page of them, and crashed on a 4-D array, losing every later file)
    gives each the same reason in an error row and still predicts the file after them."""
    from medtrain.commands.predict import main as predict

    run = finished_runs["classification"]
    export_run(Predictor(run).run, "onnx", tmp_path / "export")
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    arrays = {
        "4d.npy": (2, 8, 32, 32),  # first: it crashed the run
        "vol3d.npy": (8, 32, 32),
        "rgb_chw.npy": (3, 32, 32),
        "c5.npy": (32, 32, 5),
    }
    for name, shape in arrays.items():
        np.save(inputs / name, rng.random(shape, dtype=np.float32))
    pages = [Image.fromarray(scan(32, 32, seed)) for seed in (1, 2)]
    pages[0].save(inputs / "multi.tif", save_all=True, append_images=pages[1:])
    pages[0].save(inputs / "apng.png", save_all=True, append_images=pages[1:])
    np.save(inputs / "complex.npy", rng.random((32, 32)) + 1j)
    Image.fromarray(scan(32, 32, 3)).save(inputs / "good.png")
    names = [*arrays, "multi.tif", "apng.png", "complex.npy", "good.png"]
    done = example(tmp_path / "export", [inputs / name for name in names])
    assert done.returncode == 1, done.stderr
    assert done.stderr == ""
    rows = {Path(r["file"]).name: r for r in csv.DictReader(io.StringIO(done.stdout))}
    assert list(rows) == names
    assert rows["good.png"]["error"] == "" and rows["good.png"]["label"] in ("normal", "lesion")
    errors = {name: row["error"] for name, row in rows.items()}
    assert errors["vol3d.npy"] == (
        "shape (8, 32, 32) is not a 2D image (H x W, or H x W x 3 for colour)"
    )
    assert errors["multi.tif"] == (
        "the TIFF holds several pages (a stack or series); send one 2D image"
    )
    assert errors["apng.png"].startswith("the PNG holds several pages")
    assert errors["complex.npy"] == "array of complex128 is not an image"
    # In medtrain predict's own words, which name the file first.
    output = tmp_path / "predictions.csv"
    assert predict([f"run_dir={run}", f"inputs={inputs}", f"output={output}"]) == 1
    with open(output, newline="") as handle:
        said = {r["file"]: r["error"] for r in csv.DictReader(handle)}
    assert said == {name: f"{name}: {errors[name]}" if errors[name] else "" for name in names}


def test_example_script_gives_predict_s_columns_and_grades_of_an_ordinal_run(tmp_path):
    """An ordinal run's grade by the manifest's rule (rounding, or cut points), beside the value,
    under medtrain predict's column names: the example labelled the value `grade`."""
    from medtrain.commands.predict import main as predict
    from medtrain.metrics.regression import to_grades
    from tests.conftest import train_in_process

    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", 120), ("val", 40), ("test", 8)):
        grades = rng.integers(0, 5, n)
        images = (rng.normal(0, 8, (n, 12, 12)) + 40 * grades[:, None, None] + 20).clip(0, 255)
        arrays |= {f"{split}_images": images.astype(np.uint8), f"{split}_labels": grades[:, None]}
    np.savez(tmp_path / "grades.npz", **arrays)
    run = tmp_path / "run"
    overrides = ["dataset=medmnist", f"dataset.path={tmp_path / 'grades.npz'}"]
    overrides += ["dataset.class_names=[grade]", "task=regression", "task.ordinal=true"]
    overrides += ["loss=mse", "model.widths=[8,16]", "optimizer.lr=3e-3", "trainer.max_epochs=6"]
    overrides += ["trainer.batch_size=16", "trainer.progress=false", "trainer.report=false"]
    train_in_process(run, [*overrides, ON_CPU])
    export = tmp_path / "export"
    manifest = export_run(load_run(run), "onnx", export)
    assert manifest["regression"]["grades"]["range"] == [0.0, 4.0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k, level in enumerate(np.linspace(20, 190, 12)):  # grades 0-4 and the values between
        noise = rng.normal(0, 8, (12, 12))
        Image.fromarray((noise + level).clip(0, 255).astype(np.uint8)).save(inputs / f"s{k:02}.png")
    files = sorted(inputs.iterdir())
    assert predict([f"run_dir={run}", f"inputs={inputs}", f"output={tmp_path / 'p.csv'}"]) == 0
    with open(tmp_path / "p.csv", newline="") as handle:
        predicted = list(csv.DictReader(handle))
    rows = run_example(export, files, None)
    assert list(rows[0]) == list(predicted[0]) == ["file", "grade", "value", "value_grade", "error"]
    assert [Path(r["file"]).name for r in rows] == [r["file"] for r in predicted]
    for row, want in zip(rows, predicted, strict=True):
        assert int(row["grade"]) == int(want["grade"]), (row, want)
        for column in ("value", "value_grade"):
            assert float(row[column]) == pytest.approx(float(want[column]), abs=1e-4)
    assert len({r["grade"] for r in rows}) >= 4  # the images span the grades
    # Fitted cut points (task.cut_points=fitted) where rounding would give other grades.
    cuts = [1.2, 1.3, 2.9, 3.0]
    manifest["regression"]["grades"]["cut_points"] = cuts
    (export / "manifest.json").write_text(json.dumps(manifest))
    rows = run_example(export, files, None)
    values = np.array([float(r["value"]) for r in rows])
    assert [int(r["grade"]) for r in rows] == to_grades(values, (0, 4), cuts).tolist()
    assert (to_grades(values, (0, 4), cuts) != to_grades(values, (0, 4))).any()


def test_example_script_refuses_display_images_for_a_windowed_run_and_names_dicom(
    finished_runs, tmp_path
):
    """A run that windows CT values: PNG, JPEG and TIFF hold display values, refused by the
    example as by medtrain predict (the example answered them); an NPY of HU values is read, held
    to no pixel scale, as predict holds it (the run's training images were floats of 0-1). A
    DICOM (by its content, also without a suffix and behind a preamble that looks like a TIFF
    header) is named plainly: it was "cannot identify image file" and Pillow's EXIF warning."""
    from tests.hostile_files import make_dicom

    predictor = Predictor(finished_runs["classification"])
    predictor.preprocess.windows, predictor.preprocess.reads_modality = [(40.0, 400.0)], True
    predictor.run.checkpoint["preprocessing"]["window"] = [[40.0, 400.0]]
    manifest = export_run(predictor.run, "onnx", tmp_path / "export")
    assert manifest["preprocessing"]["window"]["windows"] == [[40.0, 400.0]]
    rng = np.random.default_rng(0)
    hu = rng.normal(60, 120, (16, 16)).astype(np.float32)
    pixels = rng.integers(0, 256, (16, 16)).astype(np.uint8)
    inputs = tmp_path / "in"
    inputs.mkdir()
    np.save(inputs / "hu.npy", hu)
    for name in ("display.png", "display.jpg", "display.tif"):
        Image.fromarray(pixels).save(inputs / name)
    files = sorted(inputs.iterdir())
    refused = {}
    for path in files:
        try:
            predictor.accepts(predictor.read(path), path.name)
        except DataError as err:
            refused[path.name] = str(err)
    assert sorted(refused) == ["display.jpg", "display.png", "display.tif"]
    done = example(tmp_path / "export", files)
    assert done.returncode == 1 and done.stderr == ""
    rows = {Path(r["file"]).name: r for r in csv.DictReader(io.StringIO(done.stdout))}
    for name, kind in (("display.jpg", "JPEG"), ("display.png", "PNG"), ("display.tif", "TIFF")):
        assert rows[name]["error"] == (
            f"this run windows CT values in Hounsfield units; a {kind} holds display values. "
            "Give an NPY of HU values (or the DICOM to medtrain predict)"
        )
        assert f"a {kind} holds display values" in refused[name]
    (want,) = predictor.predict([predictor.read(inputs / "hu.npy")], ["hu.npy"])
    assert rows["hu.npy"]["error"] == "" and rows["hu.npy"]["label"] == want["label"]
    probabilities = [float(rows["hu.npy"][f"prob_{n}"]) for n in predictor.class_names]
    np.testing.assert_allclose(probabilities, list(want["probabilities"].values()), atol=1e-4)

    dicom = make_dicom(np.full((16, 16), 1024, np.uint16) + pixels, 1.0, -1024.0)
    (tmp_path / "IM000001").write_bytes(b"II*\x00" + dicom[4:])  # a TIFF-like preamble
    (tmp_path / "scan.dcm").write_bytes(dicom)
    done = example(tmp_path / "export", [tmp_path / "IM000001", tmp_path / "scan.dcm"])
    assert done.returncode == 1 and done.stderr == ""  # no warning from Pillow
    for row in csv.DictReader(io.StringIO(done.stdout)):
        assert row["error"] == (
            "cannot read: a DICOM file; this example reads PNG, JPEG, TIFF or NPY, not DICOM: "
            "medtrain predict reads it, or save its pixel values as NPY (in Hounsfield units for "
            "a CT-windowed model)"
        )


@pytest.mark.parametrize(
    ("kind", "tta", "fmt"),
    [
        ("segmentation", "hflip", "onnx"),
        ("segmentation", "dihedral", "onnx"),
        ("regression", "hflip", "onnx"),  # its views' average went through a traced batch size
        ("regression", "flips", "torchscript"),
        ("classification", "hflip", "torchscript"),
    ],
)
def test_tta_is_inside_the_export(finished_runs, tmp_path, kind, tta, fmt):
    """The views are averaged inside the exported model, for a batch of another size than the
    one it was traced with."""
    run = load_run(finished_runs[kind])
    run.task.tta = tta
    manifest = export_run(run, fmt, tmp_path)
    assert manifest["tta"]["choice"] == tta and manifest["tta"]["views"] == len(tta_views(tta))
    size = (
        (40, 56) if kind == "segmentation" else tuple(run.checkpoint["preprocessing"]["input_size"])
    )
    for batch in (1, 3):
        images = torch.randn(batch, 1, *size, generator=torch.Generator().manual_seed(batch))
        got = load_exported(tmp_path, manifest)(images.numpy())
        for have, want in zip(got, reference(run, images), strict=True):
            np.testing.assert_allclose(have, want, atol=1e-4)


def test_command_line_default_output_and_errors(finished_runs, tmp_path, capsys, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_runs["classification"], run_dir)
    assert main([f"run_dir={run_dir}"]) == 0
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    assert manifest["format"] == "onnx" and (run_dir / "export" / "model.onnx").is_file()
    assert not list((run_dir / "export").glob(".*"))  # no temporary files left behind
    onnx_bytes = (run_dir / "export" / "model.onnx").read_bytes()
    # Another format of the same run joins the folder; the manifest describes both.
    with caplog.at_level("WARNING"):
        assert main([f"run_dir={run_dir}", "format=torchscript"]) == 0
    assert not caplog.text
    folder = run_dir / "export"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.onnx", "model.pt"]
    both = json.loads((folder / "manifest.json").read_text())
    assert both["format"] == "torchscript" and both["model_file"] == "model.pt"
    assert both["models"]["onnx"] == {
        **{k: manifest[k] for k in ("model_file", "input", "outputs", "exporter", "checked")},
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
    }
    assert both["models"]["torchscript"]["exporter"]["name"] == "torch.jit.trace"
    assert both["files"] == {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in ("model.onnx", "model.pt")
    }
    assert (folder / "model.onnx").read_bytes() == onnx_bytes
    # Exported again (both formats kept; the run folder named another way is the same run),
    # then with other settings: the file the manifest can no longer describe goes, with a warning.
    spelled = Path(os.path.relpath(run_dir))
    assert main([f"run_dir={spelled}", "format=onnx", f"output={run_dir / 'export'}"]) == 0
    assert sorted(json.loads((folder / "manifest.json").read_text())["models"]) == [
        "onnx",
        "torchscript",
    ]
    best = run_dir / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    first = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first] = state["model"][first] + 0.5  # other weights
    torch.save(state, best)
    with caplog.at_level("WARNING"):
        assert main([f"run_dir={run_dir}", "format=onnx"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.onnx"]
    assert (
        f"removed {folder}/model.pt, an earlier export of other weights or settings" in caplog.text
    )
    assert list(json.loads((folder / "manifest.json").read_text())["models"]) == ["onnx"]
    # A file changed since its manifest was written is not described either.
    assert main([f"run_dir={run_dir}", "format=torchscript"]) == 0
    (folder / "model.pt").write_bytes(b"changed")
    assert main([f"run_dir={run_dir}", "format=onnx"]) == 0
    assert not (folder / "model.pt").exists()

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "manifest.json").write_text('{"study": "site B"}')
    assert main([f"run_dir={run_dir}", f"output={tmp_path / 'mine'}"]) == 2
    assert "its manifest.json is not an earlier export's" in capsys.readouterr().err
    assert (tmp_path / "mine" / "manifest.json").read_text() == '{"study": "site B"}'
    assert not (tmp_path / "mine" / "model.onnx").exists()
    # A model file of one's own, without a manifest or beside an export that does not name it,
    # is neither replaced nor removed.
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "model.onnx").write_bytes(b"my model")
    assert main([f"run_dir={run_dir}", "format=torchscript", f"output={tmp_path / 'own'}"]) == 2
    assert "holds model.onnx, which no export's manifest.json names" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "own").iterdir()) == ["model.onnx"]
    (folder / "model.pt").write_bytes(b"mine")  # beside an ONNX export that does not name it
    assert main([f"run_dir={run_dir}", "format=onnx"]) == 2
    assert "holds model.pt, which its manifest.json does not name" in capsys.readouterr().err
    assert (folder / "model.pt").read_bytes() == b"mine"

    assert main([f"run_dir={run_dir}", "format=tflite"]) == 2
    assert "format='tflite'" in capsys.readouterr().err
    assert main(["format=onnx"]) == 2
    assert "run_dir=<finished run> is required" in capsys.readouterr().err
    assert main([f"run_dir={tmp_path / 'missing'}"]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    assert main([]) == 2


def test_an_output_in_a_file_s_place_is_refused_before_exporting(
    finished_runs, tmp_path, capsys, monkeypatch
):
    from medtrain.inference import export as exporting

    (tmp_path / "afile").write_text("x\n")
    monkeypatch.chdir(tmp_path)

    fail_if_called(monkeypatch, exporting, "build_model_file", "exported")
    run = finished_runs["classification"]
    for output, said in (
        ("afile/exp", "output=afile/exp: afile is a file, not a folder"),
        ("afile", "output=afile is a file, not a folder"),
    ):
        assert main([f"run_dir={run}", f"output={output}"]) == 2
        assert capsys.readouterr().err == f"error: {said}\n"
        assert [p.name for p in tmp_path.iterdir()] == ["afile"]
        assert (tmp_path / "afile").read_text() == "x\n"


def test_refuses_fusion_models_and_eval_augmentation(finished_runs, tmp_path):
    run = load_run(finished_runs["classification"])
    branches = {"image": SimpleCNN(1, 2, widths=(4,), hidden=8), "lab": TabularMLP(3, 2, (4,))}
    image_model, run.model = run.model, Fusion(branches, num_classes=2)
    with pytest.raises(ConfigError, match=r"reads \['image', 'tabular'\]"):
        export_run(run, "onnx", tmp_path)

    run.model = image_model
    with open_dict(run.cfg):
        run.cfg.augmentation.eval.transforms = [{"_target_": "albumentations.CLAHE", "p": 1.0}]
    with pytest.raises(ConfigError, match="augmentation.eval runs \\['CLAHE'\\]"):
        export_run(run, "torchscript", tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written when refused


class SizeDependent(nn.Module):
    """Segmentation logits that a trace cannot generalize: a Python branch on the input width."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.conv(image) * (2.0 if image.shape[-1] % 2 else 1.0)


def test_export_is_checked_at_other_sizes(finished_runs, tmp_path):
    """A trace that does not generalize: with a window, the export takes the window size (all that
    tiling feeds the network); without one, it is refused."""
    predictor = Predictor(finished_runs["segmentation"])
    predictor.model = predictor.run.model = SizeDependent().eval()
    manifest = export_run(predictor.run, "onnx", tmp_path / "window")
    assert manifest["input"]["size"] == [48, 48] and manifest["checked"]["sizes"] == [[48, 48]]
    files = write_scans(tmp_path / "scans")
    expected = predictor.predict([read_image(f) for f in files], [f.name for f in files])
    rows = run_example(tmp_path / "window", files, tmp_path / "masks")
    assert_same_predictions(rows, expected, "segmentation", predictor.class_names)

    predictor.task.window = None
    with pytest.raises(ConfigError, match="differs from PyTorch .* on 48x48 inputs"):
        export_run(predictor.run, "onnx", tmp_path / "whole")
    assert not (tmp_path / "whole").exists()
