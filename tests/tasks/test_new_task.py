"""A task written outside medtrain (counting objects, for this test) trains, predicts, serves, exports
and reruns through the task protocol alone: its class lives in a temporary module and its YAML in a
temporary config folder (`medtrain --config-dir`); no file of medtrain is touched."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

TASK_MODULE = '''
"""Counting objects: one number per image, learned from the number of objects in its mask."""

import csv
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from medtrain.data.segmentation import SegmentationDataset
from medtrain.errors import ConfigError
from medtrain.io import save_csv
from medtrain.losses import loss_family
from medtrain.tasks.base import Task


def exact_counts(run) -> str:
    """A report section of this task's own: how many test images were counted exactly."""
    with open(run.dir / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    exact = sum(float(r["count"]) == round(float(r["pred"])) for r in rows)
    return f"<p>{exact} of {len(rows)} test images counted exactly.</p>"


def count_objects(mask) -> int:
    """Connected foreground regions (8-connected) of a class mask."""
    return int(ndimage.label(np.asarray(mask) > 0, structure=np.ones((3, 3)))[1])


class CountingTask(Task):
    name = "counting"
    targets = "masks"
    default_monitor = ("val/count_mae", "min")
    headline = ("count_mae", "count_exact")
    preprocessing_class = SegmentationDataset
    combine_rule = "mean of predicted counts"
    output_unit = "count"
    report_sections = (("counts", "Counts", exact_counts),)

    @classmethod
    def check_config(cls, cfg, provides, choices):
        if provides is not None and "masks" not in provides:
            raise ConfigError("task=counting counts the objects of masks: use a mask dataset")
        if loss_family(cfg.loss.get("_target_")) != "values":
            raise ConfigError("task=counting compares numbers: use loss=mse, l1 or huber")

    def counts(self, batch) -> torch.Tensor:
        masks = batch["mask"]
        values = [count_objects(m.cpu().numpy()) for m in masks]
        return torch.tensor(values, dtype=torch.float32, device=masks[0].device)[:, None]

    def loss(self, outputs, batch):
        return self.loss_fn(outputs.float(), self.counts(batch))

    def collector(self, final=False):
        return CountCollector(self)

    def combine(self, outputs, tasks):
        return torch.stack(outputs).mean(0)

    def prediction(self, output, item):
        return {"count": float(output[0, 0])}

    def prediction_fields(self):
        return ["count"]

    def prediction_row(self, name, result, files):
        return {"count": repr(result["count"])}

    def postprocess(self, outputs):
        return outputs.float()

    def export_outputs(self, width, pixels):
        return [{"name": "count", "dtype": "float32", "shape": ["batch", width],
                 "meaning": "the predicted number of objects"}]


class CountCollector:
    def __init__(self, task):
        self.task, self.ids, self.true, self.pred = task, [], [], []

    def update(self, outputs, batch):
        self.ids += list(batch["id"])
        self.true += self.task.counts(batch)[:, 0].tolist()
        self.pred += outputs[:, 0].float().tolist()

    def metrics(self, prefix):
        true, pred = np.array(self.true), np.array(self.pred)
        return {
            f"{prefix}/count_mae": float(np.abs(true - pred).mean()),
            f"{prefix}/count_exact": float((np.rint(pred) == true).mean()),
        }

    def save(self, run_dir):
        rows = [{"id": i, "count": t, "pred": repr(p)}
                for i, t, p in zip(self.ids, self.true, self.pred)]
        save_csv(run_dir / "predictions.csv", rows, ["id", "count", "pred"])
        return None
'''

TASK_YAML = """\
_target_: counting_task.CountingTask
class_names: [objects]
monitor: val/count_mae
monitor_mode: min
"""

EXPERIMENT_YAML = """\
# @package _global_
defaults:
  - override /dataset: synthetic_segmentation
  - override /augmentation: segmentation
  - override /model: cnn
  - override /loss: mse
  - override /task: counting

dataset:
  num_train: 64
  num_val: 16
  num_test: 16
  image_size: 48
  test_image_size: 48
model:
  num_classes: 1
  widths: [8, 16]
  hidden: 16
trainer:
  max_epochs: 2
  batch_size: 16
  progress: false
  device: cpu
"""


@pytest.fixture(scope="module")
def counting(tmp_path_factory) -> dict[str, Path]:
    """The user's module and config folder, and a run trained from them with `medtrain`."""
    root = tmp_path_factory.mktemp("counting")
    (root / "plugin").mkdir()
    (root / "plugin" / "counting_task.py").write_text(textwrap.dedent(TASK_MODULE))
    for group, text in (
        ("task/counting.yaml", TASK_YAML),
        ("experiment/counting.yaml", EXPERIMENT_YAML),
    ):
        (root / "conf" / group).parent.mkdir(parents=True, exist_ok=True)
        (root / "conf" / group).write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "plugin"), str(ROOT)])}
    run = root / "run"
    done = subprocess.run(
        [sys.executable, "-m", "medtrain", "--config-dir", str(root / "conf")]
        + ["experiment=counting", f"hydra.run.dir={run}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"root": root, "run": run, "plugin": root / "plugin"}


@pytest.fixture
def plugin(counting, monkeypatch):
    """The user's module importable here and in the processes a rerun starts."""
    monkeypatch.syspath_prepend(str(counting["plugin"]))
    path = os.pathsep.join([str(counting["plugin"]), str(ROOT), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    return counting


# The task's module is the user's own code: a run that names it loads only when trusted on
# purpose (`trust=` or MEDTRAIN_TRUSTED_TARGETS; see medtrain.engine.trust).
TRUST = ["counting_task."]


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_run_scores_counts_of_the_masks(plugin):
    """Its metrics are the mean absolute error against object counts made here from the masks."""
    from medtrain.engine.build import build_datasets
    from medtrain.inference.predictor import Predictor

    run = plugin["run"]
    metrics = json.loads((run / "metrics.json").read_text())
    table = rows(run / "predictions.csv")
    test = build_datasets(Predictor(run, trust=TRUST).cfg)["test"]
    by_id = {case: k for k, case in enumerate(test.ids)}
    assert sorted(r["id"] for r in table) == sorted(test.ids)
    for row in table:
        mask = test.read_mask(by_id[row["id"]])
        count = ndimage.label(mask > 0, structure=np.ones((3, 3)))[1]
        assert float(row["count"]) == count
    errors = [abs(float(r["count"]) - float(r["pred"])) for r in table]
    assert metrics["test/count_mae"] == pytest.approx(np.mean(errors), abs=1e-9)
    assert metrics["epochs_trained"] == 2 and "test/count_exact" in metrics
    exact = sum(float(r["count"]) == round(float(r["pred"])) for r in table)
    html = (run / "report.html").read_text()
    assert '<h2 id="counts">Counts</h2>' in html  # the task's own section
    assert f"<p>{exact} of {len(table)} test images counted exactly.</p>" in html
    assert "could not be built" not in html and (run / "checkpoints" / "best.pt").is_file()


def test_predict_serve_export_and_rerun(plugin, tmp_path, monkeypatch):
    from medtrain.commands.export import main as export
    from medtrain.commands.predict import main as predict
    from medtrain.commands.rerun import main as rerun
    from medtrain.engine.build import build_datasets
    from medtrain.errors import ConfigError
    from medtrain.inference.predictor import Predictor
    from medtrain.inference.serve import create_app
    from tests.inference.test_serve import fetch, post, start, stop

    run = plugin["run"]
    # a run naming the user's module is refused until trusted, which the verbs below do
    with pytest.raises(ConfigError, match=r"task\._target_='counting_task\.CountingTask'"):
        Predictor(run)
    # predict: the run's own test predictions, from files
    predictor = Predictor(run, trust=TRUST)
    dataset = build_datasets(predictor.cfg)["test"]
    (tmp_path / "in").mkdir()
    for k in range(4):
        np.save(tmp_path / "in" / f"{dataset.ids[k]}.npy", dataset.read_image(k))
    out = tmp_path / "pred.csv"
    trust = "trust=[counting_task.CountingTask]"
    assert predict([f"run_dir={run}", f"inputs={tmp_path / 'in'}", f"output={out}", trust]) == 0
    evaluated = {r["id"]: float(r["pred"]) for r in rows(run / "predictions.csv")}
    predicted = {Path(r["file"]).stem: float(r["count"]) for r in rows(out)}
    assert list(predicted) == dataset.ids[:4]
    for case, value in predicted.items():
        assert value == pytest.approx(evaluated[case], abs=1e-5)

    # serve: /info names the task, /predict answers the count
    running = start(create_app(predictor))
    try:
        upload = (tmp_path / "in" / f"{dataset.ids[0]}.npy").read_bytes()
        status, answer = post(running.port, "/predict", ("file", "a.npy", upload))
        info = json.loads(fetch(running.port, "GET", "/info")[2])
    finally:
        stop(running)
    assert status == 200 and info["task"] == "counting" and info["class_names"] == ["objects"]
    assert answer["count"] == pytest.approx(predicted[dataset.ids[0]], abs=1e-5)

    # export: ONNX with the task's output, equal to PyTorch
    assert export([f"run_dir={run}", f"output={tmp_path / 'export'}", trust]) == 0
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["task"] == "counting"
    assert [o["name"] for o in manifest["outputs"]] == ["count"]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "export" / "model.onnx"))
    image = predictor.preprocess.prepare(dataset.read_image(0))[0][None].numpy()
    (count,) = session.run(None, {"image": image})
    assert float(count[0, 0]) == pytest.approx(predicted[dataset.ids[0]], abs=1e-4)
    # ... and the example that runs an export without medtrain reads it from the manifest
    example = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "run_exported.py"), str(tmp_path / "export")]
        + [str(tmp_path / "in" / f"{dataset.ids[0]}.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert example.returncode == 0, example.stderr[-2000:]
    (row,) = csv.DictReader(example.stdout.splitlines())
    assert float(row["count_objects"]) == pytest.approx(predicted[dataset.ids[0]], abs=1e-4)

    # rerun: the same metrics from the saved config (trusted here through the variable)
    monkeypatch.setenv("MEDTRAIN_TRUSTED_TARGETS", "counting_task.")
    assert rerun([f"run_dir={run}", f"output={tmp_path / 'again'}"]) == 0
    assert json.loads((tmp_path / "again" / "rerun.json").read_text())["verdict"] == "REPRODUCED"
