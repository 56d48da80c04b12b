"""Ensembles of finished runs: averaged probabilities, values and probability maps, recomputed from
the members' own prediction files, and refusals of runs that do not fit together."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from medtrain.errors import ConfigError
from medtrain.inference.ensemble import run_ensemble
from tests.conftest import TINY, train_in_process
from tests.tasks.test_regression import TINY_CLINICAL
from tests.tasks.test_segmentation import TINY_SEG


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def classification_runs(tmp_path_factory) -> list[Path]:
    """Two runs on the same synthetic data (dataset.seed fixed) with different training seeds."""
    root = tmp_path_factory.mktemp("runs")
    runs = []
    for seed in (1, 2):
        run = root / f"seed{seed}"
        train_in_process(run, [*TINY, "dataset.seed=0", f"seed={seed}", "task.threshold=youden"])
        runs.append(run)
    return runs


def test_classification_ensemble_averages_member_probabilities(classification_runs, tmp_path):
    out = tmp_path / "ensemble"
    metrics = run_ensemble(classification_runs, out)
    members = [read_rows(run / "predictions.csv") for run in classification_runs]
    mean_prob = np.mean([[float(r["prob_1"]) for r in rows] for rows in members], axis=0)
    rows = read_rows(out / "predictions.csv")
    assert [r["id"] for r in rows] == [r["id"] for r in members[0]]
    assert np.allclose([float(r["prob_1"]) for r in rows], mean_prob, atol=1e-6)
    target = np.array([int(r["target"]) for r in rows])
    assert metrics["test/auc"] == pytest.approx(roc_auc_score(target, mean_prob), abs=1e-6)
    assert metrics["members"] == 2 and 0 < metrics["threshold"] < 1  # youden, on the ensemble's val
    pred = (mean_prob >= metrics["threshold"]).astype(int)
    assert metrics["test/acc"] == pytest.approx((pred == target).mean())
    table = read_rows(out / "members.csv")
    assert [r["run_dir"] for r in table] == [*map(str, classification_runs), "ensemble"]
    for run, row in zip(classification_runs, table, strict=False):
        own = json.loads((run / "metrics.json").read_text())  # each member at its own threshold
        for key, value in row.items():
            if key.startswith("test/") and key != "test/loss":
                assert float(value) == pytest.approx(own[key], abs=1e-9), key
    assert json.loads((out / "metrics.json").read_text())["test/auc"] == metrics["test/auc"]
    # The folder holds the members as one network: predict gives the ensemble's test predictions.
    assert_network_predicts_as_evaluated(out, tmp_path / "in")


def assert_network_predicts_as_evaluated(out: Path, inputs: Path) -> None:
    """`medtrain predict` with the ensemble folder's network on 12 of its test images gives the
    probabilities and labels of its `predictions.csv`."""
    from medtrain.engine.build import build_datasets
    from medtrain.inference.predict import predict_files
    from medtrain.inference.predictor import Predictor

    assert json.loads((out / "ensemble.json").read_text())["network"] == "checkpoints/best.pt"
    test = build_datasets(Predictor(out).cfg)["test"]
    inputs.mkdir()
    for i in range(12):
        np.save(inputs / f"{test.ids[i]}.npy", test.read_image(i))
    cfg = {
        "run_dir": str(out),
        "inputs": str(inputs),
        "output": str(inputs.parent / "pred.csv"),
        "masks": None,
        "image_column": "image",
        "device": "cpu",
        "batch_size": 5,
        "progress": False,
        "spacing": None,
        "measurements": None,
    }
    assert not predict_files(OmegaConf.create(cfg))["failed"]
    names = Predictor(out).class_names
    rows = read_rows(out / "predictions.csv")
    for got, want in zip(read_rows(inputs.parent / "pred.csv"), rows, strict=False):
        assert got["file"] == f"{want['id']}.npy"
        assert float(got[f"prob_{names[1]}"]) == pytest.approx(float(want["prob_1"]), abs=1e-6)
        assert got["label"] == names[int(want["pred"])]  # at the ensemble's threshold


def test_members_with_other_fixed_statistics_are_one_network(classification_runs, tmp_path):
    """A member normalizing with another fixed mean and std sees its own input inside the
    network; a member normalizing each image (zscore) cannot: no network, and why."""
    other = tmp_path / "other_stats"
    stats = ["dataset.normalize.mean=[0.2]", "dataset.normalize.std=[0.3]"]
    train_in_process(other, [*TINY, "dataset.seed=0", "seed=3", *stats])
    out = tmp_path / "ensemble"
    run_ensemble([classification_runs[0], other], out)
    assert_network_predicts_as_evaluated(out, tmp_path / "in")
    zscored = tmp_path / "zscored"
    train_in_process(zscored, [*TINY, "dataset.seed=0", "seed=4", "dataset.normalize.mode=zscore"])
    run_ensemble([classification_runs[0], zscored], tmp_path / "mixed")
    info = json.loads((tmp_path / "mixed" / "ensemble.json").read_text())
    assert info["network"] is None
    assert info["no_network"].startswith("the runs normalize their inputs differently")


def test_an_ensemble_of_runs_that_cannot_be_one_network_says_why(classification_runs, tmp_path):
    """Members with other test-time views are averaged as evaluated, but are not one network: the
    folder says so, and predicting with it names the reason."""
    other = tmp_path / "flipped"
    train_in_process(other, [*TINY, "dataset.seed=0", "seed=3", "task.tta=hflip"])
    out = tmp_path / "ensemble"
    run_ensemble([classification_runs[0], other], out)
    info = json.loads((out / "ensemble.json").read_text())
    assert info["network"] is None and "test-time views differ" in info["no_network"]
    assert not (out / "checkpoints").exists()
    from medtrain.inference.predictor import Predictor

    with pytest.raises(ConfigError, match="is an ensemble whose runs cannot be one network"):
        Predictor(out)
    with pytest.raises(ConfigError, match="does not exist"):
        Predictor(tmp_path / "nowhere")


def test_runs_on_other_data_or_tasks_are_refused(classification_runs, tmp_path):
    other_data = tmp_path / "other_data"
    train_in_process(other_data, [*TINY, "dataset.seed=5", "trainer.max_epochs=1"])
    with pytest.raises(ConfigError, match="different (val|test) labels"):
        run_ensemble([classification_runs[0], other_data], tmp_path / "e1")
    regression = tmp_path / "regression"
    train_in_process(
        regression, [*TINY_CLINICAL, "task=regression", "loss=mse", "trainer.max_epochs=1"]
    )
    with pytest.raises(ConfigError, match="different tasks"):
        run_ensemble([classification_runs[0], regression], tmp_path / "e2")
    with pytest.raises(ConfigError, match="at least 2 runs"):
        run_ensemble([classification_runs[0]], tmp_path / "e3")
    with pytest.raises(ConfigError, match="e1 does not exist"):
        run_ensemble([classification_runs[0], tmp_path / "e1"], tmp_path / "e4")
    with pytest.raises(ConfigError, match="inside the member run"):
        run_ensemble(classification_runs, classification_runs[1] / "ensemble")
    with pytest.raises(ConfigError, match="batch_size"):
        run_ensemble(classification_runs, tmp_path / "e5", batch_size=0)
    with pytest.raises(ConfigError, match="lists .*seed1 twice"):
        run_ensemble([classification_runs[0], classification_runs[0]], tmp_path / "e7")
    taken = tmp_path / "taken"  # another run's folder: its files would be half replaced
    (taken / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="exists and is not empty"):
        run_ensemble(classification_runs, taken)
    (tmp_path / "a_file").write_text("x")  # os.listdir's NotADirectoryError, a traceback
    with pytest.raises(ConfigError, match="is a file; name a new folder"):
        run_ensemble(classification_runs, tmp_path / "a_file")
    renamed = tmp_path / "renamed"
    train_in_process(
        renamed,
        [*TINY, "dataset.seed=0", "trainer.max_epochs=1", "dataset.class_names=[healthy,lesion]"],
    )
    with pytest.raises(ConfigError, match="different classes"):
        run_ensemble([classification_runs[0], renamed], tmp_path / "e6")


def test_runs_of_the_same_labels_in_another_order_are_told_so():
    """Two multi-label runs of a manifest's columns given in another order: refused as outputs
    that do not line up, with what to train alike (it read as different classes)."""
    from types import SimpleNamespace

    from medtrain.inference.ensemble import check_compatible

    def member(names, where):
        task = SimpleNamespace(class_names=names, sigmoid_outputs=False)
        return SimpleNamespace(task=task, run_dir=where)

    members = [member(["effusion", "nodule"], "a"), member(["nodule", "effusion"], "b")]
    with pytest.raises(ConfigError) as err:
        check_compatible(members)
    assert str(err.value) == (
        "run_dirs: a and b have the same classes in another order (['effusion', 'nodule'] "
        "against ['nodule', 'effusion']): an ensemble averages outputs position by position; "
        "train the runs with one order (dataset.class_names, or the order of "
        "dataset.target_column's columns)"
    )


def test_regression_ensemble_averages_values(tmp_path):
    runs = []
    for seed in (1, 2):
        run = tmp_path / f"seed{seed}"
        train_in_process(
            run,
            [
                *TINY_CLINICAL,
                "task=regression",
                "loss=mse",
                "dataset.seed=0",
                f"seed={seed}",
                "trainer.max_epochs=2",
            ],
        )
        runs.append(run)
    out = tmp_path / "ensemble"
    metrics = run_ensemble(runs, out)
    preds = [
        np.array([float(r["pred"]) for r in read_rows(run / "predictions.csv")]) for run in runs
    ]
    rows = read_rows(out / "predictions.csv")
    target = np.array([float(r["target"]) for r in rows])
    assert np.allclose([float(r["pred"]) for r in rows], np.mean(preds, axis=0), rtol=1e-6)
    assert metrics["test/mae"] == pytest.approx(np.abs(np.mean(preds, 0) - target).mean(), rel=1e-5)
    assert (out / "scatter.png").is_file()


def test_segmentation_ensemble_averages_probability_maps(tmp_path):
    runs = []
    for seed in (1, 2):
        run = tmp_path / f"seed{seed}"
        train_in_process(run, [*TINY_SEG, "dataset.seed=0", f"seed={seed}"])
        runs.append(run)
    out = tmp_path / "ensemble"
    metrics = run_ensemble(runs, out)
    assert 0 <= metrics["test/dice"] <= 1
    assert (out / "per_case_metrics.csv").is_file() and (out / "measurements.csv").is_file()
    assert len(read_rows(out / "members.csv")) == 3
    # the same ids, other images and masks (another dataset.seed): not the same test set
    other = tmp_path / "other_seed"
    train_in_process(other, [*TINY_SEG, "dataset.seed=7", "trainer.max_epochs=1"])
    with pytest.raises(ConfigError, match="read different val data under the same ids"):
        run_ensemble([runs[0], other], tmp_path / "mixed")


def test_cli_usage_and_errors(classification_runs, tmp_path, capsys):
    from medtrain.commands import main

    assert main(["ensemble", f"run_dirs=[{classification_runs[0]}]"]) == 2
    assert "at least 2 runs" in capsys.readouterr().err
    assert main(["ensemble", "run_dir=[a,b]"]) == 2
    assert "unknown key 'run_dir'" in capsys.readouterr().err
    # An ensemble is no member; a CV's fold ensemble trained on the val split it would be scored on.
    folded = tmp_path / "folds"
    folded.mkdir()
    (folded / "ensemble.json").write_text(json.dumps({"kind": "fold_ensemble", "run_dirs": []}))
    assert main(["ensemble", f"run_dirs=[{classification_runs[0]},{folded}]"]) == 2
    assert "is a CV's fold ensemble: its folds trained on the val split" in capsys.readouterr().err
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "ensemble.json").write_text(json.dumps({"run_dirs": ["r1", "r2"]}))
    assert main(["ensemble", f"run_dirs=[{plain},{classification_runs[0]}]"]) == 2
    assert f"{plain} is an ensemble, not a run: list its members instead (r1, r2)" in (
        capsys.readouterr().err
    )
    out = tmp_path / "cli"
    members = f"run_dirs=[{classification_runs[0]},{classification_runs[1]}]"
    assert main(["ensemble", members, f"hydra.run.dir={out}"]) == 0
    assert "ensemble" in capsys.readouterr().out and (out / "metrics.json").is_file()


def test_combine_averages_in_probability_space():
    """Members' logits are averaged as probabilities (softmax, sigmoid, per-pixel softmax) and
    handed back as logits whose probabilities are that mean; regression averages target units."""
    import torch

    from medtrain.losses import BCEWithLogits, CrossEntropy
    from medtrain.tasks import ClassificationTask, RegressionTask, SegmentationTask

    torch.manual_seed(0)
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    task = ClassificationTask(CrossEntropy())
    combined = task.combine([a, b], [task, task])
    assert torch.allclose(combined.softmax(1), (a.softmax(1) + b.softmax(1)) / 2, atol=1e-6)
    multilabel = ClassificationTask(BCEWithLogits(), multilabel=True)
    combined = multilabel.combine([a, b], [multilabel, multilabel])
    assert torch.allclose(combined.sigmoid(), (a.sigmoid() + b.sigmoid()) / 2, atol=1e-6)
    seg = SegmentationTask(CrossEntropy(), class_names=["bg", "fg"])
    maps = [[torch.randn(1, 2, 5, 7), torch.randn(1, 2, 9, 4)] for _ in range(2)]  # two sizes
    combined = seg.combine(maps, [seg, seg])
    for k in range(2):
        expected = (maps[0][k].softmax(1) + maps[1][k].softmax(1)) / 2
        assert torch.allclose(combined[k].softmax(1), expected, atol=1e-6)
    first = RegressionTask(torch.nn.MSELoss(), target_mean=[10.0], target_std=[2.0])
    second = RegressionTask(torch.nn.MSELoss(), target_mean=[12.0], target_std=[4.0])
    out = first.combine([torch.tensor([[1.0]]), torch.tensor([[0.5]])], [first, second])
    assert first.values(out).item() == pytest.approx((12.0 + 14.0) / 2)


def test_runs_that_cannot_be_one_network_are_told_why():
    """An image-only run beside fusion runs was said to encode its clinical columns "with other
    statistics (each CV fold ...)": it reads none, and no CV was involved."""
    from types import SimpleNamespace

    from medtrain.errors import ConfigError
    from medtrain.inference.average import member_inputs

    def run(name, tabular):
        normalize = {"mode": "fixed", "mean": [0.5], "std": [0.5], "invert": False}
        checkpoint = {"tabular": tabular, "preprocessing": {"normalize": normalize}}
        return SimpleNamespace(run_dir=name, checkpoint=checkpoint)

    def age(mean, numeric=True):
        return [
            {
                "name": "age",
                "numeric": numeric,
                "mean": mean,
                "std": 10.0,
                "indicator": False,
                "categories": [] if numeric else ["old", "young"],
            }
        ]

    fusion = age(50.0)
    with pytest.raises(ConfigError, match=r"^2 of the 3 runs read clinical columns \(e.g. fus1\)"):
        member_inputs([run("img", None), run("fus1", fusion), run("fus2", fusion)], {})
    # Other statistics (a CV's folds): one encoding, mapped to each run's own.
    normalize = run("x", None).checkpoint["preprocessing"]["normalize"]
    # A run saved with its columns' training ranges beside one saved before: the same encoding
    # (a union network could not be exported).
    ranged = [fusion[0] | {"low": 20.0, "high": 90.0}]
    assert member_inputs([run("old", fusion), run("new", ranged)], normalize) == {}
    mapped = member_inputs([run("fold0", fusion), run("fold1", age(60.0))], normalize)
    union = [fusion[0] | {"indicator": True}]  # other means: a missing value needs its indicator
    assert mapped == {"tabular_state": union, "tabular_members": [fusion, age(60.0)]}
    with pytest.raises(
        ConfigError, match=r"in ways no one encoding maps to \(column 'age' is read"
    ):
        member_inputs([run("fold0", fusion), run("fold1", age(0.0, numeric=False))], normalize)
