"""`medtrain cv`: folds drawn and saved, one run folder per fold, pooled out-of-fold metrics that
equal a recomputation from `oof_predictions.csv`, a fold ensemble that predicts and serves like a
run, and a CV that continues after a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from medtrain.errors import ConfigError
from medtrain.experiments.cv import parse_args
from medtrain.inference import Predictor
from tests.conftest import ON_CPU, ROOT, TINY, run_cli, run_main

FOLDS = 2  # the least that shows folds (each fold is a process: a few seconds)
OVERRIDES = [*TINY, ON_CPU, "trainer.max_epochs=1", "task.threshold=youden"]


def cv_command(cv_dir: Path) -> list[str]:
    return ["cv", f"cv.folds={FOLDS}", f"cv.dir={cv_dir}", *OVERRIDES]


@pytest.fixture(scope="module")
def finished_cv(tmp_path_factory) -> Path:
    cv_dir = tmp_path_factory.mktemp("cv") / "cv"
    assert run_main(*cv_command(cv_dir)) == 0  # the folds are processes of their own
    return cv_dir


def predict(predictor: Predictor, files: list[bytes], names: list[str]) -> list[dict]:
    decoded = [predictor.decode(data, name) for data, name in zip(files, names, strict=True)]
    return predictor.predict(decoded, names)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_folds_are_saved_stratified_and_hold_no_test_case(finished_cv):
    folds = json.loads((finished_cv / "folds.json").read_text())
    assert folds["folds"] == FOLDS and folds["seed"] == 42 and folds["stratified"]
    assert len(folds["ids"]) == 96 + 48 and len(set(folds["ids"])) == len(folds["ids"])
    assert not set(folds["ids"]) & set(folds["test"]) and len(folds["test"]) == 48
    for fold in range(FOLDS):
        splits = json.loads((finished_cv / f"fold_{fold}" / "splits.json").read_text())
        held_out = [i for i, f in zip(folds["ids"], folds["fold"], strict=True) if f == fold]
        assert splits["val"] == held_out and splits["test"] == folds["test"]
        assert sorted(splits["train"]) == sorted(set(folds["ids"]) - set(held_out))
    # The same classes in every fold (72 / 72 in the pool: 24 / 24 per fold).
    labels = {r["id"]: r["target"] for r in rows(finished_cv / "oof_predictions.csv")}
    for fold in range(FOLDS):
        ids = [i for i, f in zip(folds["ids"], folds["fold"], strict=True) if f == fold]
        counts = np.bincount([int(labels[i]) for i in ids])
        assert abs(counts[0] - counts[1]) <= 1


def test_a_cv_folder_is_compared_by_its_pooled_and_fold_ensemble_metrics(finished_cv, tmp_path):
    """`medtrain compare` of a CV folder (it was refused, naming its fold folders): its pooled
    out-of-fold metrics and its fold ensemble's test metrics, beside a run's of the same test
    split, with the folds it was trained as among the config rows."""
    from medtrain.experiments.compare import compared

    fold = finished_cv / "fold_1"
    rows, cautions = compared([finished_cv, fold], tmp_path)
    by_key = {row["key"]: row for row in rows}
    summary = json.loads((finished_cv / "cv.json").read_text())
    fold_metrics = json.loads((fold / "metrics.json").read_text())
    assert (
        by_key["oof/auc"]["cv"] == summary["oof"]["oof/auc"] and by_key["oof/auc"]["fold_1"] is None
    )
    assert by_key["test/auc"]["cv"] == summary["ensemble"]["test/auc"]
    assert by_key["test/auc"]["fold_1"] == fold_metrics["test/auc"]
    assert by_key["train_seconds"]["cv"] == pytest.approx(sum(summary["fold_train_seconds"]))
    assert (
        by_key["config: cv.folds"]["cv"] == FOLDS and by_key["config: cv.folds"]["fold_1"] is None
    )
    assert cautions == []  # the same test split
    assert (tmp_path / "comparison.md").is_file()


def test_pooled_out_of_fold_metrics_equal_a_recomputation(finished_cv):
    summary = json.loads((finished_cv / "cv.json").read_text())
    oof = rows(finished_cv / "oof_predictions.csv")
    folds = json.loads((finished_cv / "folds.json").read_text())
    assert sorted(r["id"] for r in oof) == sorted(folds["ids"])  # every case once
    fold_of = dict(zip(folds["ids"], folds["fold"], strict=True))
    assert all(int(r["fold"]) == fold_of[r["id"]] for r in oof)
    target = np.array([int(r["target"]) for r in oof])
    prob = np.array([float(r["prob_1"]) for r in oof])
    pred = np.array([int(r["pred"]) for r in oof])
    assert summary["oof"]["oof/auc"] == pytest.approx(roc_auc_score(target, prob), abs=1e-12)
    assert summary["oof"]["oof/acc"] == pytest.approx(accuracy_score(target, pred), abs=1e-12)
    # The threshold was chosen on these outputs, and decides them.
    np.testing.assert_array_equal(pred, (prob >= summary["threshold"]).astype(int))


def test_summary_holds_folds_mean_sd(finished_cv):
    table = {r["row"]: r for r in rows(finished_cv / "cv_metrics.csv")}
    assert list(table) == [
        *(f"fold_{k}" for k in range(FOLDS)),
        "mean",
        "sd",
        "oof_pooled",
        "fold_ensemble",
    ]
    for key in ("val/auc", "test/auc", "test/acc"):
        values = [
            json.loads((finished_cv / f"fold_{k}" / "metrics.json").read_text())[key]
            for k in range(FOLDS)
        ]
        assert float(table["mean"][key]) == pytest.approx(np.mean(values))
        assert float(table["sd"][key]) == pytest.approx(np.std(values, ddof=1))
    ensemble = json.loads((finished_cv / "ensemble" / "metrics.json").read_text())
    assert float(table["fold_ensemble"]["test/auc"]) == pytest.approx(ensemble["test/auc"])
    assert (finished_cv / "cv_metrics.png").stat().st_size > 1000
    summary = (finished_cv / "cv_summary.md").read_text()
    assert "| val/auc |" in summary
    threshold = json.loads((finished_cv / "cv.json").read_text())["threshold"]
    assert (
        f"Decision threshold chosen on the pooled out-of-fold predictions (youden): {threshold}."
        in summary
    )


def test_fold_ensemble_averages_the_folds_and_predicts_serves_like_a_run(finished_cv):
    from medtrain.inference.serve import create_app
    from tests.inference.test_serve import encode, grey, post, start, stop

    ensemble = Predictor(finished_cv / "ensemble")
    folds = [Predictor(finished_cv / f"fold_{k}") for k in range(FOLDS)]
    files = [encode(grey(seed, (16, 16)), "PNG") for seed in range(4)]
    names = [f"{k}.png" for k in range(4)]
    got = predict(ensemble, files, names)
    each = [predict(p, files, names) for p in folds]
    for index, result in enumerate(got):
        mean = np.mean(
            [[r[index]["probabilities"][c] for c in ensemble.class_names] for r in each], axis=0
        )
        assert [result["probabilities"][c] for c in ensemble.class_names] == pytest.approx(
            mean, abs=1e-6
        )
    assert ensemble.task.threshold == json.loads((finished_cv / "cv.json").read_text())["threshold"]
    # Its test metrics are those of its predictions file.
    metrics = json.loads((finished_cv / "ensemble" / "metrics.json").read_text())
    table = rows(finished_cv / "ensemble" / "predictions.csv")
    target = [int(r["target"]) for r in table]
    assert metrics["test/auc"] == pytest.approx(
        roc_auc_score(target, [float(r["prob_1"]) for r in table])
    )
    running = start(create_app(ensemble))
    try:
        status, answer = post(running.port, "/predict", ("file", "a.png", files[0]))
    finally:
        stop(running)
    assert status == 200
    assert answer["probabilities"] == pytest.approx(got[0]["probabilities"], abs=1e-6)


def fold_processes(cv_dir: Path) -> list[int]:
    """The processes whose command line names `cv_dir` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(cv_dir).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # ended meanwhile
            continue
    return found


