"""`key=value` command lines of the verbs that take no training overrides (predict, serve, export,
rerun, compare, report, measure, ensemble; check-data for its `check.*` keys), checked against each
verb's defaults: one clear error for a missing `=`, an unknown or repeated key, or a value that
does not parse."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medtrain.errors import ConfigError
from medtrain.values import names


def tool_args(argv: Sequence[str] | None, usage: str) -> tuple[list[str], int | None]:
    """A tool's arguments (`sys.argv[1:]` by default) and, when there is nothing to run, its exit
    status: 0 after printing `usage` for -h / --help / help, 2 after printing it to stderr when no
    argument is given."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] not in ("-h", "--help", "help"):
        return argv, None
    print(usage, end="", file=sys.stdout if argv else sys.stderr)
    return argv, 0 if argv else 2


def parse_key_values(
    argv: Sequence[str],
    defaults: Mapping[str, Any],
    text_keys: Sequence[str] = (),
    list_keys: Sequence[str] = (),
    aliases: Mapping[str, str] | None = None,
) -> DictConfig:
    """Read `key=value` arguments over `defaults`.

    Args:
        text_keys: taken as typed, never parsed as YAML (which would turn `true` or `no` into
            booleans, and a path into something else).
        list_keys: text lists, `[a,b]` or `a,b`.
        aliases: other spellings of a key (e.g. `hydra.run.dir` for `output`).

    Raises:
        ConfigError: an argument without `=`, an unknown or repeated key, or a value that does not
            parse.
    """
    aliases = dict(aliases or {})
    valid = ", ".join(defaults)
    given: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"expected key=value, got {arg!r}; valid keys: {valid}")
        key = aliases.get(key, key)
        if key not in defaults:
            raise ConfigError(f"unknown key {key!r}; valid keys: {valid}")
        if key in given:
            raise ConfigError(f"{key} is given twice")
        given[key] = value
    dotlist = []
    for key, value in given.items():
        if key in text_keys or key in list_keys:
            continue
        if value.lstrip().startswith("{"):
            # YAML reads "128:1" as the base-60 number 7681; "128: 1" is the mapping meant.
            value = re.sub(r":(?=\S)", ": ", value)
        dotlist.append(f"{key}={value}")
    try:
        parsed = OmegaConf.from_dotlist(dotlist)
    except Exception as err:  # YAML reports syntax errors with several exception types
        raise ConfigError(f"cannot parse {' '.join(dotlist)!r}: {err}".splitlines()[0]) from err
    cfg = OmegaConf.merge(OmegaConf.create(dict(defaults)), parsed)
    for key, value in given.items():
        if key in list_keys:
            cfg[key] = names(value)
        elif key in text_keys:
            cfg[key] = value
    return cfg
