"""What a finished run's config may build: the allow-list of `_target_` paths, checked before
anything of a run folder is imported or instantiated.

A run folder is code. `predict`, `serve`, `export`, `ensemble`, `rerun`, `report` and resuming
rebuild objects by instantiating the `_target_` paths of the run's saved config
(`checkpoints/*.pt`, `.hydra/config.yaml`), and Hydra imports and calls whatever such a path
names: a `best.pt` whose config says `model: {_target_: os.system, _args_: [...]}` would run a
shell command. `weights_only=True` protects the tensors of a checkpoint, not its config.

`check_targets` walks the whole config (every `_target_` at any depth, in dicts and lists,
`_partial_` nodes included) and allows:

1. every `_target_` of the shipped config groups (the YAML files of `medtrain.conf`);
2. the paths of earlier releases that `medtrain.engine.legacy` maps to an allowed one;
3. classes defined in `medtrain.*` modules that subclass `torch.nn.Module`,
   `torch.utils.data.Dataset`, `medtrain.tasks.base.Task`, `torch.optim.Optimizer`, a
   `torch.optim.lr_scheduler` scheduler or an albumentations transform (`BasicTransform`,
   `BaseCompose`). Never a function: medtrain's own functions write files too
   (`medtrain.io.save_json`). Only paths starting with `medtrain.` are imported to find out:
   importing a module is itself running code;
4. the third-party classes of `THIRD_PARTY`: a class of the named kind found by `getattr` on one
   of these fixed modules (`torch.optim.AdamW`, `torch.nn.MSELoss`, `albumentations.CLAHE`,
   `monai.networks.nets.UNet`, `monai.losses.DiceLoss`, `monai.transforms.RandFlipd`), except
   `REFUSED`;
5. names trusted on purpose: the `trust=[...]` key of the commands that load a run and the
   environment variable `MEDTRAIN_TRUSTED_TARGETS` (comma-separated), each a full name
   (`my_models.TinyNet`) or a module prefix ending in `.` (`my_pkg.`).

It also refuses an interpolated `_target_` (the check must see the name that is built), a
resolver interpolation other than `SAFE_RESOLVERS` (a stored config is resolved, so a saved run
never needs one, while `${oc.env:SECRET}` would read a secret into `/info` or a report; trust the
resolver's name, e.g. `trust=[oc.env]`, to allow it) and the top-level keys `hydra` and
`defaults` (in `.hydra/config.yaml` they would choose a rerun's launcher, logging handlers or
callbacks; a saved run never holds them).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import GrammarParseError
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser
from omegaconf.grammar_parser import parse

from medtrain.engine.legacy import current_target
from medtrain.errors import ConfigError

TRUST_ENV = "MEDTRAIN_TRUSTED_TARGETS"
# Resolvers that read nothing but the clock and Hydra's own settings.
# `oc.select` reads another key of the same config, with a default (a model's `spatial_dims`
# follows the data's): nothing outside the config.
SAFE_RESOLVERS = frozenset({"now", "hydra", "oc.select"})
# Keys of a saved config that only steer Hydra's composition (a rerun composes .hydra/config.yaml).
HYDRA_KEYS = ("hydra", "defaults")
# Module -> what a class named there must subclass (the `_BASES` names below), for rule 4.
THIRD_PARTY = {
    "torch.optim": "optimizer",
    "torch.optim.lr_scheduler": "scheduler",
    "torch.nn": "loss",
    "albumentations": "transform",
    "monai.networks.nets": "module",
    "monai.losses": "module",
    "monai.transforms": "volume_transform",
}
# Classes of those modules that fetch and run code when built (torch.hub).
REFUSED = frozenset({"monai.losses.PerceptualLoss"})
DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
URL = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")  # a value naming something to download
SHOWN_AT_MOST = 5  # refusals named in one message


def _monai_transform() -> type:
    """MONAI's transform base (3D augmentation pipelines), imported only when a check needs it."""
    from monai.transforms import Transform

    return Transform


@functools.cache
def _bases() -> dict[str, tuple[type, ...]]:
    """The base classes of rules 3 and 4 (imported here: albumentations only when needed)."""
    import torch
    from albumentations.core.composition import BaseCompose
    from albumentations.core.transforms_interface import BasicTransform

    from medtrain.tasks.base import Task

    schedulers = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    return {
        "optimizer": (torch.optim.Optimizer,),
        "scheduler": schedulers,
        "loss": (torch.nn.modules.loss._Loss,),
        "transform": (BasicTransform, BaseCompose),
        "volume_transform": (_monai_transform(),),
        "module": (torch.nn.Module,),
        "medtrain": (
            torch.nn.Module,
            torch.utils.data.Dataset,
            Task,
            torch.optim.Optimizer,
            *schedulers,
            BasicTransform,
            BaseCompose,
        ),
    }