# A regression CV whose folds standardise their targets and normalize their images with their own
# training data (`normalize.mode=dataset`).
REGRESSION = [
    "dataset=synthetic_clinical",
    "task=regression",
    "loss=mse",
    "dataset.normalize.mode=dataset",
    "dataset.num_train=32",
    "dataset.num_val=16",
    "dataset.num_test=8",
    "dataset.image_size=16",
    "trainer.max_epochs=2",
    "trainer.batch_size=16",
    "trainer.progress=false",
    "trainer.report=false",
    ON_CPU,
]


@pytest.fixture(scope="module")
def killed_cv(tmp_path_factory) -> dict:
    """The regression CV killed with SIGKILL while fold 1 trains (after its first epoch's
    last.pt), then the same command again."""
    if sys.platform != "linux":
        pytest.skip("folds die with the CV through prctl (Linux)")
    cv_dir = tmp_path_factory.mktemp("killed") / "cv"
    args = ["cv", f"cv.folds={FOLDS}", f"cv.dir={cv_dir}", *REGRESSION]
    process = subprocess.Popen(
        [sys.executable, "-m", "medtrain", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (cv_dir / "fold_0" / "metrics.json").is_file():
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.2)
    while not (cv_dir / "fold_1" / "checkpoints" / "last.pt").is_file():
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # no chance to clean up: the folds die with it
    process.wait()
    deadline = time.time() + 10
    while fold_processes(cv_dir):  # the fold in flight ends with the CV
        assert time.time() < deadline, f"fold processes outlived the CV: {fold_processes(cv_dir)}"
        time.sleep(0.1)
    unfinished = not (cv_dir / "fold_1" / "metrics.json").is_file()
    kept = (cv_dir / "fold_0" / "metrics.json").read_bytes()
    done = run_cli(*args, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"dir": cv_dir, "unfinished": unfinished, "kept": kept, "stderr": done.stderr}


def test_a_cv_killed_mid_fold_stops_its_folds_and_continues(killed_cv):
    assert killed_cv["unfinished"]  # fold 1 did not finish after the CV was killed
    assert f"fold 1 of {FOLDS} started (resumed)" in killed_cv["stderr"]
    assert f"fold 0 of {FOLDS} started" not in killed_cv["stderr"]
    assert (killed_cv["dir"] / "fold_0" / "metrics.json").read_bytes() == killed_cv["kept"]
    assert (killed_cv["dir"] / "ensemble" / "checkpoints" / "best.pt").is_file()


def test_regression_fold_ensemble_averages_values_of_folds_standardised_otherwise(killed_cv):
    """The ensemble undoes each fold's target standardisation and image normalization and
    averages values in mm^2."""
    cv_dir = killed_cv["dir"]
    folds = [Predictor(cv_dir / f"fold_{k}") for k in range(FOLDS)]
    ensemble = Predictor(cv_dir / "ensemble")
    means = [list(p.run.cfg.task.target_mean) for p in folds]
    pixels = [list(p.run.cfg.dataset.normalize.mean) for p in folds]
    assert means[0] != means[1] and pixels[0] != pixels[1]  # the affines are not the identity
    from tests.inference.test_serve import encode, grey

    files = [encode(grey(seed, (16, 16)), "PNG") for seed in range(3)]
    names = ["a.png", "b.png", "c.png"]
    got = [r["value"] for r in predict(ensemble, files, names)]
    each = np.array([[r["value"] for r in predict(p, files, names)] for p in folds])
    np.testing.assert_allclose(got, each.mean(0), rtol=1e-5)
    oof = rows(cv_dir / "oof_predictions.csv")
    summary = json.loads((cv_dir / "cv.json").read_text())
    target = np.array([float(r["target"]) for r in oof])
    pred = np.array([float(r["pred"]) for r in oof])
    assert summary["oof"]["oof/mae"] == pytest.approx(np.abs(pred - target).mean())


def test_bad_cv_settings_are_refused(tmp_path):
    from medtrain.experiments.cv import fold_command, run_cv
    from tests.conftest import compose_cfg

    # More folds than cases: refused before anything is written, without an empty cv.dir.
    many = parse_args(
        [
            f"cv.dir={tmp_path / 'new' / 'cv'}",
            "cv.folds=50",
            "dataset.num_train=20",
            "dataset.num_val=10",
        ]
    )
    with pytest.raises(ConfigError, match="cv.folds=50"):
        run_cv(many)
    assert not (tmp_path / "new").exists()

    for argv, message in [
        (["cv.folds=1"], "cv.folds=1: must be an integer >= 2"),
        (["cv.fold=2"], "cv.fold is set by the CV"),
        (["hydra.run.dir=x"], "hydra.run.dir is set by the CV"),
        (["cv.split=3"], "unknown key 'cv.split'"),
        (["cv.ensemble=maybe"], "cv.ensemble=maybe"),
        (["~cv.folds"], "'~cv.folds': CV keys cannot be deleted; leave cv.folds out instead"),
        (["~hydra.run.dir"], "~hydra.run.dir is set by the CV"),
        (["~cv"], "'~cv': CV keys cannot be deleted"),
        (["model"], "expected key=value or ~key, got 'model'"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_args(argv)
    cv = parse_args(["cv.folds=4", "cv.dir=somewhere", "model=cnn"])
    assert cv.folds == 4 and cv.dir.name == "somewhere" and cv.overrides == ["model=cnn"]
    # Hydra's deletions pass to the folds, e.g. a key that another model does not take
    cv = parse_args(["cv.folds=3", "model=resnet", "~model.dropout", "~model.norm=batch"])
    assert cv.overrides == ["model=resnet", "~model.dropout", "~model.norm=batch"]
    command = fold_command(cv, 0, Path("folds.json"))
    assert command.index("~model.dropout") < command.index("cv.fold=0")
    cfg = compose_cfg(["experiment=pneumoniamnist", "model=resnet", "~model.hidden"])
    assert cfg.model.widths == [32, 64, 128, 256] and "hidden" not in cfg.model


def test_a_class_of_your_own_is_refused_naming_cv_trust(tmp_path):
    # The hint said trust=[...], which `medtrain cv` refuses as an unknown key.
    from medtrain.experiments.cv import run_cv

    cv = parse_args([f"cv.dir={tmp_path / 'cv'}", "loss._target_=my_losses.SymmetricCE"])
    with pytest.raises(ConfigError) as err:
        run_cv(cv)
    assert "allow it on purpose: cv.trust=[my_losses.SymmetricCE]" in str(err.value)
    assert str(err.value).startswith("the CV's config: refused loss._target_='my_losses.")
    assert not (tmp_path / "cv").exists()  # refused before anything is written


def test_a_run_folder_is_no_cv_folder_nor_a_cv_folder_a_sweep(tmp_path, capsys):
    from medtrain.commands.report import main as report
    from medtrain.experiments.cv import run_cv

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds a run \(metrics.json, checkpoints\): give"):
        run_cv(parse_args([f"cv.dir={run}"]))
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "metrics.json"]
    # Nor is a sweep's folder (its summary ranked the folds as trials), nor a file.
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "study.db").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"holds a sweep \(study.db\): give the CV a folder"):
        run_cv(parse_args([f"cv.dir={tmp_path / 'sweep'}"]))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match=r"is a file; give a folder"):
        run_cv(parse_args([f"cv.dir={tmp_path / 'a_file'}"]))
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "folds.json").write_text("{}")
    assert report([f"sweep_dir={tmp_path / 'cv'}"]) == 2
    assert "is a cross-validation (folds.json): its summary is cv_summary.md" in (
        capsys.readouterr().err
    )


