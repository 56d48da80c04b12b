"""Checks of the composed config that Hydra cannot do, run before anything is built or trained.

Hydra already rejects a misspelt option (listing the valid ones) and an unknown key (struct mode);
this module rejects values that would only fail later, or silently do the wrong thing.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from medtrain.errors import ConfigError

PRECISIONS = ("32", "bf16", "fp16")


def choice(group: str) -> str:
    """The option chosen for a config group (e.g. `medmnist` for `dataset`), or '?' outside Hydra."""
    try:
        return str(HydraConfig.get().runtime.choices.get(group, "?"))
    except ValueError:
        return "?"


def require(ok: bool, key: str, value, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {rule}")


def resolve_device(spec: str) -> torch.device:
    """`auto` picks CUDA when available; `cuda` / `cuda:N` must exist on this machine."""
    spec = str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    require(match is not None, "trainer.device", spec, "choose one of auto, cpu, cuda, cuda:N")
    require(
        torch.cuda.is_available(),
        "trainer.device",
        spec,
        "CUDA is not available on this machine; use trainer.device=cpu or auto",
    )
    index = int(match.group(1) or 0)
    require(
        index < torch.cuda.device_count(),
        "trainer.device",
        spec,
        f"this machine has {torch.cuda.device_count()} CUDA device(s)",
    )
    return torch.device(spec)


def validate(cfg: DictConfig) -> torch.device:
    """Check values (learning rate, batch size, epochs, device, precision, data path ...).

    Returns:
        The device to train on.
    """
    check_task(cfg)  # first: a task/dataset mismatch also breaks interpolations between them
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
        raise ConfigError(f"config: {err}".splitlines()[0]) from None
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
    t = cfg.trainer
    for key in ("batch_size", "eval_batch_size", "max_epochs", "accumulate_grad_batches"):
        require(
            isinstance(t[key], int) and t[key] >= 1,
            f"trainer.{key}",
            t[key],
            "must be an integer >= 1",
        )
    require(
        isinstance(t.num_workers, int) and t.num_workers >= 0,
        "trainer.num_workers",
        t.num_workers,
        "must be an integer >= 0",
    )
    check = t.get("check_data", True)
    require(isinstance(check, bool), "trainer.check_data", check, "must be true or false")
    duplicates = t.get("check_data_duplicates", "warn")
    require(
        duplicates in ("warn", "error"),
        "trainer.check_data_duplicates",
        duplicates,
        "choose warn or error",
    )
    ema = t.ema_decay
    require(ema is None or 0 < ema < 1, "trainer.ema_decay", ema, "must be null or in (0, 1)")
    clip, patience = t.gradient_clip_norm, t.early_stopping_patience
    require(clip is None or clip > 0, "trainer.gradient_clip_norm", clip, "must be null or > 0")
    require(
        patience is None or (isinstance(patience, int) and patience >= 1),
        "trainer.early_stopping_patience",
        patience,
        "must be null or an integer >= 1",
    )
    precision = str(t.precision)
    require(
        precision in PRECISIONS, "trainer.precision", t.precision, f"choose one of {PRECISIONS}"
    )
    device = resolve_device(t.device)
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
    return device


def _target_class(node: DictConfig):
    """The class a config node's `_target_` names, or None (a missing class is reported when built)."""
    try:
        return get_class(str(node.get("_target_")))
    except Exception:
        return None


def task_kind(node: DictConfig) -> str | None:
    """`classification`, `segmentation` or `regression`: what a dataset or task config's class
    serves (its `task` or `name` attribute), None when the class does not say."""
    cls = _target_class(node)
    return getattr(cls, "task", None) or getattr(cls, "name", None)


REGRESSION_LOSSES = (
    "torch.nn.MSELoss",
    "torch.nn.L1Loss",
    "torch.nn.HuberLoss",
    "torch.nn.SmoothL1Loss",
)
SEGMENTATION_LOSS_MODULES = ("monai.losses", "medtrain.segmentation_losses")


def check_task(cfg: DictConfig) -> None:
    """The dataset, task and loss must serve the same task: say which overrides fix a mismatch."""
    data, task = task_kind(cfg.dataset), task_kind(cfg.task)
    recipe = "task=segmentation model=unet loss=dice_ce (see experiment=synthetic_segmentation)"
    if data == "segmentation" and task not in (None, "segmentation"):
        raise ConfigError(
            f"dataset={choice('dataset')} holds masks for segmentation, but task={choice('task')}: "
            f"add {recipe}"
        )
    if task == "segmentation" and data not in (None, "segmentation"):
        raise ConfigError(
            f"task=segmentation needs masks, but dataset={choice('dataset')} holds one label per "
            "image: use dataset=seg_folder or dataset=synthetic_segmentation"
        )
    if task == "regression" and not getattr(_target_class(cfg.dataset), "regression_ready", True):
        raise ConfigError(
            f"task=regression needs a number per image, but dataset={choice('dataset')} holds class "
            "labels only: use dataset=manifest (a target column), medmnist or synthetic_clinical"
        )
    target = str(cfg.loss.get("_target_", ""))
    regression_loss = target in REGRESSION_LOSSES
    if task == "regression" and not regression_loss:
        raise ConfigError(
            f"loss={choice('loss')} does not compare values; for task=regression use loss=mse, l1 "
            "or huber"
        )
    if task in ("classification", "segmentation") and regression_loss:
        raise ConfigError(
            f"loss={choice('loss')} is a regression loss; task={task} needs a classification or "
            "segmentation loss (cross_entropy, bce, focal; dice_ce, dice, ...), or use task=regression"
        )
    if task == "segmentation" and target.startswith("medtrain.losses"):
        raise ConfigError(
            f"loss={choice('loss')} is a classification loss; for task=segmentation use loss=dice_ce, "
            "dice, dice_bce, dice_focal, tversky or seg_focal"
        )
    if task == "classification" and target.startswith(SEGMENTATION_LOSS_MODULES):
        raise ConfigError(
            f"loss={choice('loss')} is a segmentation loss; for task=classification use "
            "loss=cross_entropy, bce or focal"
        )


