"""`report.html`: one self-contained page (images inline) per run, built from the run folder's
files; the numbers come from `medtrain.analysis.statistics`."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from medtrain.analysis.statistics import (
    CALIBRATION_BINS,
    as_number,
    calibration_inputs,
    column,
    expected_calibration_error,
    grouping_note,
    read_classification,
    read_csv_rows,
    regression_pairs,
    reliability_bins,
)
from medtrain.engine.build import target_class
from medtrain.engine.trust import check_run_folder, check_target
from medtrain.io import atomic_write, load_checkpoint, read_json
from medtrain.tasks import task_from_files

log = logging.getLogger(__name__)

# Every report has these; the task adds its own (`Task.report_sections`).
COMMON_SECTIONS = ("config", "data", "metrics", "curves")


# ---------------------------------------------------------------------------------------------
# Building blocks of the page


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _figure(width: float, height: float, ncols: int = 1):
    """A matplotlib figure from the object API: no pyplot state and no display backend."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots(1, ncols)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _interval(values: dict[str, Any], key: str) -> str:
    low, high = values.get(f"{key}_ci_low"), values.get(f"{key}_ci_high")
    return f"{_fmt(low)} to {_fmt(high)}" if f"{key}_ci_low" in values else ""


def load_run_config(run_dir: Path) -> tuple[DictConfig | None, str]:
    """The run's config and where it came from: Hydra's composed `.hydra/config.yaml`, else the
    resolved config stored in `checkpoints/best.pt` (runs trained in-process have no .hydra/)."""
    path = run_dir / ".hydra" / "config.yaml"
    if path.is_file():
        return OmegaConf.load(path), ".hydra/config.yaml"
    trained = trained_config(run_dir)
    return (trained, "checkpoints/best.pt") if trained is not None else (None, "none")


def trained_config(run_dir: Path) -> DictConfig | None:
    """The config stored in `checkpoints/best.pt`: the composed one with what the data inferred
    (`model.num_classes`, `in_channels` ...); None without a readable checkpoint."""
    best = run_dir / "checkpoints" / "best.pt"
    if best.is_file():
        try:
            return OmegaConf.create(load_checkpoint(best)["config"])
        except Exception as err:  # an unreadable checkpoint still leaves the rest of the report
            log.warning("report: cannot read the config in %s (%s)", best, err)
    return None


def _select(cfg: DictConfig | None, key: str) -> Any:
    if cfg is None:
        return None
    value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def run_task(
    run_dir: Path, cfg: DictConfig | None = None, trust: Sequence[str] = (), checked: bool = True
) -> type:
    """The run's task class (`medtrain.tasks.base.Task`): from `task._target_` of its config, else
    from `ensemble.json` (an ensemble folder), else guessed from its files.

    Args:
        trust, checked: as for `write_report` (`ensemble.json`'s `task_target` is checked here).
    """
    target = _select(cfg, "task._target_")
    if target is None:
        target = (read_json(run_dir / "ensemble.json") or {}).get("task_target")
        if target is not None and checked:  # before it is imported
            check_target(target, "task_target", run_dir / "ensemble.json", trust)
    task = target_class(OmegaConf.create({"_target_": target})) if target else None
    return task if task is not None else task_from_files(run_dir)


# ---------------------------------------------------------------------------------------------
# Sections: each returns the HTML below its heading


@dataclass
class Run:
    """What the sections read: the folder, its config, task and metrics (with intervals and ECE)."""

    dir: Path
    cfg: DictConfig | None
    config_source: str
    task: type  # the task class: its sections, test-target table, keys and default monitor
    values: dict[str, Any]
    trust: Sequence[str] = ()  # what Grad-CAM may build besides the allow-list
    checked: bool = True  # False: a run this process has just trained