def test_a_fold_does_not_repeat_a_warning_about_the_data_s_own_val_split(tmp_path):
    """Three patients hold the positive class: the data's own grouped split is drawn again (said
    by a plain run); a CV fold's val is its fold, drawn otherwise, so the fold does not say it."""
    from medtrain.engine.build import build_datasets
    from medtrain.experiments.cv import draw_folds
    from tests.conftest import compose_cfg
    from tests.data.test_manifest import make_cases

    groups = [f"p{i // 2}" for i in range(30)]
    targets = [1 if g in ("p0", "p1", "p2") else 0 for g in groups]
    csv_path = make_cases(tmp_path, targets, {"patient": groups})
    overrides = ["dataset=manifest", f"dataset.path={csv_path}", "dataset.group_column=patient"]
    overrides.append("dataset.image_size=16")
    plain = build_datasets(compose_cfg(overrides))["train"]
    assert "split_redrawn" in plain.data_warnings
    folds = draw_folds(
        parse_args([f"cv.dir={tmp_path / 'cv'}", "cv.folds=2"]), compose_cfg(overrides)
    )
    fold = build_datasets(compose_cfg([*overrides, "cv.fold=0", f"cv.folds_file={folds}"]))
    assert "split_redrawn" not in getattr(fold["train"], "data_warnings", {})


