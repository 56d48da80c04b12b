"""Speed options of the training loop, chosen by config (`trainer.precision`, `trainer.compile`,
`trainer.channels_last`): what each does and when it helps is in docs/performance.md, and
docs/benchmarks.md has what was measured."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from medtrain.errors import ConfigError

PRECISIONS = ("auto", "32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def resolve_precision(precision: Any, device: torch.device) -> str:
    """`trainer.precision` for `device`: `auto` is bf16 on a CUDA device that supports it
    (Ampere and later) and float32 elsewhere (on the CPU bf16 helps only some processors:
    docs/benchmarks.md); the other values are taken as they are."""
    precision = str(precision)
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "32"


def autocast(device: torch.device, precision: str):
    """Mixed precision on request (bf16 or fp16, or auto resolved for `device`); full float32
    otherwise."""
    precision = resolve_precision(precision, device)
    if precision == "32":
        return nullcontext()
    return torch.autocast(
        device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16
    )


def compile_options(value: Any) -> dict[str, Any] | None:
    """`trainer.compile` as keyword arguments of `torch.compile`, or None (not compiled): false or
    null, true (the default mode) or a mode name.

    Raises:
        ConfigError: another value.
    """
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, str) and value in COMPILE_MODES:
        return {"mode": value}
    raise ConfigError(
        f"trainer.compile={value!r}: choose false, true or a torch.compile mode {COMPILE_MODES}"
    )


def memory_format(trainer, spatial_dims: int = 2) -> torch.memory_format:
    """`trainer.channels_last`: NHWC tensors for 2D convolutions (tensor cores read them without a
    transpose under bf16/fp16 on CUDA; NDHWC for a 3D network's weights); contiguous NCHW
    otherwise. Runs saved before the key: NCHW."""
    value = trainer.get("channels_last", False)
    if not isinstance(value, bool):
        raise ConfigError(f"trainer.channels_last={value!r}: must be true or false")
    if not value:
        return torch.contiguous_format
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last


def accelerated(model: nn.Module, trainer) -> nn.Module:
    """The module the training step calls: `model` compiled by `torch.compile` when
    `trainer.compile` asks for it (its parameters are `model`'s: checkpoints, the moving average
    and evaluation use the uncompiled network, see `unwrap`)."""
    options = compile_options(trainer.get("compile", False))
    if options is None:
        return model
    return torch.compile(model, **options)


def uncompiled(model: nn.Module) -> nn.Module:
    """The module inside a `torch.compile` wrapper (itself when not compiled)."""
    return getattr(model, "_orig_mod", model)
