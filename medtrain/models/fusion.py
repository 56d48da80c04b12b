"""Multi-model fusion: two or more sub-networks (image backbones, a tabular MLP, ...) trained end to
end as one model, combined by feature concatenation, logit averaging or a learned weighted sum."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from medtrain.errors import ConfigError
from medtrain.models import input_keys

FUSION_MODES = ("concat", "mean", "weighted")


def strip_head(branch: nn.Module) -> int:
    """Replace the branch's last `nn.Linear` (its output layer) with an identity, in place, so that
    the branch returns its penultimate features; returns their width."""
    linears = [name for name, module in branch.named_modules() if isinstance(module, nn.Linear)]
    layers = [m for m in branch.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    if len(linears) == 1 and len(layers) == 1:
        raise ConfigError(
            f"model.mode=concat: {type(branch).__name__} is a single linear layer, so without its "
            "head it would pass its raw input on; give it a hidden layer or use model.mode=mean"
        )
    last = linears[-1] if linears else None
    if last is None:
        raise ConfigError(
            f"model.mode=concat needs each branch to end in a linear layer; {type(branch).__name__} "
            "has none: use model.mode=mean or weighted"
        )
    parent_name, _, attr = last.rpartition(".")
    parent = branch.get_submodule(parent_name) if parent_name else branch
    width = getattr(parent, attr).in_features
    setattr(parent, attr, nn.Identity())
    return width


class Fusion(nn.Module):
    """Several networks on the same sample, fused into one prediction.

    Each branch reads the batch keys it declares (`input_keys`: `image` by default, `tabular` for
    `TabularMLP`); the fused model reads their union.

    Args:
        branches: name -> network, each built from any model config (`conf/model/*.yaml`).
        num_classes: number of outputs.
        mode: `concat` (late fusion: the branches' penultimate features are concatenated and a new
            head maps them to outputs), `mean` (the branches' outputs are averaged) or `weighted`
            (a learned softmax-weighted sum of the branches' outputs).
        hidden: width of a hidden layer in the `concat` head (0: a linear head).
        dropout: dropout on the concatenated features (`concat`).
    """

    def __init__(
        self,
        branches: Mapping[str, nn.Module],
        num_classes: int,
        mode: str = "concat",
        hidden: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if mode not in FUSION_MODES:
            raise ConfigError(f"model.mode={mode!r}: choose one of {FUSION_MODES}")
        branches = {k: v for k, v in branches.items() if v is not None}
        if len(branches) < 2:
            raise ConfigError(
                f"model=fusion needs at least 2 branches, got {sorted(branches)}; add one with "
                "+model@model.branches.<name>=<model config>"
            )
        self.mode = mode
        self.branches = nn.ModuleDict(branches)
        self.branch_keys = {name: input_keys(b) for name, b in self.branches.items()}
        self.input_keys = tuple(
            dict.fromkeys(k for keys in self.branch_keys.values() for k in keys)
        )
        if mode == "concat":
            width = sum(strip_head(b) for b in self.branches.values())
            head: list[nn.Module] = [nn.Dropout(dropout)]
            if hidden:
                head += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            head.append(nn.Linear(hidden or width, num_classes))
            self.head = nn.Sequential(*head)
        elif mode == "weighted":
            self.weights = nn.Parameter(torch.zeros(len(self.branches)))  # equal weights at start

    def branch_weights(self) -> torch.Tensor:
        """The weights of the branches' outputs (`weighted`; equal for `mean`)."""
        if self.mode == "weighted":
            return torch.softmax(self.weights, dim=0)
        return torch.full((len(self.branches),), 1.0 / len(self.branches), device=self.device())

    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_keys, inputs, strict=True))
        outputs = [
            branch(*[named[k] for k in self.branch_keys[name]])
            for name, branch in self.branches.items()
        ]
        if self.mode == "concat":
            return self.head(torch.cat([o.flatten(1) for o in outputs], dim=1))
        weights = self.branch_weights().to(outputs[0].device, outputs[0].dtype)
        return sum(w * o for w, o in zip(weights, outputs, strict=True))
