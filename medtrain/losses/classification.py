"""Classification losses that take config-friendly arguments (lists, not tensors) and integer or
multi-hot targets alike."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _as_tensor(values: Sequence[float] | None) -> torch.Tensor | None:
    return None if values is None else torch.as_tensor(list(values), dtype=torch.float32)


def _multi_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer class targets become one-hot; multi-hot targets pass through as float."""
    if target.ndim == 1:
        return F.one_hot(target.long(), num_classes).float()
    return target.float()


class CrossEntropy(nn.Module):
    """Softmax cross-entropy with optional class weights and label smoothing."""

    def __init__(self, class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", _as_tensor(class_weights))
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, target.long(), weight=self.weight, label_smoothing=self.label_smoothing
        )


class BCEWithLogits(nn.Module):
    """Sigmoid binary cross-entropy per output (multi-label), with optional per-label `pos_weight`."""

    def __init__(self, pos_weight: Sequence[float] | None = None):
        super().__init__()
        self.register_buffer("pos_weight", _as_tensor(pos_weight))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            logits, _multi_hot(target, logits.shape[1]), pos_weight=self.pos_weight
        )


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): softmax for class targets, sigmoid for multi-hot targets.

    Args:
        gamma: focusing parameter; 0 gives cross-entropy.
        alpha: per-class weights (a list, >= 0): the weight of each sample's class for class
            targets, the weight of each label's term for multi-hot targets; None weighs all equally.
    """

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("alpha", _as_tensor(alpha))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 1:  # one class per image: softmax
            log_p = F.log_softmax(logits.float(), dim=1).gather(1, target.long()[:, None])[:, 0]
            loss = -((1 - log_p.exp()) ** self.gamma) * log_p
            if self.alpha is not None:
                loss = loss * self.alpha[target.long()]
            return loss.mean()
        target = target.float()
        bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
        p_true = torch.exp(-bce)
        loss = (1 - p_true) ** self.gamma * bce
        if self.alpha is not None:
            loss = loss * self.alpha
        return loss.mean()
