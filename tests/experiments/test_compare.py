"""`medtrain compare`: runs side by side, values straight from their metrics.json."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from medtrain.commands.compare import main
from medtrain.errors import ConfigError
from medtrain.experiments.compare import compare
from tests.conftest import TINY, train_in_process


def test_two_runs_side_by_side(tmp_path, capsys):
    runs = [tmp_path / "slow", tmp_path / "fast"]
    for run, lr in zip(runs, ("1e-3", "1e-2"), strict=True):
        train_in_process(run, [*TINY, "trainer.max_epochs=1", f"optimizer.lr={lr}"])
    out = tmp_path / "cmp"
    rows = compare(runs, out)
    by_key = {r["key"]: r for r in rows}
    assert by_key["config: optimizer.lr"]["slow"] == pytest.approx(1e-3)
    assert by_key["config: optimizer.lr"]["fast"] == pytest.approx(1e-2)
    assert "config: seed" not in by_key  # equal values are not repeated
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        assert by_key["test/auc"][run.name] == metrics["test/auc"]
    with (out / "comparison.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["key"] for r in table] == [r["key"] for r in rows]
    table_text = (out / "comparison.md").read_text()
    assert "| test/auc |" in table_text
    assert "| config: optimizer.lr | 0.001 | 0.01 |" in table_text  # as given, not rounded
    assert main([f"run_dirs=[{runs[0]},{runs[1]}]", f"output={out}"]) == 0
    printed = capsys.readouterr()
    assert "config: optimizer.lr" in printed.out and "warning" not in printed.err
    # A run on other test cases (another data seed) is compared with a caution, printed and
    # written below the table.
    other = tmp_path / "other"
    train_in_process(
        other, [*TINY, "trainer.max_epochs=1", "dataset.seed=9", "dataset.num_test=40"]
    )
    assert main([f"run_dirs=[{runs[0]},{other}]", f"output={out}"]) == 0
    caution = (
        "The runs were tested on other cases (slow: 48, other: 40 test cases; splits.json): their "
        "test metrics differ by data as well as by model."
    )
    assert f"warning: {caution}" in capsys.readouterr().err
    assert f"> {caution}" in (out / "comparison.md").read_text()
    # An ensemble keeps no splits.json: its predictions.csv names its test cases.
    ensemble_like = tmp_path / "ensemble_like"
    shutil.copytree(other, ensemble_like)
    (ensemble_like / "splits.json").unlink()
    assert main([f"run_dirs=[{runs[0]},{ensemble_like}]", f"output={out}"]) == 0
    assert "tested on other cases (slow: 48, ensemble_like: 40" in capsys.readouterr().err
    assert main([f"run_dirs=[{other},{ensemble_like}]", f"output={out}"]) == 0
    assert "tested on other cases" not in capsys.readouterr().err
    # The same test ids on other data (MedMNIST ids are alike in every file): the runs'
    # provenance.json tell them apart.
    relabelled = tmp_path / "relabelled"
    shutil.copytree(other, relabelled)
    provenance = json.loads((relabelled / "provenance.json").read_text())
    provenance["data"] |= {"kind": "file", "path": "/data/other.npz", "sha256": "ab" * 32}
    (relabelled / "provenance.json").write_text(json.dumps(provenance))
    assert main([f"run_dirs=[{other},{relabelled}]", f"output={out}"]) == 0
    assert "read other data" not in capsys.readouterr().err  # generated data: a settings digest
    provenance["data"] |= {"path": "/data/first.npz", "sha256": "cd" * 32}
    (other / "provenance.json").write_text(json.dumps(provenance))
    assert main([f"run_dirs=[{other},{relabelled}]", f"output={out}"]) == 0
    assert (
        "The runs read other data (other: /data/first.npz (sha256 cdcdcdcdcdcd), relabelled: "
        "/data/other.npz (sha256 abababababab); provenance.json): their test metrics differ by "
        "data as well as by model, whatever their test cases are called."
    ) in capsys.readouterr().err


def test_bad_input_is_one_error_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="at least 2 runs"):
        compare([tmp_path], tmp_path)
    assert main([f"run_dirs=[{tmp_path},{tmp_path}]"]) == 2
    assert "has no metrics.json" in capsys.readouterr().err


def test_small_values_keep_four_significant_digits():
    from medtrain.experiments.compare import _cell

    assert [_cell(v) for v in (1e-4, 1.4e-4, 0.98765, 0.0, 12.0, None)] == [
        "0.0001",
        "0.00014",
        "0.9877",
        "0.0000",
        "12.0000",
        "",
    ]


def test_runs_on_slices_and_their_ensemble_compare_by_their_predictions(tmp_path):
    """A run on slices of volumes lists slices in splits.json and volumes in predictions.csv:
    beside an ensemble (no splits.json) every run is compared by its predictions.csv, and the
    same volumes give no caution; other volumes do."""
    from medtrain.experiments.compare import compared

    for name, volumes, slices in (("run", ["a", "b"], True), ("ensemble", ["a", "b"], False)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text('{"test/dice": 0.8}')
        (tmp_path / name / "predictions.csv").write_text(
            "id,mask\n" + "".join(f"{v},m\n" for v in volumes)
        )
        if slices:
            split = {
                "train": [],
                "val": [],
                "test": [f"{v}#{k:03d}" for v in volumes for k in range(3)],
            }
            (tmp_path / name / "splits.json").write_text(json.dumps(split))
    assert compared([tmp_path / "run", tmp_path / "ensemble"], tmp_path / "cmp")[1] == []
    (tmp_path / "ensemble" / "predictions.csv").write_text("id,mask\nc,m\n")
    assert compared([tmp_path / "run", tmp_path / "ensemble"], tmp_path / "cmp")[1]


def test_config_values_read_as_the_yaml_writes_them():
    from medtrain.experiments.compare import markdown

    rows = [
        {"key": "config: trainer.resume", "a": False, "b": True},
        {"key": "config: trainer.ema_decay", "a": None, "b": 0.998},
        {"key": "test/auc", "a": 0.987654, "b": None},
    ]
    assert markdown(rows, ["a", "b"]).splitlines()[2:] == [
        "| config: trainer.resume | false | true |",
        "| config: trainer.ema_decay | null | 0.998 |",
        "| test/auc | 0.9877 |  |",
    ]


def test_column_names_are_folder_names_or_all_full_paths():
    from medtrain.experiments.compare import column_names

    assert column_names([Path("o/a"), Path("o/b")]) == ["a", "b"]
    # a sweep's jobs: with their sweep's folder, not "0" and "1"
    assert column_names([Path("m/14-02-11/0"), Path("m/14-02-11/1")]) == [
        "14-02-11/0",
        "14-02-11/1",
    ]
    # two folders named 0: every column is a full path, not "0" beside paths
    assert column_names([Path("grid/0"), Path("sweep/0"), Path("x/1")]) == [
        "grid/0",
        "sweep/0",
        "x/1",
    ]


def test_a_release_0_1_run_differs_only_where_its_config_does(tmp_path):
    """Its `_target_` paths (medtrain.losses.CrossEntropy, ...) are compared as today's: the
    copy saved with today's paths differs from it in nothing but the edited value."""
    from omegaconf import OmegaConf

    from medtrain.engine.legacy import upgrade_targets
    from medtrain.io import load_checkpoint, save_checkpoint

    fixtures = Path(__file__).parents[1] / "fixtures" / "runs_0.1"
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(fixtures / "classification_a", old)
    shutil.copytree(fixtures / "classification_a", new)
    checkpoint = load_checkpoint(new / "checkpoints" / "best.pt")
    config = OmegaConf.create(checkpoint["config"])
    upgrade_targets(config)
    config.optimizer.weight_decay = 0.5
    checkpoint["config"] = OmegaConf.to_container(config)
    assert checkpoint["config"]["loss"]["_target_"] == "medtrain.losses.classification.CrossEntropy"
    save_checkpoint(new / "checkpoints" / "best.pt", checkpoint)
    rows = compare([old, new], tmp_path / "cmp")
    assert [r["key"] for r in rows if r["key"].startswith("config: ")] == [
        "config: optimizer.weight_decay"
    ]


