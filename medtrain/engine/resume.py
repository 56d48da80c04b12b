"""Resuming an interrupted run: restore model, optimizer, schedule and loop state from a checkpoint,
checking that the config still fits it."""

from __future__ import annotations

import inspect
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR

from medtrain.engine import distributed
from medtrain.engine.acceleration import resolve_precision
from medtrain.engine.config import resolve_device
from medtrain.engine.provenance import data_fingerprint, files_fingerprint, fingerprint_change
from medtrain.engine.trust import check_targets, configured_targets
from medtrain.errors import ConfigError, DataError
from medtrain.io import load_checkpoint, read_json

log = logging.getLogger(__name__)


def resume_path(resume: bool | str, ckpt_dir: Path) -> Path:
    """The checkpoint `trainer.resume` points at: this run's last.pt, a file, or a run folder's."""
    path = ckpt_dir / "last.pt" if resume is True else Path(str(resume))
    return path / "checkpoints" / "last.pt" if path.is_dir() else path


def resolve_auto(cfg: DictConfig, run_dir: Path) -> None:
    """`trainer.resume=auto`: continue from the run folder's `checkpoints/last.pt` when it has one,
    else start a new run there, so that one command serves a job's first start and every restart
    (a requeued SLURM job, a preempted cloud node). Sets `trainer.resume` to what it means
    (rank 0 looks: the other ranks need no access to the run folder)."""
    last = Path(run_dir) / "checkpoints" / "last.pt"
    found = bool(distributed.decided(last.is_file))
    cfg.trainer.resume = found
    if distributed.is_main():
        log.info(
            "trainer.resume=auto: %s",
            f"continuing from {last}" if found else f"no checkpoint in {last.parent}: a new run",
        )


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {"a.b.c": value}."""
    if not isinstance(node, dict):
        return {prefix: node}
    return {
        k: v
        for key, value in node.items()
        for k, v in flatten(value, f"{prefix}.{key}" if prefix else str(key)).items()
    }


# What may change between an interrupted run and its continuation: how it runs, not what it learns.
MAY_CHANGE = (
    "resume",
    "progress",
    "report",
    "tensorboard",
    "max_epochs",
    "early_stopping_patience",
    "num_workers",
    "device",
    "eval_batch_size",
    "distributed.timeout_s",
    "distributed.backend",
    "distributed.find_unused_parameters",
    "compile",
    "channels_last",
    "resume_on_changed_data",
)


# Outside `trainer`, keys that may differ on resume: how fast data are read; where a CV's folds
# file is (a CV folder may move); how predictions are written; how a stem is first made (the
# checkpoint's weights replace it).
MAY_CHANGE_OUTSIDE_TRAINER = (
    "dataset.cache_mb",
    "cv.folds_file",
    "task.label_separator",
    "task.no_label",
    "model.stem_from_weights",
)

# Keys a later release added whose default changed what runs do, with what a config without the
# key meant: a checkpoint of an earlier run continues only with that value.
MEANT_WITHOUT_KEY = {
    "augmentation.seeding": "per_transform",
    "trainer.augment_on_device": False,
    "trainer.ema_horizon": None,
    "cv.fold": None,
    "cv.folds_file": None,
    "dataset.spatial_dims": 2,  # every run before 3D networks was on 2D images
    # Validated after every epoch, with the views: a schedule that follows the metric (plateau)
    # and the best checkpoint depend on when and how the run validates.
    "trainer.val_every": 1,
    "trainer.val_tta": True,
    # val/loss as the mean of batch means: the best checkpoint when it is the monitor.
    "trainer.loss_mean": "batches",
    # Resumes refused changed data before the key (release 0.3): a run without it never allowed it.
    "trainer.resume_on_changed_data": False,
}


def is_default(config: dict, key: str, value: Any) -> bool:
    """Whether `value` at `key` is what a config without the key meant: a key added by a later
    release (`trainer.distributed.*`, `model.batch_norm`) that a checkpoint's config lacks. The
    default is `trainer.distributed`'s, or that of the parameter of the node's `_target_` class."""
    if key in MEANT_WITHOUT_KEY:
        return MEANT_WITHOUT_KEY[key] == value
    parent, _, name = key.rpartition(".")
    if parent == "trainer.distributed":
        return distributed.DEFAULTS.get(name, object()) == value
    node = config
    for part in parent.split(".") if parent else []:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    target = node.get("_target_") if isinstance(node, dict) else None
    if not target:
        return False
    from medtrain.engine.build import locate

    parameter = target_parameter(locate(str(target)), name)
    return parameter is not None and parameter.default == value


def target_parameter(target: Any, name: str) -> inspect.Parameter | None:
    """The parameter `name` of a `_target_`: of its signature, or, for a class that passes
    `**kwargs` on to its bases (`SegFolder` to `SegmentationDataset`), of the first base that
    names it. (A class that changes a base's default in its body, `kwargs.setdefault`, is not
    seen: such keys belong in `MEANT_WITHOUT_KEY` when a release adds them.)"""
    for function in (
        [c.__init__ for c in target.__mro__ if "__init__" in vars(c)]
        if inspect.isclass(target)
        else [target]
    ):
        try:
            parameters = inspect.signature(function).parameters
        except (TypeError, ValueError):
            return None
        if name in parameters:
            return parameters[name]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return None
    return None


# A refused resume names the values to put back, up to this many keys.
MAX_KEYS_LISTED = 8


def check_resumed_config(
    saved: dict, current: dict, scheduler, before_data: bool = False
) -> dict[str, list]:
    """Refuse to continue a run with a config that differs from its checkpoint's, naming the values
    to put back; `trainer.max_epochs` and other `MAY_CHANGE` keys may differ. `before_data`: the
    current config's values inferred from the data (null until it is read) are not compared.

    Returns:
        The allowed differences (`trainer.resume` left out), as {key: [checkpoint's, this one's]}.
    """
    old, new = flatten(saved), flatten(current)
    for values in (old, new):  # `task.flip_tta: true` of earlier runs is `task.tta: hflip`
        if "task.flip_tta" in values:
            flip = values.pop("task.flip_tta")
            values["task.tta"] = "hflip" if flip else values.get("task.tta")
    # `auto` precision is compared as what it means on this run's device.
    device = resolve_device(str(new.get("trainer.device", "cpu")))
    for values in (old, new):
        if "trainer.precision" in values:
            values["trainer.precision"] = resolve_precision(values["trainer.precision"], device)
    # Statistics of the training split (`normalize.mode: dataset`) are written into the config
    # when the data are read: before that, the new config holds the YAML's placeholders.
    from_data = (
        {"dataset.normalize.mean", "dataset.normalize.std"}
        if before_data and new.get("dataset.normalize.mode") == "dataset"
        else set()
    )
    if before_data:  # written from the data (2 images, 3 volumes) when they are read
        from_data.add("dataset.spatial_dims")
    changed = sorted(
        k
        for k in old.keys() | new.keys()
        if old.get(k) != new.get(k)
        and not (k not in old and is_default(current, k, new[k]))
        and not (before_data and k in new and new[k] is None)
        and k not in from_data
    )
    allowed = {f"trainer.{key}" for key in MAY_CHANGE} | set(MAY_CHANGE_OUTSIDE_TRAINER)
    if isinstance(scheduler, OneCycleLR):  # its length is fixed at construction
        allowed.discard("trainer.max_epochs")
    refused = [k for k in changed if k not in allowed]
    if refused:
        if len(refused) > MAX_KEYS_LISTED:  # another experiment: its values are no help to paste
            raise ConfigError(
                f"trainer.resume: the checkpoint was trained with other values of {len(refused)} "
                f"keys ({', '.join(refused[:MAX_KEYS_LISTED])}, ...): repeat the original "
                "command's overrides (its run folder's .hydra/overrides.yaml lists them)"
            )
        restore = " ".join(
            f"{k}={old[k]}"
            if k in old
            else f"{k}={MEANT_WITHOUT_KEY[k]}"
            if k in MEANT_WITHOUT_KEY
            else f"~{k}"
            for k in refused
        )
        raise ConfigError(
            f"trainer.resume: the checkpoint was trained with other values of {', '.join(refused)}; "
            f"repeat the original overrides (add: {restore})"
        )
    shown = [k for k in changed if k != "trainer.resume"]
    if shown and not before_data:
        log.info("resuming with changed %s", ", ".join(shown))
    return {k: [old.get(k, MEANT_WITHOUT_KEY.get(k)), new.get(k)] for k in shown}


# What makes a folder a run's: its results, or the checkpoint it continues from (a folder with only
# best.pt, killed between the two saves of its first epoch, may start again).
HELD = ("metrics.json", "checkpoints/last.pt")


def check_new_run_folder(run_dir: Path) -> None:
    """A run that does not resume starts where no run is: training into a finished or interrupted
    run's folder would replace its checkpoints and metrics, and leave its exports and reports
    describing weights that are gone.

    Raises:
        ConfigError: `run_dir` holds a run's metrics.json or last.pt.
    """
    held = [name for name in HELD if (Path(run_dir) / name).is_file()]
    if held:
        how = (
            "train into a new folder, or continue that run with trainer.resume=true"
            if "checkpoints/last.pt" in held
            else "train into a new folder (it has no checkpoints/last.pt to continue from)"
        )
        raise ConfigError(
            f"the run folder {run_dir} (hydra.run.dir) already holds a run ({', '.join(held)}): "
            f"{how}"
        )
    # Files a run writes at its end only (so no earlier attempt of this run left them): a
    # folder holding them holds someone's results, which this run would replace.
    ends = [name for name in ENDING_FILES if (Path(run_dir) / name).exists()]
    # Files a run writes before training, after its provenance.json: without one beside them
    # they are no earlier attempt's but someone's own (a split file kept there).
    if not (Path(run_dir) / "provenance.json").is_file():
        ends += [name for name in EARLY_FILES if (Path(run_dir) / name).exists()]
    if ends:
        raise ConfigError(
            f"the folder {run_dir} (hydra.run.dir) holds {', '.join(ends)}, which this run would "
            "replace: train into a new folder"
        )


# What a run writes after its test pass, never before: found in a folder without a metrics.json,
# they are not a failed attempt's files.
ENDING_FILES = ("predictions.csv", "report.html", "confusion_matrix.csv", "per_case_metrics.csv")
# What a run writes before training, after its provenance.json (an earlier attempt's, when that
# provenance.json is there too).
EARLY_FILES = ("splits.json", "data_report.json", "groups.json")


def check_before_resuming(cfg, run_dir: Path) -> dict[str, Any]:
    """`trainer.resume`'s checks before anything of the run is written (provenance, splits, the
    data report): a checkpoint exists, its config builds only allowed classes and matches this one
    (the values inferred from the data are compared once it is read, by `resume`), and the data
    are those its run recorded (`check_same_data`).

    Returns:
        What `write_provenance` records of this session: `checkpoint`, `after_epoch` (the
        checkpoint's), `config_changes` ({key: [checkpoint's, this one's]}, the `MAY_CHANGE`
        values), `world_size` (the checkpoint's processes) and `run` (the folder whose
        `checkpoints/` hold it, whose provenance the run continues; None for a file elsewhere).
    """
    from omegaconf import OmegaConf

    current = OmegaConf.to_container(cfg, resolve=True)
    path = resume_path(cfg.trainer.resume, Path(run_dir) / "checkpoints")
    checkpoint = _readable_checkpoint(cfg.trainer.resume, path)
    check_targets(checkpoint.get("config") or {}, path, configured_targets(current))
    changes = check_resumed_config(checkpoint["config"], current, None, before_data=True)
    run = path.parent.parent if path.parent.name == "checkpoints" else None
    data_changed = check_same_data(cfg, run)
    patience = cfg.trainer.get("early_stopping_patience")
    stopped = bool(patience) and checkpoint.get("stale_epochs", 0) >= patience
    trains_on = checkpoint.get("epoch", 0) < cfg.trainer.max_epochs and not stopped  # else: tests
    if trains_on and (Path(run_dir) / "export").is_dir():
        log.warning(
            "%s/export was made from this run's checkpoint before it continued: export it again "
            "once the run is done (medtrain export run_dir=%s)",
            run_dir,
            run_dir,
        )
    return {
        "checkpoint": str(path),
        "after_epoch": checkpoint.get("epoch", 0),
        "config_changes": changes,
        "world_size": checkpoint.get("world_size", 1),
        "run": None if run is None else str(run),
    } | ({"data_changed": data_changed} if data_changed else {})


def run_provenance(run: Path | None) -> dict[str, Any] | None:
    """The `provenance.json` of the run a checkpoint belongs to; None when there is none (a run of
    a release before provenance, a checkpoint kept apart from its run folder).

    Raises:
        DataError: the file is there but is no JSON object.
    """
    if run is None:
        return None
    path = Path(run) / "provenance.json"
    advice = (
        "the continued run would lose its record of the data and environment it started with. "
        "Restore it from a copy, or delete it (the continuation then records its own)"
    )
    try:
        provenance = read_json(path)
    except DataError as err:
        raise DataError(f"trainer.resume: {err}: {advice}") from err
    if provenance is not None and not isinstance(provenance, dict):
        raise DataError(f"trainer.resume: {path} holds no JSON object: {advice}")
    return provenance


def check_same_data(cfg, run: Path | None) -> str | None:
    """The data must be those the run recorded when it started (its `provenance.json`'s
    fingerprint), as `medtrain cv` holds its folds to them: the epochs after the checkpoint would
    train on other labels or images than those before it, and the run's record would describe
    neither. `trainer.resume_on_changed_data=true` continues all the same, with a warning.

    Returns:
        What changed, when the run continues on changed data (recorded with the session).

    Raises:
        ConfigError: naming the data, both digests and the run folder.
    """
    before = files_fingerprint((run_provenance(run) or {}).get("data"))
    if before is None:  # generated data: their settings are compared with the checkpoint's config
        return None
    changed = fingerprint_change(before, data_fingerprint(cfg, like=before))
    if changed and cfg.trainer.get("resume_on_changed_data", False):
        log.warning(
            "trainer.resume: the data changed since the run in %s started (%s); continuing on "
            "them (trainer.resume_on_changed_data=true): its epochs are of two data sets",
            run,
            changed,
        )
        return changed
    if changed:
        raise ConfigError(
            f"trainer.resume: the data changed since the run in {run} started: {changed}. Its "
            "remaining epochs would train on other labels or images than its first: restore "
            "the data to continue the run, or train a new run on them (a new hydra.run.dir, "
            "without trainer.resume), or continue on them knowingly with "
            "trainer.resume_on_changed_data=true"
        )
    return None


def check_same_splits(cfg, resumed: dict[str, Any], datasets: dict) -> None:
    """A continued run keeps its cases in their splits (its `splits.json`): a seeded split drawn
    again on changed data (`trainer.resume_on_changed_data`: a file added to a folder) moves cases,
    and a training image in val or test would be scored as unseen.

    Raises:
        ConfigError: naming the cases that moved and the split file that keeps them where they were.
    """
    run = resumed.get("run")
    before = read_json(Path(run) / "splits.json") if run else None
    if not isinstance(before, dict):
        return  # a checkpoint apart from its run folder, or a run of a release before splits.json
    was = {str(case): split for split, cases in before.items() for case in cases or []}
    moved = [
        f"{case}: {was[str(case)]} -> {split}"
        for split, ds in datasets.items()
        for case in ds.ids
        if str(case) in was and was[str(case)] != split
    ]
    if moved:
        shown = "; ".join(moved[:5]) + ("; ..." if len(moved) > 5 else "")
        keep = (
            f"continue with the run's split, dataset.split_file={Path(run) / 'splits.json'}"
            if "split_file" in cfg.dataset
            else "restore the data to continue the run, or train a new run on them"
        )
        raise ConfigError(
            f"trainer.resume: {len(moved)} case(s) are in another split than when the run "
            f"started ({shown}): training images would be scored as unseen; {keep}"
        )


def _copy_checkpoints(source: Path, ckpt_dir: Path) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for name in ("best.pt", "last.pt"):
        if (source / name).is_file():
            shutil.copyfile(source / name, ckpt_dir / name)


def said(resume: Any) -> str:
    """`trainer.resume`'s value as the command line writes it (`true`, not Python's `True`)."""
    return str(resume).lower() if isinstance(resume, bool) else str(resume)


def _readable_checkpoint(resume, path: Path) -> dict:
    """The checkpoint `trainer.resume` points at, read.

    Raises:
        ConfigError: there is none.
        DataError: it is empty or truncated (say, copied back from a backup that did not finish).
    """
    if not path.is_file():
        raise ConfigError(f"trainer.resume={said(resume)}: no checkpoint at {path}")
    try:
        return load_checkpoint(path)
    except DataError as err:
        raise DataError(
            f"trainer.resume={said(resume)}: {err}. Restore it from a copy to continue the run, or "
            "delete it to start the run over (train without trainer.resume, or with "
            "trainer.resume=auto)"
        ) from err


def _checked_checkpoint(resume, path: Path, scheduler, ema, config: dict | None) -> dict:
    """The checkpoint at `path`, after the checks of `resume`."""
    checkpoint = _readable_checkpoint(resume, path)
    check_targets(checkpoint.get("config") or {}, path, configured_targets(config or {}))
    if config is not None:
        check_resumed_config(checkpoint["config"], config, scheduler)
    if (ema is None) != ("training_model" not in checkpoint):
        raise ConfigError(
            f"trainer.resume={said(resume)}: the checkpoint's run "
            f"{'averaged' if ema is None else 'did not average'} the weights; set "
            "trainer.ema_horizon and trainer.ema_decay as it did"
        )
    return checkpoint


def continue_schedule(scheduler: Any, optimizer: Optimizer) -> None:
    """Set the rates of a resumed step-wise schedule (cosine, multistep, constant) to what this
    run's schedule gives at the checkpoint's step. The checkpoint holds the rate its run had
    reached, and the schedule's shape is not saved: with another `trainer.max_epochs` the schedule
    is this run's length, so the rate moves (said in a warning); with the same, nothing changes."""
    if not isinstance(scheduler, LambdaLR):
        return
    rates = [
        base * f(scheduler.last_epoch)
        for base, f in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    ]
    reached = [group["lr"] for group in optimizer.param_groups]
    if any(not math.isclose(a, b, rel_tol=1e-9) for a, b in zip(reached, rates, strict=True)):
        if distributed.is_main():
            log.warning(
                "the learning-rate schedule follows this run's trainer.max_epochs: the rate goes "
                "from %.3g, where the checkpoint's run had reached, to %.3g at step %d (the "
                "result equals neither the interrupted run nor a new run of this length)",
                reached[0],
                rates[0],
                scheduler.last_epoch,
            )
        for group, rate in zip(optimizer.param_groups, rates, strict=True):
            group["lr"] = rate


