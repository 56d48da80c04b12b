"""Checked values of command-line and config keys (whole numbers, true/false, lists of names):
each error names the key at fault and what it accepts."""

from __future__ import annotations

import math
from typing import Any

from medtrain.errors import ConfigError


def names(text: str) -> list[str]:
    """`[a,b]` or `a,b` as a list of names, quotes stripped."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [name.strip().strip("'\"") for name in text.split(",") if name.strip()]


def whole_number(
    value: Any, key: str, minimum: int | None = None, maximum: int | None = None
) -> int:
    """`value` of argument `key` as an int within [minimum, maximum] (YAML's true/false are not
    numbers here, although Python counts them as ints).

    Raises:
        ConfigError: naming the key and the allowed range.
    """
    low = -math.inf if minimum is None else minimum
    high = math.inf if maximum is None else maximum
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        if minimum is not None and maximum is not None:
            allowed = f" from {minimum} to {maximum}"
        elif minimum is not None:
            allowed = f" >= {minimum}"
        else:
            allowed = ""
        raise ConfigError(f"{key}={value!r} must be a whole number{allowed}")
    return value


def true_or_false(value: Any, key: str) -> bool:
    """`value` of argument `key`, which must be true or false."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")
    return value
