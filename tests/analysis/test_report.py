"""The run report: bootstrap intervals against metrics.json, calibration error and AUC against hand
and scikit-learn computations, Grad-CAM on a hand-built network, and report.html for each task
(every section, every image a valid inline PNG, no broken image in headless Chromium)."""

import base64
import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch import nn

from medtrain.analysis.gradcam import gradcam
from medtrain.analysis.report import COMMON_SECTIONS, write_report
from medtrain.analysis.statistics import (
    classification_intervals,
    rank_auc,
    regression_intervals,
    segmentation_intervals,
)
from medtrain.commands.report import main as report_main
from medtrain.data.loading import collate
from medtrain.engine.build import build_datasets, build_model
from medtrain.models.tabular import TabularMLP
from medtrain.models.torchvision_nets import torchvision_classifier
from medtrain.tasks import ClassificationTask, RegressionTask, SegmentationTask
from tests.conftest import TINY, compose_cfg, read_metrics, train_in_process
from tests.tasks.test_regression import TINY_CLINICAL
from tests.tasks.test_segmentation import TINY_SEG

INTERVALS = {
    "classification": classification_intervals,
    "segmentation": segmentation_intervals,
    "regression": regression_intervals,
}
TASK_SECTIONS = {
    name: task.report_sections
    for name, task in (
        ("classification", ClassificationTask),
        ("segmentation", SegmentationTask),
        ("regression", RegressionTask),
    )
}

RUNS = {
    "classification": [*TINY, "task.threshold=youden"],
    "segmentation": [
        *TINY_SEG,
        "dataset.num_train=16",
        "dataset.num_val=4",
        "dataset.num_test=8",
        "dataset.image_size=48",
        "dataset.test_image_size=48",
        "trainer.max_epochs=1",
        "task.num_overlays=4",
    ],
    "regression": [*TINY_CLINICAL, "task=regression", "loss=mse", "trainer.max_epochs=1"],
}
TASKS = list(RUNS)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _train(tmp_path_factory, task: str, hydra_config: bool) -> Path:
    """A tiny run of `task` with its report (a few seconds each); `hydra_config` also writes the
    composed config where Hydra would (runs trained in-process have none)."""
    run_dir = tmp_path_factory.mktemp(task) / "run"
    train_in_process(run_dir, RUNS[task])
    if hydra_config:
        (run_dir / ".hydra").mkdir()
        OmegaConf.save(compose_cfg(RUNS[task]), run_dir / ".hydra" / "config.yaml")
    write_report(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory, "classification", hydra_config=True)


@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory, "segmentation", hydra_config=True)


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory, "regression", hydra_config=False)


# ---------------------------------------------------------------------------------------------
# Statistics


@pytest.mark.parametrize(
    "task, names",
    [
        ("classification", ["auc", "acc", "sensitivity", "specificity"]),
        ("segmentation", ["dice", "dice_ellipse", "dice_rectangle", "iou"]),
        ("regression", ["mae", "rmse", "r2"]),
    ],
)
def test_intervals_bracket_the_point_estimates_and_repeat(request, task, names):
    run_dir = request.getfixturevalue(f"{task}_run")
    metrics = read_metrics(run_dir)
    intervals = INTERVALS[task](run_dir)
    for name in names:
        low, high = intervals[f"test/{name}_ci_low"], intervals[f"test/{name}_ci_high"]
        assert low <= metrics[f"test/{name}"] + 1e-12 and metrics[f"test/{name}"] <= high + 1e-12
        if name in ("acc", "mae"):
            assert low < high
    # Deterministic: a rerun (same seed) gives the same numbers; another seed other resamples.
    assert json.dumps(INTERVALS[task](run_dir)) == json.dumps(intervals)
    assert INTERVALS[task](run_dir, seed=1) != intervals
    assert ("test/ece" in intervals) == (task == "classification")