def test_folds_are_reused_and_other_settings_refused(tmp_path):
    from medtrain.experiments.cv import check_same_overrides, draw_folds, save_overrides
    from tests.conftest import compose_cfg

    cfg = compose_cfg(TINY)
    cv = parse_args([f"cv.dir={tmp_path}", "cv.folds=3"])
    path = draw_folds(cv, cfg)
    save_overrides(cv)
    saved = path.read_bytes()
    assert draw_folds(cv, cfg).read_bytes() == saved  # the same folds, not drawn again
    cv.folds = 4
    with pytest.raises(ConfigError, match="holds 3 folds drawn with seed 42, not cv.folds=4"):
        draw_folds(cv, cfg)
    cv.folds = 3
    check_same_overrides(cv)
    check_same_overrides(cv)  # the same command continues
    # Before any fold has trained (each failed on a config value) the overrides may change.
    fixed = parse_args([f"cv.dir={tmp_path}", "seed=1"])
    assert check_same_overrides(fixed) is True  # recorded by save_overrides, after the checks
    assert json.loads((tmp_path / "overrides.json").read_text()) == {"overrides": []}
    save_overrides(fixed, replace=True)
    assert json.loads((tmp_path / "overrides.json").read_text()) == {"overrides": ["seed=1"]}
    save_overrides(cv, replace=True)
    assert check_same_overrides(cv) is False
    (tmp_path / "fold_0").mkdir()
    (tmp_path / "fold_0" / "metrics.json").write_text("{}")  # once a fold has trained, not
    with pytest.raises(ConfigError, match=r"added now: \['seed=1'\]"):
        check_same_overrides(parse_args([f"cv.dir={tmp_path}", "seed=1"]))
    # How a fold runs may change (device, progress, workers); how long it learns may not: the
    # finished folds would not be trained again under the new length.
    check_same_overrides(parse_args([f"cv.dir={tmp_path}", "trainer.device=cpu"]))
    for length in ("trainer.max_epochs=5", "trainer.early_stopping_patience=3"):
        with pytest.raises(ConfigError, match=rf"added now: \['{length}'\]"):
            check_same_overrides(parse_args([f"cv.dir={tmp_path}", length]))
    other = compose_cfg([*TINY, "dataset.num_train=90"])
    with pytest.raises(ConfigError, match="other cases than the data's train and val splits"):
        draw_folds(cv, other)