def _config_section(run: Run) -> str:
    cfg = run.cfg
    if cfg is None:
        return _note("No config found (.hydra/config.yaml or checkpoints/best.pt).")
    # A value the composed config leaves to the data (`model.num_classes: null`) is shown as the
    # run trained it, from best.pt.
    trained = trained_config(run.dir) if run.config_source != "checkpoints/best.pt" else None

    def value_of(key: str) -> Any:
        value = _select(cfg, key)
        inferred = _select(trained, key) if value is None else None
        return value if inferred is None else f"{inferred} (inferred from the data)"

    rows: list[list[Any]] = [["task", value_of("task._target_")]]
    rows += [[f"task.{key}", value_of(f"task.{key}")] for key in run.task.report_keys]
    rows += [["task.monitor", value_of("task.monitor")]]
    rows += [[f"dataset.{k}", value_of(f"dataset.{k}")] for k in ("_target_", "path")]
    for key in cfg.get("model", {}):
        value = value_of(f"model.{key}")
        if key == "branches" and isinstance(value, dict):
            rows += [[f"model.branches.{b}", v.get("_target_")] for b, v in value.items()]
        elif key != "_partial_":
            rows.append([f"model.{key}", value])
    for group in ("loss", "optimizer", "scheduler"):
        node = _select(cfg, group) or {}
        rows += [
            [f"{group}.{k}", v]
            for k, v in node.items()
            if k != "_partial_" and not isinstance(v, dict)
        ]
    rows += [
        [f"trainer.{k}", value_of(f"trainer.{k}")]
        for k in ("max_epochs", "batch_size", "precision", "device")
    ]
    rows.append(["seed", value_of("seed")])
    info = read_json(run.dir / "run_info.json") or {}
    rows += [[f"run_info.{k}", v] for k, v in info.items()]
    full = escape(OmegaConf.to_yaml(cfg))
    return (
        _table(["key", "value"], rows)
        + f"<details><summary>full config ({escape(run.config_source)})</summary>"
        + f"<pre>{full}</pre></details>"
    )


def _class_counts(run: Run) -> str:
    """Test cases per class (or per label)."""
    classified = read_classification(run.dir, _select(run.cfg, "dataset.class_names"))
    n = len(classified.target)
    if classified.multilabel:
        counts = classified.target.sum(axis=0)
    else:
        counts = np.bincount(classified.target, minlength=len(classified.names))
    rows = [
        [name, int(c), f"{100 * c / n:.1f}%"]
        for name, c in zip(classified.names, counts, strict=False)
    ]
    header = "label" if classified.multilabel else "class"
    return _table([header, "test cases", "share"], rows)


def _value_summary(run: Run) -> str:
    """Summary statistics of each test target value."""
    fields, rows_ = read_csv_rows(run.dir / "predictions.csv")
    rows = []
    for name, (target, _) in regression_pairs(fields).items():
        t = column(rows_, target)
        rows.append([name or "target", t.size, t.mean(), t.std(), t.min(), np.median(t), t.max()])
    return _table(["value", "n", "mean", "sd", "min", "median", "max"], rows)


def _object_counts(run: Run) -> str:
    """Ground-truth objects per class in the test images."""
    totals = run.dir / "measurement_totals.csv"
    if not totals.is_file():
        return _note("measurement_totals.csv not found: no ground-truth object counts.")
    per_class: dict[str, list[float]] = {}
    unit = "mm"
    for row in read_csv_rows(totals)[1]:
        if row["source"] == "true":
            count = per_class.setdefault(row["class"], [0, 0, 0.0])
            count[0] += as_number(row["count"]) > 0
            count[1] += int(as_number(row["count"]))
            count[2] += as_number(row["total_area_mm2"])
            unit = row.get("unit") or unit
    rows = [[name, *values] for name, values in per_class.items()]
    area = "total area (mm^2)" if unit == "mm" else "total area (px)"
    return _table(["class", "test images with it", "objects", area], rows)


# The table of test targets a task names in `Task.report_targets`.
TARGET_TABLES: dict[str, Callable[[Run], str]] = {
    "classes": _class_counts,
    "values": _value_summary,
    "objects": _object_counts,
}


def _test_distribution(run: Run) -> str:
    """The test targets, as the task's `report_targets` table shows them."""
    table = TARGET_TABLES.get(run.task.report_targets or "")
    return table(run) if table else _note("No table of test targets for this task.")


