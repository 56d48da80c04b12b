"""`medtrain predict`: a finished run's predictions for new files equal what its evaluation wrote."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtrain.commands.predict import main
from medtrain.data.readers import file_spacing, read_image
from medtrain.engine.build import build_datasets
from medtrain.inference.predictor import Predictor
from tests.conftest import fail_if_called


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def split_of(run_dir: Path):
    """The run's test split, rebuilt from its own config."""
    return build_datasets(Predictor(run_dir).cfg)["test"]


def save_npy_inputs(dataset, folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        np.save(folder / f"{dataset.ids[i]}.npy", dataset.read_image(i))
    return [f"{dataset.ids[i]}.npy" for i in range(count)]


def test_classification_equals_evaluation(finished_runs, tmp_path):
    run = finished_runs["classification"]
    dataset = split_of(run)
    names = save_npy_inputs(dataset, tmp_path / "in", 20)
    out = tmp_path / "pred.csv"
    assert (
        main([f"run_dir={run}", f"inputs={tmp_path / 'in'}", f"output={out}", "batch_size=7"]) == 0
    )
    rows = read_rows(out)
    assert [r["file"] for r in rows] == names
    expected = {r["id"]: r for r in read_rows(run / "predictions.csv")}
    classes = Predictor(run).class_names
    for row in rows:
        truth = expected[Path(row["file"]).stem]
        for k, name in enumerate(classes):
            # Equal up to float32 rounding of a different batch composition.
            assert float(row[f"prob_{name}"]) == pytest.approx(float(truth[f"prob_{k}"]), abs=1e-6)
        assert row["label"] == classes[int(truth["pred"])]
        assert row["error"] == ""


def test_other_formats_sizes_and_channels(finished_runs, tmp_path):
    """An 8-bit PNG, the same image as 16-bit PNG, as RGB with equal channels and as DICOM-free
    JPEG-free NPY of another size all go through the run's preprocessing (resize, channels)."""
    run = finished_runs["classification"]
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 52), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(grey).save(tmp_path / "in" / "a_grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "in" / "b_grey16.png")
    Image.fromarray(np.repeat(grey[..., None], 3, axis=-1)).save(tmp_path / "in" / "c_rgb.png")
    out = tmp_path / "pred.csv"
    assert main([f"run_dir={run}", f"inputs={tmp_path / 'in' / '*.png'}", f"output={out}"]) == 0
    rows = read_rows(out)
    assert len(rows) == 3
    probs = [[float(v) for k, v in r.items() if k.startswith("prob_")] for r in rows]
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-6)  # 16-bit: same values / 65535
    np.testing.assert_allclose(probs[0], probs[2], atol=1e-6)  # RGB of equal channels: grey
    assert abs(sum(probs[0]) - 1) < 1e-6  # a float32 softmax sums to 1 within its rounding
    predictor = Predictor(run)
    direct = predictor.predict([read_image(tmp_path / "in" / "a_grey.png")], ["a"])[0]
    assert list(direct["probabilities"].values()) == pytest.approx(probs[0], abs=1e-6)