def test_a_failed_fold_s_cause_and_the_folds_data_warnings_are_said(tmp_path):
    """Where the CV is watched: why a fold failed (its console's last error, not only "see
    console.log"), and each data-check warning of the folds once, with the folds that gave it."""
    from medtrain.experiments.cv import fold_warnings, last_error

    cv = parse_args([f"cv.dir={tmp_path}", "cv.folds=3"])
    console = tmp_path / "fold_1" / "console.log"
    console.parent.mkdir()
    console.write_text(
        "[2026-12-07 02:21:40,001][medtrain][INFO] - training\n"
        "[2026-12-07 02:21:48,839][medtrain][ERROR] - /data/P000_0.png: cannot read image "
        "(OSError: image file is truncated)\n"
    )
    assert (
        last_error(console)
        == "/data/P000_0.png: cannot read image (OSError: image file is truncated)"
    )
    console.write_text("usage: ...\nerror: unknown key 'x'\n")
    assert last_error(console) == "unknown key 'x'"
    assert last_error(tmp_path / "nowhere.log") is None
    duplicate = "test image a.png is identical to train image b.png"
    for fold, warnings in enumerate(
        [[duplicate], [duplicate, "val holds no 'effusion'"], [duplicate]]
    ):
        (tmp_path / f"fold_{fold}").mkdir(exist_ok=True)
        (tmp_path / f"fold_{fold}" / "data_report.json").write_text(
            json.dumps({"warnings": warnings})
        )
    assert fold_warnings(cv) == [
        f"Data check of every fold: {duplicate}",
        "Data check of folds [1]: val holds no 'effusion'",
    ]


def test_a_cv_continued_on_changed_data_is_refused(tmp_path):
    """A fold trained on the data as it was (its provenance.json's fingerprint) is not pooled
    with folds of other labels: continuing the CV after a label of the manifest changed is
    refused, naming the fold; the same data goes on."""
    from medtrain.engine.provenance import data_fingerprint
    from medtrain.experiments.cv import check_same_data
    from tests.conftest import compose_cfg
    from tests.data.test_manifest import make_cases

    csv_path = make_cases(tmp_path, [i % 2 for i in range(20)])
    cfg = compose_cfg(["dataset=manifest", f"dataset.path={csv_path}", "dataset.image_size=16"])
    cv = parse_args([f"cv.dir={tmp_path / 'cv'}", "cv.folds=3"])
    check_same_data(cv, cfg)  # no fold trained yet
    (tmp_path / "cv" / "fold_1").mkdir(parents=True)
    provenance = {"data": data_fingerprint(cfg)}
    (tmp_path / "cv" / "fold_1" / "provenance.json").write_text(json.dumps(provenance))
    check_same_data(cv, cfg)
    lines = csv_path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[1].split(",")
    column = header.index("target")
    cells[column] = str(1 - int(cells[column]))  # one label changed
    csv_path.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    with pytest.raises(ConfigError, match=r"the data changed since fold 1 of .*cv trained"):
        check_same_data(cv, cfg)