def resume(
    resume: bool | str,
    ckpt_dir: Path,
    model,
    optimizer,
    scheduler,
    scaler,
    ema=None,
    config: dict | None = None,
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and loop state from `last.pt` (or the given checkpoint
    or run folder). Resuming from another folder copies its checkpoints here, so the run stays whole.

    The checkpoint's config is checked against the allow-list of `medtrain.engine.trust` first
    (trusting the `_target_`s of `config`, which its user composed): nothing of it is built, but
    a refused difference would be named as an override to repeat.
    """
    path = resume_path(resume, ckpt_dir)
    # Rank 0 reads and checks the checkpoint and sends it on: the other ranks need no access to
    # the run folder (another node).
    checkpoint = distributed.decided(_checked_checkpoint, resume, path, scheduler, ema, config)
    try:
        if ema is None:
            model.load_state_dict(checkpoint["model"])
        else:
            model.load_state_dict(checkpoint["training_model"])
            ema.module.load_state_dict(checkpoint["model"])
            ema.n_averaged.fill_(checkpoint["ema_steps"])
            saved, current = checkpoint.get("ema_decay"), getattr(ema, "decay", None)
            changed = saved is not None and current is not None and abs(saved - current) > 1e-12
            if changed and distributed.is_main():
                log.warning(
                    "the weights' average continues with decay %.6f where the checkpoint's "
                    "run had %.6f (trainer.ema_horizon is a share of the run's steps, and "
                    "trainer.max_epochs changed): the result will equal neither the "
                    "interrupted run nor a new run of this length",
                    current,
                    saved,
                )
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError) as err:
        raise ConfigError(
            f"trainer.resume={said(resume)}: {path} was saved by a different model or optimizer "
            f"config ({str(err).splitlines()[0]})"
        ) from err
    scheduler.load_state_dict(checkpoint["scheduler"])
    continue_schedule(scheduler, optimizer)
    scaler.load_state_dict(checkpoint["scaler"])
    saved_world, world = checkpoint.get("world_size", 1), distributed.world_size()
    if saved_world != world and distributed.is_main():
        log.warning(
            "resuming a run trained by %d process(es) with %d: the global batches are the same, "
            "but dropout and batch-norm statistics differ, so the result will not equal the "
            "uninterrupted run's",
            saved_world,
            world,
        )
    if path.parent.resolve() != ckpt_dir.resolve():  # continuing into a new folder: bring it along
        distributed.decided(_copy_checkpoints, path.parent, ckpt_dir)
    log.info("resumed from %s after epoch %d", path, checkpoint["epoch"])
    return {
        key: checkpoint[key]
        for key in ("epoch", "best_metric", "best_epoch", "stale_epochs", "history")
    }
