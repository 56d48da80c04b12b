"""Losses, one family per file: `classification` (cross-entropy, BCE, focal on class or multi-hot
targets) and `segmentation` (Dice + BCE on class masks). Config files name them by their module
(`medtrain.losses.classification.CrossEntropy`); MONAI's and torch's losses plug in directly.
`loss_family` tells what a configured loss compares, so that a task can refuse one that does not
fit it before anything is built."""

from __future__ import annotations

from medtrain.losses.classification import BCEWithLogits, CrossEntropy, FocalLoss
from medtrain.losses.segmentation import DiceBCELoss

__all__ = ["BCEWithLogits", "CrossEntropy", "DiceBCELoss", "FocalLoss", "loss_family"]

VALUE_LOSSES = (
    "torch.nn.MSELoss",
    "torch.nn.L1Loss",
    "torch.nn.HuberLoss",
    "torch.nn.SmoothL1Loss",
)
MASK_LOSS_MODULES = ("monai.losses.", "medtrain.losses.segmentation.")
CLASS_LOSS_MODULES = ("medtrain.losses.classification.",)


def loss_family(target: object) -> str | None:
    """What the loss a `_target_` names compares, in the terms of `Task.targets`: `values`
    (regression losses), `masks` (MONAI's and medtrain's segmentation losses) or `classes`
    (medtrain's classification losses); None for any other loss, which is not checked."""
    target = str(target or "")
    if target in VALUE_LOSSES:
        return "values"
    if target.startswith(MASK_LOSS_MODULES):
        return "masks"
    if target.startswith(CLASS_LOSS_MODULES):
        return "classes"
    return None