def test_folds_of_a_manifest_keep_each_patient_in_one_fold(tmp_path, caplog):
    """dataset.group_column: a patient's images share a fold (and never straddle train and val of
    a fold); the test rows are in no fold."""
    from medtrain.experiments.cv import draw_folds
    from tests.conftest import compose_cfg
    from tests.data.test_manifest import make_cases

    count = 40
    patients = [f"p{i // 3}" for i in range(count)]  # 3 images per patient (the last one 1)
    splits = ["test" if i >= 34 else "train" if i < 28 else "val" for i in range(count)]
    csv_path = make_cases(
        tmp_path, [i % 2 for i in range(count)], {"patient": patients, "split": splits}
    )
    cfg = compose_cfg(
        [
            "dataset=manifest",
            f"dataset.path={csv_path}",
            "dataset.group_column=patient",
            "dataset.image_size=16",
        ]
    )
    cv = parse_args([f"cv.dir={tmp_path / 'cv'}", "cv.folds=3"])
    folds = json.loads(draw_folds(cv, cfg).read_text())
    assert folds["grouped"] and len(folds["ids"]) == 34 and len(folds["test"]) == 6
    fold_of_patient: dict[str, int] = {}
    for patient, fold in zip(folds["group"], folds["fold"], strict=True):
        assert fold_of_patient.setdefault(patient, fold) == fold
    assert set(folds["fold"]) == {0, 1, 2}
    # Patient p11 has images 33 (val) and 34-35 (test): the data's own split mixes them.
    assert "1 groups have cases in the test split and in the folds (e.g. ['p11'])" in caplog.text


def test_a_cv_of_data_without_a_test_split_pools_its_folds(tmp_path, capsys, caplog):
    """A manifest of train rows only (no val, no test: the folds pool what there is): each fold
    trains and is judged on its held-out fold, the out-of-fold predictions are pooled and
    recomputable, and no ensemble is tested (said); a plain run on the same data is refused,
    naming the CV."""
    from medtrain.commands import main
    from tests.data.test_manifest import make_cases

    csv_path = make_cases(tmp_path, [i % 2 for i in range(30)], {"split": ["train"] * 30})
    data = ["dataset=manifest", f"dataset.path={csv_path}", "dataset.image_size=16", ON_CPU]
    data += ["trainer.max_epochs=1", "trainer.report=false"]
    assert main([*data, f"hydra.run.dir={tmp_path / 'plain'}"]) == 2
    said = "".join(capsys.readouterr()) + caplog.text
    assert "the val split is empty" in said
    assert "a cross-validation (medtrain cv) needs no val split" in said
    cv_dir = tmp_path / "cv"
    assert main(["cv", "cv.folds=2", f"cv.dir={cv_dir}", *data]) == 0
    said = "".join(capsys.readouterr()) + caplog.text
    assert "the data has no test split: the fold ensemble is made, not tested" in said
    summary = json.loads((cv_dir / "cv.json").read_text())
    assert summary["ensemble"] == {}  # no test metrics
    assert json.loads((cv_dir / "ensemble" / "ensemble.json").read_text())["tested"] is False
    for fold in range(2):
        metrics = json.loads((cv_dir / f"fold_{fold}" / "metrics.json").read_text())
        assert "val/auc" in metrics and not [k for k in metrics if k.startswith("test/")]
    pooled = rows(cv_dir / "oof_predictions.csv")
    assert sorted(r["id"] for r in pooled) == sorted(
        json.loads((cv_dir / "folds.json").read_text())["ids"]
    )
    auc = roc_auc_score([int(r["target"]) for r in pooled], [float(r["prob_1"]) for r in pooled])
    assert summary["oof"]["oof/auc"] == pytest.approx(auc)
    assert "The data has no test split" in (cv_dir / "cv_summary.md").read_text()
    from medtrain.inference.run import load_run

    # The untested ensemble predicts as the folds' average.
    folds = [Predictor(cv_dir / f"fold_{k}") for k in range(2)]
    ensemble = Predictor(cv_dir / "ensemble")
    image = folds[0].read(csv_path.parent / "images" / "case000.png")
    got = ensemble.predict([image], ["a"])[0]["probabilities"]
    each = [f.predict([image], ["a"])[0]["probabilities"] for f in folds]
    for name, value in got.items():
        assert value == pytest.approx(np.mean([e[name] for e in each]), abs=1e-5)
    with pytest.raises(ConfigError, match=r"is a CV folder: its fold ensemble is .*ensemble, its"):
        load_run(cv_dir)
    # A label changed since: the same command is refused by what the folds' own provenance.json
    # recorded, before anything is trained or pooled.
    csv_path.write_text(csv_path.read_text().replace("case000.png,0,", "case000.png,1,"))
    capsys.readouterr()
    caplog.clear()
    assert main(["cv", "cv.folds=2", f"cv.dir={cv_dir}", *data]) == 2
    assert "the data changed since fold 0" in "".join(capsys.readouterr()) + caplog.text


