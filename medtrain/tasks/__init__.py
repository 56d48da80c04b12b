"""What differs between tasks, as data on a small object chosen by `conf/task/`: which batch keys feed
the model, the loss, how logits become predictions, the metrics and the monitored metric.

The trainer only uses: `name`, `class_names`, `forward`, `loss`, `collector(final=False)` (per
evaluation: `update`, `metrics`, `save`), `fit_threshold`, `monitor` and `monitor_mode`; every task
provides the same, and the one loop serves them all. `combine` (the mean of several models' outputs,
in probability or target units) serves `medtrain.ensemble`.
"""

from medtrain.tasks.classification import ClassificationCollector, ClassificationTask
from medtrain.tasks.regression import RegressionCollector, RegressionTask
from medtrain.tasks.segmentation import SegmentationCollector, SegmentationTask

__all__ = [
    "ClassificationCollector",
    "ClassificationTask",
    "RegressionCollector",
    "RegressionTask",
    "SegmentationCollector",
    "SegmentationTask",
]