def test_manifest_inputs_and_bad_files(finished_runs, tmp_path):
    run = finished_runs["classification"]
    dataset = split_of(run)
    names = save_npy_inputs(dataset, tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    np.save(tmp_path / "imgs" / "two_channels.npy", np.zeros((16, 16, 2), np.float32))
    np.save(tmp_path / "imgs" / "nan.npy", np.full((16, 16), np.nan, np.float32))
    # negative: values above 1.5 are another pixel scale than this run's floats of 0-1
    np.save(tmp_path / "imgs" / "huge.npy", np.full((16, 16), -3e38, np.float32))
    np.save(tmp_path / "imgs" / "blank.npy", np.zeros((16, 16), np.float32))
    lines = ["image,age"] + [f"imgs/{n},50" for n in names]
    lines += ["imgs/broken.png,1", "imgs/missing.png,2", "imgs/two_channels.npy,3"]
    lines += ["imgs/nan.npy,4", "imgs/huge.npy,5", "imgs/blank.npy,6"]
    manifest = tmp_path / "cases.csv"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "pred.csv"
    assert main([f"run_dir={run}", f"inputs={manifest}", f"output={out}", "progress=false"]) == 1
    rows = {r["file"]: r for r in read_rows(out)}
    assert list(rows) == [f"imgs/{n}" for n in names] + [
        "imgs/broken.png",
        "imgs/missing.png",
        "imgs/two_channels.npy",
        "imgs/nan.npy",
        "imgs/huge.npy",
        "imgs/blank.npy",
    ]
    # A corrupt scan is never given a label: no "normal" for NaN or overflowing values.
    assert "nan.npy: pixel values are not finite" in rows["imgs/nan.npy"]["error"]
    assert rows["imgs/nan.npy"]["label"] == ""
    assert "huge.npy: its pixel values overflow" in rows["imgs/huge.npy"]["error"]
    assert rows["imgs/huge.npy"]["label"] == ""
    # A blank image (a failed export) has nothing to predict from: it was answered confidently.
    assert "blank.npy: every pixel holds 0.0: a constant image" in rows["imgs/blank.npy"]["error"]
    assert rows["imgs/blank.npy"]["label"] == ""
    assert all(rows[f"imgs/{n}"]["error"] == "" and rows[f"imgs/{n}"]["label"] for n in names)
    assert "broken.png: cannot read image" in rows["imgs/broken.png"]["error"]
    assert "missing.png: cannot read file" in rows["imgs/missing.png"]["error"]
    assert "two_channels.npy" in rows["imgs/two_channels.npy"]["error"]
    assert "(16, 16, 2) is not a 2D image" in rows["imgs/two_channels.npy"]["error"]


def test_regression_equals_evaluation(finished_runs, tmp_path):
    run = finished_runs["regression"]
    dataset = split_of(run)
    save_npy_inputs(dataset, tmp_path / "in", 10)
    out = tmp_path / "pred.csv"
    assert main([f"run_dir={run}", f"inputs={tmp_path / 'in'}", f"output={out}"]) == 0
    expected = {r["id"]: float(r["pred"]) for r in read_rows(run / "predictions.csv")}
    rows = read_rows(out)
    assert len(rows) == 10
    for row in rows:
        assert float(row["value"]) == pytest.approx(expected[Path(row["file"]).stem], rel=1e-6)


def test_segmentation_masks_and_measurements(finished_runs, tmp_path):
    run = finished_runs["segmentation"]
    dataset = split_of(run)
    save_npy_inputs(dataset, tmp_path / "in", 4)
    out = tmp_path / "res" / "pred.csv"
    assert main([f"run_dir={run}", f"inputs={tmp_path / 'in'}", f"output={out}"]) == 0
    rows = read_rows(out)
    classes = Predictor(run).class_names
    # the columns of the run's own predictions.csv, with `file` for `id` and an `error` column
    with open(out, newline="") as f, open(run / "predictions.csv", newline="") as g:
        header, run_header = next(csv.reader(f)), next(csv.reader(g))
    assert header[0] == "file" and header[-1] == "error" and header[1:-1] == run_header[1:]
    objects = read_rows(out.parent / "measurements.csv")
    for row in rows:
        stem = Path(row["file"]).stem
        mask = np.array(Image.open(out.parent / row["mask"]))
        evaluated = np.array(Image.open(run / "masks" / f"{stem}.png"))
        np.testing.assert_array_equal(mask, evaluated)  # the evaluation's own mask
        assert row["unit"] == "mm"  # the run's dataset.spacing [0.5, 0.5]
        # Both masks state it (pHYs: 2,000 px per metre), so measuring them again gives mm.
        assert file_spacing(out.parent / row["mask"]) == file_spacing(run / "masks" / f"{stem}.png")
        assert file_spacing(out.parent / row["mask"]) == (0.5, 0.5)
        for k, name in enumerate(classes[1:], start=1):
            assert int(row[f"area_px_{name}"]) == (mask == k).sum()
            area = float(row[f"area_mm2_{name}"])
            assert area == pytest.approx((mask == k).sum() * 0.25)  # hand count x 0.5 mm x 0.5 mm
            mine = [o for o in objects if o["id"] == row["file"] and o["class"] == name]
            assert int(row[f"count_{name}"]) == len(mine)
            assert sum(float(o["area_mm2"]) for o in mine) == pytest.approx(area)


def test_segmentation_row_without_a_spacing_leaves_the_mm2_column_empty(finished_runs, tmp_path):
    from medtrain.inference.predict import PredictionFiles

    predictor = Predictor(finished_runs["segmentation"])
    totals = [
        {"class": name, "count": 2, "total_area_px": 40, "total_area_mm2": 40.0}
        for name in predictor.class_names[1:]
    ]
    result = {"units": "px", "totals": totals, "mask": np.zeros((4, 5), np.uint8)}
    files = PredictionFiles(tmp_path / "predictions.csv", tmp_path / "masks")
    row = predictor.task.prediction_row("x.png", result, files)
    files.commit()  # the staged mask into place
    name = predictor.class_names[1]
    assert (row["unit"], row[f"area_px_{name}"], row[f"area_mm2_{name}"]) == ("px", 40, "")
    assert row["mask"] == "masks/x.png" and (tmp_path / "masks" / "x.png").is_file()
    assert file_spacing(tmp_path / "masks" / "x.png") is None  # no spacing stated


def test_a_run_that_ignored_its_files_spacing_is_predicted_so(finished_runs, tmp_path):
    """dataset.file_spacing=false (the data check's fix for a 300 dpi tag): the run measured every
    image with dataset.spacing, and predict and the service do too; they took the file's tag."""
    import torch

    run = tmp_path / "run"
    shutil.copytree(finished_runs["segmentation"], run)  # dataset.spacing [0.5, 0.5]
    best = run / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    state["config"]["dataset"]["file_spacing"] = False
    torch.save(state, best)
    stored = np.asarray(split_of(finished_runs["segmentation"]).read_image(0), dtype=np.float64)
    image = ((stored - stored.min()) / (np.ptp(stored) or 1.0) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "tagged.png", dpi=(300, 300))
    out = tmp_path / "o" / "pred.csv"
    assert main([f"run_dir={run}", f"inputs={tmp_path / 'in'}", f"output={out}"]) == 0
    row = read_rows(out)[0]
    for name in Predictor(run).class_names[1:]:
        area = float(row[f"area_mm2_{name}"])
        assert area == pytest.approx(int(row[f"area_px_{name}"]) * 0.25)
    assert file_spacing(out.parent / row["mask"]) == (0.5, 0.5)
    predictor = Predictor(run)
    served = predictor.decode((tmp_path / "in" / "tagged.png").read_bytes(), "tagged.png")
    assert served.spacing is None  # the service reads the upload as the run read its files


def test_ctrl_c_during_a_prediction_says_nothing_was_replaced(finished_runs, tmp_path, capsys):
    import medtrain.inference.predict as predict_module

    run = finished_runs["classification"]
    save_npy_inputs(split_of(run), tmp_path / "in", 2)

    def interrupted(cfg):
        raise KeyboardInterrupt

    original = predict_module.predict_files
    predict_module.predict_files = interrupted
    try:
        assert main([f"run_dir={run}", f"inputs={tmp_path / 'in'}"]) == 130
    finally:
        predict_module.predict_files = original
    assert "interrupted: nothing was replaced" in capsys.readouterr().err


def test_png_spacing_round_trips_in_whole_pixels_per_metre():
    from medtrain.data.readers import decode
    from medtrain.io import png_bytes

    mask = np.zeros((3, 4), np.uint8)
    # (row, col) mm -> pHYs x = round(1000 / col), y = round(1000 / row) pixels per metre
    for spacing, back in [
        ((0.5, 0.25), (0.5, 0.25)),
        ((0.7, 0.7), (1000 / 1429, 1000 / 1429)),  # 0.69979 mm: the chunk holds whole numbers
        ((0.000325, 0.000325), (1000 / 3076923, 1000 / 3076923)),  # 0.325 um microscopy
    ]:
        assert decode(png_bytes(mask, spacing), "m.png").spacing == pytest.approx(back, rel=1e-12)
    assert decode(png_bytes(mask), "m.png").spacing is None
    assert decode(png_bytes(mask, (5e4, 1.0)), "m.png").spacing is None  # < 1 px per metre
    for unusable in ((0.0, 0.5), (float("nan"), 0.5)):  # no spacing stated, no error
        assert decode(png_bytes(mask, unusable), "m.png").spacing is None
    # 0.254 mm is 3937 px per metre, 100 dpi: read as a display default, so the nearest value
    # that is not one is written (0.05% off) rather than none.
    back = decode(png_bytes(mask, (0.254, 0.254)), "m.png").spacing
    assert back == pytest.approx((1000 / 3937, 1000 / 3935), rel=1e-12)


def test_nothing_is_written_into_the_run_folder_and_outputs_are_not_read_back(
    finished_runs, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"  # a copy: the shared run must not gain a subfolder
    shutil.copytree(finished_runs["segmentation"], run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    names = save_npy_inputs(split_of(run), tmp_path / "in", 2)
    monkeypatch.chdir(run)  # the default output=predictions.csv is the run's own file
    assert main(["run_dir=.", f"inputs={tmp_path / 'in'}"]) == 2
    err = capsys.readouterr().err
    assert "output=predictions.csv writes into the run folder ." in err and "over the run's" in err
    for option in (
        f"output={run / 'p.csv'}",
        f"masks={run / 'masks'}",
        f"measurements={run / 'm.csv'}",
    ):
        assert main([f"run_dir={run}", f"inputs={tmp_path / 'in'}", option]) == 2, option
        assert "writes into the run folder" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # untouched
    # A subfolder of the run is fine; an output inside the folder of inputs is not read back.
    sub = run / "new" / "preds.csv"
    assert main([f"run_dir={run}", f"inputs={tmp_path / 'in'}", f"output={sub}"]) == 0
    out = tmp_path / "in" / "preds.csv"
    for _ in range(2):
        assert main([f"run_dir={run}", f"inputs={tmp_path / 'in'}", f"output={out}"]) == 0
        assert sorted(r["file"] for r in read_rows(out)) == sorted(names)
    masks = sorted(p.name for p in (tmp_path / "in" / "masks").iterdir())
    assert masks == sorted(n.replace(".npy", ".png") for n in names)
    # Another prediction of that folder (beside the first, or elsewhere) leaves out the masks the
    # first one's CSV lists: they were segmented as images.
    for output, extra in (
        (
            tmp_path / "in" / "other.csv",
            [f"masks={tmp_path / 'in' / 'masks2'}", f"measurements={tmp_path / 'in' / 'm2.csv'}"],
        ),
        (tmp_path / "elsewhere" / "p.csv", []),
    ):
        assert (
            main([f"run_dir={run}", f"inputs={tmp_path / 'in'}", f"output={output}", *extra]) == 0
        )
        assert sorted(r["file"] for r in read_rows(output)) == sorted(names)
    assert main([f"run_dir={run}", f"inputs={tmp_path / 'in' / 'masks'}", f"output={out}"]) == 2
    assert f"masks={tmp_path / 'in' / 'masks'} holds the inputs" in capsys.readouterr().err
    assert (
        main([f"run_dir={run}", f"inputs={tmp_path / 'in'}", f"output={out}", f"masks={run}"]) == 2
    )
    assert f"masks={run} writes into the run folder" in capsys.readouterr().err
    # A task that writes no masks leaves a folder of inputs named masks/ alone.
    classification = finished_runs["classification"]
    save_npy_inputs(split_of(classification), tmp_path / "cls" / "masks", 2)
    out = tmp_path / "cls" / "p.csv"
    assert main([f"run_dir={classification}", f"inputs={tmp_path / 'cls'}", f"output={out}"]) == 0
    assert len(read_rows(out)) == 2


def test_nothing_a_user_keeps_is_overwritten(finished_runs, tmp_path, capsys):
    """The output CSV replaces only an earlier prediction's; a masks folder may hold only the
    masks that CSV lists (a second prediction beside the first must not replace the first's
    masks while its CSV names them); measurements.csv only an earlier one. Each refusal comes
    before anything is predicted, and leaves every file as it was."""
    run = finished_runs["segmentation"]
    names = save_npy_inputs(split_of(run), tmp_path / "in", 2)
    manifest = tmp_path / "in" / "cases.csv"
    manifest.write_text("image\n" + "".join(f"{n}\n" for n in names))
    image = tmp_path / "in" / names[0]
    other_run = tmp_path / "other_run.csv"
    shutil.copy(finished_runs["classification"] / "predictions.csv", other_run)
    kept = {p: p.read_bytes() for p in (manifest, image, other_run)}
    for path, holds in (
        (manifest, "the columns ['image']"),
        (image, "no CSV text"),
        (other_run, "the columns ['id', 'target', 'pred', 'prob_0']"),
    ):
        assert main([f"run_dir={run}", f"inputs={manifest}", f"output={path}"]) == 2
        assert (
            f"output={path} exists and is not an earlier prediction's CSV (it holds {holds})"
        ) in capsys.readouterr().err
    assert {p: p.read_bytes() for p in kept} == kept
    assert main([f"run_dir={run}", f"inputs={tmp_path / 'in'}", f"output={tmp_path}"]) == 2
    assert "is a folder; give a CSV file name" in capsys.readouterr().err

    out = tmp_path / "res" / "first.csv"
    assert main([f"run_dir={run}", f"inputs={manifest}", f"output={out}"]) == 0
    assert main([f"run_dir={run}", f"inputs={manifest}", f"output={out}"]) == 0  # the same again
    masks = {p: p.read_bytes() for p in (out.parent / "masks").iterdir()}
    second = out.parent / "second.csv"
    assert main([f"run_dir={run}", f"inputs={manifest}", f"output={second}"]) == 2
    said = capsys.readouterr().err
    assert f"masks={out.parent / 'masks'} holds 2 file(s) that {second} does not list" in said
    assert "give masks= another folder" in said and not second.exists()
    assert {p: p.read_bytes() for p in (out.parent / "masks").iterdir()} == masks
    options = [
        f"masks={tmp_path / 'res' / 'masks2'}",
        f"measurements={tmp_path / 'res' / 'm2.csv'}",
    ]
    # masks= of its own is not enough: measurements.csv beside it is the first one's.
    assert main([f"run_dir={run}", f"inputs={manifest}", f"output={second}", options[0]]) == 2
    assert f"{out.parent / 'measurements.csv'} is another prediction's measurements table" in (
        capsys.readouterr().err
    )
    assert main([f"run_dir={run}", f"inputs={manifest}", f"output={second}", *options]) == 0
    # masks= the CSV's own folder: its CSV and measurements.csv are its own, not in the way.
    here = tmp_path / "here"
    for _ in range(2):
        assert (
            main(
                [
                    f"run_dir={run}",
                    f"inputs={manifest}",
                    f"output={here / 'p.csv'}",
                    f"masks={here}",
                ]
            )
            == 0
        )
    # A file browser's files are no one's masks; an interrupted prediction left its files in a
    # hidden staging folder (and none among the masks): the same command goes on, and clears it.
    (out.parent / "masks" / ".DS_Store").write_bytes(b"\0")
    (out.parent / "masks" / "Thumbs.db").write_bytes(b"\0")
    (out.parent / "masks" / ".partial-1").mkdir()
    (out.parent / "masks" / ".partial-1" / "half.png").write_bytes(b"\0")
    assert main([f"run_dir={run}", f"inputs={manifest}", f"output={out}"]) == 0
    assert not (out.parent / "masks" / ".partial-1").exists()
    # Other inputs into the same CSV: the masks the replaced CSV listed and this one does not
    # write are removed with it, so the folder holds what the CSV lists (and a third run goes).
    one = tmp_path / "in" / "one.csv"
    one.write_text(f"image\n{names[0]}\n")
    assert main([f"run_dir={run}", f"inputs={one}", f"output={out}"]) == 0
    listed = {(out.parent / r["mask"]).resolve() for r in read_rows(out)}
    kept = {p.resolve() for p in (out.parent / "masks").glob("*.png")}
    assert kept == listed and len(kept) == 1
    assert main([f"run_dir={run}", f"inputs={manifest}", f"output={out}"]) == 0
    # masks= outside the CSV's folder: the CSV names them by absolute path, and a rerun goes.
    elsewhere = [f"masks={tmp_path / 'apart'}", f"measurements={tmp_path / 'apart.csv'}"]
    third = tmp_path / "third" / "p.csv"
    for _ in range(2):
        assert main([f"run_dir={run}", f"inputs={manifest}", f"output={third}", *elsewhere]) == 0
    assert all(Path(r["mask"]).is_absolute() for r in read_rows(third))
    # A measurements.csv of the user's own is not replaced either.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "measurements.csv").write_text("patient,volume\np1,3\n")
    assert (
        main([f"run_dir={run}", f"inputs={manifest}", f"output={tmp_path / 'mine' / 'p.csv'}"]) == 2
    )
    assert "measurements.csv exists and is not an earlier prediction's measurements table" in (
        capsys.readouterr().err
    )
    assert (tmp_path / "mine" / "measurements.csv").read_text() == "patient,volume\np1,3\n"


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder): what a refusal must leave."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def test_a_file_where_an_output_folder_must_be_is_refused_before_predicting(
    finished_runs, tmp_path, capsys, monkeypatch
):
    """`output=afile/preds.csv` with `afile` a file (or masks=, measurements= in or as a file):
    one line naming the option and the file, before any image is predicted; nothing written."""
    save_npy_inputs(split_of(finished_runs["segmentation"]), tmp_path / "in", 2)
    (tmp_path / "afile").write_text("x\n")
    monkeypatch.chdir(tmp_path)

    fail_if_called(monkeypatch, Predictor, "predict", "predicted")
    before = tree(tmp_path)
    in_a_file = "output=afile/preds.csv: afile is a file, not a folder"
    for task, options, said in (
        ("classification", ["output=afile/preds.csv"], in_a_file),
        ("segmentation", ["output=afile/preds.csv"], in_a_file),
        (
            "segmentation",
            ["output=out/p.csv", "masks=afile"],
            "masks=afile is a file, not a folder",
        ),
        (
            "segmentation",
            ["output=out/p.csv", "masks=afile/masks"],
            "masks=afile/masks: afile is a file, not a folder",
        ),
        (
            "segmentation",
            ["output=out/p.csv", "measurements=afile/m.csv"],
            "measurements=afile/m.csv: afile is a file, not a folder",
        ),
    ):
        assert main([f"run_dir={finished_runs[task]}", "inputs=in", *options]) == 2, options
        assert capsys.readouterr().err == f"error: {said}\n"
        assert tree(tmp_path) == before, options


def test_inputs_measured_at_different_spacings_are_warned_about(finished_runs, tmp_path, caplog):
    from medtrain.io import png_bytes

    run = finished_runs["segmentation"]  # dataset.spacing [0.5, 0.5]
    stored = np.asarray(split_of(run).read_image(0), dtype=np.float64)  # as 8-bit grey
    image = ((stored - stored.min()) / (np.ptp(stored) or 1.0) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "plain.png").write_bytes(png_bytes(image))
    buffer = io.BytesIO()  # matplotlib's figures state 100 dpi: a display default, not a size
    Image.fromarray(image).save(buffer, format="PNG", dpi=(100, 100))
    (tmp_path / "in" / "figure.png").write_bytes(buffer.getvalue())
    (tmp_path / "in" / "scope.png").write_bytes(png_bytes(image, (0.25, 0.25)))
    out = tmp_path / "o" / "pred.csv"
    with caplog.at_level("WARNING"):
        assert main([f"run_dir={run}", f"inputs={tmp_path / 'in'}", f"output={out}"]) == 0
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(
        "inputs have 2 pixel spacings: 0.5 x 0.5 mm for 2 (the run's dataset.spacing: "
        "figure.png, plain.png); 0.25 x 0.25 mm for 1 (stated in the file: scope.png)."
    )
    rows = {r["file"]: r for r in read_rows(out)}
    for name in Predictor(run).class_names[1:]:  # each file measured at its own pixel size
        for file, pixel_mm2 in (("plain.png", 0.25), ("figure.png", 0.25), ("scope.png", 0.0625)):
            area = float(rows[file][f"area_mm2_{name}"])
            assert area == pytest.approx(int(rows[file][f"area_px_{name}"]) * pixel_mm2)
    caplog.clear()
    with caplog.at_level("WARNING"):  # one spacing for all: nothing to warn about
        args = [f"run_dir={run}", f"inputs={tmp_path / 'in'}", f"output={out}", "spacing=[0.5,0.5]"]
        assert main(args) == 0
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_argument_errors(finished_runs, tmp_path, capsys):
    assert main([f"inputs={tmp_path}"]) == 2
    assert "run_dir=<run>" in capsys.readouterr().err
    assert main([f"run_dir={tmp_path}", f"inputs={tmp_path}"]) == 2
    assert "has no checkpoints/best.pt" in capsys.readouterr().err
    run = finished_runs["classification"]
    assert main([f"run_dir={run}", f"inputs={tmp_path / 'nothing*.png'}"]) == 2
    assert "no file matches it" in capsys.readouterr().err
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.png,1\n")
    assert main([f"run_dir={run}", f"inputs={manifest}"]) == 2
    assert "no 'image' column" in capsys.readouterr().err
    assert main([f"run_dir={run}", f"inputs={manifest}", "batch_size=0"]) == 2
    assert "batch_size=0" in capsys.readouterr().err


def test_a_cv_folder_given_as_a_run_names_its_fold_ensemble(tmp_path):
    """`run_dir=` a CV's folder (folds.json, fold_<k>/, ensemble/): the error names the folder to
    give instead, for predict, serve and export alike (they load runs the same way)."""
    from medtrain.errors import ConfigError
    from medtrain.inference.run import load_run

    (tmp_path / "folds.json").write_text("{}")
    with pytest.raises(
        ConfigError, match=r"is a CV folder: its fold ensemble is .*ensemble \(not made"
    ):
        load_run(tmp_path)
    (tmp_path / "ensemble").mkdir()
    with pytest.raises(
        ConfigError, match=r"is a CV folder: its fold ensemble is .*ensemble, its folds"
    ):
        load_run(tmp_path)


def test_a_manifest_is_read_by_the_run_s_own_image_column(finished_runs, tmp_path):
    """A run trained with dataset.image_column=file: evaluate read its CSVs, predict refused
    them (its default was `image`)."""
    import torch

    run = tmp_path / "run"
    shutil.copytree(finished_runs["classification"], run)
    best = run / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    state["config"]["dataset"]["image_column"] = "file"
    torch.save(state, best)
    image = build_datasets(Predictor(finished_runs["classification"]).cfg)["test"].read_image(0)
    np.save(tmp_path / "a.npy", image)
    (tmp_path / "cases.csv").write_text("file\na.npy\n")
    out = tmp_path / "out" / "p.csv"
    assert main([f"run_dir={run}", f"inputs={tmp_path / 'cases.csv'}", f"output={out}"]) == 0
    assert [r["file"] for r in csv.DictReader(out.open())] == ["a.npy"]


def test_an_unfinished_run_is_refused_until_it_is_finished(finished_runs, tmp_path, capsys):
    """An interrupted run (its last.pt, no metrics.json) has no decision threshold in best.pt:
    predict answered with the task's default 0.5 where the finished run chose Youden's."""
    from medtrain.commands.export import main as export
    from medtrain.errors import ConfigError

    run = tmp_path / "run"
    shutil.copytree(finished_runs["classification"], run)
    import torch

    best = run / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    state.pop("threshold")  # as saved during training, before the run's end
    torch.save(state, best)
    torch.save(state, run / "checkpoints" / "last.pt")
    (run / "metrics.json").unlink()
    with pytest.raises(ConfigError, match=r"is an unfinished run \(interrupted, or still "):
        Predictor(run)
    assert main([f"run_dir={run}", f"inputs={tmp_path}", f"output={tmp_path / 'p.csv'}"]) == 2
    assert "trainer.resume=true" in capsys.readouterr().err
    assert export([f"run_dir={run}", f"output={tmp_path / 'export'}"]) == 2
    assert "is an unfinished run" in capsys.readouterr().err
    # A finished run's checkpoints copied without its metrics.json (to a serving host) serve.
    shutil.copy(finished_runs["classification"] / "checkpoints" / "best.pt", best)
    Predictor(run)


def test_an_input_on_another_scale_than_the_training_images_is_refused(finished_runs):
    from medtrain.data.decoding import Decoded
    from medtrain.errors import DataError
    from medtrain.inference.predictor import other_scale

    ramp = np.linspace(0, 255, 32 * 32).reshape(32, 32)
    # Trained on 8-bit files (read as 0-1): a float image of 0-255 values is 255 times too bright.
    said = other_scale(ramp.astype(np.float32), {"uint8"}, 255.0)
    assert said == (
        "float32 pixel values from 0 to 255; this run was trained on uint8 images, read as 0-1 "
        "of their bit depth, and reads float32 values as they are (0-1 expected): save it as an "
        "8/16-bit PNG or TIFF, or scale it to 0-1 (divide 8-bit values by 255)"
    )
    assert other_scale(ramp.astype(np.int16), {"uint8", "uint16"}, 255.0).startswith("int16 pixel")
    assert other_scale(ramp.astype(np.float32) / 255, {"uint8"}, 255.0) is None  # 0-1 floats
    assert other_scale(ramp.astype(np.uint8), {"uint8"}, 255.0) is None
    # An 8-bit image saved in 16 bits (values up to 255): 257 times too dark for an 8-bit run.
    assert "257 times darker" in other_scale(ramp.astype(np.uint16), {"uint8"}, 255.0)
    assert other_scale(ramp.astype(np.uint16) * 257, {"uint8"}, 255.0) is None  # a 16-bit image
    assert other_scale(ramp.astype(np.uint16), {"uint16"}, 255.0) is None  # as trained
    # Trained on floats of 0-255 (read as they are): an 8-bit file would be 255 times too dark.
    assert "trained on float32 images of values up to 255" in other_scale(
        ramp.astype(np.uint8), {"float32"}, 255.0
    )
    assert other_scale(ramp.astype(np.uint8), {"float32"}, 1.0) is None  # floats of 0-1
    # Trained on floats of 0-1 (the default experiment's scans): floats of 0-255 are 255 times
    # brighter (answered with confidence: lesion 1.0 where the 0-1 copy read normal 0.978).
    assert other_scale(ramp.astype(np.float32), {"float32"}, 1.0) == (
        "float32 pixel values from 0 to 255; this run was trained on float32 images of values "
        "up to 1, read as they are: scale it as they were (0-1: divide 8-bit values by 255)"
    )
    assert other_scale(ramp.astype(np.float32) / 255, {"float32"}, 1.0) is None
    assert other_scale(ramp.astype(np.float32), {"float32"}, 255.0) is None  # floats of 0-255
    assert other_scale(ramp.astype(np.float32), {"float32", "uint8"}, 255.0) is None  # mixed
    predictor = Predictor(finished_runs["classification"])
    assert predictor.trained_values is not None  # from the run's data_report.json
    predictor.trained_values = ({"uint8"}, 255.0)
    with pytest.raises(DataError, match=r"^scan.npy: float32 pixel values from 0 to 255; "):
        predictor.predict([Decoded(ramp.astype(np.float32), None, "npy")], ["scan.npy"])
    # Only where the scale reaches the network: per-image z-scores are the same on either scale.
    from medtrain.data.transforms import Normalize

    assert predictor.scale_matters  # this run's fixed mean and std
    predictor.preprocess.normalize = Normalize(mode="zscore")
    assert not predictor.scale_matters
    predictor.preprocess.normalize = Normalize(mode="zscore", invert="auto")
    assert predictor.scale_matters  # the median decides the inversion


def test_a_folder_s_images_are_recognised_by_their_content(finished_runs, tmp_path, caplog, capsys):
    """Files of a folder without an image's extension (PACS name DICOM files IM000001 or by UID)
    are read by their content, as the same file given by its path is; files that are no image are
    left out with one warning naming them (they were dropped without a word, and a folder of
    extensionless DICOM files was "no .png/.../.dcm files here"); documents, tables and hidden
    files are left out unsaid, as before."""
    from medtrain.inference.predict import list_volumes
    from tests.hostile_files import make_dicom

    run = finished_runs["classification"]
    rng = np.random.default_rng(0)
    pacs = tmp_path / "pacs"
    pacs.mkdir()
    for name in ("IM000001", "1.2.840.113619.2.55.3.6046"):
        stored = rng.integers(0, 4096, (16, 16)).astype(np.uint16)
        (pacs / name).write_bytes(make_dicom(stored, 1.0, -1024.0, window=(40, 400)))
    out = tmp_path / "o" / "pacs.csv"
    with caplog.at_level("WARNING"):
        assert main([f"run_dir={run}", f"inputs={pacs}", f"output={out}"]) == 0
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    by_folder = {r["file"]: r for r in read_rows(out)}
    assert sorted(by_folder) == ["1.2.840.113619.2.55.3.6046", "IM000001"]
    for name, row in by_folder.items():  # as the file given by its path
        alone = tmp_path / "o" / f"{name}.csv"
        assert main([f"run_dir={run}", f"inputs={pacs / name}", f"output={alone}"]) == 0
        (want,) = read_rows(alone)
        assert row["error"] == want["error"] == "" and row["label"] == want["label"]
        for column in (c for c in row if c.startswith("prob_")):  # within a batch's rounding
            assert float(row[column]) == pytest.approx(float(want[column]), abs=1e-6)

    mixed = tmp_path / "mixed"
    shutil.copytree(pacs, mixed)
    grey = rng.integers(0, 256, (16, 16)).astype(np.uint8)
    Image.fromarray(grey).save(mixed / "scan.png")
    Image.fromarray(grey).save(mixed / "slide", format="TIFF")  # a TIFF without its extension
    Image.fromarray(grey).save(mixed / "thumb.gif")  # another format: warned about
    (mixed / "blob.bin").write_bytes(bytes(range(256)))
    for quiet in ("notes.txt", "README.md", "cases.json", ".DS_Store"):
        (mixed / quiet).write_text("not an image")
    out = mixed / "pred.csv"  # the prediction's own CSV among the inputs: unsaid, as before
    for _ in range(2):
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert main([f"run_dir={run}", f"inputs={mixed}", f"output={out}"]) == 0
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warnings == [
            f"inputs={mixed}: 2 file(s) left out that are not PNG, JPEG, TIFF, DICOM, NPY or NPZ "
            "files by their extension or content: blob.bin, thumb.gif"
        ]
        rows = {r["file"]: r for r in read_rows(out)}
        assert sorted(rows) == [*sorted(by_folder), "scan.png", "slide"]
        assert rows["IM000001"]["label"] == by_folder["IM000001"]["label"]
        assert rows["slide"]["error"] == rows["scan.png"]["error"] == ""
        for column in (c for c in rows["slide"] if c.startswith("prob_")):  # the same pixels
            assert float(rows["slide"][column]) == pytest.approx(float(rows["scan.png"][column]))
    # A folder without an image names what it holds.
    for name in ("IM000001", "1.2.840.113619.2.55.3.6046", "scan.png", "slide", "pred.csv"):
        (mixed / name).unlink()
    capsys.readouterr()
    assert main([f"run_dir={run}", f"inputs={mixed}", f"output={tmp_path / 'none.csv'}"]) == 2
    assert capsys.readouterr().err == (
        f"error: inputs='{mixed}': no image here: no PNG, JPEG, TIFF, DICOM, NPY or NPZ file by "
        "its extension or content (it holds blob.bin, thumb.gif)\n"
    )
    assert not (tmp_path / "none.csv").exists()
    # A run on volumes takes a folder of extensionless DICOM files for one series, as .dcm ones.
    assert list_volumes(str(pacs)) == [(pacs, "pacs")]
    # A CD's or an export's DICOMDIR is their index, no image: its series are the folders below.
    disc = tmp_path / "disc"
    for series in ("S0001", "S0002"):
        shutil.copytree(pacs, disc / series)
    (disc / "DICOMDIR").write_bytes((pacs / "IM000001").read_bytes())  # its preamble, as one
    assert list_volumes(str(disc)) == [(disc / "S0001", "S0001"), (disc / "S0002", "S0002")]
    caplog.clear()
    out = tmp_path / "o" / "disc.csv"
    with caplog.at_level("WARNING"):
        assert main([f"run_dir={run}", f"inputs={disc}", f"output={out}"]) == 0
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(read_rows(out)) == 4