def test_runs_of_other_classes_are_a_caution(tmp_path):
    """abnormal/normal against normal/pneumonia: each run's sensitivity is of its own positive
    class, said; equal classes and no splits.json say nothing."""
    from medtrain.experiments.compare import not_comparable

    configs = [
        {"dataset.class_names": ["normal", "pneumonia"]},
        {"dataset.class_names": ["abnormal", "normal"]},
    ]
    said = not_comparable([tmp_path / "a", tmp_path / "b"], configs, ["a", "b"])
    assert said == [
        "The runs have other classes (a binary task's sensitivity, AUC and threshold are of its "
        "positive class, the second name; the per-class or per-label metrics follow each run's "
        "names): a: ['normal', 'pneumonia'], b: ['abnormal', 'normal']."
    ]
    assert not_comparable([tmp_path / "a", tmp_path / "b"], [configs[0]] * 2, ["a", "b"]) == []


def test_an_output_that_is_a_file_or_holds_someone_s_files_is_refused(tmp_path, capsys):
    """output= a file was a FileExistsError traceback; a comparison.csv or comparison.md of the
    user's in the folder was replaced without a word. An earlier comparison's files are
    replaced."""
    runs = []
    for name, auc in (("a", 0.7), ("b", 0.8)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"test/auc": auc}))
        runs.append(tmp_path / name)
    arg = f"run_dirs=[{runs[0]},{runs[1]}]"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for output in (a_file, a_file / "sub"):
        assert main([arg, f"output={output}"]) == 2
        assert capsys.readouterr().err == (
            f"error: output={output}: {a_file} is a file; give a folder (comparison.csv and "
            "comparison.md are written into it)\n"
        )
    assert a_file.read_text() == "mine"
    out = tmp_path / "out"
    assert main([arg, f"output={out}"]) == 0
    assert main([arg, f"output={out}"]) == 0  # its own earlier files
    assert "| test/auc | 0.7000 | 0.8000 |" in (out / "comparison.md").read_text()
    for name, text in (("comparison.csv", "patient,age\n1,50\n"), ("comparison.md", "# Notes\n")):
        mine = tmp_path / "mine"
        shutil.rmtree(mine, ignore_errors=True)
        shutil.copytree(out, mine)
        (mine / name).write_text(text)
        before = {p.name: p.read_bytes() for p in mine.iterdir()}
        assert main([arg, f"output={mine}"]) == 2
        first = text.splitlines()[0]
        assert capsys.readouterr().err == (
            f"error: output={mine}: {mine / name} exists and is not an earlier comparison's "
            f"(its first line: {first!r}): give output= another folder; nothing was written\n"
        )
        assert {p.name: p.read_bytes() for p in mine.iterdir()} == before