def check_model_output(model: torch.nn.Module, cfg: DictConfig, batch: dict) -> None:
    """One forward pass on a batch of one training sample: the output must fit the task (one row of
    outputs per image, or one map per image), so that a wrong `model=` is named here instead of
    failing inside a loss."""
    from medtrain.models import call_model  # models import errors only; kept local for clarity

    kind = task_kind(cfg.task)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = call_model(model, batch)
    except ConfigError:
        raise
    except Exception as err:
        shapes = {k: tuple(v.shape) for k, v in batch.items() if torch.is_tensor(v)}
        raise ConfigError(f"model={choice('model')} cannot take the batch {shapes}: {err}") from err
    finally:
        model.train(was_training)
    out = out[0] if isinstance(out, (tuple, list)) else out
    outputs = cfg.dataset.num_classes
    if kind == "segmentation" and out.ndim != 4:
        raise ConfigError(
            f"model={choice('model')} outputs {tuple(out.shape)}, one value per image; "
            "task=segmentation needs a mask per image: use model=unet or model=basic_unet"
        )
    if kind == "classification" and (out.ndim != 2 or out.shape[1] != outputs):
        raise ConfigError(
            f"model={choice('model')} outputs {tuple(out.shape)}; task=classification needs "
            f"(batch, {outputs}) for {outputs} classes: use model=cnn, resnet18, ... with "
            "num_classes=${dataset.num_classes}"
        )
    if kind == "regression" and (out.ndim != 2 or out.shape[1] != outputs):
        raise ConfigError(
            f"model={choice('model')} outputs {tuple(out.shape)}; task=regression needs "
            f"(batch, {outputs}), one output per target value: use model=cnn, resnet18, fusion, "
            "... with num_classes=${dataset.num_classes}"
        )


def check_against_data(cfg: DictConfig) -> None:
    """Checks that need what the datasets inferred (classes, channels, label type); run before the
    model is built, so that a mismatch is reported by key instead of failing inside torch."""
    data, loss, task = cfg.dataset, cfg.loss, cfg.task
    target = str(loss.get("_target_", ""))
    sigmoid_loss = target.endswith("BCEWithLogits")
    if data.multilabel and target.endswith("CrossEntropy"):
        raise ConfigError(
            "loss=cross_entropy cannot train multi-label targets "
            f"(dataset {data.get('path')}); use loss=bce or loss=focal"
        )
    if not data.multilabel and sigmoid_loss:
        raise ConfigError(
            "loss=bce trains independent sigmoid outputs, but the labels are one class per image; "
            "use loss=cross_entropy or loss=focal"
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
    if task_kind(task) == "regression":
        for key in ("target_names", "target_mean", "target_std"):
            values = task.get(key)
            if OmegaConf.is_list(values) and len(values) != data.num_classes:
                raise ConfigError(
                    f"task.{key} has {len(values)} values for {data.num_classes} predicted "
                    "value(s) per image; give one per value"
                )
    rule = task.get("threshold")
    if isinstance(rule, str) and not data.multilabel and data.num_classes > 2:
        raise ConfigError(
            f"task.threshold={rule!r} applies to binary and multi-label tasks; this dataset has "
            f"{data.num_classes} classes (the prediction is the most probable one): use 0.5"
        )
    sensitivity = task.get("target_sensitivity", 0.9)
    require(0 < sensitivity <= 1, "task.target_sensitivity", sensitivity, "must be in (0, 1]")
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


def unknown_key_hint(args: list[str]) -> str | None:
    """After Hydra refused the command line: for each `a.b=value` (or `a=value`) whose key does not
    exist, name the keys that do and the closest one, so a typo is fixed without reading YAML files."""
    if any(a.startswith("--config") for a in args):
        return None
    conf = Path(__file__).resolve().parents[1] / "conf"
    known_groups = {p.name for p in conf.iterdir() if p.is_dir() and p.name != "hydra"}
    overrides = [
        a
        for a in args
        if "=" in a
        and not a.startswith(("-", "+", "~", "hydra.", "hydra/"))
        and "/" not in a.split("=")[0]  # a group path (model/..., hydra/launcher): Hydra's own
    ]
    groups = [a for a in overrides if a.split("=")[0] in known_groups]
    keys = [a.split("=")[0] for a in overrides if a.split("=")[0] not in known_groups]
    if not keys:
        return None
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(str(conf), version_base="1.3"):
            cfg = compose("train", overrides=groups)
    except Exception:  # the group choices themselves are wrong: Hydra's message already says so
        return None
    lines = []
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig) and leaf not in node:
            valid = sorted({str(k) for k in node} | (known_groups if not parent else set()))
            close = difflib.get_close_matches(leaf, valid, n=1)
            guess = f" Did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
            where = f"Keys of '{parent}'" if parent else "Top-level keys and groups"
            lines.append(f"medtrain: unknown key '{key}'. {where}: {', '.join(valid)}.{guess}")
    return "\n".join(lines) or None


CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: list[str]) -> DictConfig:
    """Compose conf/train.yaml with training's overrides, as `python -m medtrain` would (for tools
    that take training's command line: the sweeper and the data check)."""
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
