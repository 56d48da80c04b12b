"""`medtrain evaluate`: a finished run scored on new labelled images gives what its own test
split gave when they are its test images, and names every unreadable row at once."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtrain.commands.evaluate import main
from tests.conftest import fail_if_called
from tests.inference.test_predict import save_npy_inputs, split_of


def write_labelled(
    folder: Path, names: list[str], targets: list, extra: dict | None = None
) -> Path:
    path = folder / "labelled.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "target", *(extra or {})])
        for k, (name, target) in enumerate(zip(names, targets, strict=True)):
            writer.writerow([name, target, *(v[k] for v in (extra or {}).values())])
    return path


def assert_scores_as_the_run(run: Path, labelled: Path, out: Path, keys) -> dict:
    """`medtrain evaluate` of `run` on `labelled` into `out` gives the run's own test metrics
    `keys` (its test images, as files); returns the evaluation's metrics."""
    assert main([f"run_dir={run}", f"inputs={labelled}", f"output={out}"]) == 0
    mine = json.loads((out / "metrics.json").read_text())
    theirs = json.loads((run / "metrics.json").read_text())
    for key in keys:
        assert mine[key] == pytest.approx(theirs[key], abs=1e-6), key
    return mine


def test_the_run_s_own_test_images_score_its_test_metrics(finished_runs, tmp_path, capsys):
    run = finished_runs["classification"]
    test = split_of(run)
    names = save_npy_inputs(test, tmp_path, len(test))
    classes = test.class_names
    labelled = write_labelled(tmp_path, names, [classes[int(y)] for y in test.labels])
    out = tmp_path / "external"
    assert main([f"run_dir={run}", f"inputs={labelled}", f"output={out}", "batch_size=7"]) == 0
    mine = json.loads((out / "metrics.json").read_text())
    theirs = json.loads((run / "metrics.json").read_text())
    for key in ("test/auc", "test/acc", "test/sensitivity", "test/specificity"):
        assert mine[key] == pytest.approx(theirs[key], abs=1e-6), key
    assert mine["threshold"] == theirs["threshold"] and mine["cases"] == len(test)
    assert mine["test/auc_ci_low"] == pytest.approx(theirs["test/auc_ci_low"], abs=1e-3)
    assert (out / "predictions.csv").is_file() and (out / "confusion_matrix.csv").is_file()
    printed = capsys.readouterr().out
    assert f"test/auc                 {mine['test/auc']:.4f}  (95% CI" in printed
    # Patients: the intervals resample them (groups.json beside the metrics).
    patients = [f"p{k // 2}" for k in range(len(names))]
    grouped = write_labelled(
        tmp_path, names, [classes[int(y)] for y in test.labels], {"patient": patients}
    )
    assert (
        main([f"run_dir={run}", f"inputs={grouped}", f"output={out}", "group_column=patient"]) == 0
    )
    assert json.loads((out / "groups.json").read_text())[names[3]] == "p1"
    said = json.loads((out / "metrics.json").read_text())["intervals"]
    assert said == (
        f"bootstrap over the {len(names)} cases, resampling their {len(names) // 2} groups "
        "(dataset.group_column: a group's cases are not independent)"
    )
    # Without group_column into the same folder: the earlier groups.json is not used.
    assert main([f"run_dir={run}", f"inputs={labelled}", f"output={out}"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert not (out / "groups.json").exists()
    assert again["test/auc_ci_low"] == mine["test/auc_ci_low"]
    # Fewer than 10 patients: the images are resampled, and that is said.
    targets = [classes[int(y)] for y in test.labels]
    few = write_labelled(
        tmp_path, names, targets, {"patient": [f"q{k % 4}" for k in range(len(names))]}
    )
    assert main([f"run_dir={run}", f"inputs={few}", f"output={out}", "group_column=patient"]) == 0
    assert "their 4 groups are too few to resample (at least 10)" in capsys.readouterr().out
    # An empty patient cell is refused, naming its line (it would join every such image).
    empty = write_labelled(tmp_path, names, targets, {"patient": ["", *patients[1:]]})
    assert main([f"run_dir={run}", f"inputs={empty}", f"output={out}", "group_column=patient"]) == 1
    assert "column 'patient' (group_column) is empty: line 2" in capsys.readouterr().err
    # Cases of one class: the AUC is undefined, said beside a balanced accuracy that is not.
    one = write_labelled(tmp_path, names[:4], [classes[0]] * 4)
    assert main([f"run_dir={run}", f"inputs={one}", f"output={tmp_path / 'one'}"]) == 0
    err = capsys.readouterr().err
    assert "note: test/auc, test/sensitivity" in err
    assert "needs cases of that class" in err and "R^2" not in err


def test_an_output_in_a_file_s_place_and_missing_inputs_are_refused_at_once(
    finished_runs, tmp_path, capsys, monkeypatch
):
    """Before any image is read: `output=afile/ev` with `afile` a file, and an inputs= CSV that
    does not exist, each named in one line; nothing written."""
    from medtrain.inference.predictor import Predictor
    from tests.inference.test_predict import tree

    run = finished_runs["classification"]
    names = save_npy_inputs(split_of(run), tmp_path, 2)
    write_labelled(tmp_path, names, [0, 1])
    (tmp_path / "afile").write_text("x\n")
    monkeypatch.chdir(tmp_path)

    fail_if_called(monkeypatch, Predictor, "forward", "predicted")
    before = tree(tmp_path)
    assert main([f"run_dir={run}", "inputs=labelled.csv", "output=afile/ev"]) == 2
    assert capsys.readouterr().err == "error: output=afile/ev: afile is a file, not a folder\n"
    assert tree(tmp_path) == before
    # An inputs= CSV that does not exist is named as such (it read "a CSV manifest of images and
    # their targets is needed").
    assert main([f"run_dir={run}", "inputs=nonexist.csv", "output=ev"]) == 2
    assert capsys.readouterr().err == "error: inputs=nonexist.csv: no such file\n"
    assert tree(tmp_path) == before


def test_regression_values_score_as_the_run_s_test(finished_runs, tmp_path, capsys):
    run = finished_runs["regression"]
    test = split_of(run)
    names = save_npy_inputs(test, tmp_path, len(test))
    labelled = write_labelled(tmp_path, names, [repr(float(y[0])) for y in test.labels])
    out = tmp_path / "external"
    argv = [f"run_dir={run}", f"inputs={labelled}", f"output={out}", "target_column=target"]
    assert main(argv) == 0
    mine = json.loads((out / "metrics.json").read_text())
    theirs = json.loads((run / "metrics.json").read_text())
    assert mine["test/mae"] == pytest.approx(theirs["test/mae"], rel=1e-6)
    # Equal targets: R^2 and r are undefined, said in a regression's words (not of classes).
    equal = write_labelled(tmp_path, names[:3], ["1.5"] * 3)
    capsys.readouterr()
    assert main([f"run_dir={run}", f"inputs={equal}", f"output={tmp_path / 'eq'}", argv[3]]) == 0
    err = capsys.readouterr().err
    assert "note: test/r2, test/pearson undefined" in err
    assert "R^2 needs targets that vary; a correlation needs" in err and "class" not in err


def test_a_multilabel_manifest_run_scores_its_test_rows_as_its_own_test(tmp_path, capsys):
    """A run trained on a manifest of 0/1 label columns, evaluated on its own test rows (as its
    columns, and as one column of joined names): its own test metrics; each label's AUC that
    of scikit-learn on the evaluation's predictions."""
    from sklearn.metrics import roc_auc_score

    from tests.conftest import train_in_process
    from tests.data.test_manifest import write_csv, write_png

    rng = np.random.default_rng(0)
    rows = []
    for k in range(36):
        name = f"images/case{k:02d}.png"
        a, b = int(rng.random() < 0.5), int(rng.random() < 0.5)
        write_png(tmp_path / name, 60 + 100 * a, seed=k)
        joined = "|".join(n for n, y in (("effusion", a), ("nodule", b)) if y) or "none"
        rows.append([name, a, b, joined, ("train", "val", "test")[k % 3]])
    header = ["image", "effusion", "nodule", "finding", "split"]
    cases = write_csv(tmp_path / "cases.csv", header, rows)
    run = tmp_path / "run"
    overrides = [
        "dataset=manifest",
        f"dataset.path={cases}",
        "dataset.multilabel=true",
        "dataset.target_column=[effusion,nodule]",
        "loss=bce",
        "dataset.image_size=16",
        "trainer.max_epochs=2",
        "trainer.batch_size=6",
        "trainer.progress=false",
    ]
    theirs = train_in_process(run, overrides)
    # The intervals of each label are named by it also at a fixed threshold (they were by index).
    assert "test/auc_effusion_ci_low" in theirs and "test/auc_0_ci_low" not in theirs
    test = [r for r in rows if r[-1] == "test"]
    labelled = write_csv(tmp_path / "labelled.csv", header, test)
    out = tmp_path / "external"
    assert main([f"run_dir={run}", f"inputs={labelled}", f"output={out}"]) == 0
    mine = json.loads((out / "metrics.json").read_text())
    keys = ["test/auc", "test/auc_effusion", "test/auc_nodule", "test/subset_acc", "test/f1"]
    for key in keys:
        assert mine[key] == pytest.approx(theirs[key], abs=1e-6), key
    with open(out / "predictions.csv", newline="") as f:
        predicted = list(csv.DictReader(f))
    truth = {r[0]: r[1:3] for r in test}
    for k, label in enumerate(("effusion", "nodule")):
        target = [truth[p["id"]][k] for p in predicted]
        probs = [float(p[f"prob_{k}"]) for p in predicted]
        assert mine[f"test/auc_{label}"] == pytest.approx(roc_auc_score(target, probs))
    # medtrain predict writes each image's labels as a cell of the run's data (joined by '|',
    # none: an empty cell, the run having no dataset.no_label), the decisions evaluate scored.
    from medtrain.commands.predict import main as predict

    images = [tmp_path / r[0] for r in test]
    listed = write_csv(tmp_path / "images.csv", ["image"], [[str(f)] for f in images])
    assert predict([f"run_dir={run}", f"inputs={listed}", f"output={tmp_path / 'p.csv'}"]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        cells = [r["labels"] for r in csv.DictReader(f)]
    decided = {
        p["id"]: "|".join(n for k, n in enumerate(("effusion", "nodule")) if p[f"pred_{k}"] == "1")
        for p in predicted
    }
    assert cells == [decided[r[0]] for r in test]
    # The 0/1 columns in another order: matched to the run's labels by name.
    swapped = [f"run_dir={run}", f"inputs={labelled}", f"output={tmp_path / 's'}"]
    assert main([*swapped, "target_column=[nodule,effusion]"]) == 0
    again = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert [again[k] for k in keys] == pytest.approx([theirs[k] for k in keys], abs=1e-6)
    # The same rows as one column of joined names (the run's separator '|'), an empty cell for an
    # image without any: evaluate's no_label= says so (the run, of 0/1 columns, has none).
    for row in test:
        row[3] = row[3].replace("none", "")
    joined = write_csv(tmp_path / "joined.csv", header, test)
    argv = [f"run_dir={run}", f"inputs={joined}", f"output={tmp_path / 'j'}"]
    assert main([*argv, "target_column=finding"]) == 1
    assert "is empty (an image without any label: set no_label to" in capsys.readouterr().err
    assert main([*argv, "target_column=finding", "no_label="]) == 0
    again = json.loads((tmp_path / "j" / "metrics.json").read_text())
    assert [again[k] for k in keys] == pytest.approx([theirs[k] for k in keys], abs=1e-6)
    assert main([*argv, "target_column=[effusion]"]) == 1
    assert (
        "line 2: column 'effusion' holds '0', not label names: one column is read as the labels "
        "joined by '|'; 0/1 columns need one per label (['effusion', 'nodule'])"
    ) in capsys.readouterr().err
    assert main([*argv, "target_column=[effusion,nodule,finding]"]) == 2
    assert "the run has 2 labels (['effusion', 'nodule'])" in capsys.readouterr().err


def test_every_bad_row_is_named_at_once_and_nothing_is_written(finished_runs, tmp_path, capsys):
    run = finished_runs["classification"]
    test = split_of(run)
    names = save_npy_inputs(test, tmp_path, 4)
    targets = ["lesion", "normal", "lession", "normal"]
    labelled = write_labelled(tmp_path, [*names[:3], "gone.npy"], targets)
    out = tmp_path / "external"
    assert main([f"run_dir={run}", f"inputs={labelled}", f"output={out}"]) == 1
    err = capsys.readouterr().err
    assert "line 4: class 'lession' is not one of the run's ['normal', 'lesion']" in err
    assert f"line 5: {tmp_path / 'gone.npy'}: cannot read file (No such file" in err
    assert not out.exists()
    # The run folder as the output is refused as a config error.
    assert main([f"run_dir={run}", f"inputs={labelled}", f"output={run}"]) == 2
    assert "the run folder itself" in capsys.readouterr().err


def test_an_ordinal_run_s_grades_must_be_whole_and_those_it_cannot_predict_are_said(caplog):
    """Grades outside the run's range (task.grade_range) are scored as they are, with a warning
    naming their lines: the run cannot predict them."""
    from types import SimpleNamespace

    from medtrain.inference.truth import _labels

    task = SimpleNamespace(targets="values", ordinal=True, grade_range=(0, 4))
    rows = [{"target": cell} for cell in ("7", "-1", "2", "2.5", "4")]
    with caplog.at_level("WARNING", logger="medtrain"):
        labels, problems = _labels(rows, [2, 3, 4, 5, 6], ["target"], task, ["grade"])
    assert problems == ["line 5: target ['2.5'] is not a whole-number grade (the run is ordinal)"]
    assert [float(v) for v in labels] == [7, -1, 2, 2.5, 4]
    assert (
        "2 grade(s) outside the grades the run predicts, 0 to 4 (task.grade_range), lines 2, 3: "
        "scored as they are; the run cannot predict them"
    ) in caplog.text


def write_segmentation_set(run: Path, folder: Path, count: int | None = None) -> tuple[Path, list]:
    """The run's test images (NPY) and masks (PNG of class indices) with a CSV listing them."""
    test = split_of(run)
    count = len(test) if count is None else count
    names = save_npy_inputs(test, folder, count)
    rows = []
    for k, name in enumerate(names):
        mask_file = f"{Path(name).stem}_mask.png"
        Image.fromarray(test.read_mask(k).astype(np.uint8)).save(folder / mask_file)
        rows.append([name, mask_file])
    path = folder / "labelled.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["image", "mask"], *rows])
    return path, rows


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_segmentation_scores_as_the_run_s_own_test_split(finished_runs, tmp_path, capsys):
    run = finished_runs["segmentation"]
    labelled, rows = write_segmentation_set(run, tmp_path / "data")
    out = tmp_path / "external"
    assert main([f"run_dir={run}", f"inputs={labelled}", f"output={out}", "batch_size=3"]) == 0
    mine = json.loads((out / "metrics.json").read_text())
    theirs = json.loads((run / "metrics.json").read_text())
    keys = [k for k in theirs if k.startswith("test/") and not k.endswith("_ci_low")]
    keys = [k for k in keys if not k.endswith("_ci_high") and k != "test/loss"]
    assert {"test/dice", "test/hd95_mm", "test/area_mae_mm2_ellipse"} <= set(keys)
    for key in keys:  # Dice, HD95 in mm (the run's dataset.spacing), count and area agreement
        if theirs[key] is None or theirs[key] != theirs[key]:
            assert mine[key] is None or mine[key] != mine[key], key
        else:
            assert mine[key] == pytest.approx(theirs[key], abs=1e-6), key
    assert mine["test/dice_ci_low"] == pytest.approx(theirs["test/dice_ci_low"], abs=1e-6)
    assert mine["cases"] == len(rows) and "threshold" not in mine
    # Image by image: the same Dice, and the same predicted masks as the run's own test pass.
    evaluated = read_rows(run / "per_case_metrics.csv")
    scored = read_rows(out / "per_case_metrics.csv")
    assert [r["id"] for r in scored] == [r[0] for r in rows]
    for own, new in zip(evaluated, scored, strict=True):
        for key in ("dice_ellipse", "dice_rectangle", "hd95_mm_ellipse"):
            assert float(new[key]) == pytest.approx(float(own[key]), abs=1e-6, nan_ok=True), key
    predictions = read_rows(out / "predictions.csv")
    for own, new in zip(read_rows(run / "predictions.csv"), predictions, strict=True):
        np.testing.assert_array_equal(
            np.array(Image.open(out / new["mask"])), np.array(Image.open(run / own["mask"]))
        )
        assert new["unit"] == "mm" and new["count_ellipse"] == own["count_ellipse"]
    printed = capsys.readouterr().out  # keys padded to the longest one
    assert re.search(rf"^test/dice +{mine['test/dice']:.4f}  \(95% CI", printed, re.MULTILINE)
    # Fewer images into the same folder: the earlier evaluation's masks do not stay behind.
    labelled, rows = write_segmentation_set(run, tmp_path / "few", 2)
    assert main([f"run_dir={run}", f"inputs={labelled}", f"output={out}"]) == 0
    assert (
        len(list((out / "masks").iterdir())) == 2 and len(read_rows(out / "predictions.csv")) == 2
    )
    # Object labels are of no use to a run that scores no instances: refused, nothing replaced.
    assert (
        main([f"run_dir={run}", f"inputs={labelled}", f"output={out}", "instance_labels=true"]) == 2
    )
    assert "instance_labels=true: the run scores no instances" in capsys.readouterr().err
    assert len(list((out / "masks").iterdir())) == 2


def test_segmentation_masks_that_do_not_fit_are_named_at_once(finished_runs, tmp_path, capsys):
    run = finished_runs["segmentation"]
    data = tmp_path / "data"
    labelled, rows = write_segmentation_set(run, data, 5)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(data / rows[0][1])  # another size
    Image.fromarray(np.full((96, 96), 3, np.uint8)).save(data / rows[1][1])  # a class 3
    rows[2][1] = ""  # no mask
    rows[3][1] = "gone.png"
    with open(labelled, "w", newline="") as f:
        csv.writer(f).writerows([["image", "mask"], *rows])
    out = tmp_path / "external"
    assert main([f"run_dir={run}", f"inputs={labelled}", f"output={out}"]) == 1
    err = capsys.readouterr().err
    assert f"line 2: {data / rows[0][1]}: the mask is 10x12 pixels but the image is 96x96" in err
    assert (
        f"line 3: {data / rows[1][1]}: mask values [3] are not among the run's 3 classes "
        "['background', 'ellipse', 'rectangle']; the run maps none (dataset.class_values)"
    ) in err
    assert "line 4: column 'mask' is empty" in err
    assert f"line 5: {data / 'gone.png'}: cannot read file" in err
    assert not out.exists()
    # A spacing column for some rows only: one unit is needed for the measurements.
    rows = write_segmentation_set(run, data, 3)[1]
    with open(labelled, "w", newline="") as f:
        spacing = ["0.5", "", "0.4 0.5"]
        csv.writer(f).writerows(
            [["image", "mask", "px_mm"], *(r + [s] for r, s in zip(rows, spacing, strict=True))]
        )
    argv = [f"run_dir={run}", f"inputs={labelled}", f"output={out}", "spacing_column=px_mm"]
    assert main(argv) == 0  # the row without one takes the run's dataset.spacing, [0.5, 0.5]
    assert [r["unit"] for r in read_rows(out / "predictions.csv")] == ["mm"] * 3
    # A folder of other files is not written into (its masks/ could be someone's).
    other = tmp_path / "mine"
    (other / "masks").mkdir(parents=True)
    assert main([f"run_dir={run}", f"inputs={labelled}", f"output={other}"]) == 2
    assert "a folder of other files (masks), not an earlier evaluation's" in capsys.readouterr().err
    # An evaluation's folder with a file of the user's, beside its files or among its masks:
    # kept, the evaluation refused (metrics.json lists what the evaluation wrote).
    assert json.loads((out / "metrics.json").read_text())["files"] == sorted(
        [
            "per_case_metrics.csv",
            "predictions.csv",
            "measurements.csv",
            "measurement_totals.csv",
            "measurement_agreement.json",
            *(f"masks/{Path(r[0]).stem}.png" for r in rows),
        ]
    )
    for mine in (out / "notes.txt", out / "masks" / "my_annotation.png"):
        mine.write_text("mine")
        assert main([f"run_dir={run}", f"inputs={labelled}", f"output={out}"]) == 2
        shown = mine.relative_to(out).as_posix()
        assert f"a folder of other files ({shown}), not an earlier" in capsys.readouterr().err
        assert mine.read_text() == "mine" and (out / "metrics.json").is_file()
        mine.unlink()
    # Masks the CSV names inside the output folder (the earlier evaluation's own, as references)
    # are never replaced with it.
    predicted = out / read_rows(out / "predictions.csv")[0]["mask"]
    lines = labelled.read_text().splitlines()
    cells = lines[1].split(",")
    lines[1] = ",".join([str(data / cells[0]), str(predicted), *cells[2:]])
    (tmp_path / "theirs.csv").write_text("\n".join(lines) + "\n")
    argv = [f"run_dir={run}", f"inputs={tmp_path / 'theirs.csv'}", f"output={out}"]
    assert main(argv) == 2
    assert f"holds files the CSV names (e.g. {predicted})" in capsys.readouterr().err
    assert predicted.is_file()
    # The folder of the inputs, and a file, are never the output.
    assert main([f"run_dir={run}", f"inputs={labelled}", f"output={data}"]) == 2
    assert f"holds the inputs ({labelled})" in capsys.readouterr().err
    assert main([f"run_dir={run}", f"inputs={labelled}", f"output={labelled}"]) == 2
    assert "a file; an evaluation writes a folder" in capsys.readouterr().err
    assert labelled.is_file() and (data / rows[0][1]).is_file()


def test_a_spacing_cell_is_one_or_two_sizes_in_mm():
    from medtrain.data.seg_manifest import spacing_cell

    assert spacing_cell("0.5") == (0.5, 0.5)
    assert (
        spacing_cell("0.4x0.5")
        == spacing_cell("0.4, 0.5")
        == spacing_cell(" 0.4 0.5")
        == (0.4, 0.5)
    )
    assert spacing_cell("") is None and spacing_cell("  ") is None
    for bad in ("abc", "0", "-1", "inf", "nan", "1 2 3"):
        with pytest.raises(ValueError):
            spacing_cell(bad)


@pytest.fixture(scope="module")
def fusion_run(tmp_path_factory) -> Path:
    from tests.conftest import ON_CPU, train_in_process

    run = tmp_path_factory.mktemp("fusion") / "run"
    train_in_process(
        run,
        [
            "experiment=synthetic_fusion",
            "dataset.num_train=64",
            "dataset.num_val=24",
            "dataset.num_test=24",
            "trainer.max_epochs=2",
            "trainer.progress=false",
            "trainer.report=false",
            ON_CPU,
        ],
    )
    return run


def test_a_fused_model_takes_each_image_s_clinical_values(fusion_run, tmp_path, capsys):
    """The CSV's clinical columns, encoded as the training rows were (the encoding travels in
    best.pt), give the run's own test metrics; a missing column or a word for a number is named."""
    from medtrain.inference.predictor import Predictor

    test = split_of(fusion_run)
    names = save_npy_inputs(test, tmp_path, len(test))
    clinical = {
        c: [cells[j] for cells in test.tabular_cells] for j, c in enumerate(test.tabular_columns)
    }
    classes = test.class_names
    labelled = write_labelled(tmp_path, names, [classes[int(y)] for y in test.labels], clinical)
    out = tmp_path / "external"
    assert main([f"run_dir={fusion_run}", f"inputs={labelled}", f"output={out}"]) == 0
    mine = json.loads((out / "metrics.json").read_text())
    theirs = json.loads((fusion_run / "metrics.json").read_text())
    for key in ("test/auc", "test/acc"):
        assert mine[key] == pytest.approx(theirs[key], abs=1e-6), key
    predictor = Predictor(fusion_run)
    assert predictor.clinical_columns == ["age", "sex", "marker"]
    encoded = predictor.clinical(
        dict(zip(test.tabular_columns, test.tabular_cells[0], strict=True)), "a"
    )
    np.testing.assert_allclose(encoded.numpy(), test.tabular[0], rtol=1e-6)
    # Without the marker column, and with a word for an age: named, nothing written.
    without = write_labelled(
        tmp_path,
        names,
        [classes[int(y)] for y in test.labels],
        {"age": ["old", *clinical["age"][1:]], "sex": clinical["sex"]},
    )
    assert main([f"run_dir={fusion_run}", f"inputs={without}", f"output={tmp_path / 'x'}"]) == 2
    assert "no column 'marker' for the run's dataset.tabular_columns[2]" in capsys.readouterr().err
    clinical["age"][0] = "old"
    bad = write_labelled(tmp_path, names, [classes[int(y)] for y in test.labels], clinical)
    assert main([f"run_dir={fusion_run}", f"inputs={bad}", f"output={tmp_path / 'x'}"]) == 1
    assert (
        f"line 2: {names[0]}: not a number: age='old', where the training values are numbers; "
        "give a number, or an empty value (or NA) for a missing one"
    ) in capsys.readouterr().err


def test_predict_reads_a_fused_model_s_clinical_columns_from_its_manifest(fusion_run, tmp_path):
    from medtrain.commands.predict import main as predict

    test = split_of(fusion_run)
    names = save_npy_inputs(test, tmp_path / "in", 10)
    clinical = {
        c: [cells[j] for cells in test.tabular_cells[:10]]
        for j, c in enumerate(test.tabular_columns)
    }
    manifest = write_labelled(tmp_path / "in", names, ["?"] * 10, clinical)
    out = tmp_path / "preds.csv"
    assert (
        predict([f"run_dir={fusion_run}", f"inputs={manifest}", f"output={out}", "batch_size=4"])
        == 0
    )
    evaluated = {r["id"]: r for r in read_rows(fusion_run / "predictions.csv")}
    classes = test.class_names
    for row in read_rows(out):
        own = evaluated[Path(row["file"]).stem]
        for k, name in enumerate(classes):  # the run's columns by index, predict's by name
            assert float(row[f"prob_{name}"]) == pytest.approx(float(own[f"prob_{k}"]), abs=1e-5)
    # A folder of images carries no clinical values: refused, saying what to give.
    assert predict([f"run_dir={fusion_run}", f"inputs={tmp_path / 'in'}", f"output={out}"]) == 2


def test_a_clinical_value_of_zero_is_a_number(fusion_run):
    """0 (a 0/1 flag, a lab value of zero) was refused as 'not a number' by predict, evaluate
    and the service: the check read the parsed 0.0 as false."""
    from medtrain.errors import DataError
    from medtrain.inference.predictor import Predictor

    predictor = Predictor(fusion_run)
    codes = {code.name: code for code in predictor.tabular.codes}
    numeric = [name for name, code in codes.items() if code.numeric]
    test = split_of(fusion_run)
    first = dict(zip(test.tabular_columns, test.tabular_cells[0], strict=True))
    for zero in ("0", "0.0", "-0"):
        encoded = predictor.clinical(first | {numeric[0]: zero}, "case")
        code = codes[numeric[0]]
        assert encoded[0].item() == pytest.approx((0 - code.mean) / code.std, rel=1e-6)
    with pytest.raises(DataError, match=f"not a number: {numeric[0]}='zero'"):
        predictor.clinical(first | {numeric[0]: "zero"}, "case")


def test_the_service_takes_a_fused_model_s_clinical_values_as_form_fields(fusion_run):
    import io as bytes_io

    from medtrain.errors import ConfigError
    from medtrain.inference.predictor import Predictor
    from medtrain.inference.serve import create_app
    from tests.inference.test_serve import fetch, post, start, stop

    test = split_of(fusion_run)
    evaluated = {r["id"]: r for r in read_rows(fusion_run / "predictions.csv")}

    def npy(k: int) -> bytes:
        buffer = bytes_io.BytesIO()
        np.save(buffer, test.read_image(k))
        return buffer.getvalue()

    def fields(k: int) -> list[tuple[str, None, bytes]]:
        cells = dict(zip(test.tabular_columns, test.tabular_cells[k], strict=True))
        return [(c, None, v.encode()) for c, v in cells.items()]

    with pytest.raises(ConfigError, match="backend=onnx runs models of images alone"):
        Predictor(fusion_run, backend="onnx")
    running = start(create_app(Predictor(fusion_run)))
    try:
        info = json.loads(fetch(running.port, "GET", "/info")[2])
        assert info["clinical_columns"] == {"age": "number", "sex": ["F", "M"], "marker": "number"}
        status, error = post(
            running.port,
            "/predict",
            ("file", "a.npy", npy(0)),
            *fields(0)[:1],
            ("sex", None, b"female"),
            fields(0)[2],
        )
        assert status == 422 and error["detail"] == (
            "a.npy: a category no training row holds: sex='female' (training: F, M); give one "
            "of the training categories (spelled alike), or an empty value for a missing one"
        )
        status, error = post(
            running.port,
            "/predict",
            ("file", "a.npy", npy(0)),
            ("age", None, b"sixty"),
            *fields(0)[1:],
        )
        assert status == 422 and error["detail"] == (
            "a.npy: not a number: age='sixty', where the training values are numbers; give a "
            "number, or an empty value (or NA) for a missing one"
        )
        # An age of 1e30 (or one in days) was answered with a confident probability.
        predictor = Predictor(fusion_run)
        code = next(c for c in predictor.tabular.codes if c.name == "age")
        beyond = (1e30 - code.high) / code.std
        status, error = post(
            running.port,
            "/predict",
            ("file", "a.npy", npy(0)),
            ("age", None, b"1e30"),
            *fields(0)[1:],
        )
        assert status == 422 and error["detail"] == (
            f"a.npy: age=1e30 lies {beyond:.3g} training standard deviations beyond the training "
            f"values ({code.low:.4g} to {code.high:.4g}), where the model's answer means "
            "nothing; check the value and its unit"
        )
        # Measured from the training values, not their mean: a rare flag's 1 lies 22 SD from
        # the mean of a column of 2 ones in 1,000 rows, and is no outlier.
        from types import SimpleNamespace

        from medtrain.inference.predictor import FAR_SD, far_beyond

        flags = np.array([1.0] * 2 + [0.0] * 998)
        flag = SimpleNamespace(low=0.0, high=1.0, std=float(flags.std()))
        assert (1 - flags.mean()) / flags.std() > FAR_SD and far_beyond(1.0, flag) == 0.0
        assert far_beyond(-1.0, flag) == pytest.approx(1 / flags.std())
        status, answer = post(running.port, "/predict", ("file", "a.npy", npy(0)), *fields(0))
        assert status == 200, answer
        assert answer["probabilities"][test.class_names[1]] == pytest.approx(
            float(evaluated[test.ids[0]]["prob_1"]), abs=1e-5
        )
        # Two files, each field given twice, in the files' order.
        batch = [("files", "a.npy", npy(0)), ("files", "b.npy", npy(1)), *fields(0), *fields(1)]
        status, answers = post(running.port, "/predict/batch", *batch)
        assert status == 200 and [a["file"] for a in answers] == ["a.npy", "b.npy"]
        assert answers[1]["probabilities"][test.class_names[1]] == pytest.approx(
            float(evaluated[test.ids[1]]["prob_1"]), abs=1e-5
        )
        status, error = post(running.port, "/predict", ("file", "a.npy", npy(0)), *fields(0)[:2])
        assert status == 422 and error["detail"].startswith(
            "marker: this run's model reads the clinical values ['age', 'sex', 'marker'] besides "
            "the image; send each as a form field, once per file (1; got 0"
        )
    finally:
        stop(running)


def test_predict_reads_a_manifest_s_spacing_column_as_evaluate_does(
    finished_runs, tmp_path, capsys
):
    from medtrain.commands.predict import main as predict

    run = finished_runs["segmentation"]  # dataset.spacing [0.5, 0.5]
    labelled, rows = write_segmentation_set(run, tmp_path / "data", 3)
    with open(labelled, "w", newline="") as f:
        csv.writer(f).writerows(
            [
                ["image", "mask", "spacing"],
                *(r + [s] for r, s in zip(rows, ["0.25", "", "0.25 0.5"], strict=True)),
            ]
        )
    out = tmp_path / "preds.csv"
    assert predict([f"run_dir={run}", f"inputs={labelled}", f"output={out}"]) == 0
    predicted = read_rows(out)
    assert main([f"run_dir={run}", f"inputs={labelled}", f"output={tmp_path / 'ev'}"]) == 0
    evaluated = read_rows(tmp_path / "ev" / "predictions.csv")
    for mine, theirs, scale in zip(predicted, evaluated, (0.0625, 0.25, 0.125), strict=True):
        area = float(mine["area_mm2_ellipse"])
        assert area == pytest.approx(int(mine["area_px_ellipse"]) * scale)  # the row's mm^2
        assert area == pytest.approx(float(theirs["area_mm2_ellipse"]))
    with open(labelled, "a", newline="") as f:
        f.write(f"{rows[0][0]},{rows[0][1]},abc\n")
    assert predict([f"run_dir={run}", f"inputs={labelled}", f"output={out}"]) == 2
    assert (
        "column 'spacing' must hold a pixel size in mm (0.5, or 0.5 0.6 for row and column): "
        "line 5: 'abc'"
    ) in capsys.readouterr().err


def test_windows_paths_are_named_by_predict_and_evaluate(finished_runs, tmp_path, capsys):
    from medtrain.commands.predict import main as predict

    run = finished_runs["segmentation"]
    data = tmp_path / "data"
    (data / "scans").mkdir(parents=True)
    labelled, rows = write_segmentation_set(run, data / "scans", 2)
    windows = data / "windows.csv"
    windows.write_text("image,mask\n" + "".join(f"scans\\{a},scans\\{b}\n" for a, b in rows))
    said = (
        f"column 'image': the paths are written with \\ as on Windows: write them with / "
        f"('scans\\{rows[0][0]}' is {data / 'scans' / rows[0][0]})"
    )
    assert main([f"run_dir={run}", f"inputs={windows}", f"output={tmp_path / 'ev'}"]) == 2
    assert said in capsys.readouterr().err
    assert predict([f"run_dir={run}", f"inputs={windows}", f"output={tmp_path / 'p.csv'}"]) == 2
    assert said in capsys.readouterr().err
    # A CSV that is not a table of the columns is the command's input: status 2 from both.
    semicolons = data / "semicolons.csv"
    semicolons.write_text("image;mask\n" + "".join(f"scans/{a};scans/{b}\n" for a, b in rows))
    said = f"{semicolons}: line 1: the header 'image;mask' is one column"
    assert main([f"run_dir={run}", f"inputs={semicolons}", f"output={tmp_path / 'ev'}"]) == 2
    assert said in capsys.readouterr().err
    assert predict([f"run_dir={run}", f"inputs={semicolons}", f"output={tmp_path / 'p.csv'}"]) == 2
    assert said in capsys.readouterr().err


def test_an_undefined_metric_is_explained_by_its_own_kind():
    """By the metric's name (its first word), not a class or value name after it."""
    from medtrain.commands.evaluate import _why_undefined

    assert _why_undefined(["test/qwk"]) == "kappa (qwk) needs more than one grade"
    assert _why_undefined(["test/specificity_r2"]).startswith("a class's AUC, AP, recall")
    assert _why_undefined(["test/r2_age", "test/pearson"]) == (
        "R^2 needs targets that vary; a correlation needs targets and predictions that vary"
    )
    assert _why_undefined(["test/hd95_mm_nucleus"]) == "a mask metric needs a mask with the class"
