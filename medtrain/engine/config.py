"""Checks of the composed config that Hydra cannot do, run before anything is built or trained.

Hydra already rejects a misspelt option (listing the valid ones) and an unknown key (struct mode);
this module rejects values that would only fail later, or silently do the wrong thing.
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import logging
import re
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from medtrain.data.loading import batch_length
from medtrain.engine import distributed, schedulers
from medtrain.engine.acceleration import (
    PRECISIONS,
    compile_options,
    memory_format,
    resolve_precision,
)
from medtrain.engine.build import target_class
from medtrain.engine.config_files import check_yaml_syntax, own_config_folders
from medtrain.engine.legacy import upgrade_targets
from medtrain.errors import ConfigError, LossMismatch
from medtrain.models import call_model, input_keys

log = logging.getLogger(__name__)

# The config groups ship inside the package (the repository's conf/ folder, see pyproject.toml).
CONFIG_MODULE = "medtrain.conf"
CONF = Path(str(importlib.resources.files(CONFIG_MODULE)))
IGNORED_DIRS = {"hydra", "__pycache__"}


def choice(group: str) -> str:
    """The option chosen for a config group (e.g. `medmnist` for `dataset`), or '?' outside Hydra."""
    try:
        return str(HydraConfig.get().runtime.choices.get(group, "?"))
    except ValueError:
        return "?"


def require(ok: bool, key: str, value, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {rule}")


def resolve_device(spec: str, key: str = "trainer.device") -> torch.device:
    """`auto` picks CUDA when available; `cuda` / `cuda:N` must exist on this machine. `key`: the
    argument named in errors (`device` for the verbs that take one)."""
    spec = str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    require(match is not None, key, spec, "choose one of auto, cpu, cuda, cuda:N")
    require(
        torch.cuda.is_available(),
        key,
        spec,
        f"CUDA is not available on this machine; use {key}=cpu or auto",
    )
    index = int(match.group(1) or 0)
    require(
        index < torch.cuda.device_count(),
        key,
        spec,
        f"this machine has {torch.cuda.device_count()} CUDA device(s)",
    )
    return torch.device(spec)


def validate(cfg: DictConfig) -> torch.device:
    """Check values (learning rate, batch size, epochs, device, precision, data path ...).

    Returns:
        The device to train on.
    """
    upgrade_targets(cfg)  # runs saved by earlier releases name classes by their old paths
    try:
        check_task(cfg)  # first: a task/dataset mismatch also breaks interpolations between them
        wrong_loss = None
    except LossMismatch as err:  # raised last, so that check-data knows the rest is sound
        wrong_loss = err
    try:
        missing = OmegaConf.missing_keys(cfg)
        OmegaConf.resolve(OmegaConf.create(OmegaConf.to_container(cfg)))
    except Exception as err:  # an interpolation that points nowhere
        if "num_features" in str(err):
            raise ConfigError(
                f"model={choice('model')} has a tabular branch, but dataset={choice('dataset')} has "
                "no tabular columns: use dataset=manifest with dataset.tabular_columns=[...] or "
                "dataset=synthetic_clinical, or drop the branch (~model@model.branches.tabular)"
            ) from None
        key = getattr(err, "full_key", None)  # the key that holds the interpolation
        raise ConfigError(f"{key or 'config'}: {err}".splitlines()[0]) from None
    if missing:
        first = sorted(missing)[0]
        hint = " (the file or folder to read)" if first == "dataset.path" else ""
        raise ConfigError(
            f"{first} is required for {first.split('.')[0]}={choice(first.split('.')[0])}"
            f" but not set{hint}: add {first}=<value> to the command line"
        )
    require(
        isinstance(cfg.seed, int) and cfg.seed >= 0, "seed", cfg.seed, "must be an integer >= 0"
    )
    lr = cfg.optimizer.get("lr")
    require(isinstance(lr, (int, float)) and lr > 0, "optimizer.lr", lr, "must be a number > 0")
    check_optimizer_settings(cfg.optimizer)
    schedulers.check_settings(cfg.get("scheduler"), lr)
    t = cfg.trainer
    for key in ("batch_size", "eval_batch_size", "max_epochs", "accumulate_grad_batches"):
        require(
            isinstance(t[key], int) and t[key] >= 1,
            f"trainer.{key}",
            t[key],
            "must be an integer >= 1",
        )
    require(
        t.num_workers == "auto" or (isinstance(t.num_workers, int) and t.num_workers >= 0),
        "trainer.num_workers",
        t.num_workers,
        "must be an integer >= 0 or auto",
    )
    every = t.get("val_every", 1)
    require(
        isinstance(every, int) and not isinstance(every, bool) and every >= 1,
        "trainer.val_every",
        every,
        "must be a whole number of epochs >= 1",
    )
    for key in ("check_data", "report", "augment_on_device", "val_tta", "resume_on_changed_data"):
        value = t.get(key, True)
        require(isinstance(value, bool), f"trainer.{key}", value, "must be true or false")
    if "loss_mean" in t:  # a run saved before the key: batch means (`MEANT_WITHOUT_KEY`)
        require(
            t.loss_mean in ("cases", "batches"),
            "trainer.loss_mean",
            t.loss_mean,
            "choose cases or batches",
        )
    duplicates = t.get("check_data_duplicates", "warn")
    require(
        duplicates in ("warn", "error"),
        "trainer.check_data_duplicates",
        duplicates,
        "choose warn or error",
    )
    ema, horizon = t.ema_decay, t.get("ema_horizon")
    require(ema is None or 0 < ema < 1, "trainer.ema_decay", ema, "must be null or in (0, 1)")
    require(
        horizon is None
        or (
            isinstance(horizon, int | float) and not isinstance(horizon, bool) and 0 < horizon <= 1
        ),
        "trainer.ema_horizon",
        horizon,
        "must be null or a share of the run's optimizer steps in (0, 1]",
    )
    require(
        ema is None or horizon is None,
        "trainer.ema_horizon",
        horizon,
        f"and trainer.ema_decay={ema} both set the moving average: set one, the other null",
    )
    clip, patience = t.gradient_clip_norm, t.early_stopping_patience
    require(clip is None or clip > 0, "trainer.gradient_clip_norm", clip, "must be null or > 0")
    require(
        patience is None or (isinstance(patience, int) and patience >= 1),
        "trainer.early_stopping_patience",
        patience,
        "must be null or an integer >= 1",
    )
    check_keys(cfg)
    distributed.check_settings(t)
    precision = str(t.precision)
    require(
        precision in PRECISIONS, "trainer.precision", t.precision, f"choose one of {PRECISIONS}"
    )
    device = resolve_device(t.device)
    compile_options(t.get("compile", False))
    memory_format(t)
    if precision == "auto":
        log.info("trainer.precision=auto: %s on %s", resolve_precision(precision, device), device)
    require(
        not (precision == "fp16" and device.type == "cpu"),
        "trainer.precision",
        precision,
        "fp16 needs CUDA; use 32 or bf16 on the CPU",
    )
    path = cfg.dataset.get("path")
    if path is not None:
        require(
            Path(path).exists(),
            "dataset.path",
            path,
            f"does not exist (relative paths start at {Path.cwd()})",
        )
    if wrong_loss is not None:
        raise wrong_loss
    check_task_settings(cfg)
    return device


def choices() -> dict[str, str]:
    """The option chosen for each config group ('?' for groups Hydra did not record)."""
    return {g: choice(g) for g in ("dataset", "model", "loss", "task", "optimizer", "scheduler")}


def check_task(cfg: DictConfig) -> None:
    """The dataset and the loss must fit the task (`Task.check_config`, which names the overrides
    that fix a mismatch); nothing is checked when the task class cannot be imported (reported when
    it is built)."""
    check_monitor(cfg)
    task = target_class(cfg.task)
    if task is None or not hasattr(task, "check_config"):
        return
    dataset = target_class(cfg.dataset)
    provides = getattr(dataset, "provides", None)
    task.check_config(cfg, None if provides is None else tuple(provides), choices())


@functools.cache
def packaged_keys() -> tuple[frozenset[str], frozenset[str]]:
    """The root keys of conf/train.yaml with its groups, and every key of conf/trainer/*.yaml
    (read once a process: every run's `validate` asks)."""
    import yaml

    groups = {p.name for p in CONF.iterdir() if p.is_dir() and p.name not in IGNORED_DIRS}
    root = set(yaml.safe_load((CONF / "train.yaml").read_text())) - {"defaults", "hydra"}
    trainer: set[str] = set()
    for path in (CONF / "trainer").glob("*.yaml"):
        trainer |= set(yaml.safe_load(path.read_text()) or {})
    return frozenset(root | groups), frozenset(trainer)


def check_keys(cfg: DictConfig) -> None:
    """Keys added by a file or by `+` that are a letter or two from one medtrain reads are refused,
    naming it: `trainer.max_epoch` in an experiment file, `+seeed=1` (they were kept silently and
    the run trained with the value they were meant to change). Other keys are one's own: a root
    key (`paths`, `seeds`, for interpolations) is kept, and a `trainer` key medtrain does not read
    (for one's own callbacks) is kept with a warning."""
    root, trainer = packaged_keys()
    for key in sorted(set(cfg.trainer) - trainer):
        close = near_miss(key, trainer, OmegaConf.to_container(cfg.trainer))
        if close:
            raise ConfigError(
                f"trainer.{key} is not a key medtrain reads: did you mean "
                f"trainer.{close}? (its keys: {', '.join(sorted(trainer))})"
            )
        log.warning("trainer.%s is not a key medtrain reads: kept for your own code", key)
    for key in sorted(set(cfg) - root):
        values = {k: cfg.get(k) for k in root if k in cfg} | {key: cfg.get(key)}
        close = near_miss(key, root, values, plurals=True)
        if close:
            raise ConfigError(
                f"{key} is not a key medtrain reads: did you mean {close}? (a root key of your "
                "own, for interpolations, is kept when it is not a letter or two from one of "
                "medtrain's)"
            )


def near_miss(key: str, known: frozenset[str], values: dict, plurals: bool = False) -> str | None:
    """The key of `known` that `key` misspells: as close as a typo (difflib's ratio 0.8), holding
    the same kind of value (a section, or a single value: `mode=fast` is not the `model` section),
    and with `plurals`, not its plural or singular (`seeds` beside `seed`: a root key's own)."""
    for close in difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.8):
        if plurals and key.rstrip("s") == close.rstrip("s"):
            continue
        section = isinstance(values.get(key), dict | DictConfig)
        if close not in values or section == isinstance(values.get(close), dict | DictConfig):
            return close
    return None


def check_task_settings(cfg: DictConfig) -> None:
    """The task's and the loss's own settings that the config alone decides (`task.tta`, and the
    task class's `check_settings`: the monitor's direction, a classification's threshold, a
    segmentation's connectivity, sizes, tiled inference and instance settings, a regression's
    grade range, target spread and cut points; the Huber loss's `delta`), so that a refused
    value stops the run before the data are read and anything is written, and `medtrain
    check-data` reports it. Values the data decide (class names, target statistics) are checked
    when the task is built, after the data check."""
    from medtrain.tasks.tta import check_tta

    loss = cfg.get("loss") or {}
    if loss.get("_target_") == "torch.nn.HuberLoss":  # torch checks it only in the first batch
        delta = loss.get("delta", 1.0)
        require(
            isinstance(delta, int | float) and not isinstance(delta, bool) and delta > 0,
            "loss.delta",
            delta,
            "must be a number > 0 (the error, in target standard deviations, where the loss turns "
            "from squared to absolute)",
        )
    if "tta" in cfg.task or "flip_tta" in cfg.task:
        check_tta(cfg.task.get("tta"), bool(cfg.task.get("flip_tta", False)))
    task = target_class(cfg.task)
    if task is not None and hasattr(task, "check_settings"):
        task.check_settings(cfg.task)


def check_optimizer_settings(optimizer: DictConfig) -> None:
    """The shipped optimizers' other settings, where torch would take nonsense or say so only
    once training starts: a weight decay >= 0, a momentum and betas in [0, 1) (SGD took a
    momentum of 2 and diverged without a word)."""

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    # A value of another type is named by the check of types when the optimizer is built.
    decay = optimizer.get("weight_decay")
    if number(decay):
        require(decay >= 0, "optimizer.weight_decay", decay, "must be >= 0")
    momentum = optimizer.get("momentum")
    if number(momentum):
        require(
            0 <= momentum < 1,
            "optimizer.momentum",
            momentum,
            "must be in [0, 1) (0.9 is usual); 1 or more makes the steps grow without end",
        )
    betas = optimizer.get("betas")
    if betas is not None:
        require(
            OmegaConf.is_list(betas)
            and len(betas) == 2
            and all(number(b) and 0 <= b < 1 for b in betas),
            "optimizer.betas",
            betas,
            "must be two numbers in [0, 1), e.g. [0.9, 0.999]",
        )


def check_monitor(cfg: DictConfig) -> None:
    """`task.monitor_mode` must be the way `task.monitor` improves, where its name says
    (`metric_direction`): `task.monitor=val/r2` with the regression default `min` kept the
    worst epoch's checkpoint without a word."""
    from medtrain.metrics.direction import metric_direction

    monitor, mode = cfg.task.get("monitor"), cfg.task.get("monitor_mode")
    named = f"task.monitor={monitor}"
    if monitor is None:  # the task's default metric, with the mode the config gives
        default = getattr(target_class(cfg.task), "default_monitor", None)
        monitor = default[0] if default else None
        named = f"task.monitor=null (the task's default, {monitor})"
    if not isinstance(monitor, str) or mode not in ("max", "min"):
        return  # the task's defaults, or a mode the task refuses by name
    wanted = metric_direction(monitor)
    if wanted is not None and wanted != mode:
        way = "higher" if wanted == "max" else "lower"
        raise ConfigError(
            f"{named} is better {way}, but task.monitor_mode={mode}: the best "
            f"checkpoint would be the worst epoch's; set task.monitor_mode={wanted}"
        )


def first_samples(train: Any) -> list[dict]:
    """The first two training samples when they stack into a batch (so that a loss that does not
    reduce over the batch shows it), else the first alone."""
    samples = [train[0]]
    if len(train) > 1:
        second = train[1]
        same = all(
            not torch.is_tensor(v) or v.shape == second[k].shape
            for k, v in samples[0].items()
            if k in second
        )
        samples += [second] if same else []
    return samples


def other_sizes(datasets: dict[str, Any], task: Any, sample: dict | None = None) -> str | None:
    """A warning when an image-level task's training augmentation changes the size of its images
    and evaluation's does not: a train-only crop of 24 px with 32-px evaluation trains the network
    at one scale and tests it at another (unless the task `trains_on_patches`, as segmentation
    does by design). The first training image is compared as augmented (`sample`, when read
    already) and read with the evaluation pipeline."""
    train, val = datasets["train"], datasets.get("val")
    if getattr(task, "trains_on_patches", False) or val is None or not len(train):
        return None
    if not hasattr(train, "transform") or not hasattr(val, "transform"):
        return None
    sample = train[0] if sample is None else sample
    if not torch.is_tensor(sample.get("image")):
        return None
    augmented = tuple(sample["image"].shape[1:])
    own = train.transform
    train.transform = val.transform
    try:
        evaluated = tuple(train[0]["image"].shape[1:])
    finally:
        train.transform = own
    if augmented == evaluated:
        return None
    sizes = (" x ".join(map(str, augmented)), " x ".join(map(str, evaluated)))
    return (
        f"training images are {sizes[0]} after augmentation.train, and {sizes[1]} as evaluated: "
        "the network is trained at one scale and tested at another; give augmentation.eval the "
        "same final size (e.g. a CenterCrop or Resize), or crop in training to the image size"
    )


def input_hint(model: torch.nn.Module, shapes: dict[str, tuple]) -> str:
    """Which input of a batch the model cannot take, when its layers show it: the images'
    channels against its first convolution's, the encoded clinical columns against every linear
    layer's width; else nothing."""
    convolutions = (m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd))
    takes = next((m.in_channels for m in convolutions), None)
    given = shapes["image"][1] if len(shapes.get("image", ())) > 1 else None
    if isinstance(takes, int) and given is not None and takes != given:
        return (
            f" (the images have {given} channel(s) and the model's first convolution takes "
            f"{takes}: set the model's in_channels to ${{dataset.in_channels}}: "
            "model.in_channels for medtrain's image models)"
        )
    features = shapes["tabular"][-1] if "tabular" in shapes else None
    widths = {m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)}
    if features is not None and features not in widths:
        return (
            f" (the tabular columns encode to {features} features, which no linear layer "
            "takes: set the tabular branch's num_features to ${dataset.num_features}: "
            "model.branches.tabular.num_features for model=fusion)"
        )
    return ""


def check_inputs_read(model: torch.nn.Module, columns: Any, target: str | None = None) -> None:
    """Clinical columns asked for (`dataset.tabular_columns`) must be read by the model: an image
    model would train without them while the run's config lists them.

    Raises:
        ConfigError: naming the columns, the model (its option, else `target`), its inputs and
            the fix.
    """
    keys = input_keys(model)
    named = choice("model")
    named = f"model._target_={target}" if named == "?" and target else f"model={named}"
    if columns and "tabular" not in keys:
        raise ConfigError(
            f"dataset.tabular_columns={list(columns)}: {named} reads only "
            f"{list(keys)}, so these clinical columns would be ignored; use model=fusion (images "
            "and the columns together), or leave dataset.tabular_columns empty"
        )


def check_model_output(
    model: torch.nn.Module, task: Any, batch: dict, loss_cfg: DictConfig | None = None
) -> None:
    """One forward pass on the first training samples (`first_samples`): the output must fit the task
    (`Task.check_output`), and the loss must take it and return one number, so that a wrong
    `model=` or `loss=` is named here instead of failing inside the first epoch. A loss's error
    that names one of its settings (`loss_cfg`, set to a value) is said of that setting."""
    was_training = model.training
    model.eval()
    shapes = {k: tuple(v.shape) for k, v in batch.items() if torch.is_tensor(v)}
    try:
        with torch.no_grad():
            out = call_model(model, batch)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(
            f"model={choice('model')} cannot take the batch {shapes}: {err}"
            f"{input_hint(model, shapes)}"
        ) from err
    finally:
        model.train(was_training)
    first = out[0] if isinstance(out, (tuple, list)) else out
    task.check_output(first, choice("model"))
    kind = type(task.loss_fn)
    named = f"loss._target_={kind.__module__}.{kind.__qualname__}"
    named = named if choice("loss") == "?" else f"loss={choice('loss')} ({named})"
    try:
        with torch.no_grad():
            loss = task.loss(out, batch)
    except ConfigError:
        raise
    except Exception as err:
        settings = [
            k
            for k, v in (loss_cfg or {}).items()
            if not str(k).startswith("_") and v is not None and re.search(rf"\b{k}\b", str(err))
        ]
        if settings:  # torch's label_smoothing=1.5 error is of the value, not of any shape
            value = OmegaConf.select(loss_cfg, settings[0])
            raise ConfigError(f"loss.{settings[0]}={value!r}: {err} ({named})") from err
        targets = {k: v for k, v in shapes.items() if k not in ("image", "tabular")}
        raise ConfigError(
            f"{named} cannot take the model's output {tuple(first.shape)} and the "
            f"batch's targets {targets}: {err}"
        ) from err
    # With two samples a loss per sample shows (a batch of one cannot tell); (1,) trains too.
    if not torch.is_tensor(loss) or loss.numel() != 1:
        shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
        raise ConfigError(
            f"{named} returns {shape} for a batch of {batch_length(batch)}, not one number: a loss must "
            "reduce over the batch (reduction='mean')"
        )


def check_against_data(cfg: DictConfig) -> None:
    """Checks that need what the datasets inferred (classes, channels, label type); run before the
    model is built, so that a mismatch is reported by key instead of failing inside torch."""
    data, loss = cfg.dataset, cfg.loss
    weight = loss.get("weight")
    if str(loss.get("_target_", "")).endswith(".DiceCELoss") and type(weight) in (int, float):
        raise ConfigError(  # MONAI's DiceCELoss slices it: "'float' is not subscriptable"
            f"loss.weight={weight}: give one value per class, background first "
            f"({data.num_classes} values), or null"
        )
    for key in ("class_weights", "pos_weight", "alpha", "weight"):
        values = loss.get(key)
        if not OmegaConf.is_list(values):  # a scalar (MONAI focal alpha) applies to every class
            continue
        if len(values) != data.num_classes:
            raise ConfigError(
                f"loss.{key} has {len(values)} values for {data.num_classes} classes; "
                "give one per class or null"
            )
        if values is not None and min(values) < 0:
            raise ConfigError(f"loss.{key}={list(values)}: weights must be >= 0")
    task = target_class(cfg.task)
    wrong_loss = None
    if task is not None and hasattr(task, "check_against_data"):
        try:
            task.check_against_data(cfg)
        except LossMismatch as err:  # raised last, as by `validate`
            wrong_loss = err
    norm = data.get("normalize") or {}
    for key in ("mean", "std"):
        values = norm.get(key)
        if norm.get("mode", "fixed") == "fixed" and values is not None:
            require(
                len(values) in (1, data.in_channels),
                f"dataset.normalize.{key}",
                list(values),
                f"give 1 value or {data.in_channels} (one per channel)",
            )
    if wrong_loss is not None:
        raise wrong_loss


def unknown_key_hint(args: list[str], saved_config: bool = False) -> str | None:
    """After Hydra refused the command line: for each `a.b=value` (or `a=value`) whose key does not
    exist, name the keys that do and the closest one, so a typo is fixed without reading YAML files.
    None for a saved config (`--config-name`), whose keys are not conf/train.yaml's."""
    if saved_config:
        return None
    known_groups = {p.name for p in CONF.iterdir() if p.is_dir() and p.name not in IGNORED_DIRS}
    # A config folder of the user's (hydra.searchpath) adds its options to the groups.
    searchpath = [a for a in args if a.lstrip("+").startswith("hydra.searchpath=")]
    overrides = [
        a
        for a in args
        if "=" in a
        and not a.startswith(("-", "+", "~", "hydra.", "hydra/"))
        and "/" not in a.split("=")[0]  # a group path (model/..., hydra/launcher): Hydra's own
    ]
    groups = searchpath + [a for a in overrides if a.split("=")[0] in known_groups]
    keys = [a.split("=")[0] for a in overrides if a.split("=")[0] not in known_groups]
    if not keys:
        return None
    try:
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=groups)
    except Exception:  # the group choices themselves are wrong: Hydra's message already says so
        return None
    lines = []
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        # `in` is false for a key whose value is missing (`path: ???`): the key exists all the same
        if isinstance(node, DictConfig) and leaf not in set(node):
            valid = sorted({str(k) for k in node} | (known_groups if not parent else set()))
            close = difflib.get_close_matches(leaf, valid, n=1)
            guess = f" Did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
            where = f"Keys of '{parent}'" if parent else "Top-level keys and groups"
            lines.append(f"medtrain: unknown key '{key}'. {where}: {', '.join(valid)}.{guess}")
    return "\n".join(lines) or None


def override_value(text: str) -> str:
    """Quote a value for Hydra's override grammar unless it is a plain path (for verbs that start
    training with a folder or device on the command line: rerun, cv)."""
    if re.fullmatch(r"[\w./:+-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def bare_key(override: str) -> str:
    """The key an override sets or deletes, without Hydra's `+`, `++` or `~`."""
    return override.partition("=")[0].lstrip("+~")


def passed_override_key(arg: str, own: str, label: str) -> str:
    """The bare key of an argument that a verb passes on to training (`medtrain cv`, `sweep`):
    `key=value` or a Hydra deletion, `~key` / `~key=value`.

    Raises:
        ConfigError: neither form (a flag such as `--config-dir` named with the override that
            does its work), or a deletion of the verb's own `own.*` keys.
    """
    key = arg.partition("=")[0]
    hint = (
        " (your config folder: 'hydra.searchpath=[file://FOLDER]')" if arg.startswith("-") else ""
    )
    if arg.startswith("-") or not ("=" in arg or arg.startswith("~")):
        raise ConfigError(f"expected key=value or ~key, got {arg!r}{hint}")
    if key.startswith("~") and bare_key(arg).split(".")[0] == own:
        raise ConfigError(f"{arg!r}: {label} keys cannot be deleted; leave {key[1:]} out instead")
    return bare_key(arg)


def compose_config(overrides: list[str]) -> DictConfig:
    """Compose conf/train.yaml with training's overrides, as `medtrain train` would (for tools
    that take training's command line: the sweeper and the data check)."""
    check_yaml_syntax(own_config_folders(overrides))  # Hydra's own report names no file
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    except Exception as err:  # Hydra reports a bad override with several exception types
        message = (str(err).strip() or repr(err)).splitlines()[0]
        hint = unknown_key_hint(list(overrides))
        raise ConfigError(message + (f"\n{hint}" if hint else "")) from err
    HydraConfig.instance().set_config(
        cfg
    )  # ${now:...} and the chosen groups resolve as in training
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
