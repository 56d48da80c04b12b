"""Run folders of release 0.1 (the flat package) keep working: their saved configs name classes by
the old module paths, which `medtrain.engine.legacy` maps to today's in the one place that builds.

`tests/fixtures/runs_0.1/` holds four small runs trained by release 0.1 (commit c6dabbd):
classification_a and _b (`medtrain.losses.CrossEntropy`, `medtrain.schedulers.cosine_with_warmup`,
`medtrain.tasks.ClassificationTask`), segmentation (`medtrain.segmentation_losses.DiceBCELoss`,
`medtrain.schedulers.one_cycle`, `medtrain.tasks.SegmentationTask`) and regression
(`medtrain.schedulers.reduce_on_plateau`, `medtrain.tasks.RegressionTask`); report.html, overlays
and last.pt were left out to keep them small.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf
from PIL import Image

from medtrain.engine.legacy import current_target, upgrade_targets
from medtrain.io import load_checkpoint, save_checkpoint
from tests.conftest import CONF, ON_CPU, TINY, compose_cfg, run_main

FIXTURES = Path(__file__).parents[1] / "fixtures" / "runs_0.1"

# Every medtrain `_target_` that release 0.1's conf/ named, as it named it (frozen here: these
# strings are what saved runs hold, whatever the code says today).
OLD_TARGETS = [
    "medtrain.callbacks.SweepSummary",
    "medtrain.data.image_folder.ImageFolder",
    "medtrain.data.manifest.Manifest",
    "medtrain.data.medmnist.MedMNIST",
    "medtrain.data.seg_folder.SegFolder",
    "medtrain.data.seg_manifest.SegManifest",
    "medtrain.data.synthetic.SyntheticLesions",
    "medtrain.data.synthetic_clinical.SyntheticClinical",
    "medtrain.data.synthetic_segmentation.SyntheticShapes",
    "medtrain.data.volume_slices.VolumeSlices",
    "medtrain.losses.BCEWithLogits",
    "medtrain.losses.CrossEntropy",
    "medtrain.losses.FocalLoss",
    "medtrain.models.cnn.SimpleCNN",
    "medtrain.models.fusion.Fusion",
    "medtrain.models.tabular.TabularMLP",
    "medtrain.models.torchvision_nets.torchvision_classifier",
    "medtrain.models.unet.UNet",
    "medtrain.schedulers.constant",
    "medtrain.schedulers.cosine_with_warmup",
    "medtrain.schedulers.multistep",
    "medtrain.schedulers.one_cycle",
    "medtrain.schedulers.reduce_on_plateau",
    "medtrain.segmentation_losses.DiceBCELoss",
    "medtrain.tasks.ClassificationTask",
    "medtrain.tasks.RegressionTask",
    "medtrain.tasks.SegmentationTask",
]
MOVED_IN_0_2 = {t for t in OLD_TARGETS if not t.startswith(("medtrain.data.", "medtrain.models."))}


def current_conf_targets() -> set[str]:
    return {
        line.split("_target_:", 1)[1].strip()
        for path in CONF.rglob("*.yaml")
        for line in path.read_text().splitlines()
        if "_target_:" in line and "medtrain." in line
    }


@pytest.mark.parametrize("old", OLD_TARGETS)
def test_every_old_target_names_what_it_named(old):
    new = current_target(old)
    assert (new != old) == (old in MOVED_IN_0_2)
    obj = get_class(new) if new[new.rfind(".") + 1].isupper() else None
    assert obj is None or obj.__name__ == old.rsplit(".", 1)[1]  # the same class, moved
    assert current_target(new) == new  # today's paths stay as they are


def test_conf_names_only_current_paths():
    targets = current_conf_targets()
    assert targets and all(current_target(t) == t for t in targets)
    assert not targets & set(OLD_TARGETS) - {t for t in OLD_TARGETS if current_target(t) == t}


def test_upgrade_rewrites_nested_targets_and_keeps_interpolations():
    cfg = OmegaConf.create(
        {
            "dataset": {"num_classes": 3},
            "loss": {"_target_": "medtrain.segmentation_losses.DiceBCELoss"},
            "model": {
                "_target_": "medtrain.models.fusion.Fusion",
                "num_classes": "${dataset.num_classes}",
                "branches": {"x": {"_target_": "medtrain.losses.FocalLoss"}},
            },
            "augmentation": {"transforms": [{"_target_": "medtrain.schedulers.constant"}]},
        }
    )
    upgrade_targets(cfg)
    assert cfg.loss._target_ == "medtrain.losses.segmentation.DiceBCELoss"
    assert cfg.model.branches.x._target_ == "medtrain.losses.classification.FocalLoss"
    assert cfg.augmentation.transforms[0]._target_ == "medtrain.engine.schedulers.constant"
    assert OmegaConf.to_container(cfg.model)["num_classes"] == "${dataset.num_classes}"
    assert cfg.model.num_classes == 3


@pytest.fixture
def old_runs(tmp_path) -> dict[str, Path]:
    """Copies of the release-0.1 run folders (commands write into them)."""
    for run in FIXTURES.iterdir():
        shutil.copytree(run, tmp_path / run.name)
    return {run.name: tmp_path / run.name for run in FIXTURES.iterdir()}


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_fixtures_are_release_0_1_runs():
    for run in FIXTURES.iterdir():
        config = (run / ".hydra" / "config.yaml").read_text()
        saved = json.dumps(load_checkpoint(run / "checkpoints" / "best.pt")["config"])
        for text in (config, saved):
            assert "medtrain.tasks." in text and "Task" in text
            assert "medtrain.schedulers." in text
            assert not any(p in text for p in ("medtrain.engine.", "medtrain.tasks.classification"))


def test_old_runs_predict_as_they_evaluated(old_runs, tmp_path):
    """`medtrain predict` with each old run gives the predictions its own test pass wrote."""
    from medtrain.commands.predict import main as predict
    from medtrain.engine.build import build_datasets
    from medtrain.inference.predictor import Predictor

    for name, run in old_runs.items():
        dataset = build_datasets(Predictor(run).cfg)["test"]
        inputs = tmp_path / f"in_{name}"
        inputs.mkdir()
        for k in range(len(dataset.ids)):
            np.save(inputs / f"{dataset.ids[k]}.npy", dataset.read_image(k))
        out = tmp_path / f"{name}.csv"
        assert predict([f"run_dir={run}", f"inputs={inputs}", f"output={out}"]) == 0
        predicted = {Path(r["file"]).stem: r for r in rows(out)}
        expected = {r["id"]: r for r in rows(run / "predictions.csv")}
        assert set(predicted) == set(expected)
        for case, row in predicted.items():
            truth = expected[case]
            if name.startswith("classification"):
                assert float(row["prob_lesion"]) == pytest.approx(float(truth["prob_1"]), abs=1e-5)
            elif name == "regression":
                assert float(row["value"]) == pytest.approx(float(truth["pred"]), abs=1e-4)
            else:
                mine = np.asarray(Image.open(tmp_path / row["mask"]))
                theirs = np.asarray(Image.open(run / truth["mask"]))
                assert (mine == theirs).mean() > 0.999


def test_old_runs_serve_export_and_join_an_ensemble(old_runs, tmp_path):
    from medtrain.inference.ensemble import run_ensemble
    from medtrain.inference.export import export
    from medtrain.inference.predictor import Predictor
    from medtrain.inference.serve import create_app
    from tests.inference.test_serve import fetch, npy, post, start, stop

    for name in ("classification_a", "segmentation", "regression"):
        predictor = Predictor(old_runs[name])
        running = start(create_app(predictor))
        try:
            info = json.loads(fetch(running.port, "GET", "/info")[2])
            image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
            status, answer = post(running.port, "/predict", ("file", "a.npy", npy(image)))
        finally:
            stop(running)
        assert status == 200 and info["task"] == predictor.task.name, answer
        manifest = export(old_runs[name], "onnx", tmp_path / f"export_{name}")
        assert manifest["task"] == info["task"] and manifest["checked"]["max_abs_difference"] < 1e-4
    members = [old_runs["classification_a"], old_runs["classification_b"]]
    metrics = run_ensemble(members, tmp_path / "ensemble")
    assert metrics["members"] == 2 and 0 <= metrics["test/auc"] <= 1
    assert (tmp_path / "ensemble" / "report.html").is_file()


OLD_PATHS = {  # today's path -> release 0.1's, for the run made below
    "medtrain.tasks.segmentation.SegmentationTask": "medtrain.tasks.SegmentationTask",
    "medtrain.losses.segmentation.DiceBCELoss": "medtrain.segmentation_losses.DiceBCELoss",
    "medtrain.engine.schedulers.multistep": "medtrain.schedulers.multistep",
}


@pytest.mark.slow
def test_a_run_with_old_paths_reruns_to_the_same_metrics(tmp_path):
    """A run trained here, its saved configs (.hydra/config.yaml and both checkpoints) rewritten to
    release 0.1's paths, reruns from them and reproduces its metrics exactly (same machine)."""
    from medtrain.commands.rerun import main as rerun

    run = tmp_path / "run"
    overrides = [
        "experiment=synthetic_segmentation",
        "loss=dice_bce",
        "scheduler=multistep",
        "dataset.num_train=16",
        "dataset.num_val=4",
        "dataset.num_test=4",
        "model.depth=2",
        "model.base_width=4",
        "trainer.max_epochs=1",
        "trainer.progress=false",
        "task.num_overlays=0",
        ON_CPU,
    ]
    assert run_main(*overrides, f"hydra.run.dir={run}") == 0
    text = (run / ".hydra" / "config.yaml").read_text()
    for new, old in OLD_PATHS.items():
        assert new in text
        text = text.replace(new, old)
    (run / ".hydra" / "config.yaml").write_text(text)
    for name in ("best.pt", "last.pt"):
        checkpoint = load_checkpoint(run / "checkpoints" / name)
        saved = json.dumps(checkpoint["config"])
        for new, old in OLD_PATHS.items():
            saved = saved.replace(new, old)
        checkpoint["config"] = json.loads(saved)
        save_checkpoint(run / "checkpoints" / name, checkpoint)
    assert rerun([f"run_dir={run}", f"output={tmp_path / 'again'}"]) == 0
    result = json.loads((tmp_path / "again" / "rerun.json").read_text())
    assert result["verdict"] == "REPRODUCED" and not result["config_changes"]
    assert json.loads((tmp_path / "again" / "metrics.json").read_text()) == json.loads(
        (run / "metrics.json").read_text()
    )


def test_a_config_without_augmentation_seeding_seeds_each_transform_as_before():
    """Release 0.3 draws every transform of a pipeline from one stream (`augmentation.seeding:
    pipeline`); a saved config without the key reruns with the seeding it was trained with."""
    from omegaconf import open_dict

    from medtrain.engine.build import build_datasets

    cfg = compose_cfg(TINY)
    assert build_datasets(cfg)["train"].transform.seeding == "pipeline"
    with open_dict(cfg):
        del cfg.augmentation["seeding"]
    assert build_datasets(cfg)["train"].transform.seeding == "per_transform"
