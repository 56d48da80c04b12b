"""A multilayer perceptron over tabular (clinical) columns: age, lab values, one-hot categories."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medtrain.errors import ConfigError


class TabularMLP(nn.Module):
    """Linear-ReLU-dropout layers over the standardised `tabular` vector of each sample.

    Args:
        num_features: width of the tabular vector (`${dataset.num_features}`).
        num_classes: number of outputs (logits, or values for regression).
        hidden: widths of the hidden layers ([] for a linear model).
        dropout: dropout after each hidden layer.
    """

    input_keys = ("tabular",)

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        hidden: Sequence[int] = (64, 64),
        dropout: float = 0.1,
    ):
        super().__init__()
        if not num_features or num_features < 1:
            raise ConfigError(
                f"model: a tabular branch needs tabular columns, but num_features={num_features}; "
                "set dataset.tabular_columns (dataset=manifest) or use dataset=synthetic_clinical"
            )
        layers: list[nn.Module] = []
        width = num_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, tabular: torch.Tensor) -> torch.Tensor:
        return self.layers(tabular.float())