def _write_predictions(run_dir: Path, target, probs, threshold: float | None = 0.5) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    k = len(probs[0])
    with (run_dir / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "target", "pred", *(f"prob_{j}" for j in range(k))])
        for i, (t, p) in enumerate(zip(target, probs, strict=True)):
            writer.writerow([f"case{i}", t, int(np.argmax(p)), *p])
    (run_dir / "metrics.json").write_text(json.dumps({"threshold": threshold}))


def test_expected_calibration_error_by_hand(tmp_path):
    # Binary: bins of the positive-class probability. Bins 0, 1, 2, 9 hold one case each
    # (|0 - 0.05|, |0 - 0.15|, |1 - 0.25|, |1 - 0.95|), bin 7 two (|0.5 - 0.75| counted twice).
    positive = [0.05, 0.15, 0.25, 0.72, 0.78, 0.95]
    _write_predictions(tmp_path / "binary", [0, 0, 1, 1, 0, 1], [[1 - p, p] for p in positive])
    expected = (0.05 + 0.15 + 0.75 + 2 * 0.25 + 0.05) / 6
    assert classification_intervals(tmp_path / "binary")["test/ece"] == pytest.approx(expected)
    # Multi-class: the top probability against whether the top class is right.
    probs = [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.34, 0.33, 0.33]]
    _write_predictions(tmp_path / "multi", [0, 2, 2, 1], probs, threshold=None)
    expected = (abs(1 - 0.6) + abs(0 - 0.7) + abs(1 - 0.8) + abs(0 - 0.34)) / 4
    assert classification_intervals(tmp_path / "multi")["test/ece"] == pytest.approx(expected)


def test_bootstrap_auc_equals_scikit_learn_and_skips_one_class_resamples(tmp_path):
    rng = np.random.default_rng(0)
    positive = rng.integers(0, 2, (50, 30)).astype(bool)
    score = rng.integers(0, 6, (50, 30)) / 5  # many ties
    expected = [roc_auc_score(p, s) for p, s in zip(positive, score, strict=True)]
    np.testing.assert_allclose(rank_auc(positive, score), expected, rtol=1e-12)
    assert np.isnan(rank_auc(np.ones((1, 5), bool), np.arange(5.0)[None])).all()
    # Two positives among 40 cases: some resamples hold none; they are left out, not counted as 0.
    target = [1, 1] + [0] * 38
    _write_predictions(tmp_path, target, [[0.1, 0.9]] * 2 + [[0.8, 0.2]] * 38)
    intervals = classification_intervals(tmp_path, n_boot=200)
    assert intervals["test/auc_ci_low"] == intervals["test/auc_ci_high"] == 1.0


# ---------------------------------------------------------------------------------------------
# Grad-CAM


