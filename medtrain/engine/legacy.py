"""Config paths of earlier releases: a run folder stores the `_target_` paths of the release that
trained it, and still predicts, serves, exports, reruns and joins ensembles after modules move.

`MOVED` maps every module path that changed (release 0.1, the flat package) to where it lives now;
`medtrain.engine.build` rewrites the `_target_`s of a config through it before anything is
instantiated or checked. A class that moves again gets its line here, never a copy of the class.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, open_dict, read_write

# old module -> new module (0.1 -> 0.2: the package was grouped by layer)
MOVED = {
    "medtrain.build": "medtrain.engine.build",
    "medtrain.callbacks": "medtrain.experiments.hydra_callbacks",
    "medtrain.check_data": "medtrain.engine.data_check",
    "medtrain.cli": "medtrain.commands.args",
    "medtrain.compare": "medtrain.experiments.compare",
    "medtrain.config": "medtrain.engine.config",
    "medtrain.ensemble": "medtrain.inference.ensemble",
    "medtrain.export": "medtrain.inference.export",
    "medtrain.export_manifest": "medtrain.inference.export_manifest",
    "medtrain.inference": "medtrain.inference.predictor",
    "medtrain.losses": "medtrain.losses.classification",
    "medtrain.measure": "medtrain.analysis.mask_folder",
    "medtrain.metrics": "medtrain.metrics.classification",
    "medtrain.predict": "medtrain.inference.predict",
    "medtrain.provenance": "medtrain.engine.provenance",
    "medtrain.rerun": "medtrain.experiments.rerun",
    "medtrain.resume": "medtrain.engine.resume",
    "medtrain.schedulers": "medtrain.engine.schedulers",
    "medtrain.segmentation_losses": "medtrain.losses.segmentation",
    "medtrain.segmentation_metrics": "medtrain.metrics.segmentation",
    "medtrain.serve": "medtrain.inference.serve",
    "medtrain.sliding_window": "medtrain.models.sliding_window",
    "medtrain.sweep": "medtrain.experiments.sweep",
    "medtrain.sweep_summary": "medtrain.experiments.sweep_summary",
    "medtrain.trainer": "medtrain.engine.loop",
    "medtrain.analysis.volumes": "medtrain.analysis.volume_results",
}
# Names whose new module differs from the rest of their old module's: the task classes, named
# through the package's re-export, and the regression metrics, split from the classification ones.
RENAMED = {
    "medtrain.tasks.ClassificationTask": "medtrain.tasks.classification.ClassificationTask",
    "medtrain.tasks.RegressionTask": "medtrain.tasks.regression.RegressionTask",
    "medtrain.tasks.SegmentationTask": "medtrain.tasks.segmentation.SegmentationTask",
    "medtrain.metrics.regression_metrics": "medtrain.metrics.regression.regression_metrics",
    "medtrain.metrics.ordinal_metrics": "medtrain.metrics.regression.ordinal_metrics",
}


def current_target(target: str) -> str:
    """Where the class or function an old `_target_` names lives now (unchanged when current)."""
    target = str(target)
    if target in RENAMED:
        return RENAMED[target]
    module, _, name = target.rpartition(".")
    new = MOVED.get(module)
    return f"{new}.{name}" if new else target


def upgrade_targets(node: Any) -> None:
    """Rewrite every `_target_` in a config (at any depth, lists included) to its current path, in
    place; other values, interpolations included, are left as they are."""
    if isinstance(node, DictConfig):
        target = node._get_node("_target_") if "_target_" in node else None
        if target is not None and not target._is_interpolation():
            old = node["_target_"]
            new = current_target(old)
            if new != old:
                with read_write(node), open_dict(node):
                    node["_target_"] = new
        for key in node:
            if key != "_target_":
                child = node._get_node(key)
                if isinstance(child, (DictConfig, ListConfig)):
                    upgrade_targets(child)
    elif isinstance(node, ListConfig):
        for child in node._iter_ex(resolve=False):
            if isinstance(child, (DictConfig, ListConfig)):
                upgrade_targets(child)
