"""Finished runs as one network: a `medtrain.models.ensemble.ModelAverage` of their networks, saved
as a run folder's `checkpoints/best.pt`, so that an ensemble (a CV's folds, `medtrain ensemble`)
predicts, serves and exports like a single run."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from medtrain.data.tabular import TabularEncoder, union_encoding
from medtrain.engine.build import build_model, plain
from medtrain.errors import ConfigError
from medtrain.inference.run import LoadedRun
from medtrain.io import atomic_write, save_checkpoint
from medtrain.tasks.base import Task

log = logging.getLogger(__name__)

# Normalizations that are (x - mean) / std per channel: one member's input is an affine map of
# another's. The others (zscore, percentile, ...) depend on each image: members must share them.
AFFINE_MODES = ("fixed", "dataset")


def encoding_of(state: Any) -> Any:
    """A run's clinical encoding without each column's training range (`low`, `high`: it says
    what the run was trained on, not how it encodes; runs saved before have none)."""
    if state is None:
        return None
    return [{k: v for k, v in dict(code).items() if k not in ("low", "high")} for code in state]


def member_inputs(runs: Sequence[LoadedRun], normalize: dict[str, Any]) -> dict[str, Any]:
    """Per member, (scale, shift) per channel from the ensemble's normalized input (`normalize`)
    to the member's own: needed when members normalize with other statistics (a CV's folds with
    `dataset.normalize.mode=dataset`, runs with other fixed mean and std); and for members that
    encode clinical columns with other statistics (a CV's folds: each fits them on its own
    training cases), the ensemble's encoding (`union_encoding`) and each member's, which the
    network maps to (`tabular_state`, `tabular_members`). Empty when every member sees the
    ensemble's input.

    Raises:
        ConfigError: members whose preprocessing differs otherwise (size, channels, window),
            whose normalizations are not all affine maps of each other (other modes, `invert`),
            or whose clinical encodings are not (other columns, a column of numbers in one and
            of categories in another), or an image model beside one of clinical columns.
    """
    first = dict(runs[0].checkpoint["preprocessing"])
    encodings = [run.checkpoint.get("tabular") for run in runs]
    tabular: dict[str, Any] = {}
    if any(encoding_of(e) != encoding_of(encodings[0]) for e in encodings[1:]):
        readers = [run for run, e in zip(runs, encodings, strict=True) if e is not None]
        if len(readers) < len(runs):  # an image model beside a fusion model
            raise ConfigError(
                f"{len(readers)} of the {len(runs)} runs read clinical columns (e.g. "
                f"{readers[0].run_dir}) and the others do not; one network reads one set of "
                "inputs, so its members predict"
            )
        try:
            union = union_encoding(encodings)
        except ValueError as err:
            raise ConfigError(
                f"the runs encode their clinical columns in ways no one encoding maps to ({err}); "
                "one network reads one encoding, so its members predict"
            ) from err
        tabular = {"tabular_state": union, "tabular_members": [list(e) for e in encodings]}
    for run in runs[1:]:
        other = dict(run.checkpoint["preprocessing"])
        differs = [k for k in first if k != "normalize" and first[k] != other.get(k)]
        if differs:
            raise ConfigError(
                f"{run.run_dir}: its preprocessing differs from {runs[0].run_dir} in {differs}; "
                "the members of one network share it"
            )
    own = [dict(run.checkpoint["preprocessing"]["normalize"]) for run in runs]
    if all(n == normalize for n in own):
        return tabular
    affine = all(
        n.get("mode") in AFFINE_MODES and n.get("invert") == normalize.get("invert")
        for n in [normalize, *own]
    )
    if not affine:
        modes = sorted({f"{n.get('mode')} (invert {n.get('invert')})" for n in own})
        raise ConfigError(
            f"the runs normalize their inputs differently ({', '.join(modes)}); the members of "
            "one network share the normalization, or differ only in fixed or dataset statistics"
        )
    mean0, std0 = np.asarray(normalize["mean"]), np.asarray(normalize["std"])
    scales, shifts = [], []
    for n in own:
        mean, std = np.asarray(n["mean"]), np.asarray(n["std"])
        scales.append((std0 / std).tolist())
        shifts.append(((mean0 - mean) / std).tolist())
    return {"input_scale": scales, "input_shift": shifts, **tabular}


def average_network(
    runs: Sequence[LoadedRun], cfg: DictConfig, task: Task, normalize: dict[str, Any]
) -> nn.Module:
    """The runs' networks as one `ModelAverage` holding their weights, averaged as `task` combines
    them; `cfg.model` becomes its config. `normalize`: the ensemble input's normalization (each
    member's own is mapped from it, `member_inputs`).

    Raises:
        ConfigError: runs that cannot be one network: their preprocessing (`member_inputs`),
            their test-time views or their inference settings (windows, overlap) differ.
    """
    views = {str(run.task.tta) for run in runs}  # the built tasks: `flip_tta` of older runs too
    if len(views) > 1:
        raise ConfigError(
            f"the runs' test-time views differ (task.tta: {sorted(views)}); the members of one "
            "network share them"
        )
    inference = [plain(run.cfg)["task"].get("inference") for run in runs]
    if any(i != inference[0] for i in inference):
        raise ConfigError(
            "the runs' task.inference settings differ (window, overlap, ...); the members of one "
            "network share them"
        )
    affine = [task.member_affine(run.task) for run in runs]
    outputs = {}
    if any(a is not None for a in affine):
        width = len(task.class_names)
        filled = [a or ([1.0] * width, [0.0] * width) for a in affine]
        outputs = {"output_scale": [a[0] for a in filled], "output_shift": [a[1] for a in filled]}
    inputs = member_inputs(runs, normalize)
    with open_dict(cfg):
        if "tabular_state" in inputs:  # the network reads the ensemble's own encoding
            union = TabularEncoder.from_state(inputs["tabular_state"])
            cfg.dataset.num_features = len(union.names)
        cfg.model = {
            "_target_": "medtrain.models.ensemble.ModelAverage",
            "rule": task.average_rule(),
            # A contact channel (task.instances.method=contacts) is averaged as a probability.
            **({"sigmoid_channels": task.sigmoid_outputs} if task.sigmoid_outputs else {}),
            "members": [plain(run.cfg)["model"] for run in runs],
            **inputs,
            **outputs,
        }
    model = build_model(cfg)
    for member, run in zip(model.members, runs, strict=True):
        member.load_state_dict(run.model.state_dict())
    return model


def save_average(
    out: Path, cfg: DictConfig, model: nn.Module, task: Task, preprocessing: dict, base: LoadedRun
) -> None:
    """Write `average_network`'s network as a run folder's `checkpoints/best.pt` and
    `.hydra/config.yaml` (with `task`'s threshold): it predicts, serves and exports as a run.
    Its clinical columns are encoded as the network reads them: the ensemble's own encoding
    where the members' differ (`member_inputs`), else theirs."""
    union = cfg.model.get("tabular_state")
    tabular = OmegaConf.to_container(union) if union is not None else base.checkpoint.get("tabular")
    checkpoint = {
        "config": plain(cfg),
        "task": task.name,
        "class_names": task.class_names,
        "seed": cfg.seed,
        "medtrain_version": base.checkpoint.get("medtrain_version"),
        "volume_axes": base.checkpoint.get("volume_axes"),  # how its members read volumes
        "preprocessing": preprocessing,
        **({"tabular": tabular} if tabular else {}),
        "model": model.state_dict(),
        "threshold": task.threshold,
        "best_epoch": None,
        "epoch": None,
    }
    save_checkpoint(out / "checkpoints" / "best.pt", checkpoint)
    atomic_write(
        out / ".hydra" / "config.yaml", lambda handle: handle.write(OmegaConf.to_yaml(cfg))
    )


def deployable_average(runs: Sequence[LoadedRun], task: Task, out: Path) -> str | None:
    """Write the runs as one network (`average_network`, `save_average`) into the ensemble folder
    `out`; returns why they cannot be one, or None. Never raises: the ensemble's results stand
    without its network."""
    missing = [str(run.run_dir) for run in runs if not run.checkpoint.get("preprocessing")]
    if missing:  # saved before checkpoints recorded their preprocessing
        why = f"{missing[0]}'s checkpoint does not record its preprocessing (an earlier release)"
    else:
        cfg = OmegaConf.create(plain(runs[0].cfg))
        preprocessing = dict(runs[0].checkpoint["preprocessing"])
        try:
            model = average_network(runs, cfg, task, dict(preprocessing["normalize"]))
            save_average(out, cfg, model, task, preprocessing, runs[0])
            return None
        except Exception as err:  # ConfigError, or a surprise: the evaluation is written anyway
            why = str(err).splitlines()[0] if isinstance(err, ConfigError) else repr(err)
    log.warning("ensemble: no network to predict with (%s); its members predict", why)
    return why