def test_regression_data_without_a_test_split_builds_for_a_cv(tmp_path):
    """Regression targets of an empty split: no rows, one column per target. A manifest of
    train and val rows failed inside numpy (reshape of size 0), so its CV could not start, and a
    plain run was not told that a CV needs no test split."""
    from medtrain.engine.build import build_datasets
    from tests.conftest import compose_cfg
    from tests.data.test_manifest import make_cases

    splits = ["val" if i % 5 == 0 else "train" for i in range(20)]
    csv_path = make_cases(tmp_path, [float(10 * i) for i in range(20)], {"split": splits})
    data = ["dataset=manifest", f"dataset.path={csv_path}", "dataset.image_size=16"]
    cfg = compose_cfg([*data, "task=regression", "loss=mse"])
    datasets = build_datasets(cfg, empty_test=True)
    assert [len(datasets[s]) for s in ("train", "val", "test")] == [16, 4, 0]
    assert datasets["test"].labels.shape == (0, 1)
    with pytest.raises(ConfigError, match="the test split is empty .*needs no test split"):
        build_datasets(cfg)


def test_folds_whose_scores_do_not_pool_are_said(caplog):
    """Pooled out-of-fold AUC below every fold's own (folds 0.953/0.928/0.933, pooled 0.705, as a
    user's 2-epoch CV gave): the fold models' probabilities lie on other scales, said in the
    summary's notes and the log; a pooled AUC among the folds' is not."""
    from medtrain.experiments.cv_results import scales_apart

    folds = [{"val/auc": 0.953}, {"val/auc": 0.928}, {"val/auc": 0.933}]
    with caplog.at_level("WARNING"):
        notes = scales_apart(folds, {"oof/auc": 0.7052})
    assert len(notes) == 1 and notes[0].startswith(
        "The pooled out-of-fold AUC (0.7052) is below every fold's own (0.9280-0.9530)"
    )
    assert notes[0] in caplog.text
    assert scales_apart(folds, {"oof/auc": 0.93}) == []
    assert scales_apart([{"val/dice": 0.9}], {"oof/dice": 0.5}) == []  # AUC only


def test_the_summary_of_a_volume_cv_holds_the_volume_error(tmp_path):
    """Per fold, mean and sd: the structures' volume error in mL besides Dice (volume runs)."""
    from types import SimpleNamespace

    from medtrain.experiments.cv_results import summary_rows

    for k, (dice, ml) in enumerate([(0.8, 0.5), (0.9, 0.3)]):
        (tmp_path / f"fold_{k}").mkdir()
        metrics = {"val/dice": dice, "test/dice": dice, "test/volume_mae_ml_blob": ml}
        (tmp_path / f"fold_{k}" / "metrics.json").write_text(json.dumps(metrics))
    cv = SimpleNamespace(folds=2, fold_dir=lambda k: tmp_path / f"fold_{k}")
    rows, columns = summary_rows(cv, SimpleNamespace(headline=["dice"]), {}, None)
    assert "test/volume_mae_ml_blob" in columns
    by_row = {r["row"]: r for r in rows}
    assert by_row["mean"]["test/volume_mae_ml_blob"] == pytest.approx(0.4)
    assert by_row["sd"]["test/volume_mae_ml_blob"] == pytest.approx(np.std([0.5, 0.3], ddof=1))


