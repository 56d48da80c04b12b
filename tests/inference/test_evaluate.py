"""`medtrain evaluate`: a finished run scored on new labelled images gives what its own test
split gave when they are its test images, and names every unreadable row at once."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from medtrain.commands.evaluate import main
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


def test_regression_values_score_as_the_run_s_test(finished_runs, tmp_path):
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
    # A segmentation run, and the run folder as the output, are refused as config errors.
    assert main([f"run_dir={finished_runs['segmentation']}", f"inputs={labelled}"]) == 2
    assert "medtrain evaluate scores classification and regression runs" in capsys.readouterr().err
    assert main([f"run_dir={run}", f"inputs={labelled}", f"output={run}"]) == 2
    assert "the run folder itself" in capsys.readouterr().err
