"""Networks, one architecture per file; `call_model` feeds a batch to any of them."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medtrain.errors import ConfigError


def input_keys(model: nn.Module) -> tuple[str, ...]:
    """The batch keys a model reads, in the order of its `forward` arguments: its `input_keys`
    attribute (fusion and tabular models declare one), else just the image. A wrapper's
    network is asked (DistributedDataParallel's `module`): the wrapper itself declares none, and
    a fusion model trained under torchrun was fed the image alone."""
    while not hasattr(model, "input_keys") and isinstance(
        getattr(model, "module", None), nn.Module
    ):
        model = model.module
    return tuple(getattr(model, "input_keys", ("image",)))


def call_model(model: nn.Module, batch: dict[str, Any], view: Any = None) -> torch.Tensor:
    """Run `model` on the batch keys it reads; `view` (a `medtrain.tasks.tta.View`) turns and
    mirrors the image (test-time augmentation)."""
    keys = input_keys(model)
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ConfigError(
            f"the model reads batch keys {list(keys)}, but the dataset's samples lack {missing} "
            f"(they hold {sorted(k for k in batch if k != 'id')}); tabular branches need a dataset "
            "with tabular columns (dataset=manifest with dataset.tabular_columns, or "
            "dataset=synthetic_clinical)"
        )
    inputs = [view.apply(batch[k]) if view is not None and k == "image" else batch[k] for k in keys]
    return model(*inputs)
