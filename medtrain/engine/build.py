"""The one place that turns config nodes into objects (nothing else calls `instantiate`), and so the
one place where the `_target_` paths of runs saved by earlier releases are mapped to today's
(`medtrain.engine.legacy`)."""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import pkgutil
import re
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from torch import nn

from medtrain.data.base import SPLITS
from medtrain.data.folds import fold_datasets
from medtrain.data.loading import EpochLoader, auto_workers, last_batch_dropped, make_loader
from medtrain.data.transforms import Normalize
from medtrain.data.volume_transforms import check_augmentation, seeded_augment
from medtrain.engine import distributed
from medtrain.engine.legacy import upgrade_targets
from medtrain.engine.schedulers import optimizer_steps
from medtrain.errors import ConfigError, MedtrainError

log = logging.getLogger(__name__)


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """Instantiate `node` (the config at `key`), reporting medtrain's own errors without Hydra's
    wrapper. `_target_` paths of earlier releases are rewritten in `node` first."""
    upgrade_targets(node)
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if target is not None and locate(str(target)) is None:
        raise ConfigError(f"{key}._target_={target}: {why_not_importable(str(target))}")
    check_nested(node, key)
    try:
        return instantiate(_without_null_leftovers(node), **kwargs, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        while (
            cause is not None
            and not isinstance(cause, MedtrainError)
            and cause.__cause__ is not None
        ):
            cause = cause.__cause__
        if isinstance(cause, MedtrainError):
            raise cause from None
        wrong = wrong_types(locate(str(node.get("_target_"))), node, key)
        if wrong and isinstance(cause, (TypeError, ValueError)):
            raise ConfigError(f"{'; '.join(wrong)} ({cause})") from err
        invalid = _validation_errors(str(err), node)
        if invalid:  # e.g. albumentations' pydantic checks of a transform's arguments
            raise ConfigError("; ".join(invalid)) from err
        raise ConfigError(
            f"{key}: cannot build {node.get('_target_')}: {cause or err}{_unknown_keys_hint(node, key)}"
        ) from err


def nested_targets(node: Any, key: str) -> list[tuple[str, DictConfig]]:
    """(key, node) of every config node with a `_target_` inside `node` (not `node` itself), as
    a pipeline's transforms: `augmentation.train.transforms.0`."""
    found: list[tuple[str, DictConfig]] = []
    if isinstance(node, DictConfig):
        names: Any = [k for k in node if not str(k).startswith("_")]
    elif isinstance(node, ListConfig):
        names = range(len(node))
    else:
        return found
    for name in names:
        child = node._get_node(name)  # as written: interpolations are not resolved here
        path = f"{key}.{name}"
        if isinstance(child, DictConfig) and "_target_" in child:
            found.append((path, child))
        if isinstance(child, (DictConfig, ListConfig)):
            found += nested_targets(child, path)
    return found


def check_nested(node: Any, key: str) -> None:
    """Every `_target_` inside `node` names something importable, and an albumentations
    transform takes every argument it is given: albumentations warns about others and ignores
    them (a Rotate given `limitt: 20` rotated by its default 90 degrees, and the saved config
    said 20).

    Raises:
        ConfigError: naming the nested key, with the closest names there are.
    """
    for path, child in nested_targets(node, key):
        target = str(child.get("_target_"))
        if locate(target) is None:
            raise ConfigError(f"{path}._target_={target}: {why_not_importable(target)}")
        if not target.startswith("albumentations."):
            continue  # other classes refuse unknown arguments themselves
        unknown = list(_leftovers(child))
        if unknown:
            taken = sorted(_taken(child) or ())
            close = difflib.get_close_matches(unknown[0], taken, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            name = target.rsplit(".", 1)[-1]
            raise ConfigError(
                f"{path}.{unknown[0]}: {name} takes no argument {unknown[0]!r}{hint}; it takes "
                f"{', '.join(taken)}"
            )


_VALIDATION = re.compile(r"\n(\w[\w.]*)\n\s+(.+?) \[type=[^,\]]*, input_value=(.*?), input_type=")


def _validation_errors(message: str, node: DictConfig) -> list[str]:
    """`key=value: what is wrong (Class)` for each pydantic validation error in Hydra's message of a
    failed instantiation ("Error in call to target 'X': ... full_key: a.b.transforms0"), which
    otherwise spans several lines and names the key as Hydra spells list items."""
    found = _VALIDATION.findall(message.replace("\\n", "\n"))
    full_key = re.search(r"full_key: (\S+)", message)
    target = re.search(r"target '([\w.]+)'", message)
    if not found or full_key is None:
        return []
    where = re.sub(r"\[(\d+)\]", r".\1", full_key.group(1))  # transforms[1] as transforms.1
    root = node._get_root()
    if OmegaConf.select(root, where) is None:  # Hydra writes item k of `transforms` as transformsk
        fixed = re.sub(r"(?<=[A-Za-z_])(\d+)(?=\.|$)", r".\1", where)
        where = fixed if OmegaConf.select(root, fixed) is not None else where
    name = f" ({target.group(1).rsplit('.', 1)[-1]})" if target else ""
    return [f"{where}.{field}={value}: {what}{name}" for field, what, value in found]


# What a parameter's annotation (or, without one, its default) says its value must be.
_KINDS = {"float": "a number", "int": "a whole number", "bool": "true or false"}
_SEQUENCES = ("Sequence[", "list[", "tuple[", "Iterable[", "List[", "Tuple[")
# A list whose items have one of `_KINDS` (`Sequence[int]`, `tuple[float, ...]`).
_LIST_OF = {
    "float": "a list of numbers",
    "int": "a list of whole numbers",
    "bool": "a list of true or false",
}
# The types each such list's items may have: as typed (torch takes no 8.0 for a size of 8).
_ITEMS = {_LIST_OF["float"]: (int, float), _LIST_OF["int"]: int, _LIST_OF["bool"]: bool}


def _expected(parameter: inspect.Parameter) -> tuple[str | None, bool]:
    """(what the value must be: one of `_KINDS`' values, 'a list', or None for anything; whether
    None is allowed)."""
    annotation = parameter.annotation
    if annotation is not inspect.Parameter.empty:
        if not isinstance(annotation, str):  # not postponed: a class, or a generic's repr
            annotation = annotation.__name__ if isinstance(annotation, type) else str(annotation)
        text = annotation.replace(" ", "").replace("typing.", "").replace("collections.abc.", "")
        parts = [t for t in text.split("|") if t != "None"]
        optional = "None" in text.split("|") or text.startswith("Optional[")
        if len(parts) == 1:
            part = parts[0].removeprefix("Optional[").removesuffix("]") if optional else parts[0]
            if part in _KINDS:
                return _KINDS[part], optional or parameter.default is None
            if part.startswith(_SEQUENCES):
                inner = part.split("[", 1)[1].removesuffix("]").removesuffix(",...")
                return _LIST_OF.get(inner, "a list"), optional or parameter.default is None
        return None, True
    default = parameter.default
    if isinstance(default, bool):
        return _KINDS["bool"], False
    if isinstance(default, (int, float)):
        return _KINDS["float"], False
    return None, True


def _fits(value: Any, kind: str) -> bool:
    if kind == _KINDS["bool"]:
        return isinstance(value, bool)
    if kind == "a list":
        return isinstance(value, (list, tuple, ListConfig))
    if kind in _ITEMS:
        item = _ITEMS[kind]
        return isinstance(value, (list, tuple, ListConfig)) and all(
            isinstance(v, item) and (item is bool or not isinstance(v, bool)) for v in value
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return kind == _KINDS["float"] or float(value).is_integer()


def wrong_types(target: Any, values: Any, key: str) -> list[str]:
    """`key.name=value: must be a number` (a whole number, true or false, a list) for each value
    that the parameter of `target` (a class or function) it goes to cannot take, by the parameter's
    annotation or default; empty when all fit or `target` has no signature."""
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return []
    wrong = []
    for name, value in dict(values).items():
        parameter = parameters.get(str(name))
        if parameter is None or str(name).startswith("_"):
            continue
        kind, optional = _expected(parameter)
        if kind is None or (value is None and optional) or _fits(value, kind):
            continue
        wrong.append(f"{key}.{name}={value!r}: must be {kind}")
    return wrong


def _taken(node: DictConfig, bases: bool = False) -> set[str] | None:
    """The keyword arguments the class of `node` takes; None when it takes any (`**kwargs`) or
    its signature cannot be read. `bases`: a class's `**kwargs` are taken to go to its base
    classes' `__init__` (medtrain's datasets pass them on), whose parameters are added."""
    target = locate(str(node.get("_target_")))
    chain = (
        [c.__init__ for c in target.__mro__ if "__init__" in vars(c)]
        if bases and (inspect.isclass(target))
        else [target]
    )
    taken: set[str] = set()
    for function in chain:
        try:
            parameters = inspect.signature(function).parameters
        except Exception:  # nothing importable, or no signature
            return None
        taken |= {n for n, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return taken - {"self"}
    return None


def _leftovers(node: DictConfig, bases: bool = False) -> dict[str, Any]:
    """The keys of `node` (as written: a `???` or `${...}` is not null) that its class does not
    take, with their values; empty when the class takes any or has no readable signature."""
    taken = _taken(node, bases)
    if taken is None:
        return {}
    written = OmegaConf.to_container(node, resolve=False)
    return {k: v for k, v in written.items() if not str(k).startswith("_") and k not in taken}


def _without_null_leftovers(node: DictConfig) -> DictConfig:
    """`node`, or a resolved copy without the keys its class does not take whose value is null:
    they set nothing, and Hydra cannot delete a null key (`'~loss.class_weights'` fails with
    "does not exist"), so a `_target_` swapped on the command line would have no way out."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return node
    null = [k for k, v in _leftovers(node).items() if v is None]
    if not null:
        return node
    plain = OmegaConf.to_container(node, resolve=True)
    return OmegaConf.create({k: v for k, v in plain.items() if k not in null})


def _unknown_keys_hint(node: DictConfig, key: str) -> str:
    """Name every key of `node` its class does not take, e.g. `model.depth` left by an experiment
    written for `model=unet` when `model=basic_unet` is chosen."""
    unknown = [k for k, v in _leftovers(node, bases=True).items() if v is not None]  # null: dropped
    if not unknown:  # Hydra's message stands alone
        return ""
    removals = " ".join(f"'~{key}.{k}'" for k in unknown)
    them = "it" if len(unknown) == 1 else "them"
    return f". It does not take {', '.join(f'{key}.{k}' for k in unknown)}: remove {them} with {removals}"


def locate(path: str) -> Any:
    """The object a dotted path names (`package.module.Class`), importing the longest importable
    module prefix; None when there is none (quietly: Hydra's `get_class` logs an error first)."""
    parts = str(path).split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        except Exception:  # a module that raises while imported: `why_not_importable` says so
            return None
        try:
            for name in parts[k:]:
                obj = getattr(obj, name)
        except AttributeError:
            return None
        return obj
    return None


def why_not_importable(path: str) -> str:
    """Why a dotted `_target_` path names nothing: no such module, a module that fails to import
    (naming what it lacks), or a module without that name (with the closest names it has)."""
    parts = path.split(".")
    found, k = None, 0
    while k < len(parts):  # the deepest module of the path that imports
        module = ".".join(parts[: k + 1])
        try:
            found, k = importlib.import_module(module), k + 1
        except ModuleNotFoundError as err:
            if err.name == module:  # no such module: the rest are names in `found`
                break
            return f"importing {module} failed: {err}"  # it exists; something it imports not
        except Exception as err:  # a module that raises while imported
            return f"importing {module} failed: {type(err).__name__}: {err}"
    if found is None:
        return f"no module {parts[0]!r} (your own code: on PYTHONPATH, or installed in this environment)"
    for depth, name in enumerate(parts[k:]):
        if not hasattr(found, name):
            names = [n for n in dir(found) if not n.startswith("_")]
            if hasattr(found, "__path__"):  # a package: its modules, imported or not
                names += [m.name for m in pkgutil.iter_modules(found.__path__)]
            close = difflib.get_close_matches(name, sorted(set(names)), n=3, cutoff=0.5)
            hint = f" (closest: {', '.join(close)})" if close else ""
            return f"{'.'.join(parts[: k + depth])} has no {name!r}{hint}"
        found = getattr(found, name)
    return "not importable"


def target_class(node: DictConfig | None) -> type | None:
    """The class (or function) a config node's `_target_` names, old paths mapped; None when it
    names nothing importable (that is reported when the node is built)."""
    if node is None or node.get("_target_") is None:
        return None
    upgrade_targets(node)
    return locate(str(node.get("_target_")))


def task_class(cfg: DictConfig) -> type:
    """The task class of `cfg.task` (see `medtrain.tasks.base.Task`).

    Raises:
        ConfigError: `task._target_` names nothing importable.
    """
    cls = target_class(cfg.task)
    if cls is None:
        raise ConfigError(f"task: cannot import {cfg.task.get('_target_')!r}")
    return cls


def call(factory: Any, key: str, *args: Any, **kwargs: Any) -> Any:
    """Call a `_partial_` factory (optimizer, scheduler), reporting a bad argument under `key`
    (naming the key when its value has the wrong type)."""
    try:
        return factory(*args, **kwargs)
    except (TypeError, ValueError) as err:
        target = getattr(factory, "func", factory)
        wrong = wrong_types(target, getattr(factory, "keywords", None) or {}, key)
        raise ConfigError(f"{'; '.join(wrong)} ({err})" if wrong else f"{key}: {err}") from err


def build_datasets(
    cfg: DictConfig, empty_test: bool = False, empty_val: bool = False
) -> dict[str, torch.utils.data.Dataset]:
    """Build the train/val/test datasets and write what they inferred (channels, classes, label type,
    tabular width) back into `cfg.dataset`, so that `${dataset.num_classes}` and friends resolve for
    the model; then the task writes what the training split decides for it (`Task.fit_to_data`,
    e.g. regression target statistics) into `cfg.task`.

    An empty split is refused, except the test split of a cross-validation (`empty_test`, or a
    fold's run: `cv.fold`), which then judges by its out-of-fold predictions alone, and its val
    split (`empty_val`, or a fold's run: its folds are drawn from train and val together)."""
    task = task_class(cfg)
    extra = task.dataset_options(cfg)
    in_fold = (cfg.get("cv") or {}).get("fold") is not None
    may_be_empty = {"train": False, "val": empty_val or in_fold, "test": empty_test or in_fold}
    datasets = {}
    for split in SPLITS:
        stage = "train" if split == "train" else "eval"
        key = f"augmentation.{stage}"
        pipeline = build(cfg.augmentation[stage], key)
        transform = seeded_augment(pipeline, cfg.seed, augmentation_seeding(cfg), key)
        datasets[split] = build(cfg.dataset, "dataset", split=split, transform=transform, **extra)
        if len(datasets[split]) == 0 and not may_be_empty[split]:
            also = (
                f"; a cross-validation (medtrain cv) needs no {split} split"
                if split != "train"
                else ""
            )
            path = cfg.dataset.get("path")
            count = cfg.dataset.get(f"num_{split}")  # generated data
            source = f" ({path})" if path is not None else ""
            source += f" (dataset.num_{split}={count})" if count is not None else ""
            raise ConfigError(f"dataset: the {split} split is empty{source}{also}")
        check_augmentation(transform, spatial_dims(datasets[split]), choice("augmentation"))
    fold = (cfg.get("cv") or {}).get("fold")
    if fold is not None:  # a cross-validation fold: train and val regrouped, test as it is
        train, val = datasets["train"], datasets["val"]
        datasets["train"], datasets["val"] = fold_datasets(
            train, val, cfg.cv.folds_file, fold, train.transform, val.transform
        )
        for dataset in (train, datasets["train"]):  # said of the data's own val split
            getattr(dataset, "data_warnings", {}).pop("split_redrawn", None)
        refit = getattr(datasets["train"], "refit_tabular", None)
        if refit is not None:  # clinical columns standardized on the fold's training cases
            refit([datasets["val"], datasets["test"]])
    train = datasets["train"]
    if train.normalize.mode == "dataset":
        # Statistics of the training split only, written into the config (and so into best.pt and
        # every place that rebuilds the preprocessing): evaluation and serving use these numbers.
        mean, std = channel_statistics(train)
        for dataset in datasets.values():
            dataset.normalize = Normalize(**{**dataset.normalize.params, "mean": mean, "std": std})
        with open_dict(cfg):
            cfg.dataset.normalize.mean, cfg.dataset.normalize.std = mean, std
    with open_dict(cfg):
        for key in ("in_channels", "num_classes", "multilabel", "class_names"):
            cfg.dataset[key] = getattr(train, key)
        cfg.dataset.spatial_dims = spatial_dims(train)  # the model's default follows it
        if "num_features" in cfg.dataset:  # datasets with tabular columns declare the key
            cfg.dataset.num_features = train.num_features
        task.fit_to_data(cfg, train)
    return datasets


def augmentation_seeding(cfg: DictConfig) -> str:
    """`augmentation.seeding`; a config without the key (a run before release 0.3) seeded every
    transform with the sample's seed."""
    return str(cfg.augmentation.get("seeding", "per_transform"))


def channel_statistics(dataset: Any, max_images: int = 2000) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of a split's images as the model would see them
    before augmentation (windowed or scaled, channels matched, resized, inverted if asked), over up
    to `max_images` evenly spaced images."""
    count = len(dataset.ids)
    picks = np.unique(np.linspace(0, count - 1, min(count, max_images)).astype(int))
    total = total_sq = pixels = 0
    for index in picks:
        image = dataset.scaled(dataset.read_image(int(index)))
        image = dataset.normalize.inverted(image).astype(np.float64)
        flat = image.reshape(-1, image.shape[-1])
        total = total + flat.sum(0)
        total_sq = total_sq + (flat**2).sum(0)
        pixels += flat.shape[0]
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean**2, 0.0))
    return mean.tolist(), np.where(std > 1e-6, std, 1.0).tolist()


def build_loaders(cfg: DictConfig, datasets: dict, device: torch.device) -> dict[str, EpochLoader]:
    """One seeded loader per split; only the training loader shuffles.

    With several processes, `trainer.batch_size` stays the global batch (what one optimizer step
    averages, before accumulation): each process loads its share of every global batch. The
    evaluation batches (`trainer.eval_batch_size`, a memory setting) are dealt out whole.

    Raises:
        ConfigError: a global batch smaller than the number of processes.
    """
    trainer = cfg.trainer
    shard = (distributed.rank(), distributed.world_size())
    if trainer.batch_size < shard[1]:
        raise ConfigError(
            f"trainer.batch_size={trainer.batch_size} is the global batch, shared by {shard[1]} "
            f"processes: it must be at least {shard[1]}"
        )
    drop_last = {
        split: split == "train" and last_batch_dropped(len(dataset), trainer.batch_size)
        for split, dataset in datasets.items()
    }
    if trainer.get("augment_on_device", False) and spatial_dims(datasets["train"]) == 3:
        raise ConfigError(
            "trainer.augment_on_device=true augments 2D images on the device; volumes are "
            "augmented by the loader: set it to false"
        )
    if trainer.get("augment_on_device", False):  # runs saved before the key: the loader path
        from medtrain.data.device_batches import device_loaders

        return device_loaders(datasets, trainer, cfg.seed, device, drop_last, shard)
    workers = trainer.num_workers
    if workers == "auto":
        workers = auto_workers(device.type)
        log.info("trainer.num_workers=auto: %d loader processes", workers)
    loaders = {}
    for split, dataset in datasets.items():
        train = split == "train"
        batch_size = trainer.batch_size if train else trainer.eval_batch_size
        loaders[split] = make_loader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            seed=cfg.seed,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=drop_last[split],
            shard=shard,
            persistent=split != "test",  # train and val are iterated every epoch
        )
    return loaders


def spatial_dims(dataset: Any) -> int:
    """2 for images, 3 for volumes (a dataset's `spatial_dims`)."""
    return int(getattr(dataset, "spatial_dims", 2))


def choice(group: str) -> str:
    """The option chosen for a config group (`unet` for `model`), or '?' outside a Hydra run."""
    from medtrain.engine.config import choice as chosen  # config imports this module

    return chosen(group)


def check_spatial_dims(cfg: DictConfig, key: str = "model") -> None:
    """A 2D network on volumes, or a 3D one on images, is refused in one line naming the key
    (`key`: where `cfg.model` came from, for an ensemble's members).

    Raises:
        ConfigError: naming `model.spatial_dims`, or the model to choose.
    """
    data_dims = cfg.dataset.get("spatial_dims") or 2
    model = cfg.model
    if "members" in model:  # an average of finished runs (ModelAverage): each member's own
        for k, member in enumerate(model.members):
            alone = {"dataset": {"spatial_dims": data_dims}, "model": member}
            check_spatial_dims(OmegaConf.create(alone), f"model.members[{k}]")
        return
    if "spatial_dims" in model:
        dims = OmegaConf.select(cfg, "model.spatial_dims")
        if dims != data_dims:
            kind = "volumes (3D)" if data_dims == 3 else "2D images"
            raise ConfigError(
                f"{key}.spatial_dims={dims}, but the data are {kind}: set "
                f"{key}.spatial_dims={data_dims} (or leave it out: it follows the data)"
            )
    elif data_dims == 3 and "branches" not in model:
        raise ConfigError(
            f"model={choice('model')} ({model.get('_target_')}) is a 2D network, but the data are "
            "volumes (3D): choose model=resnet, cnn, unet or basic_unet, whose spatial_dims "
            "follows the data"
        )


def build_model(cfg: DictConfig) -> nn.Module:
    """The network of `cfg.model` (its channels and classes interpolated from the dataset),
    checked against the data's dimensions (`check_spatial_dims`)."""
    check_spatial_dims(cfg)
    return build(cfg.model, "model")


def build_task(cfg: DictConfig) -> Any:
    """The task object of `cfg.task`, holding the loss of `cfg.loss`."""
    return build(cfg.task, "task", loss=build(cfg.loss, "loss", **monai_class_weights(cfg.loss)))


def monai_class_weights(loss: DictConfig) -> dict[str, Any]:
    """A MONAI loss's `weight` as MONAI takes it, from medtrain's one value per class, background
    first (`check_against_data` holds the list to that). `DiceCELoss` wants a tensor of every class
    (it drops the background for its Dice term itself); `DiceLoss`, `DiceFocalLoss` and
    `FocalLoss` without the background want the foreground classes' values only."""
    target, weight = str(loss.get("_target_") or ""), loss.get("weight")
    if not target.startswith("monai.losses.") or not OmegaConf.is_list(weight):
        return {}
    values = [float(v) for v in weight]
    if target.rsplit(".", 1)[-1] == "DiceCELoss":
        return {"weight": torch.tensor(values)}
    if loss.get("include_background", True) is False:
        return {"weight": values[1:]}
    return {}


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return call(build(cfg.optimizer, "optimizer"), "optimizer", params=params)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, train_batches: int) -> Any:
    """The learning-rate schedule, sized by epochs and optimizer steps per epoch."""
    steps_per_epoch = optimizer_steps(train_batches, cfg.trainer.accumulate_grad_batches)
    factory = build(cfg.scheduler, "scheduler")
    taken = _taken(cfg.scheduler)  # None: takes anything, or no signature to read
    if taken is not None and not {"epochs", "steps_per_epoch"} <= taken:
        raise ConfigError(
            f"scheduler._target_={cfg.scheduler.get('_target_')}: a schedule is called with "
            "(optimizer, epochs=, steps_per_epoch=) and stepped after every optimizer step, so "
            "that its lengths do not depend on the data set's size; it does not take both "
            "epochs and steps_per_epoch: choose scheduler=cosine, multistep, onecycle, plateau "
            "or none, or write a function of those arguments (docs/configuration.md#schedules)"
        )
    return call(
        factory,
        "scheduler",
        optimizer,
        epochs=cfg.trainer.max_epochs,
        steps_per_epoch=steps_per_epoch,
    )


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers (what a checkpoint stores)."""
    return OmegaConf.to_container(cfg, resolve=True)