def _data_section(run: Run) -> str:
    splits = read_json(run.dir / "splits.json") or {}
    if splits:
        sizes = _table(["split", "cases"], [[s, len(ids)] for s, ids in splits.items()])
    else:
        sizes = _note("splits.json not found.")
    return sizes + "<h3>Test targets</h3>" + _test_distribution(run)


def _metrics_section(run: Run) -> str:
    values = run.values
    tests = [k.removeprefix("test/") for k in values if k.startswith("test/") and "_ci_" not in k]
    rows = [
        [name, values[f"test/{name}"], _interval(values, f"test/{name}"), values.get(f"val/{name}")]
        for name in tests
    ]
    other = [[k, values[k]] for k in values if not k.startswith(("test/", "val/")) and "/" not in k]
    n = (
        read_csv_rows(run.dir / "predictions.csv")[1]
        if (run.dir / "predictions.csv").is_file()
        else []
    )
    how = grouping_note(run.dir, [row["id"] for row in n]) if n and "id" in n[0] else ""
    unit = f"{len(n)} test cases, {how}" if how else f"{len(n)} test cases"
    return (
        _table(["metric", "test", "test 95% CI (bootstrap)", "val"], rows)
        + _note(
            f"Intervals: percentile bootstrap over the {unit} (1000 resamples). "
            "Validation values are those of the best checkpoint."
        )
        + _table(["", "value"], other)
    )


def _curves_section(run: Run) -> str:
    from matplotlib.ticker import MaxNLocator

    path = run.dir / "history.csv"
    if not path.is_file():
        return _note("history.csv not found.")
    fields, rows = read_csv_rows(path)
    epoch = column(rows, "epoch")
    monitor = _select(run.cfg, "task.monitor") or run.task.default_monitor[0]
    figure, (loss_ax, metric_ax) = _figure(9.0, 3.5, ncols=2)

    def validated(key):  # epochs without validation (trainer.val_every) have empty cells
        kept = np.array([row[key] != "" for row in rows], dtype=bool)
        return epoch[kept], column(rows, key)[kept]

    for key in ("train/loss", "val/loss"):
        if key in fields:
            loss_ax.plot(*validated(key), marker="o", markersize=3, label=key)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    loss_ax.legend()
    if monitor in fields:
        metric_ax.plot(*validated(monitor), marker="o", markersize=3, color="tab:green")
    best = run.values.get("best_epoch")
    for ax in (loss_ax, metric_ax):
        if best is not None:
            ax.axvline(best, color="grey", linestyle="--", linewidth=1)
    metric_ax.set(xlabel="epoch", ylabel=monitor, title=f"{monitor} (dashed: best epoch)")
    for ax in (loss_ax, metric_ax):
        if len(epoch) <= 12:
            ax.set_xticks(epoch)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _img(_png(figure), "training curves")


def _curve_section(run: Run, kind: str) -> str:
    """ROC or precision-recall curves: binary one, otherwise one-vs-rest per class or per label."""
    from sklearn import metrics as skm

    classified = read_classification(run.dir, _select(run.cfg, "dataset.class_names"))
    target, probs = classified.target, classified.probs
    if not classified.multilabel and probs.shape[1] == 2:
        curves = [(classified.names[1], target == 1, probs[:, 1])]
    elif classified.multilabel:
        curves = [(name, target[:, k] == 1, probs[:, k]) for k, name in enumerate(classified.names)]
    else:
        curves = [(name, target == k, probs[:, k]) for k, name in enumerate(classified.names)]
    figure, ax = _figure(4.8, 4.2)
    skipped = []
    for name, positive, score in curves:
        if positive.all() or not positive.any():
            skipped.append(name)
            continue
        if kind == "roc":
            fpr, tpr, _ = skm.roc_curve(positive, score)
            ax.plot(fpr, tpr, label=f"{name} (AUC {skm.roc_auc_score(positive, score):.3f})")
        else:
            precision, recall, _ = skm.precision_recall_curve(positive, score)
            ap = skm.average_precision_score(positive, score)
            ax.plot(
                recall, precision, label=f"{name} (AP {ap:.3f}, prevalence {positive.mean():.2f})"
            )
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        threshold = run.values.get("threshold")
        if len(curves) == 1 and threshold is not None and not skipped:
            sens, spec = run.values.get("test/sensitivity"), run.values.get("test/specificity")
            if sens is not None and spec is not None:
                ax.plot([1 - spec], [sens], "ko", label=f"operating point (t={threshold:.3g})")
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (test)")
    else:
        ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="precision-recall (test)")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
    note = _note(f"No curve for {', '.join(skipped)}: one class only in the test split.")
    return _img(_png(figure), f"{kind} curve") + (note if skipped else "")


