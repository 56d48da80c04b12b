"""Tasks: what differs between classification, regression and segmentation, as a small object chosen
by `conf/task/` (`medtrain.tasks.base.Task` describes the protocol). The loop, prediction, serving,
export, ensembles, reports and config checks call the task's methods and never its name, so a new
task is one class (in any importable module) and one YAML file.
"""

from __future__ import annotations

from pathlib import Path

from medtrain.tasks.base import Input, Task
from medtrain.tasks.classification import ClassificationCollector, ClassificationTask
from medtrain.tasks.regression import RegressionCollector, RegressionTask
from medtrain.tasks.segmentation import SegmentationTask
from medtrain.tasks.segmentation_results import SegmentationCollector

__all__ = [
    "ClassificationCollector",
    "ClassificationTask",
    "Input",
    "RegressionCollector",
    "RegressionTask",
    "SegmentationCollector",
    "SegmentationTask",
    "Task",
    "task_from_files",
]


def task_from_files(run_dir: Path) -> type[Task]:
    """The task of a run folder without a config (an ensemble folder of an earlier release), from
    the files its test pass wrote: per-case metrics (segmentation), class probabilities
    (classification), else predicted values (regression)."""
    run_dir = Path(run_dir)
    if (run_dir / "per_case_metrics.csv").is_file():
        return SegmentationTask
    predictions = run_dir / "predictions.csv"
    header = predictions.read_text().partition("\n")[0] if predictions.is_file() else ""
    return ClassificationTask if "prob_" in header else RegressionTask