class BrightOrDark(nn.Module):
    """Class 1 is the mean response of a bright-spot detector, class 0 of a dark-spot detector:
    only the bright region matters for class 1, only the dark one for class 0."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 1, 1, bias=False)  # an earlier conv that Grad-CAM must not use
        self.detect = nn.Conv2d(1, 2, 3, stride=2, padding=1, bias=False)
        with torch.no_grad():
            self.stem.weight.fill_(1.0)
            self.detect.weight.zero_()
            self.detect.weight[0, 0, 1, 1] = 1.0  # channel 0: bright
            self.detect.weight[1, 0, 1, 1] = -1.0  # channel 1: dark

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.relu(self.detect(self.stem(x))).mean(dim=(2, 3))
        return torch.stack([pooled[:, 1], pooled[:, 0]], dim=1)


def test_gradcam_peaks_where_the_class_evidence_is():
    image = torch.zeros(1, 1, 32, 32)
    image[0, 0, 4:10, 20:26] = 1.0  # bright: top right
    image[0, 0, 22:28, 4:10] = -1.0  # dark: bottom left
    model = BrightOrDark()
    for target_class, (rows, cols), (other_rows, other_cols) in (
        (1, (slice(3, 11), slice(19, 27)), (slice(22, 28), slice(4, 10))),
        (0, (slice(21, 29), slice(3, 11)), (slice(4, 10), slice(20, 26))),
    ):
        cam = gradcam(model, image, target_class)
        assert cam.shape == (32, 32) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
        row, col = np.unravel_index(cam.argmax(), cam.shape)
        assert rows.start <= row < rows.stop and cols.start <= col < cols.stop
        assert cam[other_rows, other_cols].max() < 0.05  # the other region does not count
    assert model.detect.weight.grad is None  # explaining leaves the weights' gradients alone


def test_gradcam_on_torchvision_and_fusion_models_and_without_convolutions():
    torch.manual_seed(0)
    resnet = torchvision_classifier("resnet18", in_channels=1, num_classes=2, small_input=True)
    cam = gradcam(resnet, torch.randn(1, 1, 24, 24), target_class=1)
    assert cam.shape == (24, 24) and np.isfinite(cam).all() and 0 <= cam.min() <= cam.max() <= 1
    assert resnet.training  # the model's mode is restored

    cfg = compose_cfg([*TINY_CLINICAL, "model=fusion", "dataset.num_train=16"])
    batch = collate([build_datasets(cfg)["test"][0]])
    fusion = build_model(cfg)
    cam = gradcam(fusion, batch["image"], 1, inputs={"tabular": batch["tabular"]})
    assert cam.shape == tuple(batch["image"].shape[-2:]) and cam.max() <= 1

    tabular = TabularMLP(num_features=3, num_classes=2)
    with pytest.raises(ValueError, match="no convolutional layer"):
        gradcam(tabular, torch.zeros(1, 1, 8, 8), 0)


# ---------------------------------------------------------------------------------------------
# report.html


def _images(html: str) -> list[str]:
    return re.findall(r"<img [^>]*src=\"([^\"]*)\"", html)


@pytest.mark.parametrize("task", TASKS)
def test_report_has_every_section_and_only_valid_inline_pngs(request, task):
    run_dir = request.getfixturevalue(f"{task}_run")
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    for section in COMMON_SECTIONS + TASK_SECTIONS[task]:
        assert f'<h2 id="{section}">' in html
    assert "could not be built" not in html
    assert not re.search(r"(src|href)=\"(https?:|//|file:)", html)  # nothing to fetch
    sources = _images(html)
    assert sources
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            image.verify()
    metrics = read_metrics(run_dir)
    headline = {"classification": "auc", "segmentation": "dice", "regression": "mae"}[task]
    low = INTERVALS[task](run_dir)[f"test/{headline}_ci_low"]
    assert f"{low:.4g} to " in html  # the interval is in the metrics table
    assert f"{metrics[f'test/{headline}']:.4g}" in html
    if task == "classification":
        gradcam_part = html.split('id="gradcam"')[1]
        assert len(_images(gradcam_part)) == 6 and "not available" not in gradcam_part
        assert "ECE" in html and "youden" in html and "<details>" in html
        assert "full config (.hydra/config.yaml)" in html
    if task == "regression":
        assert "full config (checkpoints/best.pt)" in html  # no .hydra/: the checkpoint's config


def test_the_config_table_shows_values_inferred_from_the_data(classification_run, tmp_path):
    """A value the composed config leaves to the data (`num_classes: null`, as for an image
    folder) is shown as the run trained it (best.pt's config), not as n/a."""
    run_dir = tmp_path / "run"
    shutil.copytree(classification_run, run_dir)
    saved = run_dir / ".hydra" / "config.yaml"
    config = OmegaConf.load(saved)
    config.dataset.num_classes = None
    OmegaConf.save(config, saved)
    html = write_report(run_dir, gradcam_images=0).read_text(encoding="utf-8")
    assert "<td>model.num_classes</td><td>2 (inferred from the data)</td>" in html
    assert "<td>model.in_channels</td><td>1</td>" in html  # given: shown as given


def test_report_survives_a_failing_gradcam(classification_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(classification_run, run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    html = write_report(run_dir, gradcam_images=2).read_text(encoding="utf-8")
    part = html.split('id="gradcam"')[1]
    assert "Grad-CAM not available" in part and "best.pt" in part
    assert '<h2 id="operating_point">' in html and "could not be built" not in html


def _fake_classification_run(run_dir: Path, multilabel: bool) -> dict:
    """A run folder written by hand (no training): three classes or labels, 60 test cases."""
    rng = np.random.default_rng(3)
    names = ["a", "b", "c"]
    n = 60
    run_dir.mkdir()
    if multilabel:
        target = rng.integers(0, 2, (n, 3))
        probs = np.clip(0.3 * target + rng.uniform(0, 0.7, (n, 3)), 0, 1)
        fields = [f"{p}_{k}" for p in ("target", "pred", "prob") for k in range(3)]
        rows = [[*t, *(p >= 0.5).astype(int), *p] for t, p in zip(target, probs, strict=True)]
        aucs = {
            f"test/auc_{m}": roc_auc_score(target[:, k], probs[:, k]) for k, m in enumerate(names)
        }
        metrics = {"test/auc": float(np.mean(list(aucs.values()))), **aucs}
        metrics |= {f"threshold_{m}": 0.5 for m in names}
        matrix = [["label", "true", "pred_0", "pred_1"]] + [
            [m, t, 1, 1] for m in names for t in (0, 1)
        ]
    else:
        target = rng.integers(0, 3, n)
        probs = rng.dirichlet(np.ones(3), n) + 0.4 * np.eye(3)[target]
        probs /= probs.sum(axis=1, keepdims=True)
        fields = ["target", "pred", "prob_0", "prob_1", "prob_2"]
        rows = [[t, int(p.argmax()), *p] for t, p in zip(target, probs, strict=True)]
        auc = roc_auc_score(target, probs, multi_class="ovr")
        metrics = {"test/auc": auc, "test/acc": float((probs.argmax(1) == target).mean())}
        metrics |= {f"test/sensitivity_{m}": 0.5 for m in names}
        matrix = [["true", *(f"pred_{m}" for m in names)]] + [[m, 1, 2, 3] for m in names]
    for path, table in (
        ("predictions.csv", [["id", *fields]] + [[i, *r] for i, r in enumerate(rows)]),
        ("confusion_matrix.csv", matrix),
        ("history.csv", [["epoch", "train/loss", "val/loss", "val/auc"], [1, 1.0, 0.9, 0.8]]),
    ):
        with (run_dir / path).open("w", newline="") as handle:
            csv.writer(handle).writerows(table)
    (run_dir / "metrics.json").write_text(json.dumps(metrics | {"best_epoch": 1}))
    return metrics


@pytest.mark.parametrize("multilabel", [False, True])
def test_report_of_multiclass_and_multilabel_runs(tmp_path, multilabel):
    run_dir = tmp_path / "run"
    metrics = _fake_classification_run(run_dir, multilabel)
    intervals = classification_intervals(run_dir, n_boot=300)
    keys = ["auc"] + (["auc_a", "auc_c"] if multilabel else ["acc"])
    for key in keys:
        point = metrics[f"test/{key}"]
        assert intervals[f"test/{key}_ci_low"] < point < intervals[f"test/{key}_ci_high"]
    html = write_report(run_dir).read_text(encoding="utf-8")
    for section in COMMON_SECTIONS + TASK_SECTIONS["classification"]:
        assert f'<h2 id="{section}">' in html
    assert "could not be built" not in html and "Grad-CAM not available" in html
    operating_point = html.split('id="operating_point"')[1].split("<h2")[0]
    expected = "Threshold rule" if multilabel else "the most probable class"
    assert expected in operating_point


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
@pytest.mark.parametrize("task", TASKS)
def test_report_renders_in_headless_chromium_without_broken_images(request, task):
    run_dir = request.getfixturevalue(f"{task}_run")
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu"]
    command += ["--virtual-time-budget=5000", "--dump-dom", (run_dir / "report.html").as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    assert 'data-broken-images="0"' in dom
    count = re.search(r'data-images="(\d+)"', dom)
    assert count and int(count.group(1)) == len(_images((run_dir / "report.html").read_text()))


def test_report_command(regression_run, tmp_path, capsys):
    (regression_run / "report.html").unlink()
    assert report_main([f"run_dir={regression_run}"]) == 0
    assert capsys.readouterr().out.strip() == str(regression_run / "report.html")
    assert (regression_run / "report.html").is_file()
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "folds.json").write_text("{}")
    for run_dir, message in (
        (tmp_path / "missing", "does not exist"),
        (tmp_path, "no metrics"),
        (tmp_path / "cv", "is a CV folder: its runs are fold_<k>/ and ensemble/"),
    ):
        assert report_main([f"run_dir={run_dir}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_report_refuses_an_evaluation_s_folder(finished_runs, tmp_path, capsys):
    """An evaluation's output folder is no run: refused, and nothing written into it; a run-style
    report.html ("No config found") was written there, after which evaluate refused the folder."""
    from medtrain.commands.evaluate import main as evaluate
    from tests.inference.test_evaluate import write_labelled
    from tests.inference.test_predict import save_npy_inputs, split_of

    run = finished_runs["classification"]
    test = split_of(run)
    names = save_npy_inputs(test, tmp_path, 8)
    labelled = write_labelled(tmp_path, names, [test.class_names[int(y)] for y in test.labels[:8]])
    out = tmp_path / "evaluation"
    assert evaluate([f"run_dir={run}", f"inputs={labelled}", f"output={out}"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert report_main([f"run_dir={out}"]) == 2
    assert capsys.readouterr().err == (
        f"error: run_dir: {out} is an evaluation's output folder (medtrain evaluate of "
        f"{run.resolve()} on {labelled.resolve()}), not a run: its metrics.json and the files "
        f"beside it are the evaluation's results; the run's report is medtrain report "
        f"run_dir={run.resolve()}\n"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert evaluate([f"run_dir={run}", f"inputs={labelled}", f"output={out}"]) == 0  # again


def test_intervals_resample_patients_when_the_cases_name_them(tmp_path):
    """Four images per patient (here four copies of one prediction): resampling images gives an
    interval half as wide as the patients support; with groups.json (written by a run whose data
    name a group column) the patients are resampled, as an independent recomputation does."""
    rng = np.random.default_rng(3)
    target = rng.integers(0, 2, 40)
    positive = np.clip(0.5 * target + rng.normal(0.25, 0.25, 40), 0, 1)
    probs = [[1 - p, p] for p in positive]
    _write_predictions(tmp_path / "patients", target, probs)
    four = lambda values: [v for v in values for _ in range(4)]  # noqa: E731
    _write_predictions(tmp_path / "images", four(target), four(probs))
    per_patient = classification_intervals(tmp_path / "patients")
    per_image = classification_intervals(tmp_path / "images")

    def width(ci, key):
        return ci[f"test/{key}_ci_high"] - ci[f"test/{key}_ci_low"]

    assert width(per_image, "acc") < 0.7 * width(per_patient, "acc")  # too narrow
    groups = {f"case{i}": f"P{i // 4:02d}" for i in range(160)}
    (tmp_path / "images" / "groups.json").write_text(json.dumps(groups))
    grouped = classification_intervals(tmp_path / "images")
    assert 0.8 < width(grouped, "acc") / width(per_patient, "acc") < 1.25
    # the same resamples drawn by hand: patients with replacement, each with its four images
    draw = np.random.default_rng(0)
    correct = np.array(four(((positive >= 0.5) == target).tolist()), dtype=float)
    accs = []
    for _ in range(1000):
        patients = draw.integers(0, 40, size=40)
        accs.append(correct[np.concatenate([np.arange(4 * p, 4 * p + 4) for p in patients])].mean())
    low, high = np.percentile(accs, [2.5, 97.5])
    assert (grouped["test/acc_ci_low"], grouped["test/acc_ci_high"]) == pytest.approx((low, high))
    # Fewer than 10 patients (here 4 of 40 images each): too few distinct resamples for an
    # interval (one patient would give a zero width); the images are resampled instead.
    few = {f"case{i}": f"P{i // 40}" for i in range(160)}
    (tmp_path / "images" / "groups.json").write_text(json.dumps(few))
    assert classification_intervals(tmp_path / "images") == per_image