def _confusion_section(run: Run) -> str:
    path = run.dir / "confusion_matrix.csv"
    if not path.is_file():
        return _note("confusion_matrix.csv not found.")
    fields, rows = read_csv_rows(path)
    table = _table(fields, [[row[f] for f in fields] for row in rows])
    if "label" in fields:  # multi-label: one 2 x 2 block per label
        return table
    names = [f.removeprefix("pred_") for f in fields[1:]]
    matrix = np.array([[int(row[f]) for f in fields[1:]] for row in rows])
    size = 1.2 + 0.6 * len(names)
    figure, ax = _figure(size + 1.0, size)
    image = ax.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=ax, shrink=0.8)
    for (i, j), count in np.ndenumerate(matrix):
        light = count > matrix.max() / 2
        ax.text(j, i, str(count), ha="center", va="center", color="white" if light else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), [row["true"] for row in rows])
    ax.set(xlabel="predicted", ylabel="true", title="test confusion matrix")
    return _img(_png(figure), "confusion matrix") + table


def _calibration_section(run: Run) -> str:
    classified = read_classification(run.dir, _select(run.cfg, "dataset.class_names"))
    confidence, outcome, what = calibration_inputs(classified)
    count, confidence_sum, outcome_sum = reliability_bins(confidence, outcome)
    ece = expected_calibration_error(confidence, outcome)
    edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
    filled = count > 0
    figure, (ax, hist) = _figure(8.5, 3.8, ncols=2)
    ax.bar(
        edges[:-1][filled],
        outcome_sum[filled] / count[filled],
        width=1 / CALIBRATION_BINS,
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="observed frequency",
    )
    ax.plot(confidence_sum[filled] / count[filled], outcome_sum[filled] / count[filled], "ro")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=what, ylabel="observed frequency")
    ax.set_title(f"reliability diagram (test), ECE {ece:.3f}")
    ax.legend(fontsize=7, loc="upper left")
    hist.bar(edges[:-1], count, width=1 / CALIBRATION_BINS, align="edge", edgecolor="black")
    hist.set(xlim=(0, 1), xlabel=what, ylabel="test cases", title="cases per bin")
    return _img(_png(figure), "reliability diagram") + _note(
        f"Expected calibration error (test/ece): {_fmt(ece)} ({CALIBRATION_BINS} equal-width bins; "
        f"red dots: mean {what} per bin)."
    )


def _threshold_rule(cfg: DictConfig | None) -> str:
    rule = _select(cfg, "task.threshold")
    if rule == "youden":
        return "youden: maximal Youden's J (sensitivity + specificity - 1) on the validation split"
    if rule == "sensitivity":
        target = _select(cfg, "task.target_sensitivity")
        return f"sensitivity: the highest threshold reaching sensitivity {target} on the validation split"
    return "unknown (no config)" if rule is None else f"fixed: task.threshold={rule}"


