"""A finished run rebuilt from its best checkpoint (`load_run`) and its evaluation preprocessing
(`eval_preprocessing`): what prediction, serving, export and ensembles start from."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from medtrain.data.volume_transforms import seeded_augment
from medtrain.engine.build import augmentation_seeding, build, build_model, build_task, task_class
from medtrain.engine.trust import check_targets
from medtrain.errors import ConfigError, DataError
from medtrain.io import file_sha256, load_checkpoint, read_json


@dataclass
class LoadedRun:
    """A run rebuilt from a checkpoint: the config it trained with (resolved, with what its data
    inferred), its network with the checkpoint's weights (in eval mode), its task with the threshold
    chosen on validation, and the checkpoint dict itself."""

    run_dir: Path
    checkpoint_path: Path
    cfg: DictConfig
    model: nn.Module
    task: Any
    checkpoint: dict[str, Any]

    @cached_property
    def weights_sha256(self) -> str:
        """The checkpoint file's SHA-256 (what /info and export manifests report), hashed once."""
        return file_sha256(self.checkpoint_path)


def load_run(
    run_dir: str | Path,
    key: str = "run_dir",
    checkpoint: str = "best",
    trust: Sequence[str] = (),
) -> LoadedRun:
    """Rebuild a finished run from `checkpoints/<checkpoint>.pt` (loaded with `weights_only=True`).

    Args:
        key: the argument named in error messages.
        trust: `_target_` names (or module prefixes ending in `.`) to build besides the allowed
            ones (see `medtrain.engine.trust`).

    Raises:
        ConfigError: no such run, not a medtrain checkpoint, a config naming what a run folder
            may not build (`medtrain.engine.trust`), or weights that do not fit the config.
    """
    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not run_dir.is_dir():
        raise ConfigError(f"{key}: {run_dir} does not exist (or is not a folder)")
    if not path.is_file():
        ensemble = read_json(run_dir / "ensemble.json") if checkpoint == "best" else None
        if ensemble and ensemble.get("no_network"):
            raise ConfigError(
                f"{key}: {run_dir} is an ensemble whose runs cannot be one network "
                f"({ensemble['no_network']}): predict with its members"
            )
        if ensemble:
            raise ConfigError(
                f"{key}: {run_dir} is an ensemble made by an earlier release, without a network: "
                f"make it again (medtrain ensemble run_dirs=[...]) to predict with it"
            )
        if (run_dir / "folds.json").is_file():
            ensemble = run_dir / "ensemble"
            untested = (read_json(run_dir / "folds.json") or {}).get("test") == []
            if ensemble.is_dir():
                where = ""
            elif untested:  # made untested, unless the folds have no one network
                where = " (none: the folds encode clinical columns each their own way)"
            else:
                where = " (not made yet: cv.ensemble=true)"
            raise ConfigError(
                f"{key}: {run_dir} is a CV folder: its fold ensemble is {ensemble}{where}, its "
                "folds fold_<k>/"
            )
        raise ConfigError(
            f"{key}: {run_dir} has no checkpoints/{checkpoint}.pt (is it a finished run?)"
        )
    try:
        state = load_checkpoint(path)
        cfg = OmegaConf.create(state["config"])
    except DataError as err:  # empty or truncated: the message names the file
        raise ConfigError(f"{key}: {err}") from err
    except Exception as err:  # not a medtrain checkpoint, or written by an incompatible version
        raise ConfigError(f"{key}: cannot read {path} as a medtrain checkpoint ({err})") from err
    # A run's end writes `threshold` into best.pt (None where the task chooses none); an
    # interrupted run's best.pt lacks it, and its predictions would take the task's default.
    unfinished = (
        "threshold" not in state
        and (run_dir / "checkpoints" / "last.pt").is_file()
        and not (run_dir / "metrics.json").is_file()
    )
    if unfinished:
        raise ConfigError(
            f"{key}: {run_dir} is an unfinished run (interrupted, or still training: its "
            "checkpoints/best.pt was saved before the run's end, which chooses the decision "
            "threshold where the task has one and tests the run); finish it with its command "
            "and hydra.run.dir=<the folder> trainer.resume=true"
        )
    check_targets(state["config"], path, trust)  # before anything it names is imported or built
    with open_dict(cfg):
        cfg.trainer.num_workers = 0
    model = build_model(cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(
            f"{key}: the weights in {path} do not fit its model config ({first})"
        ) from err
    model.eval()
    task = build_task(cfg)
    if state.get("threshold") is not None:
        task.threshold = state["threshold"]
    return LoadedRun(run_dir, path, cfg, model, task, state)


def eval_preprocessing(cfg: DictConfig, saved: dict[str, Any] | None = None) -> Any:
    """An empty dataset of the task's `preprocessing_class` holding the run's evaluation
    preprocessing (channels, size, normalization, the `augmentation.eval` pipeline): its `prepare`
    is what evaluation runs.

    Args:
        saved: the checkpoint's `preprocessing` entry (the dataset's own `preprocessing()` plus the
            training `input_size`). When the class resizes to the input size (image-level models)
            and the data were not resized, images of another size are resized to the training
            size. None (runs saved before it existed): taken from `cfg.dataset`.
    """
    task = task_class(cfg)
    base = task.preprocessing_class
    if volume_run(cfg):  # a 3D network: volumes are prepared whole
        base = task.volume_preprocessing_class or base
    if saved is not None:
        kwargs = {k: v for k, v in saved.items() if k != "input_size"}
        if (
            base.resize_to_input_size
            and kwargs.get("image_size") is None
            and saved.get("input_size")
        ):
            kwargs["image_size"] = list(saved["input_size"])
    else:
        accepted = set(inspect.signature(base.__init__).parameters) - {"self", "split", "transform"}
        settings = OmegaConf.to_container(cfg.dataset) | task.dataset_options(cfg)
        kwargs = {k: v for k, v in settings.items() if k in accepted}
    pipeline = build(cfg.augmentation.eval, "augmentation.eval")
    augment = seeded_augment(pipeline, cfg.seed, augmentation_seeding(cfg), "augmentation.eval")
    return base("test", transform=augment, **kwargs)


def volume_run(cfg: DictConfig) -> bool:
    """Whether the run's network is 3D (trained on volumes: `dataset.spatial_dims=3`)."""
    return (cfg.dataset.get("spatial_dims") or 2) == 3


def volume_settings(cfg: DictConfig) -> dict[str, Any] | None:
    """How a run trained on slices of volumes (`dataset=volume_slices`) made its slices: the
    `axis` and the whole-volume normalization; None for runs trained on 2D images."""
    data = cfg.dataset
    if not str(data.get("_target_", "")).endswith("VolumeSlices"):
        return None
    return {
        "axis": int(data.get("axis", 0)),
        "volume_normalize": data.get("volume_normalize", "zscore"),
    }


def trained_values(run_dir: Path) -> tuple[set[str], float] | None:
    """The storage types and largest value of a run's training images, from its data check
    (`data_report.json`); None when it has none (a check turned off, an ensemble's folder)."""
    report = read_json(Path(run_dir) / "data_report.json") or {}
    intensity = ((report.get("splits") or {}).get("train") or {}).get("intensity") or {}
    if not intensity.get("dtypes") or intensity.get("max") is None:
        return None
    return set(intensity["dtypes"]), float(intensity["max"])


def scale_matters(preprocess: Any) -> bool:
    """`Normalize.scale_matters` of `preprocess`'s normalization (False without one)."""
    normalize = getattr(preprocess, "normalize", None)
    return bool(getattr(normalize, "scale_matters", False))