def test_a_fused_cv_s_folds_each_read_the_test_split_as_they_encode_it(tmp_path):
    """Clinical columns are encoded with each fold's own training statistics: the ensemble
    averages each fold model on the test split as its fold encodes it (the average of their
    probabilities), and its network maps one encoding to each fold's, so that `medtrain predict`
    on the test images and their columns gives the ensemble's own test predictions."""
    from tests.data.test_manifest import make_cases

    ages = [str(30 + i) if i % 5 else "" for i in range(48)]
    csv_path = make_cases(
        tmp_path / "data", [0, 1] * 24, {"age": ages, "sex": ["F", "M", "M"] * 16}
    )
    cv_dir = tmp_path / "cv"
    status = run_main(
        "cv",
        f"cv.folds={FOLDS}",
        f"cv.dir={cv_dir}",
        ON_CPU,
        "trainer.max_epochs=1",
        "trainer.progress=false",
        "trainer.report=false",
        "dataset=manifest",
        f"dataset.path={csv_path}",
        "dataset.tabular_columns=[age,sex]",
        "model=fusion",
        "dataset.image_size=16",
    )
    assert status == 0
    said = json.loads((cv_dir / "ensemble" / "ensemble.json").read_text())
    assert said["network"] == "checkpoints/best.pt" and "no_network" not in said
    folds = [rows(cv_dir / f"fold_{k}" / "predictions.csv") for k in range(FOLDS)]
    ensembled = rows(cv_dir / "ensemble" / "predictions.csv")
    for k, row in enumerate(ensembled):  # each fold's own test predictions, averaged
        mean = np.mean([float(fold[k]["prob_1"]) for fold in folds])
        assert float(row["prob_1"]) == pytest.approx(mean, abs=1e-6)
    # The network: the test images with their columns (a missing age among them) as new cases.
    cases = {r["image"]: r for r in rows(csv_path)}
    test = [cases[r["id"]] for r in ensembled]
    assert any(not r["age"] for r in test)
    inputs = tmp_path / "data" / "test.csv"
    with open(inputs, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "age", "sex"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("image", "age", "sex")} for r in test)
    out = tmp_path / "predicted.csv"
    assert (
        run_main("predict", f"run_dir={cv_dir / 'ensemble'}", f"inputs={inputs}", f"output={out}")
        == 0
    )
    predicted = rows(out)
    assert len(predicted) == len(ensembled)
    for row, mine in zip(ensembled, predicted, strict=True):
        assert float(mine["prob_1"]) == pytest.approx(float(row["prob_1"]), abs=1e-5)


def test_a_pooled_metric_no_fold_defines_keeps_its_column(tmp_path):
    """Folds of one class each (a leave-one-patient-out CV) have no AUC of their own; the pooled
    out-of-fold AUC is then the only one, and its column stays in cv_metrics.csv and the summary."""
    from types import SimpleNamespace

    from medtrain.experiments.cv_results import summary_rows

    for k in range(2):
        (tmp_path / f"fold_{k}").mkdir()
        metrics = {"val/auc": None, "val/acc": 1.0, "val/loss": 0.1 * (k + 1), "test/auc": 0.8}
        (tmp_path / f"fold_{k}" / "metrics.json").write_text(json.dumps(metrics))
    cv = SimpleNamespace(folds=2, fold_dir=lambda k: tmp_path / f"fold_{k}")
    task = SimpleNamespace(headline=["auc", "acc"])
    rows, columns = summary_rows(cv, task, {"oof/auc": 0.75, "oof/acc": 0.5}, {"test/auc": 0.9})
    assert columns == ["row", "val/auc", "val/acc", "val/loss", "test/auc"]
    by_row = {r["row"]: r for r in rows}
    assert by_row["oof_pooled"]["val/auc"] == 0.75 and by_row["fold_0"]["val/auc"] is None
    assert "val/auc" not in by_row["mean"] and by_row["fold_ensemble"]["test/auc"] == 0.9


def test_a_finished_fold_without_its_report_gets_it_when_the_cv_goes_on(
    finished_cv, tmp_path, caplog
):
    """A fold stopped while it wrote its report (after metrics.json) counts as trained: the CV
    run again writes the report instead of leaving the fold without it."""
    import shutil

    from medtrain.experiments.cv import run_folds

    cv_dir = tmp_path / "cv"
    shutil.copytree(finished_cv, cv_dir)
    config = cv_dir / "fold_1" / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("report: false", "report: true"))
    cv = parse_args([f"cv.folds={FOLDS}", f"cv.dir={cv_dir}", *OVERRIDES])
    with caplog.at_level("INFO"):
        assert run_folds(cv, cv_dir / "folds.json") == []  # nothing trained again
    assert (cv_dir / "fold_1" / "report.html").is_file()
    assert "fold 1's report, left unwritten" in caplog.text
    assert not (cv_dir / "fold_0" / "report.html").exists()  # trainer.report=false: none