def _operating_point_section(run: Run) -> str:
    values = run.values
    if "threshold" not in values and not any(k.startswith("threshold_") for k in values):
        names = read_classification(run.dir).names
        rows = [
            [
                name,
                values.get(f"test/sensitivity_{name}"),
                values.get(f"test/specificity_{name}"),
                values.get(f"val/sensitivity_{name}"),
                values.get(f"val/specificity_{name}"),
            ]
            for name in names
        ]
        return _note(
            "Multi-class: the prediction is the most probable class (no threshold)."
        ) + _table(
            ["class", "test sensitivity", "test specificity", "val sensitivity", "val specificity"],
            rows,
        )
    rule = _note(f"Threshold rule (task.threshold): {_threshold_rule(run.cfg)}.")
    if "threshold" in values:
        rows = [
            [
                split,
                values.get(f"{split}/sensitivity"),
                _interval(values, f"{split}/sensitivity"),
                values.get(f"{split}/specificity"),
                _interval(values, f"{split}/specificity"),
                values.get(f"{split}/acc@0.5"),
            ]
            for split in ("test", "val")
        ]
        header = ["split", "sensitivity", "95% CI", "specificity", "95% CI", "acc at 0.5"]
        return (
            f"<p>Decision threshold on the positive-class probability: <b>{_fmt(values['threshold'])}"
            "</b></p>" + rule + _table(header, rows)
        )
    labels = [k.removeprefix("threshold_") for k in values if k.startswith("threshold_")]
    rows = [
        [
            name,
            values[f"threshold_{name}"],
            values.get(f"test/sensitivity_{name}"),
            values.get(f"test/specificity_{name}"),
        ]
        for name in labels
    ]
    return rule + _table(["label", "threshold", "test sensitivity", "test specificity"], rows)


def _gradcam_section(run: Run, num_images: int) -> str:
    from medtrain.analysis.gradcam import gradcam_figures

    if not (run.dir / "checkpoints" / "best.pt").is_file():  # an ensemble folder: no one model
        return _note(
            "Grad-CAM not available: it needs the run's model, checkpoints/best.pt, which this folder does not have."
        )
    try:
        figures = gradcam_figures(run.dir, num_images, run.trust, run.checked)
    except Exception as err:  # optional: a failure is reported on the page, never raised
        log.warning("report: no Grad-CAM (%s)", err)
        return _note(f"Grad-CAM not available: {type(err).__name__}: {err}")
    images = "".join(_img(png, f"Grad-CAM {i}") for i, png in enumerate(figures))
    return (
        _note(
            "Grad-CAM of the predicted class on the last convolutional layer, for the first test "
            "images (red: regions that raised the class's logit most)."
        )
        + f'<div class="gallery">{images}</div>'
    )


def _files_section(paths: list[Path], missing: str, css_class: str = "") -> str:
    if not paths:
        return _note(missing)
    images = "".join(_img(p.read_bytes(), p.name) for p in paths)
    return f'<div class="{css_class}">{images}</div>' if css_class else images


def _overlays_section(run: Run) -> str:
    folder = run.dir / "overlays"
    cases = sorted(p for p in folder.glob("*.png") if p.name != "grid.png")[:4]
    grid = [folder / "grid.png"] if (folder / "grid.png").is_file() else []
    return (
        _note("Test images with ground-truth (green) and predicted (magenta) contours.")
        + _files_section(grid, "No overlays/grid.png.")
        + _files_section(cases, "No overlays/ (task.num_overlays=0).", css_class="cases")
    )


# ---------------------------------------------------------------------------------------------
# The page