@functools.cache
def shipped_targets() -> frozenset[str]:
    """Every `_target_` named in the YAML files of the shipped config groups (`medtrain.conf`),
    read once."""
    found: set[str] = set()

    def visit(folder) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                visit(entry)
            elif entry.name.endswith(".yaml"):
                for document in yaml.safe_load_all(entry.read_text()):
                    found.update(v for _, v in _targets(document) if isinstance(v, str))

    visit(files("medtrain.conf"))
    return frozenset(found)


def _targets(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(key path, value) of every `_target_` in nested dicts and lists."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield where, value
            else:
                yield from _targets(value, where)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _targets(value, f"{path}[{index}]")


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(key path, value) of every string value in nested dicts and lists."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node


def configured_targets(cfg: Any) -> list[str]:
    """The `_target_` names of a config (e.g. the one being trained: what its user composed)."""
    return [v for _, v in _targets(_plain(cfg)) if isinstance(v, str) and DOTTED.fullmatch(v)]


def trusted_names(trust: Sequence[str] = ()) -> tuple[str, ...]:
    """`trust` and the names of `MEDTRAIN_TRUSTED_TARGETS`, checked.

    Raises:
        ConfigError: an entry that is neither a dotted name nor a prefix ending in `.`.
    """
    given = [str(n).strip() for n in trust]
    from_env = [n.strip() for n in os.environ.get(TRUST_ENV, "").split(",") if n.strip()]
    for source, entries in (("trust", given), (TRUST_ENV, from_env)):
        for name in entries:
            if not DOTTED.fullmatch(name.removesuffix(".")):
                raise ConfigError(
                    f"{source}: {name!r} is neither a dotted name (my_models.TinyNet) nor a "
                    "module prefix ending in '.' (my_pkg.)"
                )
    return (*given, *from_env)


def _is_trusted(name: str, trusted: Sequence[str]) -> bool:
    return any(name == t or (t.endswith(".") and name.startswith(t)) for t in trusted)


def is_allowed(target: str, trust: Sequence[str] = ()) -> bool:
    """Whether a run folder may build `target` (the rules of this module's docstring). Imports
    nothing but `medtrain.*` modules and the fixed modules of `THIRD_PARTY`."""
    return _allowed(target, trusted_names(trust))


def _allowed(target: str, trusted: Sequence[str]) -> bool:
    current = current_target(target)
    if _is_trusted(target, trusted) or _is_trusted(current, trusted):
        return True
    shipped = shipped_targets()
    if target in shipped or current in shipped:
        return True
    if not DOTTED.fullmatch(current) or any(p.startswith("_") for p in current.split(".")):
        return False  # private names, `__main__` and the like are never built from a run
    if current.startswith("medtrain."):
        return _is_medtrain_class(current)
    return _is_listed_class(current)


def _is_medtrain_class(path: str) -> bool:
    """Rule 3: a class defined in a `medtrain.*` module, of one of the kinds above."""
    parts = path.split(".")
    for k in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for name in parts[k:]:
            obj = getattr(obj, name, None)
        return (
            inspect.isclass(obj)
            and (obj.__module__ == "medtrain" or obj.__module__.startswith("medtrain."))
            and issubclass(obj, _bases()["medtrain"])
        )
    return False


def _is_listed_class(path: str) -> bool:
    """Rule 4: a class of `THIRD_PARTY`'s kind, found on one of its fixed modules."""
    module, _, name = path.rpartition(".")
    if module not in THIRD_PARTY or path in REFUSED:
        return False
    try:
        obj = getattr(importlib.import_module(module), name, None)
    except ImportError:  # e.g. MONAI not installed: nothing of it can be built anyway
        return False
    return inspect.isclass(obj) and issubclass(obj, _bases()[THIRD_PARTY[module]])


def _resolvers(text: str) -> list[str]:
    """The names of the resolvers a string's interpolations call (`oc.env` for
    `${oc.env:HOME}`); `?` for a name that is itself interpolated or a string OmegaConf cannot
    parse."""
    try:
        tree = parse(text)
    except GrammarParseError:
        return ["?"]
    names, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, OmegaConfGrammarParser.InterpolationResolverContext):
            name = node.resolverName()
            names.append("?" if name.interpolation() else name.getText())
        stack.extend(getattr(node, "children", None) or [])
    return names


