"""The user's own config folders (`hydra.searchpath=[file://...]`, `--config-dir`): where they
are, and a YAML syntax check of their files before Hydra reads them (Hydra printed a traceback
of PyYAML's, or one line that named no file). Imports no torch: the command line checks them
before anything is loaded."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path

import yaml

from medtrain.errors import ConfigError

# How deep Hydra's config groups nest below a config folder (`hydra/job_logging/x.yaml`: 3).
GROUP_DEPTH = 3


def own_config_folders(overrides: Sequence[str], config_dir: str | None = None) -> list[Path]:
    """The folders a `hydra.searchpath=[file://...]` override adds, and `--config-dir`'s."""
    folders = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") == "hydra.searchpath":
            for entry in value.strip("[]").split(","):
                if entry.strip().startswith("file://"):
                    folders.append(Path(entry.strip().removeprefix("file://")))
    return folders + ([Path(config_dir)] if config_dir else [])


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader refusing a key given twice in one mapping, as Hydra's loader does
    (with a traceback; PyYAML alone keeps the last value)."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    first: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key != "<<" and isinstance(key, Hashable):
            if key in first:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {key!r} is given twice (first on line {first[key] + 1})",
                    key_node.start_mark,
                )
            first[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def check_yaml_syntax(folders: Sequence[Path]) -> None:
    """Every `.yaml` file of the config groups in `folders` must parse as YAML.

    Raises:
        ConfigError: naming the first file that does not, its line, and PyYAML's words.
    """
    for folder in folders:
        if not folder.is_dir():
            continue
        files = sorted(
            f for depth in range(GROUP_DEPTH) for f in folder.glob("*/" * depth + "*.yaml")
        )
        for path in files:
            try:
                yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
            except (OSError, UnicodeDecodeError) as err:
                raise ConfigError(f"{path}: cannot read it as a config file ({err})") from None
            except yaml.YAMLError as err:
                mark, opened = (
                    getattr(err, "problem_mark", None),
                    getattr(err, "context_mark", None),
                )
                where = f"{path} line {mark.line + 1}" if mark is not None else str(path)
                what = getattr(err, "problem", None) or str(err).splitlines()[0]
                context = getattr(err, "context", None)
                if context and opened is not None:  # where the unfinished part began
                    what = f"{what}, {context} on line {opened.line + 1}"
                raise ConfigError(f"{where}: not valid YAML ({what})") from None