TITLES = {
    "config": "Configuration",
    "data": "Data",
    "metrics": "Metrics",
    "curves": "Training curves",
    "roc": "ROC curve",
    "pr": "Precision-recall curve",
    "confusion": "Confusion matrix",
    "calibration": "Calibration",
    "operating_point": "Operating point",
    "gradcam": "Grad-CAM",
    "overlays": "Segmentation overlays",
    "scatter": "Predicted against true",
    "bland_altman": "Bland-Altman",
}
STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
th { background: #f0f0f0; }
img { max-width: 100%; margin: 0.3em; vertical-align: top; }
.gallery img { width: 220px; }
.cases img { width: 240px; image-rendering: pixelated; }
.note { color: #555; font-size: 0.9em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
nav a { margin-right: 1em; }
"""
# Counts images that did not decode, for headless checks (`chromium --dump-dom`).
SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !img.complete || img.naturalWidth === 0; });
  document.body.dataset.brokenImages = String(broken.length);
  document.body.dataset.images = String(images.length);
});
"""


def _section(
    run: Run, section: str, gradcam_images: int, build: Callable[[Run], str] | None = None
) -> str:
    """The HTML of one section: a built-in one by name, or a task's own (`build`)."""
    builders: dict[str, Callable[[], str]] = {
        "config": lambda: _config_section(run),
        "data": lambda: _data_section(run),
        "metrics": lambda: _metrics_section(run),
        "curves": lambda: _curves_section(run),
        "roc": lambda: _curve_section(run, "roc"),
        "pr": lambda: _curve_section(run, "pr"),
        "confusion": lambda: _confusion_section(run),
        "calibration": lambda: _calibration_section(run),
        "operating_point": lambda: _operating_point_section(run),
        "gradcam": lambda: _gradcam_section(run, gradcam_images),
        "overlays": lambda: _overlays_section(run),
        "scatter": lambda: _files_section(
            sorted(run.dir.glob("scatter*.png")), "No scatter.png (task.plots=false)."
        ),
        "bland_altman": lambda: _files_section(
            sorted(run.dir.glob("bland_altman*.png")), "No bland_altman.png (task.plots=false)."
        ),
    }
    try:
        return build(run) if build is not None else builders[section]()
    except Exception as err:  # one unreadable file costs its section, not the whole report
        if isinstance(err, FileNotFoundError) and not any(
            k.startswith("test/") for k in run.values
        ):
            # A cross-validation's fold of data without a test split: tested by nothing.
            return _note("Not tested: the data has no test split (a cross-validation fold).")
        log.warning("report: section %s failed (%s: %s)", section, type(err).__name__, err)
        return _note(f"This section could not be built: {type(err).__name__}: {err}")


def write_report(
    run_dir: Path, gradcam_images: int = 6, trust: Sequence[str] = (), checked: bool = True
) -> Path:
    """Write `report.html` into a finished run folder, atomically, and return its path.

    The page is self-contained (images are inline PNG data URIs; no external CSS, scripts or
    fonts). Sections, each an `<h2>` whose `id` is the section name: `config`, `data`, `metrics`,
    `curves`, then the task's `report_sections` (classification: `roc`, `pr`, `confusion`,
    `calibration`, `operating_point`, `gradcam`; segmentation: `overlays`; regression: `scatter`,
    `bland_altman`). The intervals and ECE are metrics.json's when it holds them, else computed by
    the task's `intervals` (the same numbers).

    Args:
        gradcam_images: test images shown with Grad-CAM heat maps (classification).
        trust: `_target_` names (or module prefixes ending in `.`) the run's configs may build
            besides the allowed ones (`medtrain.engine.trust`). The report imports the task
            class, Grad-CAM builds the model and data, and the config section resolves
            interpolations: the run folder's configs are checked before any of it.
        checked: False only for a run this process has just trained from its user's own config
            (nothing of it is checked then).

    Raises:
        ConfigError: a config of the folder names what a run folder may not build.
    """
    run_dir = Path(run_dir)
    if checked:
        check_run_folder(run_dir, trust)
    cfg, source = load_run_config(run_dir)
    task = run_task(run_dir, cfg, trust, checked)
    metrics = read_json(run_dir / "metrics.json") or {}
    extra = {} if any("_ci_" in k for k in metrics) else task.intervals(run_dir)
    values = metrics | {k: v for k, v in extra.items() if k not in metrics}
    run = Run(run_dir, cfg, source, task, values, tuple(trust), checked)
    # A task names built-in sections, or gives its own as (name, title, function of the Run).
    sections = [
        (entry, TITLES.get(entry, entry), None) if isinstance(entry, str) else tuple(entry)
        for entry in (*COMMON_SECTIONS, *task.report_sections)
    ]
    nav = "".join(f'<a href="#{name}">{escape(title)}</a>' for name, title, _ in sections)
    body = "".join(
        f'<h2 id="{name}">{escape(title)}</h2>\n{_section(run, name, gradcam_images, build)}\n'
        for name, title, build in sections
    )
    title = f"medtrain {task.name} run {run_dir.resolve().name}"
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>"
        f'<h1>{escape(title)}</h1><p class="note">{escape(str(run_dir.resolve()))}</p>'
        f"<nav>{nav}</nav>\n{body}<script>{SCRIPT}</script></body></html>\n"
    )
    return atomic_write(run_dir / "report.html", lambda f: f.write(page.encode("utf-8")), "wb")