def _plain(cfg: Any) -> Any:
    """A config as plain containers, interpolations left as written (nothing is resolved)."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=False)
    return cfg


def refusals(cfg: Any, trust: Sequence[str] = ()) -> list[tuple[str, str, str]]:
    """What a run's config may not build or resolve: (key path, value, name to trust) for each
    refused `_target_`, resolver, Hydra key or URL; empty when everything is allowed."""
    cfg = _plain(cfg)
    trusted = trusted_names(trust)
    found = []
    if isinstance(cfg, Mapping):
        found += [(k, "(Hydra's settings)", "") for k in HYDRA_KEYS if k in cfg]
    for key, value in _targets(cfg):
        if not isinstance(value, str) or "${" in value or not DOTTED.fullmatch(value):
            found.append((key, repr(value), ""))  # only a name written out can be checked
        elif not _allowed(value, trusted):
            found.append((key, repr(value), value))
    for key, text in _strings(cfg):
        if URL.match(text):  # e.g. MONAI's `pretrained_url`: a loaded run must not fetch
            found.append((key, repr(text), ""))
            continue
        if "${" not in text or key.rpartition(".")[2] == "_target_":
            continue  # interpolated targets are refused above
        for name in _resolvers(text):
            if name not in SAFE_RESOLVERS and not (name != "?" and _is_trusted(name, trusted)):
                found.append((key, repr(text), "" if name == "?" else name))
    return found


def check_targets(
    cfg: Any, source: str | Path, trust: Sequence[str] = (), option: str = "trust"
) -> None:
    """Refuse a run's config (plain dicts and lists, or an OmegaConf node) that names anything
    outside the allow-list, before anything of it is imported or built.

    Args:
        source: the file the config came from, named in the message.
        trust: names (`my_models.TinyNet`) or module prefixes ending in `.` (`my_pkg.`) to allow
            besides the allow-list, with those of `MEDTRAIN_TRUSTED_TARGETS`.
        option: the command's key that takes `trust` (`cv.trust` for `medtrain cv`), named in
            the message.

    Raises:
        ConfigError: naming each refused key path, its value and the file, and how to trust it.
    """
    found = refusals(cfg, trust)
    if not found:
        return
    shown = "; ".join(f"{key}={value}" for key, value, _ in found[:SHOWN_AT_MOST])
    more = len(found) - SHOWN_AT_MOST
    shown += f"; ... ({more} more)" if more > 0 else ""
    names = list(dict.fromkeys(name for _, _, name in found if name))
    why = (
        f"{source}: refused {shown}. A run folder is code: loading it imports and calls what its "
        "_target_ keys name, so medtrain builds only the classes of its own config groups, its "
        "own models, datasets, tasks, losses and transforms, and torch, albumentations and MONAI "
        "classes of those kinds; resolver interpolations (${name:...}) and the keys hydra and "
        "defaults are refused too (see 'Run folders are code' in docs/deployment.md)."
    )
    if names:
        listed = ",".join(names)
        why += (
            f" If you trust this run and the code it names, allow it on purpose: {option}=[{listed}]"
            f" (or the environment variable {TRUST_ENV}={listed})."
        )
    else:
        why += " A saved run never holds these; rewrite them, if you trust the run."
    raise ConfigError(why)


def check_target(target: Any, key: str, source: str | Path, trust: Sequence[str] = ()) -> None:
    """`check_targets` for one `_target_` stored on its own (e.g. `ensemble.json`'s
    `task_target`), named `key` in the message."""
    found = refusals({"_target_": target}, trust)
    if found:
        name = found[0][2]
        hint = f": trust=[{name}] or {TRUST_ENV}={name} allows it on purpose" if name else ""
        raise ConfigError(
            f"{source}: refused {key}={target!r}, which is outside medtrain's allow-list of what "
            f"a run folder may build (see 'Run folders are code' in docs/deployment.md){hint}"
        )


def check_run_folder(run_dir: str | Path, trust: Sequence[str] = ()) -> None:
    """`check_targets` on the configs a run folder holds: `.hydra/config.yaml` and the config in
    `checkpoints/best.pt` (each when present and readable: an unreadable one is reported by
    whatever reads it next)."""
    from medtrain.io import load_checkpoint  # torch: only when a folder is checked

    run_dir = Path(run_dir)
    saved = run_dir / ".hydra" / "config.yaml"
    if saved.is_file():
        try:
            config = OmegaConf.load(saved)
        except Exception:  # YAML reports syntax errors with several exception types
            config = None
        if config is not None:
            check_targets(config, saved, trust)
    best = run_dir / "checkpoints" / "best.pt"
    if best.is_file():
        try:
            config = load_checkpoint(best).get("config")
        except Exception:  # not a medtrain checkpoint, or unreadable
            config = None
        if config is not None:
            check_targets(config, best, trust)
